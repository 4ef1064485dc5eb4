"""The Snakemake + DVC workflow: lint, dry runs, bad config, and a real end-to-end run."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import run_tool
from helpers import _copy_workflow, _env
from onepixel.attack import load_attack
from onepixel.stages import run_stage

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return run_tool(args, cwd, timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the workflow's files, so runs never touch the repository's results/."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("workflow", "config", "src"):
        shutil.copytree(REPO / name, root / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    return root


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_lint_is_clean(workdir):
    result = _run(["snakemake", "--lint"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_dry_run_shows_the_full_chain(workdir):
    result = _run(["snakemake", "-n", "--quiet", "rules"], workdir)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in (
        "prepare_data",
        "train",
        "attack",
        "capture",
        "propagation",
        "locality",
        "vulnerability",
        "figures",
        "locality_figures",
        "summary",
    ):
        assert rule in out, f"{rule} missing from the dry run:\n{out}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["models=[foo]"], "error: models[0]: 'foo' is not allowed; allowed values: lenet"),
        (["attack={'population': 2}"], "error: attack.population: 2 is out of range; must be >= 4"),
        (
            ["train={'checkpoints': {'lenet': 'missing.pt'}}"],
            "error: train.checkpoints.lenet: file not found: missing.pt",
        ),
    ],
)
@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_bad_config_stops_before_any_work(workdir, override, expected):
    result = _run(["snakemake", "--cores", "1", "--config", *override], workdir)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert not (workdir / "results" / "digits").exists()
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_dvc_repro_dry_runs_snakemake(tmp_path):
    repo = tmp_path / "dvcrepo"
    shutil.copytree(
        REPO,
        repo,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", "results", "resources", ".snakemake", "logs", "__pycache__"),
    )
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    result = _run(["dvc", "repro", "--dry"], repo)
    assert result.returncode == 0, result.stdout + result.stderr
    # one stage per study, each `snakemake --configfile <its config>`, no other option: the
    # workflow profile profiles/default adds --cores all --resources gpu=1
    commands = re.findall(r"^Running stage '(study@[\w.-]+)':\n> (.*)$", result.stdout, re.MULTILINE)
    assert commands == [
        ("study@digits", "snakemake --configfile config/config.yaml"),
        ("study@digits-smoke", "snakemake --configfile config/test.yaml"),
        ("study@cifar10-subset", "snakemake --configfile config/cifar10-subset.yaml"),
        ("study@cifar10-paper", "snakemake --configfile config/paper.yaml"),
        ("study@cifar10-paper-targeted", "snakemake --configfile config/paper-targeted.yaml"),
        ("study@imagenet-val-paper", "snakemake --configfile config/imagenet.yaml"),
    ], result.stdout


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_default_profile_runs_locally_on_all_cores_with_one_gpu(workdir):
    shutil.copytree(REPO / "profiles", workdir / "profiles", dirs_exist_ok=True)
    result = _run(["snakemake", "-n", "--quiet", "rules"], workdir)
    assert result.returncode == 0, result.stderr
    assert "Using workflow specific profile profiles/default" in result.stderr


@pytest.mark.slow
def test_end_to_end_on_the_test_config(study):
    """The smoke-test study (tests/conftest.py: `dvc repro` on config/test.yaml's values)."""
    assert "Running stage 'study@digits'" in study.repro.stdout
    results = study.results

    summary = json.loads((results / "summary.json").read_text())
    assert set(summary["models"]) == {"lenet", "resnet20"}
    for model, row in summary["models"].items():
        assert row["test_accuracy"] > 0.5, (model, row)
        assert row["attacked"] == 12

    attack = xr.open_dataset(results / "attack" / "lenet.nc")
    assert attack.sizes["sample"] == 12
    cubes = sorted((results / "cubes" / "lenet").glob("*.nc"))
    assert len(cubes) >= 2
    with xr.open_dataset(cubes[0]) as cube:  # capture.store: maps (the default): the raw maps, no clean/delta
        assert cube["pm_max"].dims == ("sample", "y", "x") and "clean" not in cube
        assert cube.sizes["sample"] == 12
        assert np.isfinite(cube["pm_max"].values).all() and np.isfinite(cube["scale"].values).all()
    prop = xr.open_dataset(results / "propagation" / "lenet.nc")
    assert "peak" in prop and prop.sizes["sample"] == 12
    locality = xr.open_dataset(results / "locality" / "lenet.nc")
    assert list(locality["distance"].values) == [1, 2]
    for figure in ("locality.png", "pm_depth.png", "lenet/average_pm.png", "resnet20/average_pm.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000
    vulnerability = xr.open_dataset(results / "vulnerability" / "lenet.nc")
    assert vulnerability["fooled"].shape == (12, 8, 8) and list(vulnerability["rf_size"].values) == [5, 14]
    for figure in (
        "receptive_fields.png",
        "erf.png",
        "lenet/vulnerability_maps.png",
        "resnet20/vulnerability_maps.png",
    ):
        assert (results / "figures" / figure).stat().st_size > 10_000
    assert "lenet" in (results / "figures" / "locality_table.html").read_text()
    _check_further_attacks(results, summary)

    again = _run(["snakemake", "-n"], study.repo)
    assert "Nothing to be done" in again.stdout + again.stderr
    status = _run(["dvc", "--wait-for-lock", "status", "--json", "study@digits"], study.repo)  # shared by workers
    assert json.loads(status.stdout) == {}, status.stdout


def _check_further_attacks(results: Path, summary: dict) -> None:
    """config/test.yaml's further attacks went through the chain on the main attack's images, and the
    comparison of all of them reached summary.json."""
    main = xr.open_dataset(results / "attack" / "lenet.nc")
    for name, method in (("de3", "de"), ("sweep", "exhaustive"), ("fgsm", "fgsm"), ("pgd", "pgd")):
        with xr.open_dataset(results / "attack" / name / "lenet.nc") as attack:
            np.testing.assert_array_equal(attack["sample_id"].values, main["sample_id"].values)
            assert json.loads(attack.attrs["attack_config"]).get("method", "de") == method
            assert (attack.sizes["pixel"] == 3) == (name == "de3")
        with xr.open_dataset(results / "propagation" / name / "lenet.nc") as prop:
            assert prop.sizes["sample"] == 12
        # locality for the pixel attacks only
        assert (results / "locality" / name / "lenet.nc").exists() == (method in ("de", "exhaustive"))
    with xr.open_dataset(results / "attack" / "sweep" / "lenet.nc") as sweep:
        assert sweep["sweep_fooled"].shape == (12, 8, 8)
        np.testing.assert_array_equal(sweep["queries"].values, 64 * 2)  # one channel: the colours 0 and 255
    comparison = json.loads((results / "plots" / "comparison.json").read_text())
    assert list(comparison["attacks"]) == ["main", "de3", "sweep", "fgsm", "pgd"]
    for model in ("lenet", "resnet20"):
        truth = summary["ground_truth"][model]["main"]
        assert truth["de_only"] == 0.0 or comparison["models"][model]["ground_truth"]["main"]["exact"] is False
        shares = [truth[key] for key in ("both", "de_only", "sweep_only", "neither")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert summary["attacks"][model]["main"]["success_rate"] == summary["models"][model]["attack_success_rate"]
    for figure in ("pm_comparison.png", "lenet/average_pm_by_attack.png", "resnet20/average_pm_by_attack.png"):
        assert (results / "figures" / "comparison" / figure).stat().st_size > 10_000
    assert "PGD 8/255, 5 steps" in (results / "plots" / "comparison.html").read_text()


# ===========================================================================
# interruption of a real workflow run (SIGINT during the attack, SIGTERM during capture)
# ===========================================================================
def _job_blocks(text: str) -> dict[int, tuple[str, str]]:
    """Snakemake's log: {jobid: (rule, output)} of every job it started."""
    jobs = {}
    for block in re.split(r"\n\s*\n", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        jobid = re.search(r"^\s+jobid: (\d+)", block, re.MULTILINE)
        output = re.search(r"^\s+output: (.+)$", block, re.MULTILINE)
        if rule and jobid:
            jobs[int(jobid.group(1))] = (rule.group(1), output.group(1).strip() if output else "")
    return jobs


def _finished(text: str) -> list[int]:
    return [int(j) for j in re.findall(r"Finished jobid: (\d+) \(Rule: \w+\)", text)]


def _job_counts(text: str) -> dict[str, int]:
    """The ``Job stats`` table Snakemake prints before running: {rule: count}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["job", "count"])
    counts = {}
    for line in lines[start + 2 :]:
        parts = line.split()
        if not parts or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _snakemake(root: Path, args: list[str], log: Path, trigger=None, sig: int = signal.SIGINT) -> tuple[int, str]:
    """Run snakemake in its own process group; once ``trigger(output so far)`` is true, send ``sig`` to the
    whole group (as Ctrl-C in a terminal or a batch scheduler's cancel does). Returns (status, output)."""
    fired = False
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            ["snakemake", *args], cwd=root, env=_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while trigger is not None and proc.poll() is None:
                if trigger(log.read_text()):
                    os.killpg(proc.pid, sig)
                    fired = True
                    break
                time.sleep(0.01)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert trigger is None or fired, f"the run ended before the moment to interrupt it:\n{text[-3000:]}"
    return proc.returncode, text


def _leftovers(root: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.<random>.tmp``) under results/ and resources/."""
    return [p for top in ("results", "resources") for p in (root / top).rglob(".*.tmp")]


@pytest.mark.slow
def test_an_interrupted_workflow_resumes_without_redoing_finished_shards(tmp_path):
    """Ctrl-C during the sharded attack, then SIGTERM during capture, then a clean rerun: shards that had
    finished are kept (same mtime, not rescheduled), nothing partial is taken as complete, and the merged
    attack equals an unsharded one. Finally a corrupt user checkpoint fails its job with one line."""
    root = _copy_workflow(tmp_path / "run")
    config = [
        "--cores",
        "1",
        "--configfile",
        "config/test.yaml",
        "--config",
        "models=[lenet]",
        "train={epochs: 1}",
        "attack={shards: 3, num_images: 6, population: 20, generations: 4}",
        "device=cpu",
        "threads=1",
        "capture={batch_size: 2}",
    ]
    target = "results/digits-smoke/cubes/lenet"
    shard_dir = root / "results/digits-smoke/attack/lenet"

    # 1: Ctrl-C once a shard job has finished and the next one is running (its script has opened its log)
    def next_shard_running(text: str) -> bool:
        jobs = _job_blocks(text)
        finished = sum(jobs.get(j, ("",))[0] == "attack" for j in _finished(text))
        started = len(list((root / "results/digits-smoke/logs").glob("attack_lenet_shard_*.log")))
        return finished >= 1 and started > finished

    status, text = _snakemake(
        root, [*config, "--", target], tmp_path / "run1.log", trigger=next_shard_running, sig=signal.SIGINT
    )
    assert status != 0
    jobs = _job_blocks(text)
    done = {Path(jobs[j][1]).name for j in _finished(text) if jobs[j][0] == "attack"}
    assert len(done) >= 1
    present = {p.name for p in shard_dir.glob("shard_*.nc")}
    assert done <= present and len(present) < 3 and not (root / "results/digits-smoke/attack/lenet.nc").exists()
    for name in present:  # whatever exists is complete
        assert load_attack(shard_dir / name).sizes["sample"] == 2
    assert _leftovers(root) == []
    mtimes = {name: (shard_dir / name).stat().st_mtime_ns for name in done}

    # 2: resume; SIGTERM to the whole group (what a batch scheduler sends) once capture is running
    capture_log = root / "results/digits-smoke/logs/capture_lenet.log"
    status, text = _snakemake(
        root,
        [*config, "--rerun-incomplete", "--", target],
        tmp_path / "run2.log",
        trigger=lambda text: capture_log.exists(),
        sig=signal.SIGTERM,
    )
    assert status != 0
    counts = _job_counts(text)
    assert counts.get("attack") == 3 - len(done), counts  # finished shards are not redone
    assert "train" not in counts and "select_images" not in counts and "prepare_data" not in counts
    assert {name: (shard_dir / name).stat().st_mtime_ns for name in done} == mtimes
    assert sorted(p.name for p in shard_dir.glob("shard_*.nc")) == [f"shard_{i}-of-3.nc" for i in range(3)]
    assert not (root / target / "layers.json").exists()  # capture did not complete
    assert _leftovers(root) == []

    # 3: finish; only capture is left
    status, text = _snakemake(root, [*config, "--rerun-incomplete", "--", target], tmp_path / "run3.log")
    assert status == 0, text[-3000:]
    assert _job_counts(text) == {"capture": 1}
    assert {name: (shard_dir / name).stat().st_mtime_ns for name in done} == mtimes
    cubes = sorted((root / target).glob("*.nc"))
    assert cubes and (root / target / "layers.json").is_file()
    for cube in cubes:
        with xr.open_dataset(cube) as ds:
            assert ds.sizes["sample"] == 6
    assert _leftovers(root) == []

    # the merged attack equals an unsharded attack of the same model (streams keyed by test-set index)
    merged = load_attack(root / "results/digits-smoke/attack/lenet.nc")
    whole = run_stage(
        "attack",
        {
            "checkpoint": root / "results/digits-smoke/models/lenet.pt",
            "test": root / "results/digits-smoke/data/test.nc",
        },
        {"out": tmp_path / "unsharded.nc"},
        {"attack": {"num_images": 6, "population": 20, "generations": 4}, "device": "cpu"},
    )
    for name in ("sample_id", "success", "pixel_x", "pixel_y", "color", "adversarial", "queries"):
        np.testing.assert_array_equal(merged[name].values, whole[name].values.astype(merged[name].dtype), name)

    # 4: a user error inside a job (a corrupt checkpoint of the user's) is one line, no traceback
    bad = root / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    status, text = _snakemake(
        root,
        [
            *config[:-1],
            "capture={batch_size: 2}",
            "train={epochs: 1, checkpoints: {lenet: bad.pt}}",
            "--",
            "results/digits-smoke/models/lenet.pt",
        ],
        tmp_path / "run4.log",
    )
    assert status != 0
    errors = {line for line in text.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1, text[-3000:]
    assert errors.pop().startswith("error: bad.pt: not a readable PyTorch checkpoint")
    assert "Traceback" not in text
