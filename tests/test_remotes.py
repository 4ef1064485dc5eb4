"""Real DVC remotes: the study pushed to S3 (a moto server) and over SSH (a throw-away sshd), pulled into clean clones with the project's own commands, and the one-line errors of failed transfers."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import Study, tool_env
from onepixel.workflow.sharing import (
    STAGE,
    SharingError,
    endpoint_unreachable,
    remote_of,
    studies,
    transfer_failure,
)
from servers import HOST, S3Server, SSHServer, free_port, moto_s3, sshd

STUDY_ID = "digits"
SHARING = [sys.executable, "-m", "onepixel.workflow.sharing"]  # make push / make pull

# -- what DVC 3.67 (dvc-s3 3.3, dvc-ssh 4.3) printed on stderr, and the reason we print instead --------

S3_CLOSED_PUSH = """\
ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:9/onepixel/store/files/md5/b1/946ac92492d2347c6235b4d2611184"

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""
S3_CLOSED_PULL = """\
ERROR: failed to connect to s3 (onepixel/store/files/md5) - Could not connect to the endpoint URL: "http://127.0.0.1:9/onepixel/store/files/md5"
ERROR: failed to pull data from the cloud - 1 files failed to download
"""
S3_UNKNOWN_HOST_PUSH = """\
ERROR: unexpected error - Could not connect to the endpoint URL: "http://nosuchhost.invalid:9000/onepixel/store/files/md5/76/4efa883dda1e11db47671c4a3bbd9e"

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""
S3_WRONG_KEY_PUSH = """\
ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject operation: Forbidden

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""
S3_WRONG_KEY_PULL = """\
ERROR: failed to connect to s3 (onepixel/store/files/md5) - Forbidden: An error occurred (403) when calling the HeadObject operation: Forbidden
ERROR: failed to pull data from the cloud - 1 files failed to download
"""
S3_NO_BUCKET_PUSH = """\
ERROR: failed to transfer 'b1946ac92492d2347c6235b4d2611184' - The specified bucket does not exist: An error occurred (NoSuchBucket) when calling the PutObject operation: The specified bucket does not exist
ERROR: failed to push data to the cloud - 1 files failed to upload
"""
# a pull from a bucket that does not exist (or a remote that lacks the files): DVC finds nothing to fetch
MISSING_PULL = """\
WARNING: Some of the cache files do not exist neither locally nor on remote. Missing cache files:
md5: b1946ac92492d2347c6235b4d2611184
ERROR: failed to pull data from the cloud - Checkout failed for following targets:
a.txt
Is your cache up to date?
<https://error.dvc.org/missing-files>
"""
SSH_WRONG_KEY_PUSH = """\
ERROR: unexpected error - Permission denied for user root on host 127.0.0.1: Permission denied for user root on host 127.0.0.1

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""
SSH_WRONG_KEY_PULL = """\
ERROR: failed to connect to ssh (/tmp/rx/sshstore/files/md5) - Permission denied for user root on host 127.0.0.1: Permission denied for user root on host 127.0.0.1
ERROR: failed to pull data from the cloud - 1 files failed to download
"""
SSH_CLOSED_PUSH = """\
ERROR: unexpected error - [Errno 111] Connect call failed ('127.0.0.1', 9)

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""
SSH_CLOSED_PULL = """\
ERROR: failed to connect to ssh (/tmp/rx/sshstore/files/md5) - [Errno 111] Connect call failed ('127.0.0.1', 9)
ERROR: failed to pull data from the cloud - 1 files failed to download
"""
SSH_UNKNOWN_HOST_PUSH = """\
ERROR: unexpected error - [Errno -2] Name or service not known

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""

S3_URL = "s3://onepixel/store"
SSH_URL = "ssh://root@127.0.0.1:9/tmp/rx/sshstore"
CLOSED = "could not connect to endpoint http://127.0.0.1:9 (check the remote's endpointurl and that the server runs)"
DENIED = (
    "access denied (403 on HeadObject): check the remote's access_key_id and secret_access_key "
    "and the bucket's permissions"
)
REFUSED_KEY = (
    "authentication failed: permission denied for user root on 127.0.0.1 "
    "(is the public key of the remote's keyfile in the server's authorized_keys?)"
)


@pytest.mark.parametrize(
    ("stderr", "url", "reason"),
    [
        (S3_CLOSED_PUSH, S3_URL, CLOSED),
        (S3_CLOSED_PULL, S3_URL, CLOSED),
        (
            S3_UNKNOWN_HOST_PUSH,
            S3_URL,
            "could not connect to endpoint http://nosuchhost.invalid:9000 "
            "(check the remote's endpointurl and that the server runs)",
        ),
        (S3_WRONG_KEY_PUSH, S3_URL, DENIED),
        (S3_WRONG_KEY_PULL, S3_URL, DENIED),
        (S3_NO_BUCKET_PUSH, "s3://nobucket/store", "no such bucket 'nobucket'"),
        (
            MISSING_PULL,
            "s3://nobucket/store",
            "1 file neither in the local cache nor on the remote (not pushed yet? `make push` from the clone that made them)",
        ),
        (SSH_WRONG_KEY_PUSH, SSH_URL, REFUSED_KEY),
        (SSH_WRONG_KEY_PULL, SSH_URL, REFUSED_KEY),
        (SSH_CLOSED_PUSH, SSH_URL, "could not connect to 127.0.0.1:9 (connection refused)"),
        (SSH_CLOSED_PULL, SSH_URL, "could not connect to 127.0.0.1:9 (connection refused)"),
        (
            SSH_UNKNOWN_HOST_PUSH,
            "ssh://root@nosuchhost.invalid/tmp/x",
            "cannot resolve host 'nosuchhost.invalid' (name or service not known)",
        ),
        # anything else: DVC's last ERROR line without its prefixes
        (
            "ERROR: failed to push data to the cloud - config file error: remote 'x' doesn't exist\n",
            "",
            "config file error: remote 'x' doesn't exist",
        ),
        ("ERROR: unexpected error - " + "x" * 400 + "\n\nHaving any troubles? Hit us up\n", "", "x" * 297 + "..."),
    ],
)
def test_a_failed_transfer_is_one_reason_from_dvcs_stderr(stderr, url, reason):
    assert transfer_failure(stderr, url) == reason


def test_an_endpoint_where_nothing_listens_fails_at_once():
    closed = free_port()
    assert endpoint_unreachable(f"http://{HOST}:{closed}/") == (
        f"could not connect to endpoint http://{HOST}:{closed} (connection refused)"
    )
    assert endpoint_unreachable("https://nosuchhost.invalid:9000") == (
        "could not connect to endpoint https://nosuchhost.invalid:9000 "
        "(cannot resolve host 'nosuchhost.invalid': name or service not known)"
    )


def test_an_endpoint_that_answers_or_may_answer_is_left_to_dvc(monkeypatch):
    with socket.socket() as listening:
        listening.bind((HOST, 0))
        listening.listen()
        assert endpoint_unreachable(f"http://{HOST}:{listening.getsockname()[1]}") is None
    assert endpoint_unreachable("s3://bucket/path") is None  # not an HTTP endpoint
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")  # DVC (botocore) would go through it
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert endpoint_unreachable(f"http://{HOST}:{free_port()}") is None


# -- set-up: servers, clones, remotes ------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The tools' environment: a throw-away HOME (no global DVC config, ~/.aws or ~/.ssh of the
    caller), no AWS_* variables and no ssh-agent, so only the remotes' own settings count."""
    env = {key: value for key, value in tool_env().items() if not key.startswith("AWS_") and key != "SSH_AUTH_SOCK"}
    env["HOME"] = str(tmp_path_factory.mktemp("home"))
    return env


def _tool(args: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool in ``cwd`` with ``env``; with ``check``, fail the test with its output unless it succeeds."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _dvc(repo: Path, env: dict[str, str], *args: str) -> None:
    """``dvc args`` in ``repo``, which must succeed."""
    _tool([sys.executable, "-m", "dvc", *args], repo, env)


def _add_remote(repo: Path, env: dict[str, str], name: str, url: str, **settings: str) -> None:
    """The commands of docs/remotes.md: the remote and its settings in .dvc/config.local (not in git)."""
    _dvc(repo, env, "remote", "add", "--local", name, url)
    for key, value in settings.items():
        _dvc(repo, env, "remote", "modify", "--local", name, key, value)


def _write_remote(repo: Path, name: str, url: str, **settings: str) -> None:
    """The same settings as :func:`_add_remote`, written into .dvc/config.local at once (for the
    remotes that fail: saves a second of `dvc` start-up per setting)."""
    lines = [f"['remote \"{name}\"']", f"    url = {url}", *(f"    {key} = {value}" for key, value in settings.items())]
    with (repo / ".dvc" / "config.local").open("a") as config:
        config.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """The folder of this module's clones."""
    return tmp_path_factory.mktemp("remotes")


def _clone(study: Study, place: Path, name: str, env: dict[str, str]) -> Path:
    """A colleague's clean clone of the study's repository: git only, no DVC cache, no results."""
    target = place / name
    _tool(["git", "clone", "-q", str(study.repo), str(target)], place, env)
    return target


@pytest.fixture(scope="module")
def origin(study, place, env) -> Path:
    """The clone that pushes: a git clone of the study's repository with a copy of its DVC cache
    (what `dvc repro` left there); the study itself stays as it is."""
    repo = _clone(study, place, "origin", env)
    shutil.copytree(study.repo / ".dvc" / "cache", repo / ".dvc" / "cache", symlinks=True)
    return repo


@pytest.fixture(scope="module")
def s3(study) -> Iterator[S3Server]:
    """A moto S3 server with the bucket ``onepixel`` (after the study: its build takes minutes)."""
    with moto_s3("onepixel") as server:
        yield server


@pytest.fixture(scope="module")
def ssh(study, tmp_path_factory) -> Iterator[SSHServer]:
    """A throw-away sshd on 127.0.0.1 (after the study: its build takes minutes)."""
    with sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@dataclass(frozen=True)
class Pushed:
    """The study pushed from ``origin`` to the remote ``name``; ``failing``: remotes of the same
    kind that fail, each with its URL and the reason our push and pull print."""

    name: str
    url: str
    origin: Path
    push: subprocess.CompletedProcess[str]
    stored: list[str]  # the files on the remote, relative to its URL
    failing: dict[str, tuple[str, str]]


def _cached(repo: Path) -> list[str]:
    """The files of ``repo``'s DVC cache (its run cache aside), relative to the cache."""
    cache = repo / ".dvc" / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and "runs" not in p.parts)


@pytest.fixture(scope="module")
def s3_pushed(origin, s3, env) -> Pushed:
    """`make push STUDY=digits REMOTE=s3` from origin to the moto server."""
    url = f"s3://{s3.bucket}/study"
    keys = {"access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key}
    _add_remote(origin, env, "s3", url, endpointurl=s3.endpoint, **keys)
    closed = f"http://{HOST}:{free_port()}"
    _write_remote(origin, "s3-closed", url, endpointurl=closed, **keys)
    _write_remote(
        origin, "s3-wrong-key", url, endpointurl=s3.endpoint, access_key_id="AKIAWRONG", secret_access_key="x"
    )
    push = _tool([*SHARING, "push", "--study", STUDY_ID, "--remote", "s3"], origin, env)
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="study/").get("Contents", [])
    return Pushed(
        "s3",
        url,
        origin,
        push,
        sorted(item["Key"].removeprefix("study/") for item in listed),
        {
            "s3-closed": (
                url,
                re.escape(f"could not connect to endpoint {closed} (connection refused)"),
            ),
            "s3-wrong-key": (
                url,
                r"access denied \((403|InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied) on \w+\): check the "
                r"remote's access_key_id and secret_access_key and the bucket's permissions",
            ),
        },
    )


@pytest.fixture(scope="module")
def ssh_pushed(origin, ssh, place, env) -> Pushed:
    """`make push STUDY=digits REMOTE=ssh` from origin to the sshd."""
    store = place / "ssh-store"
    url = ssh.url(store)
    _add_remote(origin, env, "ssh", url, keyfile=str(ssh.key))
    closed = free_port()
    _write_remote(origin, "ssh-closed", ssh.url(store, closed), keyfile=str(ssh.key))
    _write_remote(origin, "ssh-wrong-key", url, keyfile=str(ssh.wrong_key))
    push = _tool([*SHARING, "push", "--study", STUDY_ID, "--remote", "ssh"], origin, env)
    return Pushed(
        "ssh",
        url,
        origin,
        push,
        sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()),
        {
            "ssh-closed": (
                ssh.url(store, closed),
                re.escape(f"could not connect to {HOST}:{closed} (connection refused)"),
            ),
            "ssh-wrong-key": (
                url,
                re.escape(
                    f"authentication failed: permission denied for user {ssh.user} on {HOST} "
                    "(is the public key of the remote's keyfile in the server's authorized_keys?)"
                ),
            ),
        },
    )


@dataclass(frozen=True)
class Pulled:
    """A colleague's clean clone after `make pull` from a remote."""

    repo: Path
    pull: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def s3_pulled(s3_pushed, s3, study, place, env) -> Pulled:
    """A clean clone with the S3 remote set up as docs/remotes.md says and made its default
    (``dvc remote default --local``), then `make pull` (no --remote)."""
    repo = _clone(study, place, "s3-colleague", env)
    _add_remote(
        repo,
        env,
        "s3",
        s3_pushed.url,
        endpointurl=s3.endpoint,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
    )
    _dvc(repo, env, "remote", "default", "--local", "s3")
    return Pulled(repo, _tool(SHARING, repo, env))


@pytest.fixture(scope="module")
def ssh_pulled(ssh_pushed, ssh, study, place, env) -> Pulled:
    """A clean clone with the SSH remote set up as docs/remotes.md says, then `make pull REMOTE=ssh`."""
    repo = _clone(study, place, "ssh-colleague", env)
    _add_remote(repo, env, "ssh", ssh_pushed.url, keyfile=str(ssh.key))
    return Pulled(repo, _tool([*SHARING, "--remote", "ssh"], repo, env))


def _versioned(repo: Path, cache: Path) -> dict[str, str]:
    """Path -> MD5 of every file DVC versions for the study in ``repo`` (dvc.lock's outs; the files
    of a directory from its manifest in ``cache``, or, for one that git stores (``cache: false``),
    from the directory itself)."""
    outs = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][f"{STAGE}@{STUDY_ID}"]["outs"]
    files = {}
    for out in outs:
        if not out["md5"].endswith(".dir"):
            files[out["path"]] = out["md5"]
            continue
        manifest = cache / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
        if manifest.is_file():
            listed = {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())}
        else:
            top = repo / out["path"]
            listed = {
                str(path.relative_to(top)): hashlib.md5(path.read_bytes()).hexdigest()
                for path in top.rglob("*")
                if path.is_file()
            }
        assert len(listed) == out["nfiles"], (out, listed)
        files.update({f"{out['path']}/{relpath}": md5 for relpath, md5 in listed.items()})
    return files


# -- push and pull --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "ssh"])
def test_push_puts_every_cached_file_of_the_study_on_the_remote(kind, request, study):
    pushed: Pushed = request.getfixturevalue(f"{kind}_pushed")
    assert re.fullmatch(rf"\d+ files pushed \(remote '{kind}', {re.escape(pushed.url)}\)\n", pushed.push.stdout), (
        pushed.push.stdout
    )
    assert pushed.push.stderr == ""
    assert pushed.stored and pushed.stored == _cached(pushed.origin)
    if kind == "ssh":
        assert "Accepted publickey for" in request.getfixturevalue("ssh").log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "ssh"])
def test_pull_from_the_remote_gives_the_same_files_and_nothing_to_do(kind, request, study, env):
    pushed: Pushed = request.getfixturevalue(f"{kind}_pushed")
    pulled: Pulled = request.getfixturevalue(f"{kind}_pulled")
    assert re.fullmatch(
        rf"\d+ files fetched.* \(remote '{kind}', {re.escape(pushed.url)}\); "
        rf"results of {STUDY_ID} marked up to date for Snakemake\n",
        pulled.pull.stdout,
    ), pulled.pull.stdout

    versioned = _versioned(study.repo, study.repo / ".dvc" / "cache")
    assert any(path.startswith(f"results/{STUDY_ID}/models/") for path in versioned), versioned
    for path, md5 in versioned.items():
        data = (pulled.repo / path).read_bytes()
        assert data == (study.repo / path).read_bytes(), path
        assert hashlib.md5(data).hexdigest() == md5, path

    config = studies(pulled.repo)[STUDY_ID]
    planned = _tool(["snakemake", "-n", "--configfile", config], pulled.repo, env)
    assert "Nothing to be done" in planned.stdout + planned.stderr, planned.stdout[-3000:]


# -- failures: one line naming the remote ----------------------------------------------------


@pytest.fixture(scope="module")
def bare(study, place, env) -> Path:
    """A clean clone with no DVC cache, for pulls that fail; it gets origin's remotes (a copy of its
    .dvc/config.local) before each pull."""
    return _clone(study, place, "bare", env)


FAILURES = [("s3", "s3-closed"), ("s3", "s3-wrong-key"), ("ssh", "ssh-closed"), ("ssh", "ssh-wrong-key")]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["push", "pull"])
@pytest.mark.parametrize(("kind", "remote"), FAILURES)
def test_a_failed_transfer_is_one_line_naming_the_remote(kind, remote, command, request, bare, env, monkeypatch):
    pushed: Pushed = request.getfixturevalue(f"{kind}_pushed")
    if remote == "s3-wrong-key":
        import moto.settings

        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks the keys
    if command == "push":
        repo = pushed.origin
    else:
        repo = bare
        shutil.copy(pushed.origin / ".dvc" / "config.local", bare / ".dvc" / "config.local")
    result = _tool([*SHARING, command, "--study", STUDY_ID, "--remote", remote], repo, env, check=False)

    url, reason = pushed.failing[remote]
    where = "to" if command == "push" else "from"
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    prefix = f"error: {command} {where} remote '{remote}' ({url}) failed: "
    assert lines[0].startswith(prefix), lines[0]
    assert re.fullmatch(reason, lines[0].removeprefix(prefix)), lines[0]
    if command == "pull":
        assert not (bare / "results" / STUDY_ID / "models").exists()


@pytest.mark.slow
def test_remote_of_resolves_the_default_and_names_the_remotes(tmp_path, env):
    _tool([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], tmp_path, env)
    _dvc(tmp_path, env, "remote", "add", "shared", "/srv/dvc")
    _dvc(tmp_path, env, "remote", "add", "--local", "-d", "box", "ssh://me:secret@example.invalid/srv/dvc")
    assert remote_of(tmp_path) == ("box", "ssh://me@example.invalid/srv/dvc")  # never the password
    assert remote_of(tmp_path, "shared") == ("shared", "/srv/dvc")
    with pytest.raises(SharingError, match=r"^no DVC remote named 'nope'; remotes: shared, box$"):
        remote_of(tmp_path, "nope")
