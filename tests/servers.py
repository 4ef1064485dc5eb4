"""Throw-away servers for DVC remotes in the tests: S3 (moto, in this process) and SSH (sshd on 127.0.0.1)."""

from __future__ import annotations

import getpass
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components import missing, need_module, need_programs
from slurm_cluster import free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server with one bucket; any access key is accepted unless moto's authentication is on."""

    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    def client(self) -> Any:
        """A boto3 S3 client of this server (boto3 has no type hints)."""
        import boto3

        session = boto3.session.Session(
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key, region_name="us-east-1"
        )
        return session.client("s3", endpoint_url=self.endpoint)


@contextmanager
def moto_s3(bucket: str) -> Iterator[S3Server]:
    """Run moto's S3 server on a free port of 127.0.0.1 in a thread of this process, with ``bucket``
    created; stopped on exit (also when the test fails). ``missing`` without moto[server] or dvc-s3."""
    need_module("moto.server", "'moto[server]'")
    need_module("boto3", "boto3")
    need_module("dvc_s3", "dvc-s3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(endpoint=f"http://{host}:{port}", bucket=bucket)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()


@dataclass(frozen=True)
class SSHServer:
    """A running sshd that accepts ``key`` (not ``wrong_key``) for ``user``, by public key only."""

    port: int
    user: str
    key: Path  # private key whose public half is in the server's authorized_keys
    wrong_key: Path  # a private key the server does not know
    log: Path  # sshd's own log (-e): connections, accepted and refused keys

    def url(self, path: Path, port: int | None = None) -> str:
        """The DVC remote URL of the absolute ``path`` on this server (or at another ``port``)."""
        return f"ssh://{self.user}@{HOST}:{port or self.port}{path}"


def sshd_config(folder: Path, port: int) -> str:
    """The config of a throw-away sshd: its own port, host key, pid file and authorized_keys in
    ``folder``; public keys only; sftp (what DVC uses) in-process."""
    return f"""\
ListenAddress {HOST}
Port {port}
HostKey {folder / "host_key"}
PidFile {folder / "sshd.pid"}
AuthorizedKeysFile {folder / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""


@contextmanager
def sshd(folder: Path) -> Iterator[SSHServer]:
    """Run ``sshd -D -e`` on a free port of 127.0.0.1 with keys and config in ``folder``; terminated
    (by its pid) on exit, also when the test fails. ``missing`` without OpenSSH or dvc-ssh."""
    programs = need_programs("sshd", "ssh-keygen", install="openssh-server openssh-client")
    need_module("dvc_ssh", "dvc-ssh")
    for name in ("host_key", "key", "wrong_key"):
        subprocess.run(
            [
                programs["ssh-keygen"],
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"onepixel-tests-{name}",
                "-f",
                folder / name,
            ],
            check=True,
            capture_output=True,
        )
    (folder / "authorized_keys").write_text((folder / "key.pub").read_text())
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    except OSError as exc:
        missing(f"sshd needs its privilege separation directory /run/sshd: {exc}")
    log = folder / "sshd.log"
    for _attempt in range(3):  # another process may take the free port before sshd binds it
        port = free_port()
        (folder / "sshd_config").write_text(sshd_config(folder, port))
        with log.open("w") as out:
            process = subprocess.Popen(
                [programs["sshd"], "-D", "-e", "-f", folder / "sshd_config"], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 15
            while "Server listening" not in log.read_text() and process.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start within 15 s: {log.read_text()[-2000:]}", pytrace=False)
                time.sleep(0.05)
            if process.poll() is None:
                yield SSHServer(port, getpass.getuser(), folder / "key", folder / "wrong_key", log)
                return
            if "Address already in use" not in log.read_text():
                pytest.fail(f"sshd exited with status {process.returncode}: {log.read_text()[-2000:]}", pytrace=False)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    pytest.fail(f"sshd found no free port in 3 attempts: {log.read_text()[-2000:]}", pytrace=False)
