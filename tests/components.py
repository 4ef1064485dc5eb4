"""Real components the tests start on this machine (a SLURM cluster, an S3 server, an SSH
server, a browser): one rule for when one is missing.

On a user's machine a test that needs a missing component skips with the reason. With
``ONEPIXEL_REQUIRE_COMPONENTS=1`` (set by ``.ci/run``) the same test fails instead, so a CI
run can never pass by skipping them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REQUIRE = "ONEPIXEL_REQUIRE_COMPONENTS"


def required() -> bool:
    """True where missing components are failures (CI), not skips."""
    return os.environ.get(REQUIRE, "") not in ("", "0")


def missing(reason: str) -> None:
    """Skip the calling test (or fixture) because a component is missing; fail under CI."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE} is set: components must be installed)", pytrace=False)
    pytest.skip(reason)


def need_programs(*names: str, install: str) -> dict[str, str]:
    """The full paths of the programs ``names`` (found on PATH or in /usr/sbin), or
    ``missing`` naming the absent ones and the packages that install them."""
    search = os.pathsep.join(filter(None, (os.environ.get("PATH"), "/usr/sbin", "/sbin")))
    found = {name: shutil.which(name, path=search) for name in names}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        missing(f"{', '.join(absent)} not installed (Debian: apt-get install {install})")
    return {name: path for name, path in found.items() if path is not None}


def need_module(name: str, install: str) -> None:
    """``missing`` unless the Python module ``name`` imports."""
    try:
        __import__(name)
    except ImportError:
        missing(f"Python module {name} not installed (pip install {install})")


def artefacts(kind: str) -> Path:
    """The folder a test saves files for people to look at (screenshots, logs): under
    ``$ONEPIXEL_TEST_ARTEFACTS`` if set, else ``test-artefacts/`` of the repository (git-ignored)."""
    root = Path(os.environ.get("ONEPIXEL_TEST_ARTEFACTS") or Path(__file__).resolve().parents[1] / "test-artefacts")
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder
