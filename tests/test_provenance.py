"""Every result says how it was made: git commit, config digest, seed, library versions, device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from onepixel.config import validate_config
from onepixel.files import write_json, write_netcdf
from onepixel.provenance import config_digest, provenance, run_context

REQUIRED = (
    "git_commit",
    "config_digest",
    "study_config",
    "seed",
    "device",
    "onepixel_version",
    "python_version",
    "torch_version",
    "numpy_version",
    "xarray_version",
)


def test_provenance_outside_a_run_names_versions_and_the_cpu():
    info = provenance()
    assert info["device"] == "cpu"
    assert info["torch_version"] == torch.__version__ and info["xarray_version"] == xr.__version__
    assert "config_digest" not in info and "seed" not in info


def test_run_context_adds_config_digest_config_and_seed():
    config = validate_config({"attack": {"population": 20}})
    with run_context(config, seed=7, device="cpu"):
        info = provenance()
    assert info["config_digest"] == config_digest(config)
    assert json.loads(info["study_config"]) == json.loads(json.dumps(config))
    assert info["seed"] == "7" and info["device"] == "cpu"
    assert all(isinstance(value, str) for value in info.values())
    assert "config_digest" not in provenance()  # only inside the block


def test_writers_add_missing_provenance_inside_a_run(tmp_path):
    config = validate_config({})
    ds = xr.Dataset({"v": ("s", np.arange(3.0))}, attrs={"seed": 5, "note": "kept"})
    with run_context(config, seed=1):
        write_json({"a": 1}, tmp_path / "a.json", kind="metrics")
        write_json({"a": 1, "provenance": {"own": "yes"}}, tmp_path / "own.json", kind="metrics")
        write_netcdf(ds, tmp_path / "a.nc", kind="attack")
    write_json({"a": 1}, tmp_path / "outside.json", kind="metrics")

    assert json.loads((tmp_path / "a.json").read_text())["provenance"]["config_digest"] == config_digest(config)
    assert json.loads((tmp_path / "own.json").read_text())["provenance"] == {"own": "yes"}
    assert json.loads((tmp_path / "outside.json").read_text()) == {"a": 1, "format": "onepixel-metrics/2"}
    with xr.open_dataset(tmp_path / "a.nc") as stored:
        assert stored.attrs["config_digest"] == config_digest(config)
        assert stored.attrs["seed"] == 5 and stored.attrs["note"] == "kept"  # what the stage wrote wins
    assert ds.attrs == {"seed": 5, "note": "kept"}  # the caller's dataset is untouched


def _kind(relative: str) -> str:
    """results/digits/attack/lenet.nc -> attack; results/digits/provenance.json -> provenance (of the
    summary); results/digits/data/test.nc -> datasets."""
    part = relative.split("/")
    return "datasets" if part[2] == "data" else part[2].split(".")[0]


def _expected_seed(relative: str, config: dict) -> int:
    """The seed of the random stream that chose a file's content (the `seed` of its stage in onepixel.stages)."""
    return {
        "datasets": config["dataset"]["seed"],
        "models": config["train"]["seed"],
        "metrics": config["train"]["seed"],
        "locality": config["locality"]["seed"],
        "vulnerability": config["vulnerability"]["seed"],
    }.get(_kind(relative), config["attack"]["seed"])


@pytest.mark.slow
def test_every_result_of_the_study_records_how_it_was_made(study):
    config = validate_config(study.config)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    files = sorted(
        p
        for p in (study.repo / "results").rglob("*")
        if p.suffix in (".nc", ".json") and p.name != "summary.json"  # summary.json: numbers only (provenance.json)
    )
    kinds = {_kind(str(p.relative_to(study.repo))) for p in files}
    assert {"datasets", "metrics", "attack", "cubes", "propagation", "locality", "provenance"} <= kinds, kinds
    assert len({_expected_seed(str(p.relative_to(study.repo)), config) for p in files}) >= 3  # seeds tell apart
    missing = {}
    for path in files:
        relative = str(path.relative_to(study.repo))
        if path.suffix == ".json":
            info = json.loads(path.read_text()).get("provenance", {})
        else:
            with xr.open_dataset(path) as ds:
                info = dict(ds.attrs)
        absent = [key for key in REQUIRED if key not in info]
        if absent:
            missing[relative] = absent
            continue
        assert info["git_commit"] == study.commit, relative
        assert info["config_digest"] == config_digest(config), relative
        assert json.loads(info["study_config"]) == json.loads(json.dumps(config)), relative
        assert int(info["seed"]) == _expected_seed(relative, config), relative
        assert info["device"] == device, relative
        assert info["torch_version"] == torch.__version__, relative
    assert not missing, f"results without provenance: {missing}"


@pytest.mark.slow
def test_checkpoints_record_how_they_were_made(study):
    for path in sorted((study.results / "models").glob("*.pt")):
        info = torch.load(path, weights_only=True)["extra"]["provenance"]
        assert info["config_digest"] == config_digest(validate_config(study.config))
        assert int(info["seed"]) == study.config["train"]["seed"]
