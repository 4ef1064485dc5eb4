"""Tests of onepixel.capture: forward hooks vs a manual forward, and the capture stage."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from onepixel.capture import capture_activations, feature_layer_names, run_capture_stage
from onepixel.errors import ConfigError
from onepixel.utils import open_netcdf, write_netcdf


class InplaceNet(nn.Module):
    """conv -> ReLU(inplace) twice: an in-place op overwrites the conv outputs that are captured."""

    def __init__(self, with_feature_layers: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
        if with_feature_layers:
            self.feature_layers = ["conv2", "conv1"]  # deliberately not in depth order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def manual_forward(net: InplaceNet, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activation conv outputs computed step by step without in-place ops."""
    with torch.no_grad():
        c1 = net.conv1(x)
        c2 = net.conv2(torch.relu(c1))
    return c1.numpy(), c2.numpy()


def test_hooks_match_manual_forward_despite_inplace_relu() -> None:
    net = InplaceNet().eval()
    x = torch.rand(10, 1, 8, 8)
    acts = capture_activations(net, x, ["conv1", "conv2"], batch_size=3)
    c1, c2 = manual_forward(net, x)
    assert acts["conv1"].dtype == np.float32 and acts["conv1"].shape == (10, 4, 8, 8)
    assert acts["conv2"].shape == (10, 6, 4, 4)
    np.testing.assert_allclose(acts["conv1"], c1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(acts["conv2"], c2, rtol=1e-6, atol=1e-6)
    assert (acts["conv1"] < 0).any(), "negative pre-ReLU values must survive the in-place ReLU"


def test_feature_layer_names() -> None:
    assert feature_layer_names(InplaceNet()) == ["conv2", "conv1"]
    assert feature_layer_names(InplaceNet(with_feature_layers=False)) == ["conv1", "conv2"]


def test_unknown_layer_and_non_4d_raise_config_error() -> None:
    net = InplaceNet().eval()
    with pytest.raises(ConfigError, match="'nope'.*conv2"):
        capture_activations(net, torch.rand(2, 1, 8, 8), ["conv1", "nope"])
    with pytest.raises(ConfigError, match="head"):
        capture_activations(net, torch.rand(2, 1, 8, 8), ["head"])


def fake_run(tmp_path, monkeypatch, n: int = 5):
    """Write a test set and an attack file and make the lazily imported loaders return them and ``InplaceNet``."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)
    test = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), images), "label": ("sample", rng.integers(0, 3, 12))},
        coords={"class_name": ("class", ["a", "b", "c"])},
    )
    ids = np.array([7, 2, 9, 0, 4][:n])
    px, py = rng.integers(0, 8, (n, 1)), rng.integers(0, 8, (n, 1))
    color = rng.integers(0, 256, (n, 1, 1), dtype=np.uint8)
    adversarial = images[ids].copy()
    adversarial[np.arange(n), 0, py[:, 0], px[:, 0]] = color[:, 0, 0]
    attack = xr.Dataset(
        {
            "success": ("sample", np.array([1, 0, 1, 1, 0][:n], dtype=bool)),
            "pixel_x": (("sample", "pixel"), px),
            "pixel_y": (("sample", "pixel"), py),
            "color": (("sample", "pixel", "channel"), color),
            "true_class": ("sample", np.zeros(n, np.int64)),
            "adv_class": ("sample", np.ones(n, np.int64)),
            "target_class": ("sample", np.full(n, -1)),
            "adversarial": (("sample", "channel", "y", "x"), adversarial),
        },
        coords={"sample_id": ("sample", ids)},
    )
    write_netcdf(test, tmp_path / "test.nc")
    net = InplaceNet().eval()
    monkeypatch.setitem(sys.modules, "onepixel.data", types.SimpleNamespace(load_dataset=open_netcdf))
    monkeypatch.setitem(sys.modules, "onepixel.attack", types.SimpleNamespace(load_attack=lambda p: attack))
    monkeypatch.setitem(sys.modules, "onepixel.models", types.SimpleNamespace(load_checkpoint=lambda p, map_location: (net, {})))
    return net, test, attack


def test_capture_stage_files(tmp_path, monkeypatch) -> None:
    net, test, attack = fake_run(tmp_path, monkeypatch)
    files = run_capture_stage("ckpt.pt", tmp_path / "test.nc", "attack.nc", tmp_path / "cubes", device="cpu")
    # depth order comes from the forward pass, not from feature_layers' order
    assert [f.name for f in files] == ["00_conv1.nc", "01_conv2.nc"]
    index = json.loads((tmp_path / "cubes" / "layers.json").read_text())
    assert [e["file"] for e in index["layers"]] == ["00_conv1.nc", "01_conv2.nc"]
    clean_f = torch.from_numpy(test["image"].values[attack["sample_id"].values]).float() / 255
    adv_f = torch.from_numpy(attack["adversarial"].values).float() / 255
    expected = [dict(zip(("clean", "adversarial"), pair)) for pair in zip(manual_forward(net, clean_f), manual_forward(net, adv_f))]
    for k, path in enumerate(files):
        with xr.open_dataset(path) as ds:
            ds.load()
            for var in ("clean", "adversarial"):
                assert ds[var].dtype == np.float32 and ds[var].dims == ("sample", "channel", "y", "x")
                np.testing.assert_allclose(ds[var].values, expected[k][var], atol=1e-6)
                assert ds[var].encoding["zlib"] and ds[var].encoding["chunksizes"][0] == 1
            np.testing.assert_array_equal(ds["sample_id"].values, [7, 2, 9, 0, 4])
            np.testing.assert_array_equal(ds["success"].values, [True, False, True, True, False])
            stride = 8 // ds.sizes["x"]
            assert ds.attrs["stride"] == stride and ds.attrs["layer_index"] == k
            np.testing.assert_array_equal(ds["pixel_x_layer"].values, attack["pixel_x"].values[:, 0] // stride)
            np.testing.assert_array_equal(ds["pixel_y_layer"].values, attack["pixel_y"].values[:, 0] // stride)
    assert files[0].parent.joinpath("00_conv1.nc").stat().st_size > 0


def test_capture_stage_unknown_layer(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="capture.layers"):
        run_capture_stage("ckpt.pt", tmp_path / "test.nc", "a.nc", tmp_path / "cubes", layers=["fc9"], device="cpu")
    assert not (tmp_path / "cubes" / "layers.json").exists()
