"""Fit the SLURM profile to the cluster it submits to: job sizes its nodes can hold, and a job status command that works there.

``profiles/slurm`` evaluates :func:`probe` (its YTE ``__definitions__``) each time
Snakemake starts. Two things otherwise go wrong without a word:

- a job that asks for more CPUs (``threads``), memory or time than the largest node
  of its partition offers pends for ever (``Reason=PartitionConfig``). The profile
  caps ``threads`` (Snakemake's ``max-threads``), ``mem_mb`` and ``runtime`` to the
  partition's largest node and says so in one line;
- on a cluster without accounting storage (``AccountingStorageType=accounting_storage/none``)
  ``sacct`` fails, and the executor plugin, which asks ``sacct`` for job states by
  default, waits for ever. The profile then uses ``squeue``.

A partition the cluster does not have is one line, before any submission. Where no
SLURM controller answers (a dry run on a laptop, a test), nothing is changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: runs a SLURM command and gives its standard output, or None if it failed or is not installed
Runner = Callable[[Sequence[str]], "str | None"]

_TIMEOUT_S = 15


def run_slurm_command(args: Sequence[str]) -> str | None:
    """The standard output of a SLURM command, or None where it fails, hangs or is not installed."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@dataclass(frozen=True)
class Partition:
    """What the largest node of a SLURM partition offers one job."""

    name: str
    cpus: int
    mem_mb: int
    time_limit_min: int | None  # None: no limit

    def describe(self) -> str:
        limit = "none" if self.time_limit_min is None else f"{self.time_limit_min} min"
        return f"partition '{self.name}' (largest node: {self.cpus} CPUs, {self.mem_mb} MB; time limit {limit})"


def parse_time_limit(text: str) -> int | None:
    """Minutes of a SLURM time limit (``infinite``, ``30:00``, ``4:00:00``, ``2-00:00:00``); None if unlimited."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def parse_partitions(sinfo: str) -> dict[str, Partition]:
    """The partitions of ``sinfo -h -o '%P|%c|%m|%l'`` output, each with its largest node (one line per node group)."""
    found: dict[str, Partition] = {}
    for line in sinfo.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        name = fields[0].rstrip("*")
        cpus, mem_mb = int(re.sub(r"\D", "", fields[1]) or 0), int(re.sub(r"\D", "", fields[2]) or 0)
        seen = found.get(name)
        found[name] = Partition(
            name,
            max(cpus, seen.cpus if seen else 0),
            max(mem_mb, seen.mem_mb if seen else 0),
            parse_time_limit(fields[3]),
        )
    return found


def accounting_storage(scontrol_config: str) -> str | None:
    """``AccountingStorageType`` from ``scontrol show config`` output (None if it is not there)."""
    match = re.search(r"^AccountingStorageType\s*=\s*(\S+)", scontrol_config, re.MULTILINE)
    return match.group(1) if match else None


def status_command_for(storage: str | None) -> str | None:
    """The job status command that works with this accounting storage: ``squeue`` without one, else ``sacct``."""
    if storage is None:
        return None  # unknown cluster: the plugin's own choice
    return "squeue" if storage.endswith("/none") else "sacct"


@dataclass(frozen=True)
class Cluster:
    """The SLURM cluster the profile submits to, as far as its controller answered (see :func:`probe`)."""

    partitions: dict[str, Partition]
    status_command: str | None
    gpu_partition: str

    def max_threads(self) -> int | None:
        """The most threads a job may ask for: the CPUs of the GPU partition's largest node
        (the rules with ``threads: config["threads"]`` are GPU rules); None where unknown."""
        gpu = self.partitions.get(self.gpu_partition)
        return gpu.cpus if gpu else None

    def mem_mb(self, partition: str, wanted: int) -> int:
        """``wanted`` MB, or the memory of the partition's largest node if that is less."""
        known = self.partitions.get(partition)
        return min(wanted, known.mem_mb) if known and known.mem_mb else wanted

    def runtime(self, partition: str, wanted: int) -> int:
        """``wanted`` minutes, or the partition's time limit if that is less."""
        known = self.partitions.get(partition)
        limit = known.time_limit_min if known else None
        return wanted if limit is None else min(wanted, limit)


#: the environment variable with the seconds before the executor's first job status check
STATUS_CHECK_ENV = "ONEPIXEL_SLURM_STATUS_CHECK_S"


def status_check_seconds(default: int = 40) -> int:
    """``$ONEPIXEL_SLURM_STATUS_CHECK_S`` (a whole number of seconds >= 1), or ``default`` where unset;
    anything else stops with one line (exit status 2)."""
    text = os.environ.get(STATUS_CHECK_ENV, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        print(
            f"error: {STATUS_CHECK_ENV}={text!r}: must be a whole number of seconds >= 1 (default {default})",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2)
    return int(text)


def probe(
    cpu_partition: str,
    gpu_partition: str,
    run: Runner = run_slurm_command,
    announce: Callable[[str], None] | None = None,
) -> Cluster:
    """Ask the cluster (``sinfo``, ``scontrol``) what its partitions offer and whether it keeps accounting.

    Stops with one line (exit status 2) if the controller answers but does not have one of the
    two partitions. Says in one line what it adapted."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    listing = run(["sinfo", "-h", "-o", "%P|%c|%m|%l"])
    partitions = parse_partitions(listing) if listing else {}
    if not partitions:
        return Cluster({}, None, gpu_partition)
    for name, variable in (
        (cpu_partition, "ONEPIXEL_SLURM_PARTITION"),
        (gpu_partition, "ONEPIXEL_SLURM_GPU_PARTITION"),
    ):
        if name not in partitions:
            print(
                f"error: profiles/slurm: partition '{name}' is not on this cluster (it has: "
                f"{', '.join(sorted(partitions))}); set {variable}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2)
    config = run(["scontrol", "show", "config"])
    storage = accounting_storage(config) if config else None
    cluster = Cluster(partitions, status_command_for(storage), gpu_partition)
    status = f"; job states from {cluster.status_command}" if cluster.status_command else ""
    if storage and cluster.status_command == "squeue":
        status += " (no accounting storage)"
    say(f"profiles/slurm: jobs fit {partitions[gpu_partition].describe()}{status}")
    return cluster
