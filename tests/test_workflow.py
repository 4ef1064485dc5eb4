"""The Snakemake + DVC workflow: lint, dry runs, bad config, and a real end-to-end run."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import run_tool

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


def test_lint_is_clean(workdir):
    result = _run(["snakemake", "--lint"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_dry_run_shows_the_full_chain(workdir):
    result = _run(["snakemake", "-n", "--quiet", "rules"], workdir)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in ("prepare_data", "train", "attack", "capture", "propagation", "locality", "vulnerability",
                 "figures", "locality_figures", "summary"):
        assert rule in out, f"{rule} missing from the dry run:\n{out}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["models=[foo]"], "error: models[0]: 'foo' is not allowed; allowed values: lenet"),
        (["attack={'population': 2}"], "error: attack.population: 2 is out of range; must be >= 4"),
        (["train={'checkpoints': {'lenet': 'missing.pt'}}"], "error: train.checkpoints.lenet: file not found: missing.pt"),
    ],
)
def test_bad_config_stops_before_any_work(workdir, override, expected):
    result = _run(["snakemake", "--cores", "1", "--config", *override], workdir)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert not (workdir / "results" / "digits").exists()
    assert "Traceback" not in result.stderr


def test_dvc_repro_dry_runs_snakemake(tmp_path):
    repo = tmp_path / "dvcrepo"
    shutil.copytree(REPO, repo, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", "results", "resources", ".snakemake", "logs", "__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    result = _run(["dvc", "repro", "--dry"], repo)
    assert result.returncode == 0, result.stdout + result.stderr
    # plain `snakemake`: the workflow profile profiles/default adds --cores all --resources gpu=1
    assert "> snakemake\n" in result.stdout, result.stdout


def test_default_profile_runs_locally_on_all_cores_with_one_gpu(workdir):
    shutil.copytree(REPO / "profiles", workdir / "profiles", dirs_exist_ok=True)
    result = _run(["snakemake", "-n", "--quiet", "rules"], workdir)
    assert result.returncode == 0, result.stderr
    assert "Using workflow specific profile profiles/default" in result.stderr


@pytest.mark.slow
def test_end_to_end_on_the_test_config(study):
    """The smoke-test study (tests/conftest.py: `dvc repro` on config/test.yaml's values)."""
    assert "Running stage 'study'" in study.repro.stdout
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
    with xr.open_dataset(cubes[0]) as cube:
        assert cube["clean"].dims == ("sample", "channel", "y", "x")
        assert cube.sizes["sample"] == 12
        # the attacked image differs from the clean one wherever the attack changed a pixel
        assert np.isfinite(cube["clean"].values).all()
    prop = xr.open_dataset(results / "propagation" / "lenet.nc")
    assert "peak" in prop and prop.sizes["sample"] == 12
    locality = xr.open_dataset(results / "locality" / "lenet.nc")
    assert list(locality["distance"].values) == [1, 2]
    for figure in ("locality.png", "pm_depth.png", "lenet/average_pm.png", "resnet20/average_pm.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000
    vulnerability = xr.open_dataset(results / "vulnerability" / "lenet.nc")
    assert vulnerability["fooled"].shape == (12, 8, 8) and list(vulnerability["rf_size"].values) == [5, 14]
    for figure in ("receptive_fields.png", "erf.png", "lenet/vulnerability_maps.png", "resnet20/vulnerability_maps.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000
    assert "lenet" in (results / "figures" / "locality_table.html").read_text()

    again = _run(["snakemake", "-n"], study.repo)
    assert "Nothing to be done" in again.stdout + again.stderr
    status = _run(["dvc", "status", "--json"], study.repo)
    assert json.loads(status.stdout) == {}, status.stdout
