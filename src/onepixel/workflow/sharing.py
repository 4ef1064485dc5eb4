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
and refuses when the study's stage differs from ``dvc.lock``.

Every study is one DVC stage, ``study@<study id>`` (dvc.yaml), and is pulled and
marked on its own: by default every study that ``dvc.lock`` records, or the one
named with ``--study``.

Command line: ``python -m onepixel.workflow.sharing [--study ID]`` (``make pull [STUDY=ID]``)
pulls from the default remote and marks the results up to date; ``--no-pull`` only marks them
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

import yaml

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


def dvc_status(repo: PathLike = ".", *targets: str) -> dict[str, Any]:
    """``dvc status --json [targets]`` of ``repo``: ``{}`` when the stages (default: every stage)
    and their outputs match ``dvc.lock``."""
    result = _run(_dvc("status", "--json", *targets), repo)
    if result.returncode != 0:
        raise SharingError(f"dvc status failed in {repo}: {_last_line(result.stderr or result.stdout)}")
    try:
        return json.loads(result.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise SharingError(f"dvc status printed no JSON: {_last_line(result.stdout)}") from exc


#: the DVC stage of every study is ``study@<study id>`` (dvc.yaml: ``foreach`` over ``vars.studies``)
STAGE = "study"


def studies(repo: PathLike = ".") -> dict[str, str]:
    """``{study id: config file}`` of every study that dvc.yaml declares (its ``vars.studies``)."""
    file = Path(repo) / "dvc.yaml"
    try:
        declared = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SharingError(f"{file}: cannot read the studies ({_last_line(str(exc))})") from exc
    for entry in declared.get("vars", []) if isinstance(declared, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("studies"), dict):
            return {str(name): str(item["config"]) for name, item in entry["studies"].items()}
    raise SharingError(f"{file}: declares no studies (vars: - studies: {{<study id>: {{config: <file>}}}})")


def locked_studies(repo: PathLike = ".") -> list[str]:
    """The study ids whose stage dvc.lock records (the studies that were run and can be pulled)."""
    file = Path(repo) / "dvc.lock"
    if not file.is_file():
        return []
    stages = (yaml.safe_load(file.read_text()) or {}).get("stages", {})
    return [name for name in studies(repo) if f"{STAGE}@{name}" in stages]


def _chosen(repo: PathLike, study: str | None) -> list[str]:
    locked = locked_studies(repo)
    if study is None:
        if not locked:
            raise SharingError(f"{Path(repo) / 'dvc.lock'}: records no study; run `dvc repro study@<study id>` first")
        return locked
    if study not in studies(repo):
        raise SharingError(f"study {study!r} is not in dvc.yaml; studies: {', '.join(studies(repo))}")
    if study not in locked:
        raise SharingError(f"study {study!r} has no entry in dvc.lock: it was never run (dvc repro {STAGE}@{study})")
    return [study]


def mark_up_to_date(repo: PathLike = ".", study: str | None = None) -> list[str]:
    """Make Snakemake accept the results in ``repo`` (just pulled or checked out) as up to date.

    Args:
        study: the id of one study; by default every study that dvc.lock records.

    Returns:
        The study ids marked.

    Raises:
        SharingError: when ``dvc status`` reports a difference from ``dvc.lock``
            (changed code or config, a missing or modified output), naming it,
            or when Snakemake fails (e.g. an output of the workflow is missing).
    """
    chosen = _chosen(repo, study)
    configs = studies(repo)
    for name in chosen:
        status = dvc_status(repo, f"{STAGE}@{name}")
        if status:
            raise SharingError(
                f"the workspace does not match dvc.lock ({describe_status(status)}); results are only marked up "
                "to date when they are those of this checkout's code and config: run `dvc pull` / `dvc checkout`, "
                f"or `dvc repro {STAGE}@{name}` to recompute"
            )
    for name in chosen:
        result = _run(
            _snakemake("--configfile", configs[name], "--touch", "--forceall", "--cores", "1", "--quiet", "all"), repo
        )
        if result.returncode != 0:
            raise SharingError(
                f"snakemake --touch of study {name} failed in {repo}: {_last_line(result.stderr or result.stdout)}"
            )
    return chosen


def pull(repo: PathLike = ".", remote: str | None = None, jobs: int | None = None, study: str | None = None) -> str:
    """``dvc pull`` the outputs of one study (by default of every study dvc.lock records; from
    ``remote``, or the default remote), then :func:`mark_up_to_date`. Returns DVC's summary line
    (e.g. "41 files fetched")."""
    args = ["pull", *(f"{STAGE}@{name}" for name in _chosen(repo, study))]
    if remote:
        args += ["--remote", remote]
    if jobs:
        args += ["--jobs", str(jobs)]
    result = _run(_dvc(*args), repo)
    if result.returncode != 0:
        raise SharingError(f"dvc pull failed in {repo}: {_last_line(result.stderr or result.stdout)}")
    mark_up_to_date(repo, study)
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
    parser.add_argument("--study", help="the id of one study (default: every study that dvc.lock records)")
    parser.add_argument(
        "--no-pull", action="store_true", help="do not pull; only mark the workspace's results up to date"
    )
    args = parser.parse_args(argv)
    try:
        if args.no_pull:
            marked = mark_up_to_date(args.repo, args.study)
            print(f"results of {', '.join(marked)} marked up to date for Snakemake")
        else:
            line = pull(args.repo, args.remote, args.jobs, args.study)
            print(f"{line}; results of {', '.join(_chosen(args.repo, args.study))} marked up to date for Snakemake")
    except SharingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
