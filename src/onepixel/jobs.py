"""A workflow job's life: its log file, one-line user errors, and Ctrl-C / SIGTERM turned into a one-line clean exit."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from onepixel.errors import OnePixelError
from onepixel.files import one_line


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str] | None, threads: int | None = None, what: str | None = None) -> Iterator[None]:
    """Run a workflow job's block: stdout and stderr go to the file ``path`` (the job's log).

    ``threads`` also caps torch's intra-op threads, so parallel jobs do not
    oversubscribe the CPU. ``what`` names the job (the stage) in the interruption line.

    For the workflow's scripts (one job each), the block also
    * turns a user error (:class:`~onepixel.errors.OnePixelError`) into one line
      ``error: <message>`` in the log and on the job's own stderr, and exit status 2
      (no traceback);
    * turns Ctrl-C (SIGINT) and SIGTERM (what a scheduler or ``kill`` sends) into one
      line ``error: interrupted (SIGINT) during <what> after 12.3 s; ...`` in the log and
      on the job's own stderr, and exit status 130 / 143 (no traceback); files being
      written under a temporary name (:func:`atomic_path`) are removed on the way out
      (see :func:`interrupts_as_one_line`).
    """
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    if path is None:
        configure_logging()
        with interrupts_as_one_line(what, sys.__stderr__), _user_errors_as_one_line(None):
            yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "w", buffering=1) as handle,
        interrupts_as_one_line(what, handle, sys.__stderr__),
        _user_errors_as_one_line(handle),
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
    ):
        configure_logging(handle)
        yield


@contextlib.contextmanager
def _user_errors_as_one_line(log: Any) -> Iterator[None]:
    """Print a user error (see :func:`user_error_line`) as one line (to ``log`` and the real stderr),
    and exit with status 2."""
    try:
        yield
    except (OnePixelError, OSError) as exc:
        line = user_error_line(exc)
        if line is None:
            raise
        for stream in (log, sys.__stderr__):
            if stream is not None:
                print(line, file=stream, flush=True)
        raise SystemExit(2) from None


def user_error_line(exc: BaseException) -> str | None:
    """``error: <message>`` for a user error: a :class:`~onepixel.errors.OnePixelError`, or an ``OSError``
    about a named file (``permission denied``, ``no space left on device``); ``None`` for anything else."""
    if isinstance(exc, OnePixelError):
        return f"error: {one_line(str(exc), limit=2000)}"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"error: {exc.filename}: {exc.strerror.lower()}"
    return None


class Interrupted(SystemExit):
    """Raised by :func:`interrupts_as_one_line` once its line is printed: status 128 + the signal's number."""


class Terminated(SystemExit):
    """A terminating signal (SIGTERM) arrived: a ``SystemExit`` with status 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _ignore_further_signals() -> None:
    """While the first signal's exception unwinds (temporary files being removed), later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _on_sigint(_signum: int, _frame: Any) -> None:
    _ignore_further_signals()
    raise KeyboardInterrupt


def _on_sigterm(signum: int, _frame: Any) -> None:
    _ignore_further_signals()
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Within the block SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated` (status 143), once;
    main thread only (elsewhere a no-op). The previous handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def interrupted_line(signum: int, what: str | None, seconds: float) -> str:
    """The one line printed for an interrupted job."""
    during = f" during {what}" if what else ""
    name = signal.Signals(signum).name
    return (
        f"error: interrupted ({name}){during} after {seconds:.1f} s; "
        "files being written were removed, finished ones kept: run it again to redo the rest"
    )


@contextlib.contextmanager
def interrupts_as_one_line(what: str | None, *streams: Any) -> Iterator[None]:
    """Ctrl-C (SIGINT, ``KeyboardInterrupt``) or SIGTERM inside the block: print one line (see
    :func:`interrupted_line`) to each of ``streams`` and exit with status 128 + the signal (130, 143),
    without a traceback. The exception unwinds the block first, so :func:`atomic_path` removes its
    temporary files; a second signal meanwhile is ignored, so that it cannot cut that short.
    """
    started = time.monotonic()
    with _signals_raise():
        try:
            yield
        except (KeyboardInterrupt, Terminated) as exc:
            signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
            _ignore_further_signals()  # also for a KeyboardInterrupt raised by Python's own handler
            line = interrupted_line(signum, what, time.monotonic() - started)
            for stream in streams:
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        print(line, file=stream, flush=True)
        else:
            return
    raise Interrupted(128 + signum) from None


def configure_logging(stream: Any = None) -> None:
    """Show the library's INFO messages (one line each, with the time) on ``stream`` (stderr)."""
    import logging

    logging.basicConfig(
        level=logging.INFO, stream=stream, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
