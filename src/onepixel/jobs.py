"""A workflow job's life: its log file, one-line user errors, and SIGTERM turned into a clean exit."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from onepixel.errors import OnePixelError
from onepixel.files import one_line


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str] | None, threads: int | None = None) -> Iterator[None]:
    """Run a workflow job's block: stdout and stderr go to the file ``path`` (the job's log).

    ``threads`` also caps torch's intra-op threads, so parallel jobs do not
    oversubscribe the CPU.

    For the workflow's scripts (one job each), the block also
    * turns a user error (:class:`~onepixel.errors.OnePixelError`) into one line
      ``error: <message>`` in the log and on the job's own stderr, and exit status 2
      (no traceback);
    * turns SIGTERM (what a scheduler or ``kill`` sends) into ``SystemExit(143)``, so
      that files being written under a temporary name (:func:`atomic_path`) are
      removed instead of left behind. SIGINT already raises ``KeyboardInterrupt``.
    """
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    with _exit_on_sigterm():
        if path is None:
            configure_logging()
            with _user_errors_as_one_line(None):
                yield
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with (
            open(path, "w", buffering=1) as handle,
            _user_errors_as_one_line(handle),
            contextlib.redirect_stdout(handle),
            contextlib.redirect_stderr(handle),
        ):
            configure_logging(handle)
            yield


@contextlib.contextmanager
def _user_errors_as_one_line(log: Any) -> Iterator[None]:
    """Print a OnePixelError as ``error: <message>`` (to ``log`` and the real stderr) and exit with status 2."""
    try:
        yield
    except OnePixelError as exc:
        line = f"error: {one_line(str(exc), limit=2000)}"
        for stream in (log, sys.__stderr__):
            if stream is not None:
                print(line, file=stream, flush=True)
        raise SystemExit(2) from None


def _raise_system_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Within the block SIGTERM raises ``SystemExit(143)`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def configure_logging(stream: Any = None) -> None:
    """Show the library's INFO messages (one line each, with the time) on ``stream`` (stderr)."""
    import logging

    logging.basicConfig(
        level=logging.INFO, stream=stream, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
