"""Progress of long loops you can watch, and one summary line per finished job.

A workflow job writes its stdout and stderr to its log file
(``results/<study>/logs/<rule>_<model>.log``, see :func:`onepixel.jobs.log_to`);
``tail -f`` of that file shows the progress of a running train, attack, capture,
locality or vulnerability job. :class:`Progress` writes to the stream stderr goes
to when it is made (the job's log; the terminal for ``onepixel <stage>`` run by
hand):

* on a terminal, a live tqdm bar (redrawn at most every :data:`TTY_INTERVAL_S`);
* anywhere else (a log file, a pipe), one plain line at the start, then at most
  one every :data:`LOG_INTERVAL_S` seconds while items finish, and one at the end:
  ``12:03:41 onepixel.progress: attack lenet: 40/100 images (40 %) [00:30<00:45, 1.33 images/s]``
  (items done / total, elapsed < remaining, rate; no carriage-return redraws).
  The environment variable ``ONEPIXEL_PROGRESS_S`` sets that interval.

:func:`announce` writes one line about a finished job to the log and, when the
log is not the console (a workflow job), to the console too, where Snakemake
prints its own messages: ``attack lenet: 63/100 fooled, 15,228 queries per image, 2.7 min``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

#: seconds between two progress lines written to a log file (or any stream that is not a terminal)
LOG_INTERVAL_S = 10.0
#: seconds between two redraws of the live bar on a terminal
TTY_INTERVAL_S = 0.5
#: the environment variable that overrides :data:`LOG_INTERVAL_S`
INTERVAL_ENV = "ONEPIXEL_PROGRESS_S"

_BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt}{unit} ({percentage:.0f} %) [{elapsed}<{remaining}, {rate_fmt}]"


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def _log_interval() -> float:
    value = os.environ.get(INTERVAL_ENV)
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return LOG_INTERVAL_S


def _write(stream: TextIO | None, text: str) -> None:
    """Write one line to ``stream`` and flush; a failing stream (closed, disk full) is ignored:
    progress must never end a job."""
    if stream is None:
        return
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _stamp(name: str, line: str) -> str:
    """``line`` as the job's log records are written (``HH:MM:SS name: line``, see :func:`onepixel.jobs.configure_logging`)."""
    return f"{time.strftime('%H:%M:%S')} {name}: {line}"


class Progress:
    """Items done of a long loop: a live bar on a terminal, a plain line at most every few seconds in a log.

    Use as a context manager (or call :meth:`close`)::

        with Progress("capture lenet", total=len(images), unit="images") as progress:
            for batch in batches:
                ...
                progress.update(len(batch))

    Args:
        desc: what is counted, e.g. ``"attack lenet"``.
        total: items of the loop.
        unit: the items' name (plural), e.g. ``"images"``.
        initial: items already done before this run (a resumed attack); the rate counts only the others.
        stream: where to write; default: ``sys.stderr`` as it is now (a workflow job's log).
        interval: seconds between two lines when ``stream`` is not a terminal
            (default :data:`LOG_INTERVAL_S`, or ``$ONEPIXEL_PROGRESS_S``).
    """

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str = "items",
        *,
        initial: int = 0,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.desc, self.total, self.unit = desc, int(total), unit
        self.initial = self.n = int(initial)
        self.stream = sys.stderr if stream is None else stream
        self.interval = _log_interval() if interval is None else float(interval)
        self._start = self._last = time.monotonic()
        self._written = -1  # n of the last line written
        self._closed = False
        self._bar: tqdm | None = None
        if _is_tty(self.stream):
            self._bar = tqdm(
                total=self.total,
                initial=self.n,
                desc=desc,
                unit=f" {unit}",
                file=self.stream,
                mininterval=TTY_INTERVAL_S,
                dynamic_ncols=True,
                leave=True,
            )
        else:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meter(self) -> str:
        """The progress as one line: ``desc: n/total unit (p %) [elapsed<remaining, rate]``."""
        return tqdm.format_meter(
            self.n,
            self.total,
            time.monotonic() - self._start,
            prefix=self.desc,
            unit=f" {self.unit}",
            ascii=True,
            bar_format=_BAR_FORMAT,
            initial=self.initial,
        )

    def _line(self) -> None:
        self._last = time.monotonic()
        self._written = self.n
        _write(self.stream, _stamp("onepixel.progress", self.meter()))

    def update(self, n: int = 1) -> None:
        """``n`` more items done; writes a line when the last one is at least ``interval`` seconds old."""
        if self._closed:
            return
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(int(n))
        elif time.monotonic() - self._last >= self.interval:
            self._line()

    def close(self) -> None:
        """End the progress: the bar's last state, or a last line (unless the last line already said it)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._written != self.n:
            self._line()


def announce(line: str) -> None:
    """One line about a finished job (or a notice the user should see), in the log and on the console.

    Written to the log (``sys.stderr`` as it is now, time-stamped like the log's
    records) and, when that is not the console (a workflow job, whose stderr goes
    to its log file), also to the console ``sys.__stderr__``, where Snakemake
    prints its own messages.
    """
    log = sys.stderr
    text = _stamp("onepixel", line)
    if _is_tty(log):
        with contextlib.suppress(OSError, ValueError):
            tqdm.write(text, file=log)  # above any live bar
    else:
        _write(log, text)
    console = sys.__stderr__
    if console is not None and console is not log:
        _write(console, line)


def duration(seconds: float) -> str:
    """A duration for a summary line: ``45 s``, ``2.7 min``, ``1.3 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 9.5 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
