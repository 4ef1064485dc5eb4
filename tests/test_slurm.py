"""profiles/slurm against a real single-node SLURM cluster (tests/slurm_cluster.py): munged,
slurmctld and slurmd started for this module, jobs submitted by Snakemake's SLURM executor.

- the smoke study through ``dvc repro`` with ``SNAKEMAKE_PROFILE=profiles/slurm``: every
  cluster job ran through sbatch, GPU rules with ``gres/gpu=1`` and CPU rules without,
  no job asked for more CPUs than the node has, and the attacks equal the local run's;
- a job cancelled with ``scancel`` in the middle of an attack: the finished shard is kept,
  the rerun gives the same result as an uninterrupted local run;
- a partition the cluster does not have is one line before any submission.

How the profile fits itself to the cluster (threads, memory, time, status command) is
also checked on ``sinfo``/``scontrol`` texts of clusters with and without accounting."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import xarray as xr
import yaml

from components import artefacts, missing, need_programs
from conftest import BIN, Study, check_tool, git_commit_all, run_tool, tool_env
from helpers import _assert_bit_identical
from onepixel.models import load_checkpoint
from onepixel.workflow.slurm import (
    Cluster,
    Partition,
    accounting_storage,
    parse_partitions,
    parse_time_limit,
    probe,
    status_check_seconds,
    status_command_for,
)
from slurm_cluster import PACKAGES, PROGRAMS, LocalSlurm

GPU_RULES = {"train", "select_images", "attack", "capture", "locality", "vulnerability"}
CPU_RULES = {"propagation"}
#: attributes that record how a run was configured and split (another model list, attack.shards), not its result
SPLIT_ATTRS = ("shards", "shard", "config_digest", "study_config")


# -- the profile's fit to a cluster, on the texts SLURM prints ---------------------------

SINFO = "cpu*|64|256000|2-00:00:00\ncpu*|128|512000|2-00:00:00\ngpu|32|192000|4:00:00\n"


def test_partitions_are_their_largest_nodes():
    parts = parse_partitions(SINFO)
    assert parts == {
        "cpu": Partition("cpu", 128, 512000, 2 * 24 * 60),
        "gpu": Partition("gpu", 32, 192000, 240),
    }


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("infinite", None), ("UNLIMITED", None), ("30", 30), ("30:00", 30), ("4:00:00", 240), ("1-12:00:00", 2160)],
)
def test_time_limits_in_minutes(text, minutes):
    assert parse_time_limit(text) == minutes


def test_status_command_with_and_without_accounting():
    without = "AccountingStorageType   = accounting_storage/none\nMinJobAge = 300 sec\n"
    with_dbd = "AccountingStorageHost = db1\nAccountingStorageType   = accounting_storage/slurmdbd\n"
    assert status_command_for(accounting_storage(without)) == "squeue"
    assert status_command_for(accounting_storage(with_dbd)) == "sacct"
    assert status_command_for(accounting_storage("MinJobAge = 300 sec")) is None  # unknown: the plugin decides


def test_jobs_are_capped_to_what_the_partitions_offer():
    cluster = Cluster(parse_partitions(SINFO), "sacct", gpu_partition="gpu")
    assert cluster.max_threads() == 32
    assert cluster.mem_mb("gpu", 16000) == 16000 and cluster.mem_mb("gpu", 500000) == 192000
    assert cluster.runtime("gpu", 60) == 60 and cluster.runtime("gpu", 600) == 240
    assert cluster.runtime("cpu", 60 * 24 * 7) == 2 * 24 * 60


def test_no_controller_changes_nothing():
    cluster = probe("cpu", "gpu", run=lambda args: None)
    assert cluster.max_threads() is None and cluster.status_command is None
    assert cluster.mem_mb("gpu", 16000) == 16000 and cluster.runtime("gpu", 240) == 240


def test_an_unknown_partition_is_one_line(capsys):
    answers = {"sinfo": SINFO, "scontrol": "AccountingStorageType = accounting_storage/none\n"}
    with pytest.raises(SystemExit) as stop:
        probe("cpu", "CHANGE_ME_gpu_partition", run=lambda args: answers[args[0]])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: profiles/slurm: partition 'CHANGE_ME_gpu_partition' is not on this cluster "
        "(it has: cpu, gpu); set ONEPIXEL_SLURM_GPU_PARTITION"
    ]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "2.5"])
def test_a_bad_status_check_interval_is_one_line(value, monkeypatch, capsys):
    monkeypatch.setenv("ONEPIXEL_SLURM_STATUS_CHECK_S", value)
    with pytest.raises(SystemExit) as stop:
        status_check_seconds()
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: ONEPIXEL_SLURM_STATUS_CHECK_S={value!r}: must be a whole number of seconds >= 1 (default 40)"
    ]


def test_the_status_check_interval_defaults_to_the_plugins(monkeypatch):
    monkeypatch.delenv("ONEPIXEL_SLURM_STATUS_CHECK_S", raising=False)
    assert status_check_seconds() == 40
    monkeypatch.setenv("ONEPIXEL_SLURM_STATUS_CHECK_S", "3")
    assert status_check_seconds() == 3


# -- the real cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        missing("a local SLURM cluster needs root (slurmd runs the jobs)")
    need_programs(*PROGRAMS, "setpriv", install=PACKAGES)
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm-cluster"))
    slurm.start()
    try:
        yield slurm
    finally:
        slurm.stop()
        shutil.copytree(slurm.root / "log", artefacts("slurm") / "daemons", dirs_exist_ok=True)


def _env(cluster: LocalSlurm, **extra: str) -> dict[str, str]:
    """What a user on the login node exports: the cluster, the profile, a short first status check."""
    return {
        **cluster.env,
        "PATH": f"{cluster.bin}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SNAKEMAKE_PROFILE": "profiles/slurm",
        "ONEPIXEL_SLURM_STATUS_CHECK_S": "2",
        **extra,
    }


def _jobs(cluster: LocalSlurm) -> list[dict[str, str]]:
    """Every job the controller remembers (MinJobAge=3600), as scontrol's key=value fields."""
    shown = cluster.command("scontrol", "show", "job", "-d", "-o")
    assert shown.returncode == 0, shown.stderr
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in shown.stdout.splitlines() if "JobId=" in line]


def _rule(job: dict[str, str]) -> str:
    return re.match(r"rule_(\w+?)_wildcards", job["Comment"]).group(1)


#: the models of the study run through SLURM: LeNet only, as each cluster job costs about half a minute here
#: (a snakemake in the job, srun, the stage), whatever it computes
MODELS = ["lenet"]


@pytest.fixture(scope="module")
def slurm_study(study: Study, cluster: LocalSlurm, tmp_path_factory) -> dict:
    """A clean clone of the study (LeNet only), then `dvc repro study@digits` with SNAKEMAKE_PROFILE=profiles/slurm."""
    repo = tmp_path_factory.mktemp("slurm-study") / "repo"
    check_tool(["git", "clone", "-q", str(study.repo), str(repo)], study.root)
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    # without the further attacks: each of their jobs is another cluster job, and SLURM is what is tested here
    slurm_config = {**config, "models": MODELS, "attacks": {}}
    (repo / "config/config.yaml").write_text(yaml.safe_dump(slurm_config, sort_keys=False))
    git_commit_all(repo, "the study's LeNet, through SLURM")
    before = {job["JobId"] for job in _jobs(cluster)}
    start = time.monotonic()
    repro = run_tool(["dvc", "repro", "study@digits"], repo, 1200, **_env(cluster))
    seconds = time.monotonic() - start
    (artefacts("slurm") / "dvc-repro.log").write_text(repro.stdout + repro.stderr)
    assert repro.returncode == 0, (repro.stdout + repro.stderr)[-4000:]
    jobs = [job for job in _jobs(cluster) if job["JobId"] not in before]
    return {"repo": repo, "jobs": jobs, "seconds": seconds, "log": repro.stdout + repro.stderr}


@pytest.mark.slow
def test_dvc_repro_runs_every_cluster_job_through_slurm(slurm_study):
    rules = sorted(_rule(job) for job in slurm_study["jobs"])
    assert rules == sorted(rule for rule in GPU_RULES | CPU_RULES for _ in MODELS), rules
    assert all(job["JobState"] == "COMPLETED" for job in slurm_study["jobs"]), slurm_study["jobs"]
    assert slurm_study["seconds"] < 900


@pytest.mark.slow
def test_gpu_rules_got_one_gpu_and_cpu_rules_none(slurm_study):
    for job in slurm_study["jobs"]:
        rule, gres = _rule(job), job.get("TresPerJob", "")
        if rule in GPU_RULES:
            assert gres in ("gres:gpu:1", "gres/gpu:1", "gres/gpu=1"), (rule, job)
            assert job["Partition"] == "gpu", (rule, job["Partition"])
        else:
            assert "gpu" not in gres, (rule, job)
            assert job["Partition"] == "cpu", (rule, job["Partition"])


@pytest.mark.slow
def test_no_job_asks_for_more_cpus_than_the_node_has(slurm_study, cluster, study):
    assert study.config["threads"] > cluster.cpus  # the default threads: 4 would pend for ever here
    cpus = {_rule(job): int(job["NumCPUs"]) for job in slurm_study["jobs"]}
    assert max(cpus.values()) <= cluster.cpus, cpus
    assert cpus["attack"] == cluster.cpus  # capped, not dropped to 1
    assert f"largest node: {cluster.cpus} CPUs" in slurm_study["log"]
    assert "job states from squeue (no accounting storage)" in slurm_study["log"]


@pytest.mark.slow
def test_models_and_attacks_through_slurm_equal_the_local_run(slurm_study, study):
    for model in MODELS:
        local, _ = load_checkpoint(study.results / "models" / f"{model}.pt")
        remote, _ = load_checkpoint(slurm_study["repo"] / "results/digits/models" / f"{model}.pt")
        for (name, a), (_, b) in zip(local.state_dict().items(), remote.state_dict().items(), strict=True):
            assert torch.equal(a, b), (model, name)
        name = f"attack/{model}.nc"
        with (
            xr.open_dataset(study.results / name) as here,
            xr.open_dataset(slurm_study["repo"] / "results/digits" / name) as there,
        ):
            # the checkpoints' own bytes differ: they record the git commit they were trained at
            ignored = (*SPLIT_ATTRS, "model_sha256")
            _assert_bit_identical(_without(here.load(), *ignored), _without(there.load(), *ignored), name)
    check = check_tool(["dvc", "status", "study@digits"], slurm_study["repo"])
    assert "up to date" in check.stdout, check.stdout


def _without(ds: xr.Dataset, *attrs: str) -> xr.Dataset:
    """``ds`` without the attributes ``attrs``."""
    out = ds.copy()
    out.attrs = {key: value for key, value in ds.attrs.items() if key not in attrs}
    return out


# a longer attack than the smoke study's, so that a shard is still running when it is cancelled: targeted
# (every other class of each image), which LeNet mostly resists, so most attacks run every generation
ATTACK = "attack={'shards': 2, 'targeted': true, 'generations': 300}"
LOCAL_ATTACK = "attack={'shards': 1, 'targeted': true, 'generations': 300}"


def _shards(repo: Path, model: str) -> list[Path]:
    return sorted((repo / "results/digits/attack" / model).glob("shard_*-of-2.nc"))


@pytest.mark.slow
def test_a_cancelled_attack_job_keeps_its_finished_shard_and_the_rerun_equals_a_local_run(
    slurm_study, cluster, tmp_path
):
    model = MODELS[0]
    target = f"results/digits/attack/{model}.nc"
    # the local reference: the same attack, uninterrupted, one shard, on this machine
    local = tmp_path / "local"
    shutil.copytree(slurm_study["repo"], local, symlinks=True)
    check_tool(["snakemake", "--cores", str(cluster.cpus), target, "--config", LOCAL_ATTACK], local)
    repo = slurm_study["repo"]
    command = ["snakemake", target, "--retries", "0", "--config", ATTACK]
    env = tool_env(**_env(cluster, ONEPIXEL_PROGRESS_S="1"))
    run = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def log_of(shard: int) -> str:
        path = repo / "results/digits/logs" / f"attack_{model}_shard_{shard}-of-2.log"
        return path.read_text() if path.exists() else ""

    try:
        deadline = time.monotonic() + 600
        # one shard finished (SLURM may start either first), the other running and past its first
        # progress line: in the middle of its attack
        while True:
            assert run.poll() is None, run.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no shard was ever running while the other had finished"
            done = _shards(repo, model)
            if len(done) == 1:
                other = 1 - int(done[0].name.split("_")[1].split("-")[0])
                running = [
                    job
                    for job in _jobs(cluster)
                    if job["JobState"] == "RUNNING" and job["Comment"] == f"rule_attack_wildcards_{model}_{other}"
                ]
                if running and "onepixel.progress" in log_of(other):  # the attack loop began
                    break
            time.sleep(0.5)
        cancelled = cluster.command("scancel", running[0]["JobId"])
        assert cancelled.returncode == 0, cancelled.stderr
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    (artefacts("slurm") / "scancel.log").write_text(output)
    assert run.returncode != 0, output[-3000:]
    assert "CANCELLED" in output, output[-3000:]
    (finished,) = _shards(repo, model)
    kept = finished.stat().st_mtime_ns
    rerun = check_tool(command, repo, **_env(cluster))
    (artefacts("slurm") / "rerun.log").write_text(rerun.stdout + rerun.stderr)
    assert finished.stat().st_mtime_ns == kept  # not attacked again
    jobs = re.findall(r"rule attack:.*?wildcards: (model=\w+, shard=\d)", rerun.stdout + rerun.stderr, re.DOTALL)
    assert jobs == [f"model={model}, shard={other}"], jobs  # only the cancelled shard ran again
    with xr.open_dataset(local / target) as one, xr.open_dataset(repo / target) as merged:
        _assert_bit_identical(_without(one.load(), *SPLIT_ATTRS), _without(merged.load(), *SPLIT_ATTRS), target)


@pytest.mark.slow
def test_a_partition_the_cluster_lacks_is_one_line_before_any_submission(slurm_study, cluster):
    before = len(_jobs(cluster))
    result = run_tool(
        ["snakemake", "--forceall", "results/digits/models/lenet.pt"],
        slurm_study["repo"],
        120,
        **_env(cluster, ONEPIXEL_SLURM_GPU_PARTITION="gpu-a100"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: profiles/slurm: partition 'gpu-a100' is not on this cluster (it has: cpu, gpu); "
        "set ONEPIXEL_SLURM_GPU_PARTITION"
    )
    assert len(_jobs(cluster)) == before


@pytest.mark.slow
def test_a_cluster_stops_exactly_the_processes_it_started(cluster, tmp_path):
    other = LocalSlurm(tmp_path / "other").start()
    pids = {name: process.pid for name, process in other.processes.items()}
    assert set(pids) == {"munged", "slurmctld", "slurmd"}
    assert other.command("sinfo", "-h", "-o", "%P").stdout.split() == ["cpu*", "gpu"]
    other.stop()
    assert not [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
    # the module's cluster, whose daemons are the same programs, still runs
    assert all(process.poll() is None for process in cluster.processes.values())
    assert set(cluster.command("sinfo", "-h", "-o", "%T").stdout.split()) == {"idle"}
