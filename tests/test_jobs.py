"""Job scripts (onepixel.jobs): they clean up on SIGTERM and report it and user errors in one line."""

from __future__ import annotations

import signal
import subprocess
import sys

from helpers import _env

_JOB = """
import os, signal, sys, time
from pathlib import Path
from onepixel.errors import DataError
from onepixel.files import atomic_path
from onepixel.jobs import log_to

out = Path(sys.argv[1])
with log_to(out / "job.log"):
    print("started")
    if sys.argv[2] == "sigterm":
        with atomic_path(out / "result.nc") as tmp:
            tmp.write_bytes(b"half a result")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # never reached: the handler raises at once
            tmp.write_bytes(b"the whole result")
    else:
        raise DataError("checkpoint.pt: not a readable PyTorch checkpoint")
"""


def test_a_job_killed_by_sigterm_leaves_no_partial_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _JOB, str(tmp_path), "sigterm"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.log"]  # no result.nc, no temporary file
    line = result.stderr.removesuffix("\n")
    assert line.startswith("error: interrupted (SIGTERM) after ") and "\n" not in line, result.stderr
    assert (tmp_path / "job.log").read_text() == f"started\n{line}\n"


def test_a_user_error_in_a_job_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _JOB, str(tmp_path), "error"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == "error: checkpoint.pt: not a readable PyTorch checkpoint\n"
    assert (tmp_path / "job.log").read_text() == "started\nerror: checkpoint.pt: not a readable PyTorch checkpoint\n"


def test_the_interruption_line_names_the_signal_the_job_and_the_time():
    from onepixel.jobs import interrupted_line

    line = interrupted_line(signal.SIGINT, "attack", 12.34)
    assert line.startswith("error: interrupted (SIGINT) during attack after 12.3 s; ") and "\n" not in line
    assert interrupted_line(signal.SIGTERM, None, 0).startswith("error: interrupted (SIGTERM) after 0.0 s; ")


def test_an_os_error_about_a_file_is_a_user_error_line():
    from onepixel.jobs import user_error_line

    assert user_error_line(PermissionError(13, "Permission denied", "/x/y.nc")) == "error: /x/y.nc: permission denied"
    assert user_error_line(OSError("no file named")) is None  # not about a file: a bug, with its traceback
    assert user_error_line(ValueError("x")) is None
