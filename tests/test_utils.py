"""Shared helpers: atomic writes, readable errors for foreign files, provenance."""

import json
import os

import numpy as np
import pytest
import torch
import torch.utils.deterministic
import xarray as xr

from helpers import _Mixed
from onepixel.errors import ConfigError, DataError
from onepixel.files import atomic_path, open_netcdf, write_json, write_netcdf
from onepixel.provenance import config_digest, provenance
from onepixel.torch_utils import deterministic_torch, eval_mode, resolve_device


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert list(target.parent.iterdir()) == [target]
    assert target.stat().st_mode & 0o644 == 0o644  # readable like any other file, not mkstemp's 0600


def test_atomic_path_leaves_nothing_behind_when_interrupted(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_write_json_and_netcdf_round_trip(tmp_path):
    write_json({"a": np.float32(0.5), "b": np.arange(3)}, tmp_path / "x.json", kind="metrics")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 0.5, "b": [0, 1, 2], "format": "onepixel-metrics/2"}
    ds = xr.Dataset({"v": ("s", np.arange(4.0))})
    write_netcdf(ds, tmp_path / "x.nc", kind="attack")
    assert open_netcdf(tmp_path / "x.nc", kind="attack", required=("v",))["v"].values.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_open_netcdf_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing.nc: file not found"):
        open_netcdf(tmp_path / "missing.nc", kind="attack")
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a netcdf file")
    with pytest.raises(DataError, match=r"junk.nc: not a readable netCDF file"):
        open_netcdf(junk, kind="attack")
    write_netcdf(xr.Dataset({"v": ("s", [1])}), tmp_path / "other.nc", kind="attack")
    with pytest.raises(DataError, match=r"other.nc: missing variable\(s\) success"):
        open_netcdf(tmp_path / "other.nc", kind="attack", required=("success",))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: 'cuda' requested but CUDA is not available"):
            resolve_device("cuda")


def test_config_digest_ignores_key_order():
    assert config_digest({"a": 1, "b": [1, 2]}) == config_digest({"b": [1, 2], "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 2})


def test_provenance_records_versions_and_device():
    info = provenance("cpu")
    assert info["torch_version"] == torch.__version__
    assert info["device"] == "cpu"
    assert all(isinstance(v, str) for v in info.values())


def test_deterministic_torch_sets_and_restores_the_flags():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (
        cudnn.deterministic,
        cudnn.benchmark,
        cudnn.allow_tf32,
        matmul.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
    )
    fill = torch.utils.deterministic.fill_uninitialized_memory
    with deterministic_torch():
        assert cudnn.deterministic and not cudnn.benchmark and not cudnn.allow_tf32 and not matmul.allow_tf32
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in {":4096:8", ":16:8"}
    assert (
        cudnn.deterministic,
        cudnn.benchmark,
        cudnn.allow_tf32,
        matmul.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
    ) == before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill


def test_eval_mode_restores_each_module():
    model = _Mixed().train()
    model.frozen.eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model.bn.training and not model.frozen.training
