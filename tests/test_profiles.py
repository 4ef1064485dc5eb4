"""Snakemake profiles: profiles/default on a workstation, profiles/slurm on a cluster.

How Snakemake reads the profiles is checked with its own argument parser; the
sbatch calls of the SLURM executor plugin are checked against stand-ins for the
SLURM commands that record how they are called (no SLURM daemon runs here)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, REPO, Study, check_tool, run_tool

GPU_RULES = ("train", "select_images", "attack", "capture", "locality", "vulnerability")

_PARSE = """
import json, sys
from snakemake.cli import parse_args
_, args = parse_args(sys.argv[1:])
print(json.dumps({"cores": args.cores, "jobs": args.jobs, "executor": args.executor,
                  "resources": {k: str(v.value) for k, v in (args.resources or {}).items()},
                  "default_resources": sorted(args.default_resources or {}),
                  "set_resources": {rule: sorted(res) for rule, res in (args.set_resources or {}).items()}}))
"""


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("profiles")
    for name in ("workflow", "config", "src", "profiles"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _settings(repo: Path, *args: str, **env: str) -> dict:
    """The settings Snakemake takes from its command line and profiles, run from ``repo``."""
    result = check_tool([sys.executable, "-c", _PARSE, *args], repo, **env)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_default_profile_runs_on_all_cores_with_one_gpu_job_at_a_time(workflow_copy):
    settings = _settings(workflow_copy, "-n")
    assert settings["executor"] in (None, "local")
    assert settings["resources"] == {"gpu": "1"}
    assert settings["cores"] >= 1  # "all", resolved to this machine's cores
    assert _settings(workflow_copy, "-n", SNAKEMAKE_PROFILE="none") == settings
    # a command-line option wins over the profile
    assert _settings(workflow_copy, "-n", "--resources", "gpu=2")["resources"] == {"gpu": "2"}


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
@pytest.mark.parametrize("selection", [{"SNAKEMAKE_PROFILE": "profiles/slurm"}, "--workflow-profile"])
def test_slurm_profile_selected_by_environment_or_workflow_profile(workflow_copy, selection):
    args, env = (["--workflow-profile", "profiles/slurm"], {}) if selection == "--workflow-profile" else ([], selection)
    settings = _settings(workflow_copy, "-n", *args, **env)
    assert settings["executor"] == "slurm"
    assert settings["jobs"] == 100
    # no cap of one GPU job for the whole cluster from profiles/default
    assert settings["resources"] == {}
    assert {"slurm_account", "slurm_partition", "runtime", "mem_mb"} <= set(settings["default_resources"])
    for rule in GPU_RULES:
        assert {"gpu", "slurm_partition"} <= set(settings["set_resources"][rule]), rule


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_slurm_dry_run_plans_gpu_jobs_on_the_gpu_partition(workflow_copy):
    result = check_tool(
        ["snakemake", "-n", "--forceall"],
        workflow_copy,
        SNAKEMAKE_PROFILE="profiles/slurm",
        ONEPIXEL_SLURM_ACCOUNT="proj42",
    )
    text = result.stdout + result.stderr
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in text
    jobs = text.split("\nrule ")[1:] + text.split("\nlocalrule ")[1:]
    resources = {job.split(":")[0]: job.split("resources: ")[1].split("\n")[0] for job in jobs if "resources: " in job}
    for rule in ("train", "attack", "capture", "locality"):
        assert "slurm_partition=CHANGE_ME_gpu_partition" in resources[rule], resources[rule]
        assert "gpu=1" in resources[rule] and "slurm_account=proj42" in resources[rule]
    assert "slurm_partition=CHANGE_ME_cpu_partition" in resources["propagation"]
    assert "gpu=" not in resources["propagation"]


# -- the sbatch calls ---------------------------------------------------------------------

FAKE_SLURM = """#!/bin/sh
# Stand-in for a SLURM command: record the call (NUL-separated, one call per line), answer like SLURM.
printf '%s\\0' "$(basename "$0")" "$@" >> "$FAKE_SLURM_LOG"
printf '\\n' >> "$FAKE_SLURM_LOG"
case "$(basename "$0")" in
  sbatch) echo "sbatch: error: this test only records the submission" >&2; exit 1 ;;
  sacctmgr|sshare) echo "proj42" ;;
  scontrol) echo "MaxArraySize = 1001"; echo "MinJobAge = 300" ;;
esac
exit 0
"""


def _fake_slurm(where: Path) -> Path:
    where.mkdir()
    tool = where / "slurm-tool"
    tool.write_text(FAKE_SLURM)
    tool.chmod(0o755)
    for name in ("sbatch", "sacct", "squeue", "sinfo", "scontrol", "sacctmgr", "sshare", "scancel", "srun"):
        (where / name).symlink_to(tool)
    return where


def _calls(log: Path, command: str) -> list[list[str]]:
    records = [line.split("\0")[:-1] for line in log.read_text().split("\n") if line]
    return [record[1:] for record in records if record[0] == command]


def _by_rule(calls: list[list[str]]) -> dict[str, list[str]]:
    """sbatch argument lists by the job's rule and wildcards (from --comment rule_<rule>_wildcards_<model>)."""
    return {args[args.index("--comment") + 1]: args for args in calls}


@pytest.fixture(scope="module")
def sbatch_calls(study: Study, tmp_path_factory) -> dict:
    """Run a copy of the finished smoke-test study with profiles/slurm against the stand-ins,
    forcing one job of each kind; sbatch records each submission and refuses it."""
    root = tmp_path_factory.mktemp("slurm")
    repo = root / "repo"
    shutil.copytree(study.repo, repo, symlinks=True)
    bin_dir = _fake_slurm(root / "bin")
    log = root / "calls.log"
    env = {
        "PATH": f"{bin_dir}:{BIN}:/usr/bin:/bin",
        "FAKE_SLURM_LOG": str(log),
        "SNAKEMAKE_PROFILE": "profiles/slurm",
        # every submission fails at once here: no need for the plugin's 40 s before its first status check
        "ONEPIXEL_SLURM_STATUS_CHECK_S": "1",
        "ONEPIXEL_SLURM_ACCOUNT": "proj42",
        "ONEPIXEL_SLURM_PARTITION": "cpuq",
        "ONEPIXEL_SLURM_GPU_PARTITION": "gpuq",
    }
    results = "results/digits"
    before = (repo / results / "data/test.nc").stat().st_mtime_ns
    submitted, outputs = {}, []

    def run(name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        done = len(_calls(log, "sbatch")) if log.exists() else 0
        result = run_tool(args, repo, 600, **env)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode != 0, outputs[-1][-3000:]  # every submission is refused
        submitted[name] = _by_rule(_calls(log, "sbatch")[done:])
        return result

    # through DVC: missing outputs make `dvc repro` run its stage, `snakemake`, with the profile
    # from the environment; of the jobs it needs (propagation, then the local summary), the
    # first is a CPU cluster job
    (repo / results / "propagation" / "lenet.nc").unlink()
    (repo / results / "summary.json").unlink()
    run("dvc repro", ["dvc", "repro", "study@digits"])
    # independent GPU jobs (their inputs are up to date), forced, one run each: after a refused
    # submission the executor may end the run before it submits the other jobs of its batch
    forced = ["snakemake", "--keep-going", "--retries", "0", "--force"]
    gpu_jobs: dict[str, list[str]] = {}
    for target in (
        f"{results}/attack/lenet/shard_0-of-1.nc",
        f"{results}/cubes/resnet20",
        f"{results}/locality/resnet20.nc",
    ):
        run("gpu rules", [*forced, target])
        gpu_jobs.update(submitted["gpu rules"])
    submitted["gpu rules"] = gpu_jobs
    # prepare_data (a localrule) runs here, then the train job that needs it is submitted
    run("local rule", [*forced, f"{results}/data/test.nc", f"{results}/models/lenet.pt"])
    return {
        "repo": repo,
        "runs": submitted,
        "dvc": outputs[0],
        "log": "\n".join(outputs),
        "sbatch": {job: args for calls in submitted.values() for job, args in calls.items()},
        "prepared_locally": (repo / results / "data/test.nc").stat().st_mtime_ns > before,
        "threads": study.config["threads"],
    }


def _option(args: list[str], name: str) -> str:
    if name in args:
        return args[args.index(name) + 1]
    found = [arg.split("=", 1)[1] for arg in args if arg.startswith(name + "=")]
    assert found, f"{name} not in {args}"
    return found[0]


@pytest.mark.slow
def test_sbatch_submits_each_cluster_job_once(sbatch_calls):
    assert {name: set(calls) for name, calls in sbatch_calls["runs"].items()} == {
        "dvc repro": {"rule_propagation_wildcards_lenet"},
        "gpu rules": {
            "rule_attack_wildcards_lenet_0",
            "rule_capture_wildcards_resnet20",
            "rule_locality_wildcards_resnet20",
        },
        "local rule": {"rule_train_wildcards_lenet"},
    }


@pytest.mark.slow
def test_dvc_repro_submits_with_the_profile_from_the_environment(sbatch_calls):
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in sbatch_calls["dvc"]
    assert "rule_propagation_wildcards_lenet" in sbatch_calls["runs"]["dvc repro"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "job",
    [
        "rule_attack_wildcards_lenet_0",
        "rule_capture_wildcards_resnet20",
        "rule_locality_wildcards_resnet20",
        "rule_train_wildcards_lenet",
    ],
)
def test_sbatch_arguments_of_gpu_jobs(sbatch_calls, job):
    args = sbatch_calls["sbatch"][job]
    assert _option(args, "-A") == "proj42"
    assert _option(args, "-p") == "gpuq"
    assert _option(args, "--gpus") == "1"
    assert _option(args, "--cpus-per-task") == str(sbatch_calls["threads"])
    assert _option(args, "-t") == "240"
    assert _option(args, "--mem") == "16000"
    assert _option(args, "-D") == str(sbatch_calls["repo"])
    rule, values = job.removeprefix("rule_").split("_wildcards_")
    wildcards = ",".join(f"{name}={value}" for name, value in zip(("model", "shard"), values.split("_"), strict=False))
    wrapped = shlex.split(_option(args, "--wrap"))
    assert wrapped[wrapped.index("--target-jobs") + 1] == f"{rule}:{wildcards}"


@pytest.mark.slow
def test_sbatch_arguments_of_the_cpu_job(sbatch_calls):
    args = sbatch_calls["sbatch"]["rule_propagation_wildcards_lenet"]
    assert _option(args, "-A") == "proj42"
    assert _option(args, "-p") == "cpuq"
    assert not any(arg.startswith(("--gpus", "--gres")) for arg in args)
    assert _option(args, "-t") == "120"
    assert _option(args, "--mem") == "16000"
    assert _option(args, "--cpus-per-task") == "1"


@pytest.mark.slow
def test_local_rules_run_on_the_submitting_machine(sbatch_calls):
    assert sbatch_calls["prepared_locally"]
    assert not any("prepare_data" in job for run in sbatch_calls["runs"].values() for job in run)
    assert "localrule prepare_data:" in sbatch_calls["log"]
