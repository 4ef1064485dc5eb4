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

Command line: ``python -m onepixel.workflow.sharing [pull] [--study ID] [--remote NAME]``
(``make pull [STUDY=ID] [REMOTE=NAME]``) pulls from the default remote (or ``NAME``) and marks
the results up to date; ``--no-pull`` only marks them (after ``dvc checkout``, ``git checkout``
of another result version, or a ``dvc pull`` of your own).
``python -m onepixel.workflow.sharing push [--study ID] [--remote NAME]`` (``make push``) is
``dvc push [study@ID]``. Both report a failed transfer in one line that names the remote, its
URL and the reason (:func:`transfer_failure`), not DVC's multi-line output; docs/remotes.md
sets up S3 and SSH remotes.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


# -- remotes and transfers ------------------------------------------------------------------


def _shown(url: str) -> str:
    """``url`` without a password (``ssh://user:secret@host/path`` -> ``ssh://user@host/path``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}@{netloc}" if parts.username else netloc).geturl()


def _remote(repo: PathLike, remote: str | None) -> tuple[str, str, dict[str, str]]:
    """Name, URL and settings (``endpointurl``, ``keyfile`` ...) of ``remote`` or the default remote."""
    result = _run(_dvc("config", "--list"), repo)
    if result.returncode != 0:
        raise SharingError(f"dvc config --list failed in {repo}: {_last_line(result.stderr or result.stdout)}")
    config = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    names = [key[len("remote.") : -len(".url")] for key in config if key.startswith("remote.") and key.endswith(".url")]
    name = remote or config.get("core.remote")
    if not name:
        raise SharingError(
            f"no DVC remote: name one with --remote (make ... REMOTE=<name>) or set a default with "
            f"`dvc remote default <name>`; remotes: {', '.join(names) or 'none (dvc remote add <name> <url>)'}"
        )
    url = config.get(f"remote.{name}.url")
    if url is None:
        raise SharingError(f"no DVC remote named {name!r}; remotes: {', '.join(names) or 'none'}")
    prefix = f"remote.{name}."
    return name, url, {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}


def remote_of(repo: PathLike = ".", remote: str | None = None) -> tuple[str, str]:
    """The name and URL (without a password) of the DVC remote ``remote``, by default of the
    default remote (``core.remote``, set by ``dvc remote default``), as ``dvc config --list``
    resolves them from every config level (``.dvc/config``, ``.dvc/config.local``, global, system)."""
    name, url, _settings = _remote(repo, remote)
    return name, _shown(url)


#: connect errors that are certain besides a refused connection: no network, no route to the host
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH}


def endpoint_unreachable(endpoint: str, timeout: float = 10.0) -> str | None:
    """Why nothing can answer at the HTTP(S) ``endpoint`` (e.g. an S3 remote's ``endpointurl``):
    ``could not connect to endpoint <url> (connection refused)`` or ``(cannot resolve host ...)``;
    None when a TCP connection opens, or when the answer is not certain (a time-out, or a proxy
    from ``HTTP(S)_PROXY`` in between), so that DVC decides. DVC itself retries each object for
    seconds before it gives up: minutes for a study in a fresh clone."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None  # not a port number: DVC names the problem
    where = f"could not connect to endpoint {_endpoint(endpoint)}"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"{where} (cannot resolve host {parts.hostname!r}: {str(exc.strerror or exc).lower()})"
    except ConnectionRefusedError:
        return f"{where} (connection refused)"
    except TimeoutError:
        return None
    except OSError as exc:
        return f"{where} ({str(exc.strerror or exc).lower()})" if exc.errno in _UNREACHABLE else None


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def _refused(match: re.Match[str], url: str) -> str:
    number = int(match["errno"])
    try:
        why = os.strerror(number).lower() if number > 0 else f"errno {number}"
    except ValueError:
        why = f"errno {number}"
    return f"could not connect to {match['host']}:{match['port']} ({why})"


#: error codes of S3 (and S3-compatible servers) that mean wrong or insufficient credentials
_DENIED = {"403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}


def _s3_error(match: re.Match[str], url: str) -> str | None:
    code = match["code"]
    if code in _DENIED:
        return (
            f"access denied ({code} on {match['operation']}): check the remote's access_key_id and "
            "secret_access_key and the bucket's permissions"
        )
    return None


#: DVC's warning (push and pull) about files that are neither in the local cache nor on the remote
_MISSING = re.compile(r"Missing cache files:\n(?P<files>(?:[\w-]+: [0-9a-f]+(?:\.dir)?(?:\n|$))+)")


def _missing(match: re.Match[str], url: str) -> str:
    count = len(match["files"].strip().splitlines())
    return (
        f"{count} file{'s' if count != 1 else ''} neither in the local cache nor on the remote "
        "(not pushed yet? `make push` from the clone that made them)"
    )


#: (pattern in DVC's stderr, reason from the match and the remote's URL; None: try the next)
_REASONS: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], str | None]]] = [
    # S3 (botocore): a closed port, an unknown host, a server that does not answer
    (
        re.compile(r'Could not connect to the endpoint URL: "(?P<url>[^"]+)"'),
        lambda m, url: (
            f"could not connect to endpoint {_endpoint(m['url'])} (check the remote's endpointurl and that the server runs)"
        ),
    ),
    (
        re.compile(r'Connect timeout on endpoint URL: "(?P<url>[^"]+)"'),
        lambda m, url: f"timed out connecting to endpoint {_endpoint(m['url'])}",
    ),
    (
        re.compile(r"NoSuchBucket|The specified bucket does not exist"),
        lambda m, url: f"no such bucket {urlsplit(url).netloc!r}",
    ),
    (re.compile(r"An error occurred \((?P<code>[^)]+)\) when calling the (?P<operation>\w+) operation"), _s3_error),
    # SSH (asyncssh): a closed port, an unknown host, a key the server does not accept
    (re.compile(r"\[Errno (?P<errno>-?\d+)\] Connect call failed \('(?P<host>[^']*)', (?P<port>\d+)"), _refused),
    (
        re.compile(
            r"\[Errno -\d+\] (?P<why>Name or service not known|Temporary failure in name resolution|[^\n]*nodename[^\n]*)"
        ),
        lambda m, url: f"cannot resolve host {urlsplit(url).hostname or url!r} ({m['why'].lower()})",
    ),
    (
        re.compile(r"Permission denied for user (?P<user>\S+) on host (?P<host>\S+?):"),
        lambda m, url: (
            f"authentication failed: permission denied for user {m['user']} on {m['host']} (is the public key "
            "of the remote's keyfile in the server's authorized_keys?)"
        ),
    ),
    (_MISSING, _missing),
]

_PREFIXES = ("unexpected error - ", "failed to push data to the cloud - ", "failed to pull data from the cloud - ")


def transfer_failure(stderr: str, url: str = "") -> str:
    """The reason a ``dvc push`` / ``dvc pull`` failed, in a few words, from DVC's stderr (and the
    remote's URL, for the bucket or host name): could not connect (to the endpoint, or host:port
    and why), cannot resolve the host, authentication failed, access denied, no such bucket, files
    missing on the remote; else DVC's last ``ERROR`` line, trimmed."""
    for pattern, reason in _REASONS:
        match = pattern.search(stderr)
        if match and (found := reason(match, url)):
            return found
    errors = [
        line.strip()[len("ERROR:") :].strip() for line in stderr.splitlines() if line.strip().startswith("ERROR:")
    ]
    line = errors[-1] if errors else _last_line(stderr)
    for prefix in _PREFIXES:
        line = line.removeprefix(prefix)
    return line if len(line) <= 300 else line[:297] + "..."


def _transfer(
    command: str, repo: PathLike, remote: str | None, jobs: int | None, targets: list[str]
) -> tuple[str, str, str]:
    """Run ``dvc <command> targets --remote <name>``; the summary line, remote name and URL, or
    SharingError in one line naming the remote."""
    name, url, settings = _remote(repo, remote)
    url = _shown(url)
    where = "to" if command == "push" else "from"
    # fail at once where nothing listens, not after DVC's retries of every object
    endpoint = settings.get("endpointurl") if url.startswith("s3://") else None
    if endpoint and (unreachable := endpoint_unreachable(endpoint)):
        raise SharingError(f"{command} {where} remote {name!r} ({url}) failed: {unreachable}")
    args = [command, *targets, "--remote", name]
    if jobs:
        args += ["--jobs", str(jobs)]
    result = _run(_dvc(*args), repo)
    if result.returncode != 0:
        raise SharingError(
            f"{command} {where} remote {name!r} ({url}) failed: {transfer_failure(result.stderr or result.stdout, url)}"
        )
    if missing := _MISSING.search(result.stderr):
        # DVC exits 0 when it cannot push files that are not in the local cache
        print(f"warning: {command} {where} remote {name!r} ({url}): {_missing(missing, url)}", file=sys.stderr)
    return _last_line(result.stdout).rstrip("."), name, url


def push(repo: PathLike = ".", remote: str | None = None, jobs: int | None = None, study: str | None = None) -> str:
    """``dvc push`` of one study's outputs (by default ``dvc push`` of everything, as before) to
    ``remote`` or the default remote. Returns DVC's summary line with the remote, e.g.
    ``41 files pushed (remote 'minio', s3://bucket/path)``.

    Raises:
        SharingError: one line naming the remote, its URL and what failed (:func:`transfer_failure`).
    """
    targets = [f"{STAGE}@{name}" for name in _chosen(repo, study)] if study else []
    line, name, url = _transfer("push", repo, remote, jobs, targets)
    return f"{line} (remote {name!r}, {url})"


def pull(repo: PathLike = ".", remote: str | None = None, jobs: int | None = None, study: str | None = None) -> str:
    """``dvc pull`` the outputs of one study (by default of every study dvc.lock records; from
    ``remote``, or the default remote), then :func:`mark_up_to_date`. Returns DVC's summary line
    with the remote (e.g. ``41 files fetched (remote 'store', /path/onepixel-dvc-store)``).

    Raises:
        SharingError: one line naming the remote, its URL and what failed (:func:`transfer_failure`),
            or what :func:`mark_up_to_date` refuses.
    """
    line, name, url = _transfer("pull", repo, remote, jobs, [f"{STAGE}@{name}" for name in _chosen(repo, study)])
    mark_up_to_date(repo, study)
    return f"{line} (remote {name!r}, {url})"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[pull] [--study ID] [--remote NAME] [--no-pull]`` or ``push [--study ID]
    [--remote NAME]``; errors are one line, ``error: ...``, and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m onepixel.workflow.sharing",
        description="pull (the default): dvc pull the study's models and results, then mark them up to date for "
        "Snakemake (touch in DAG order, after checking them against dvc.lock). push: dvc push them. "
        "A failed transfer is one line naming the remote and what failed.",
    )
    parser.add_argument("command", nargs="?", choices=("pull", "push"), default="pull", help="default: pull")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("--remote", help="DVC remote to pull from or push to (default: the default remote)")
    parser.add_argument("--jobs", type=int, help="parallel transfers of dvc pull / dvc push")
    parser.add_argument(
        "--study", help="the id of one study (default: pull every study that dvc.lock records; push everything)"
    )
    parser.add_argument(
        "--no-pull", action="store_true", help="do not pull; only mark the workspace's results up to date"
    )
    args = parser.parse_args(argv)
    if args.no_pull and args.command == "push":
        parser.error("--no-pull is an option of pull, not push")
    try:
        if args.command == "push":
            print(push(args.repo, args.remote, args.jobs, args.study))
        elif args.no_pull:
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
