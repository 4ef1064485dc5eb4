"""Job scripts (onepixel.jobs): they clean up on SIGTERM and report user errors in one line."""

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
    assert (tmp_path / "job.log").read_text() == "started\n"


def test_a_user_error_in_a_job_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _JOB, str(tmp_path), "error"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == "error: checkpoint.pt: not a readable PyTorch checkpoint\n"
    assert (tmp_path / "job.log").read_text() == "started\nerror: checkpoint.pt: not a readable PyTorch checkpoint\n"
