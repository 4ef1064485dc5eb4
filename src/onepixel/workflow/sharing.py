"""Share models and results with DVC so that Snakemake takes pulled results as up to date.

``dvc pull`` (and ``dvc checkout``) writes each file with the time of the pull as
its modification time, in no particular order, and a fresh clone has no
``.snakemake/`` metadata. Snakemake reruns a job when an input is newer than its
outputs and no recorded checksum shows the input unchanged, so after a plain
``dvc pull`` ``snakemake -n`` plans to recompute most of the study.

:func:`mark_up_to_date` fixes that the way Snakemake provides for it:
``snakemake --touch --forceall`` touches every output in the order of the DAG
(inputs before the outputs made from them) and records Snakemake's metadata for
every job (config params, code, input checksums) as if it had just run, so a
later change of config or code still reruns what it affects. Touching is right
only when the files are the results of this checkout's code and config; DVC
knows whether they are, so :func:`mark_up_to_date` first asks ``dvc status``
and refuses when the study stage differs from ``dvc.lock``.

Command line: ``python -m onepixel.workflow.sharing`` (``make pull``) pulls from the
default remote and marks the results up to date; ``--no-pull`` only marks them
(after ``dvc checkout``, ``git checkout`` of another result version, or a
``dvc pull`` of your own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onepixel.errors import OnePixelError

PathLike = str | os.PathLike[str]


class SharingError(OnePixelError):
    """DVC or Snakemake refused, or the workspace does not match ``dvc.lock``."""


def _run(args: list[str], repo: PathLike) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, cwd=repo, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SharingError(f"cannot run {args[2] if len(args) > 2 else args[0]}: {exc}") from exc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _snakemake(*args: str) -> list[str]:
    # The workflow's own defaults, whatever profile the shell selects: touching runs
    # no job, and a cluster or conda profile would only slow it down.
    return [sys.executable, "-m", "snakemake", "--profile", "none", "--workflow-profile", "none", *args]


def _state(state: Any) -> str:
    # a params file reports its changed keys: {"attack": "modified"}
    return ", ".join(f"{key} {value}" for key, value in state.items()) if isinstance(state, dict) else str(state)


def describe_status(status: dict[str, Any]) -> str:
    """One line from ``dvc status --json``, e.g.
    ``study: changed deps src/onepixel (modified), config/config.yaml (attack modified)``."""
    parts = []
    for stage, changes in status.items():
        items = []
        for change in changes if isinstance(changes, list) else [changes]:
            if isinstance(change, dict):
                for kind, paths in change.items():
                    if isinstance(paths, dict):
                        listed = ", ".join(f"{path} ({_state(state)})" for path, state in paths.items())
                        items.append(f"{kind} {listed}")
                    else:
                        items.append(f"{kind} {paths}")
            else:
                items.append(str(change))
        parts.append(f"{stage}: {'; '.join(items)}")
    return " | ".join(parts)


def dvc_status(repo: PathLike = ".") -> dict[str, Any]:
    """``dvc status --json`` of ``repo``: ``{}`` when every stage and its outputs match ``dvc.lock``."""
    result = _run(_dvc("status", "--json"), repo)
    if result.returncode != 0:
        raise SharingError(f"dvc status failed in {repo}: {_last_line(result.stderr or result.stdout)}")
    try:
        return json.loads(result.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise SharingError(f"dvc status printed no JSON: {_last_line(result.stdout)}") from exc


def mark_up_to_date(repo: PathLike = ".") -> None:
    """Make Snakemake accept the results in ``repo`` (just pulled or checked out) as up to date.

    Raises:
        SharingError: when ``dvc status`` reports a difference from ``dvc.lock``
            (changed code or config, a missing or modified output), naming it,
            or when Snakemake fails (e.g. an output of the workflow is missing).
    """
    status = dvc_status(repo)
    if status:
        raise SharingError(
            f"the workspace does not match dvc.lock ({describe_status(status)}); results are only marked up to "
            "date when they are those of this checkout's code and config: run `dvc pull` / `dvc checkout`, "
            "or `dvc repro` to recompute"
        )
    result = _run(_snakemake("--touch", "--forceall", "--cores", "1", "--quiet", "all"), repo)
    if result.returncode != 0:
        raise SharingError(f"snakemake --touch failed in {repo}: {_last_line(result.stderr or result.stdout)}")


def pull(repo: PathLike = ".", remote: str | None = None, jobs: int | None = None) -> str:
    """``dvc pull`` every output of the study (from ``remote``, or the default remote),
    then :func:`mark_up_to_date`. Returns DVC's summary line (e.g. "41 files fetched")."""
    args = ["pull"]
    if remote:
        args += ["--remote", remote]
    if jobs:
        args += ["--jobs", str(jobs)]
    result = _run(_dvc(*args), repo)
    if result.returncode != 0:
        raise SharingError(f"dvc pull failed in {repo}: {_last_line(result.stderr or result.stdout)}")
    mark_up_to_date(repo)
    return _last_line(result.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onepixel.workflow.sharing",
        description="dvc pull the study's models and results, then mark them up to date for Snakemake "
        "(touch in DAG order, after checking them against dvc.lock).",
    )
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("--remote", help="DVC remote to pull from (default: the default remote)")
    parser.add_argument("--jobs", type=int, help="parallel transfers of dvc pull")
    parser.add_argument(
        "--no-pull", action="store_true", help="do not pull; only mark the workspace's results up to date"
    )
    args = parser.parse_args(argv)
    try:
        if args.no_pull:
            mark_up_to_date(args.repo)
            print("results marked up to date for Snakemake")
        else:
            print(f"{pull(args.repo, args.remote, args.jobs)}; results marked up to date for Snakemake")
    except SharingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
