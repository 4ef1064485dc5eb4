"""Tests of onepixel.capture: forward hooks vs a manual forward, and the capture stage."""

from __future__ import annotations

import collections
import json
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import onepixel.models
from helpers import _assert_bit_identical, fake_checkpoint, save_attack_rows
from onepixel.capture import (
    FeatureExtractor,
    capture_activations,
    check_disk_space,
    feature_layer_names,
)
from onepixel.cubes import CubeWriter, decode_cubes, estimate_capture_bytes, layer_namespace, open_cubes
from onepixel.errors import ConfigError, DataError
from onepixel.files import open_netcdf, write_netcdf
from onepixel.stages import run_stage


class InplaceNet(nn.Module):
    """conv -> ReLU(inplace) twice: an in-place op overwrites the conv outputs that are captured."""

    def __init__(self, with_feature_layers: bool = True, widths: tuple[int, int] = (4, 6)) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, widths[0], 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[1], 3))
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


def fake_run(tmp_path, monkeypatch, n: int = 5, size: int = 8, net: nn.Module | None = None):
    """Write a test set and an attack file and make the lazily imported loaders return them and ``net``
    (default: ``InplaceNet``), for ``size`` x ``size`` images."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 1, size, size), dtype=np.uint8)
    test = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), images), "label": ("sample", rng.integers(0, 3, 12))},
        coords={"class_name": ("class", ["a", "b", "c"])},
    )
    ids = np.array([7, 2, 9, 0, 4][:n])
    px, py = rng.integers(0, size, (n, 1)), rng.integers(0, size, (n, 1))
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
    write_netcdf(test, tmp_path / "test.nc", kind="dataset")
    net = (net or InplaceNet()).eval()
    monkeypatch.chdir(tmp_path)  # the tests name the checkpoint ckpt.pt
    save_attack_rows(attack, test, tmp_path / "attack.nc", fake_checkpoint(tmp_path / "ckpt.pt"))
    monkeypatch.setattr(onepixel.models, "load_checkpoint", lambda p, map_location, **_: (net, {}))
    return net, test, attack


def _expected_maps(net, test, attack):
    """Per layer, the manual forward's ``clean`` feature maps and their ``delta`` under the attack."""
    clean_f = torch.from_numpy(test["image"].values[attack["sample_id"].values]).float() / 255
    adv_f = torch.from_numpy(attack["adversarial"].values).float() / 255
    return [
        {"clean": c, "delta": a - c}
        for c, a in zip(manual_forward(net, clean_f), manual_forward(net, adv_f), strict=False)
    ]


@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
def test_capture_stage_files(tmp_path, monkeypatch, compression) -> None:
    net, test, attack = fake_run(tmp_path, monkeypatch)
    files = run_stage(
        "capture",
        {"checkpoint": "ckpt.pt", "test": tmp_path / "test.nc", "attack": tmp_path / "attack.nc"},
        {"out": tmp_path / "cubes"},
        {"capture": {"batch_size": 2, "compression": compression, "store": "cubes"}, "device": "cpu"},
    )
    # depth order comes from the forward pass, not from feature_layers' order
    assert [f.name for f in files] == ["00_conv1.nc", "01_conv2.nc"]
    index = json.loads((tmp_path / "cubes" / "layers.json").read_text())
    assert [e["file"] for e in index["layers"]] == ["00_conv1.nc", "01_conv2.nc"]
    assert {(e["store"], e["cube_dtype"]) for e in index["layers"]} == {("cubes", "float32")}
    # conv1: 3x3, stride 1; conv2: 3x3 stride 2 on top -> 3 + 2 * 1 = 5 pixels, jump 2
    assert [(e["receptive_field"], e["stride"]) for e in index["layers"]] == [(3, 1.0), (5, 2.0)]
    expected = _expected_maps(net, test, attack)
    for k, path in enumerate(files):
        with xr.open_dataset(path) as ds:
            ds.load()
            for var in ("clean", "delta"):
                assert ds[var].dtype == np.float32 and ds[var].dims == ("sample", "channel", "y", "x")
                np.testing.assert_allclose(ds[var].values, expected[k][var], atol=1e-6)
                assert ds[var].encoding["chunksizes"][0] == 1 and ds[var].attrs["units"] == "1"
                assert ds[var].encoding.get("zstd", False) == (compression == "zstd")
                assert ds[var].encoding.get("zlib", False) == (compression == "zlib")
            np.testing.assert_array_equal(ds["sample_id"].values, [7, 2, 9, 0, 4])
            np.testing.assert_array_equal(ds["success"].values, [True, False, True, True, False])
            stride = 8 // ds.sizes["x"]
            assert ds.attrs["stride"] == stride and ds.attrs["layer_index"] == k
            assert ds.attrs["receptive_field"] == [3, 5][k] and len(ds.attrs["config_digest"]) == 16
            assert ds.attrs["Conventions"].startswith("CF") and "git_commit" in ds.attrs
            assert (ds.attrs["store"], ds.attrs["cube_dtype"]) == ("cubes", "float32")
            assert list(ds.attrs["layer_shape"]) == [[4, 8, 8], [6, 4, 4]][k]
            np.testing.assert_array_equal(ds["pixel_x_layer"].values, attack["pixel_x"].values[:, 0] // stride)
            np.testing.assert_array_equal(ds["pixel_y_layer"].values, attack["pixel_y"].values[:, 0] // stride)
    assert not list((tmp_path / "cubes").glob(".*tmp"))


def test_cubes_open_as_one_dataset_across_layers(tmp_path, monkeypatch) -> None:
    net, test, attack = fake_run(tmp_path, monkeypatch)
    files = run_stage(
        "capture",
        {"checkpoint": "ckpt.pt", "test": tmp_path / "test.nc", "attack": tmp_path / "attack.nc"},
        {"out": tmp_path / "cubes"},
        {"capture": {"store": "cubes"}, "device": "cpu"},
    )
    expected = _expected_maps(net, test, attack)
    explicit = {"combine": "by_coords", "data_vars": "all", "coords": "minimal", "compat": "override", "join": "exact"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # every option whose default xarray changes is set
        merged = xr.open_mfdataset(files, preprocess=layer_namespace, **explicit)
    with merged, open_cubes(tmp_path / "cubes") as cubes:
        for ds in (merged, cubes):
            assert ds["clean_1"].dims == ("sample", "channel_1", "y_1", "x_1")
            assert ds["delta_0"].attrs["layer"] == "conv1" and ds["delta_1"].attrs["receptive_field"] == 5
            for k in range(2):
                np.testing.assert_allclose(ds[f"delta_{k}"].values, expected[k]["delta"], atol=1e-6)
                np.testing.assert_allclose(ds[f"clean_{k}"].values, expected[k]["clean"], atol=1e-6)
            np.testing.assert_array_equal(ds["sample_id"].values, [7, 2, 9, 0, 4])
            np.testing.assert_array_equal(ds["pixel_x_layer_1"].values, attack["pixel_x"].values[:, 0] // 2)


def test_interrupted_capture_leaves_no_cube(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch)
    calls = []

    def write_then_interrupt(self, start, clean, delta, maps):
        calls.append(start)
        if len(calls) == 3:  # second batch of the first layer: one batch of every layer is on disk
            raise KeyboardInterrupt
        original(self, start, clean, delta, maps)

    original = CubeWriter.write
    monkeypatch.setattr(CubeWriter, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_stage(
            "capture",
            {"checkpoint": "ckpt.pt", "test": tmp_path / "test.nc", "attack": tmp_path / "attack.nc"},
            {"out": tmp_path / "cubes"},
            {"capture": {"batch_size": 2}, "device": "cpu"},
        )
    assert list((tmp_path / "cubes").iterdir()) == []


def test_capture_stage_unknown_layer(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="capture.layers"):
        run_stage(
            "capture",
            {"checkpoint": "ckpt.pt", "test": tmp_path / "test.nc", "attack": tmp_path / "attack.nc"},
            {"out": tmp_path / "cubes"},
            {"capture": {"layers": ["fc9"]}, "device": "cpu"},
        )
    assert not (tmp_path / "cubes" / "layers.json").exists()


class FunctionalNet(nn.Module):
    """Outputs that are no module's: a functional ReLU, and a residual sum changed in place afterwards."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.relu(self.conv1(x), inplace=True)  # overwrites conv1's output
        z = self.conv2(y) + y
        z.mul_(-1.0)  # in place, after the sum is produced
        return self.head(z)


def test_fx_nodes_capture_functional_outputs_before_inplace_ops() -> None:
    net = FunctionalNet().eval()
    x = torch.rand(5, 1, 6, 6)
    acts = capture_activations(net, x, ["add", "relu", "conv1", "head.0"], batch_size=2)
    with torch.no_grad():
        conv1 = net.conv1(x)
        relu = torch.relu(conv1)
        added = net.conv2(relu) + relu
    assert list(acts) == ["add", "relu", "conv1", "head.0"]
    np.testing.assert_allclose(acts["relu"], relu.numpy(), atol=1e-6)
    np.testing.assert_allclose(acts["conv1"], conv1.numpy(), atol=1e-6)
    np.testing.assert_allclose(acts["add"], added.numpy(), atol=1e-6)  # not the negated sum
    np.testing.assert_allclose(acts["head.0"], -added.mean(dim=(2, 3), keepdim=True).numpy(), atol=1e-6)
    assert (acts["add"] > 0).any() and (acts["conv1"] < 0).any()


def test_fx_extractor_orders_by_depth_and_names_unknown_nodes() -> None:
    net = FunctionalNet().eval()
    extractor = FeatureExtractor(net, ["add", "relu"])
    assert list(extractor(torch.rand(1, 1, 6, 6))) == ["relu", "add"]
    with pytest.raises(ConfigError, match=r"'relu9'.*torch.fx nodes"):
        FeatureExtractor(net, ["relu9", "relu"])


def test_attack_beyond_the_test_set_is_refused(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch)
    write_netcdf(
        open_netcdf(tmp_path / "test.nc", kind="dataset").isel(sample=slice(0, 5)),
        tmp_path / "small.nc",
        kind="dataset",
    )
    with pytest.raises(DataError, match=r"^capture: .*small.nc is not the test set .*attack.nc was made on"):
        run_stage(
            "capture",
            {"checkpoint": "ckpt.pt", "test": tmp_path / "small.nc", "attack": tmp_path / "attack.nc"},
            {"out": tmp_path / "cubes"},
            {"device": "cpu"},
        )
    assert not (tmp_path / "cubes").exists()


def test_capture_and_propagation_are_bit_identical_across_runs(toy, tmp_path):
    attack = tmp_path / "attack.nc"
    files = {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"}
    config = {"attack": {"num_images": 6, "population": 16, "generations": 3}, "device": "cpu"}
    run_stage("attack", files, {"out": attack}, config)
    for run in ("a", "b"):
        run_stage("capture", {**files, "attack": attack}, {"out": tmp_path / f"cubes_{run}"}, config)
        run_stage("propagation", {"cubes": tmp_path / f"cubes_{run}"}, {"out": tmp_path / f"pm_{run}.nc"}, config)
    cubes = sorted(p.name for p in (tmp_path / "cubes_a").glob("*.nc"))
    assert cubes and cubes == sorted(p.name for p in (tmp_path / "cubes_b").glob("*.nc"))
    for name in cubes:
        with xr.open_dataset(tmp_path / "cubes_a" / name) as a, xr.open_dataset(tmp_path / "cubes_b" / name) as b:
            _assert_bit_identical(a.load(), b.load(), name)
    with xr.open_dataset(tmp_path / "pm_a.nc") as a, xr.open_dataset(tmp_path / "pm_b.nc") as b:
        _assert_bit_identical(a.load(), b.load(), "propagation")
        assert any(np.issubdtype(v.dtype, np.floating) and v.size for v in a.data_vars.values())


# capture.store (maps | cubes), capture.cube_dtype, and the disk-space check


def _capture(tmp_path, out: str, **capture) -> list:
    """Run the capture stage of ``fake_run``'s files into ``tmp_path / out`` with these ``capture`` keys."""
    return run_stage(
        "capture",
        {"checkpoint": "ckpt.pt", "test": tmp_path / "test.nc", "attack": tmp_path / "attack.nc"},
        {"out": tmp_path / out},
        {"capture": {"batch_size": 2, **capture}, "device": "cpu"},
    )


def _load(path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def _sizes(files) -> int:
    return sum(f.stat().st_size for f in files)


def test_maps_mode_stores_exactly_the_maps_of_cubes_mode(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch)
    maps_files, cube_files = _capture(tmp_path, "maps"), _capture(tmp_path, "cubes", store="cubes")
    index = json.loads((tmp_path / "maps" / "layers.json").read_text())
    assert {(e["store"], e["cube_dtype"]) for e in index["layers"]} == {("maps", "float32")}
    for maps_file, cube_file in zip(maps_files, cube_files, strict=True):
        maps, cubes = _load(maps_file), _load(cube_file)
        assert "clean" not in maps and "delta" not in maps and "channel" not in maps.dims
        assert maps.attrs["store"] == "maps" and cubes.attrs["store"] == "cubes"
        assert list(maps.attrs["layer_shape"]) == list(cubes["clean"].shape[1:])
        assert set(maps.variables) == set(cubes.variables) - {"clean", "delta"}
        for name in ("pm_max", "pm_avg", "scale", "sample_id", "pixel_x_layer", "success"):
            np.testing.assert_array_equal(maps[name].values, cubes[name].values, err_msg=name)
            assert maps[name].dtype == cubes[name].dtype
        clean64, delta64 = cubes["clean"].values.astype(np.float64), cubes["delta"].values.astype(np.float64)
        np.testing.assert_allclose(maps["pm_max"].values, np.abs(delta64).max(axis=1), rtol=0, atol=0)
        np.testing.assert_allclose(maps["pm_avg"].values, np.abs(delta64).mean(axis=1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(maps["scale"].values, np.abs(clean64).max(axis=(1, 2, 3)), rtol=0, atol=0)
        assert (maps["pm_max"].values > 0).any()


def test_maps_mode_files_are_much_smaller(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch, size=32, net=InplaceNet(widths=(32, 32)))
    maps, cubes = _sizes(_capture(tmp_path, "maps")), _sizes(_capture(tmp_path, "cubes", store="cubes"))
    assert maps < 0.2 * cubes, (maps, cubes)


def test_float16_cubes_are_the_rounded_float32_cubes_at_half_the_size(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch, size=32, net=InplaceNet(widths=(32, 32)))
    f32 = _capture(tmp_path, "f32", store="cubes", compression="none")
    f16 = _capture(tmp_path, "f16", store="cubes", compression="none", cube_dtype="float16")
    maps = _capture(tmp_path, "maps", compression="none")
    for a, b in zip(f32, f16, strict=True):
        full, stored = _load(a), _load(b)
        assert stored.attrs["cube_dtype"] == "float16" and stored["clean"].dtype == np.uint16  # netCDF: no float16
        half = decode_cubes(stored)
        for name in ("clean", "delta"):
            assert half[name].dtype == np.float16
            np.testing.assert_array_equal(half[name].values, full[name].values.astype(np.float16), err_msg=name)
        for name in ("pm_max", "pm_avg", "scale"):  # from the float32 activations, not the float16 cubes
            assert half[name].dtype == np.float32
            np.testing.assert_array_equal(half[name].values, full[name].values, err_msg=name)
    cube_part = (_sizes(f16) - _sizes(maps)) / (_sizes(f32) - _sizes(maps))
    assert 0.45 < cube_part < 0.55, cube_part
    with open_cubes(tmp_path / "f16") as ds:  # decoded lazily, as float16
        assert ds["delta_1"].dtype == np.float16 and "stored_as" not in ds["delta_1"].attrs
        np.testing.assert_array_equal(ds["delta_1"].values, _load(f32[1])["delta"].values.astype(np.float16))


def test_float16_overflow_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    net = InplaceNet()
    with torch.no_grad():
        net.conv1.weight.mul_(1e6)  # activations far beyond float16's 65504
    fake_run(tmp_path, monkeypatch, net=net)
    with pytest.raises(DataError) as info:
        _capture(tmp_path, "cubes", store="cubes", cube_dtype="float16")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("capture: layer conv1: clean reaches |value| ")
    assert "65504" in message and message.endswith("set capture.cube_dtype: float32")
    assert float(message.split("|value| ")[1].split(",")[0]) > 1e5
    assert list((tmp_path / "cubes").iterdir()) == []  # no partial layer file, no layers.json
    _capture(tmp_path, "maps", cube_dtype="float16")  # maps mode stores no cubes: nothing to overflow


@pytest.mark.parametrize(("widths", "size"), [((4, 6), 8), ((32, 32), 32)])
@pytest.mark.parametrize(
    "capture",
    [{}, {"store": "cubes"}, {"store": "cubes", "compression": "none"}, {"store": "cubes", "cube_dtype": "float16"}],
)
def test_disk_estimate_is_near_the_real_sizes(tmp_path, monkeypatch, widths, size, capture) -> None:
    fake_run(tmp_path, monkeypatch, size=size, net=InplaceNet(widths=widths))
    files = _capture(tmp_path, "cubes", **capture)
    shapes = [tuple(e["shape"]) for e in json.loads((tmp_path / "cubes" / "layers.json").read_text())["layers"]]
    settings = {"store": "maps", "cube_dtype": "float32", "compression": "zstd", **capture}
    estimate = estimate_capture_bytes(shapes, 5, **settings)
    assert 0.3 < estimate / _sizes(files) < 3, (estimate, _sizes(files))


def test_estimate_capture_bytes_counts_maps_and_cubes() -> None:
    shapes = [(3, 4, 5), (6, 2, 2)]
    maps = estimate_capture_bytes(shapes, 10)
    values = 10 * 2 * (3 * 4 * 5 + 6 * 2 * 2)  # clean + delta of 10 samples
    assert estimate_capture_bytes(shapes, 10, "maps", "float16", "none") == maps  # no cubes: dtype, codec unused
    assert estimate_capture_bytes(shapes, 10, "cubes", "float32", "none") - maps == values * 4
    assert estimate_capture_bytes(shapes, 10, "cubes", "float16", "none") - maps == values * 2
    assert estimate_capture_bytes(shapes, 10, "cubes", "float32", "zstd") - maps == values * 4 * 0.5
    assert estimate_capture_bytes(shapes, 20) - maps == 10 * (2 * (20 + 4) * 4 + 2 * 4 + 2 * 64)
    with pytest.raises(ConfigError, match=r"^capture.store: 'all' is not one of maps, cubes$"):
        estimate_capture_bytes(shapes, 10, "all")


def test_check_disk_space_asks_the_nearest_existing_folder(tmp_path, monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: asked.append(p) or Usage(100, 90, 10 * 2**20))
    check_disk_space(tmp_path / "a" / "b", 10 * 2**20, "hint")
    assert asked == [tmp_path]
    with pytest.raises(ConfigError, match=rf"^capture: .* 2.0 MiB, only 1.0 MiB free in {tmp_path}; hint$"):
        check_disk_space(tmp_path, 2 * 2**20, "hint", free=2**20)


Usage = collections.namedtuple("Usage", "total used free")


@pytest.mark.parametrize(("store", "hint"), [("maps", "capture fewer layers"), ("cubes", "set capture.store: maps")])
def test_capture_that_cannot_fit_is_refused_before_any_file(tmp_path, monkeypatch, store, hint) -> None:
    fake_run(tmp_path, monkeypatch)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - 1000, 1000))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as info:
        _capture(tmp_path, "out/cubes", store=store)
    message = str(info.value)
    assert "\n" not in message and f"free in {tmp_path / 'out' / 'cubes'};" in message and hint in message
    assert re.search(r"need about \d+\.\d MiB, only 0\.0 MiB free", message), message
    assert sorted(tmp_path.rglob("*")) == before  # not even the output folder


def test_open_cubes_reads_maps_only_files(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch)
    files = _capture(tmp_path, "maps")
    with open_cubes(tmp_path / "maps") as ds:
        assert not any(name.startswith(("clean", "delta")) for name in ds.variables)
        for k, file in enumerate(files):
            stored = _load(file)
            assert ds[f"pm_max_{k}"].dims == ("sample", f"y_{k}", f"x_{k}")
            assert ds[f"pm_avg_{k}"].attrs["layer"] == ["conv1", "conv2"][k]
            np.testing.assert_array_equal(ds[f"pm_max_{k}"].values, stored["pm_max"].values)
            np.testing.assert_array_equal(ds[f"scale_{k}"].values, stored["scale"].values)
        np.testing.assert_array_equal(ds["sample_id"].values, [7, 2, 9, 0, 4])


def test_propagation_is_the_same_from_maps_and_from_cubes(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path, monkeypatch)
    results = {}
    for store in ("maps", "cubes"):
        _capture(tmp_path, store, store=store)
        run_stage("propagation", {"cubes": tmp_path / store}, {"out": tmp_path / f"pm_{store}.nc"}).close()
        results[store] = _load(tmp_path / f"pm_{store}.nc")
    xr.testing.assert_equal(results["maps"], results["cubes"])  # values, dims and coordinates
    assert results["maps"]["pm_max_0"].size and np.isfinite(results["maps"]["peak"].values).all()
