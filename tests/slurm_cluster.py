"""A throw-away single-node SLURM cluster on this machine, for the tests and for users who want to try profiles/slurm.

It writes its own configuration under a folder of its own (``slurm.conf`` with a CPU
partition ``cpu`` and a GPU partition ``gpu``; ``gres.conf`` declares one GPU on
``/dev/null``, so ``--gpus=1`` jobs schedule on a machine without one), starts
``munged`` (as the ``munge`` user, with its own key and socket), ``slurmctld`` and
``slurmd`` in the foreground, waits until the node is idle, and stops exactly the
processes it started, by PID (after cancelling the jobs still queued). Nothing of
the machine's own SLURM or munge set-up is used or changed. Needs root (slurmd runs
the jobs) and Debian's ``slurmctld slurmd slurm-client munge`` packages.

As a script::

    python tests/slurm_cluster.py up /tmp/my-slurm > /tmp/my-slurm.env   # the variables to export
    . /tmp/my-slurm.env
    SNAKEMAKE_PROFILE=profiles/slurm snakemake --configfile config/test.yaml
    python tests/slurm_cluster.py down /tmp/my-slurm

In Python (what ``tests/test_slurm.py`` does)::

    with LocalSlurm(folder) as cluster:
        subprocess.run(["sinfo"], env={**os.environ, **cluster.env})
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
PACKAGES = "slurmctld slurmd slurm-client munge"
_SBIN = os.pathsep.join(filter(None, (os.environ.get("PATH"), "/usr/sbin", "/sbin")))


def program(name: str) -> str:
    """The full path of a SLURM or munge program (they live in /usr/sbin, often not on a user's PATH)."""
    path = shutil.which(name, path=_SBIN)
    if path is None:
        raise FileNotFoundError(f"{name} not installed (Debian: apt-get install {PACKAGES})")
    return path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (just now): for a server, or as a closed port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _memory_mb() -> int:
    """80 % of this machine's memory (slurmd refuses a node whose configured memory it does not have)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.8)
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """A single-node SLURM cluster (partitions ``cpu`` and ``gpu``, one GRES GPU) under ``root``.

    ``cpus``: CPUs the node offers (default: this machine's). ``env``: the variables that point
    SLURM's commands and profiles/slurm at it."""

    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = Path(root)
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._munge_dir: Path | None = None

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def bin(self) -> Path:
        """Put first on PATH: an ``srun`` that finds this cluster from inside a job (see :meth:`write_config`)."""
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """SLURM_CONF and the partitions for profiles/slurm (PATH: prepend :attr:`bin`)."""
        return {
            "SLURM_CONF": str(self.conf),
            "ONEPIXEL_SLURM_PARTITION": "cpu",
            "ONEPIXEL_SLURM_GPU_PARTITION": "gpu",
        }

    def command(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (``sinfo``, ``squeue``, ``scontrol`` ...) against this cluster."""
        return subprocess.run(
            [program(args[0]), *args[1:]],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- configuration ------------------------------------------------------------------

    def _write_munge_key(self) -> Path:
        """A munge key and socket folder of their own, which the ``munge`` user can reach
        (munged refuses a socket folder others cannot enter, and a key others can read)."""
        munge = pwd.getpwnam("munge")
        self._munge_dir = Path(tempfile.mkdtemp(prefix="onepixel-munge-"))
        private = self._munge_dir / "private"
        private.mkdir()
        key = private / "munge.key"
        key.write_bytes(os.urandom(1024))
        for path, mode in ((self._munge_dir, 0o755), (private, 0o700), (key, 0o600)):
            os.chown(path, munge.pw_uid, munge.pw_gid)
            path.chmod(mode)
        return self._munge_dir

    def write_config(self) -> None:
        munge = self._write_munge_key()
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        settings = {
            "ClusterName": "onepixel-test",
            "SlurmctldHost": "localhost(127.0.0.1)",
            "SlurmctldPort": free_port(),
            "SlurmdPort": free_port(),
            "SlurmUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={munge / 'munge.socket'}",
            "CredType": "cred/munge",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.root / "log" / "slurmctld.log",
            "SlurmdLogFile": self.root / "log" / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "MpiDefault": "none",
            "MailProg": shutil.which("true") or "/bin/true",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            "GresTypes": "gpu",
            "AccountingStorageType": "accounting_storage/none",
            "DefMemPerCPU": 1000,
            "MinJobAge": 3600,  # finished jobs stay visible to scontrol (and squeue's status checks)
            "ReturnToService": 2,
            "SchedulerParameters": "sched_interval=2",
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines += [
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} Gres=gpu:1 State=UNKNOWN",
            "PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.root / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n")
        # Inside a job the executor's jobstep plugin starts `srun` without the SLURM_* variables,
        # SLURM_CONF included, so an srun there finds only /etc/slurm/slurm.conf; this one finds
        # this cluster (a cluster of its own folder only: a real one has /etc/slurm/slurm.conf).
        self.bin.mkdir(exist_ok=True)
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{program("srun")}" "$@"\n')
        srun.chmod(0o755)

    # -- processes ------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], detach: bool) -> None:
        with open(self.root / "log" / f"{name}.out", "ab") as log:  # the daemon keeps its own copy
            self.processes[name] = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=detach,
            )

    def start(self, timeout: float = 60, detach: bool = False) -> LocalSlurm:
        """Write the configuration, start the daemons and wait until the node is idle.
        ``detach``: the daemons outlive this process (the script's ``up``)."""
        if os.geteuid() != 0:
            raise PermissionError("a local SLURM cluster needs root (slurmd runs the jobs as their users)")
        for name in PROGRAMS:
            program(name)
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        assert self._munge_dir is not None
        munge, private = self._munge_dir, self._munge_dir / "private"
        try:
            self._start(
                "munged",
                [
                    shutil.which("setpriv") or "setpriv",
                    "--reuid=munge",
                    "--regid=munge",
                    "--clear-groups",
                    program("munged"),
                    "--foreground",
                    f"--key-file={private / 'munge.key'}",
                    f"--socket={munge / 'munge.socket'}",
                    f"--pid-file={private / 'munged.pid'}",
                    f"--log-file={private / 'munged.log'}",
                    f"--seed-file={private / 'munged.seed'}",
                ],
                detach,
            )
            self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged to create its socket")
            self._start("slurmctld", [program("slurmctld"), "-D", "-f", str(self.conf)], detach)
            self._start("slurmd", [program("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)], detach)
            self._wait(self._node_idle, timeout, "the node to become idle")
        except BaseException:
            self.stop()
            raise
        (self.root / "pids.json").write_text(json.dumps({name: p.pid for name, p in self.processes.items()}))
        return self

    def _node_idle(self) -> bool:
        state = self.command("sinfo", "-h", "-n", "localhost", "-o", "%T", timeout=10)
        return state.returncode == 0 and "idle" in state.stdout.split()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
                    for path in sorted((self.root / "log").glob("*"))
                )
                why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:.0f} s"
                raise RuntimeError(f"local SLURM: waiting for {what}: {why}\n{logs}")
            time.sleep(0.2)

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job of the cluster and wait (bounded) until none runs."""
        if self.processes.get("slurmctld") is None or self.processes["slurmctld"].poll() is not None:
            return
        self.command("scancel", "--full", "--user=root", timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.command("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i", timeout=10)
            if queue.returncode != 0 or not queue.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, then stop exactly the daemons started here (slurmd, slurmctld, munged), by PID."""
        try:
            self.cancel_all()
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                process = self.processes.pop(name, None)
                if process is not None:
                    _terminate(process.pid, process)
            if self._munge_dir is not None:
                shutil.rmtree(self._munge_dir, ignore_errors=True)
                self._munge_dir = None

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(pid: int, process: subprocess.Popen[bytes] | None = None, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, to this one process."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None and not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
        if process is not None:
            process.wait(5)
    except ProcessLookupError:
        pass


def _down(root: Path) -> None:
    """Stop the daemons a detached ``up`` started in ``root`` (checked to be those programs)."""
    record = root / "pids.json"
    if not record.exists():
        raise SystemExit(f"error: {record}: no cluster started there (no pids.json)")
    cluster = LocalSlurm(root)
    cluster.command("scancel", "--full", "--user=root", timeout=10)
    for name, pid in reversed(list(json.loads(record.read_text()).items())):
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and name.encode() in cmdline.read_bytes():
            _terminate(pid)
    for munge_dir in Path(tempfile.gettempdir()).glob("onepixel-munge-*"):
        if str(munge_dir) in cluster.conf.read_text():
            shutil.rmtree(munge_dir, ignore_errors=True)
    record.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("folder", type=Path, help="where the configuration, state and logs go")
    parser.add_argument("--cpus", type=int, help="CPUs of the node (default: this machine's)")
    args = parser.parse_args(argv)
    if args.action == "down":
        _down(args.folder)
        return
    cluster = LocalSlurm(args.folder.resolve(), args.cpus).start(detach=True)
    print(f"export PATH={cluster.bin}:$PATH")
    for key, value in cluster.env.items():
        print(f"export {key}={value}")
    print(f"# stop it with: python {os.path.relpath(__file__)} down {args.folder}")


if __name__ == "__main__":
    main()
