"""Tests of onepixel.analysis.propagation against brute-force and hand-made answers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from onepixel.analysis.propagation import (
    compute_propagation,
    map_summaries,
    maps_from_delta,
    normalise,
    propagation_maps,
)
from onepixel.cubes import MAP_VARIABLES, CubeWriter, write_layer_index
from onepixel.errors import ConfigError, DataError
from onepixel.files import open_netcdf, write_netcdf
from onepixel.stages import run_stage

#: what a capture records about the attack its cubes were made from
LINEAGE = {"model_sha256": "ab" * 32, "test_digest": "cd" * 32, "attack_digest": "ef" * 32}


def brute_force(clean: np.ndarray, adv: np.ndarray):
    n, c, h, w = clean.shape
    pm_max, pm_avg, scale = np.zeros((n, h, w)), np.zeros((n, h, w)), np.zeros(n)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                diffs = [abs(float(adv[i, k, y, x]) - float(clean[i, k, y, x])) for k in range(c)]
                pm_max[i, y, x] = max(diffs)
                pm_avg[i, y, x] = sum(diffs) / c
        scale[i] = max(abs(float(v)) for v in clean[i].ravel())
    return pm_max, pm_avg, scale


def test_propagation_maps_match_loop() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    adv = (clean + rng.normal(size=clean.shape) * (rng.random(clean.shape) < 0.3)).astype(np.float32)
    got = propagation_maps(clean, adv)
    for value, expected in zip(got, brute_force(clean, adv), strict=False):
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_single_hot_cell_summaries() -> None:
    pm = np.zeros((2, 6, 5), np.float32)
    pm[0, 4, 1] = 0.7  # pixel at (x=3, y=2): |dx| = 2, |dy| = 2 -> distance 2
    pm[1, 2, 3] = 0.05  # on the pixel itself, below the threshold
    s = map_summaries(pm * 10, pm, np.array([3, 3]), np.array([2, 2]), threshold=0.1)
    np.testing.assert_allclose(s["peak"], [0.7, 0.05], rtol=1e-6)
    np.testing.assert_allclose(s["spread"], [1 / 30, 0.0])
    np.testing.assert_allclose(s["mass_distance"], [2.0, 0.0])
    np.testing.assert_allclose(s["mass_distance_rel"], [2 / 6, 0.0])


def test_mass_distance_weighted_mean_and_empty_map() -> None:
    pm = np.zeros((2, 5, 5), np.float32)
    pm[0, 0, 0] = 1.0  # distance 2 from (2, 2)
    pm[0, 2, 3] = 3.0  # distance 1
    s = map_summaries(pm, pm, np.array([2, 2]), np.array([2, 2]), threshold=0.5)
    np.testing.assert_allclose(s["mass_distance"][0], (1 * 2 + 3 * 1) / 4)
    assert np.isnan(s["mass_distance"][1]) and s["peak"][1] == 0 and s["spread"][1] == 0


def test_normalise_zero_scale() -> None:
    maps = np.zeros((3, 2, 2), np.float32)
    maps[1, 1, 0] = 2.0  # distance 1 from (0, 0)
    maps[2, 1, 1] = 2.0
    out = normalise(maps, np.array([0.0, 0.0, 4.0], np.float32))
    np.testing.assert_array_equal(out[0], 0.0)  # dead layer, no difference: 0
    assert np.isnan(out[1]).all()  # dead layer, a difference: undefined
    np.testing.assert_allclose(out[2], maps[2] / 4)
    s = map_summaries(maps, out, np.zeros(3, int), np.zeros(3, int), 0.1)
    assert np.isnan(s["peak"][1]) and np.isnan(s["spread"][1]) and s["mass_distance"][1] == 1.0


def write_cubes(directory, rng, n=4, success=(True, False, True, True)):
    """Two layer cubes (4x4 and 2x2) with known activations, written by the capture stage's writers
    (:class:`onepixel.cubes.CubeWriter`, raw maps beside the cube, then ``layers.json``);
    returned in memory with ``adversarial`` too."""
    shapes = [(3, 4, 4), (2, 2, 2)]
    cubes = []
    px, py = np.array([0, 3, 1, 2]), np.array([3, 0, 1, 2])
    for i, shape in enumerate(shapes):
        clean = (rng.normal(size=(n, *shape)) * np.arange(1, n + 1)[:, None, None, None]).astype(np.float32)
        adv = (clean + rng.normal(size=clean.shape) * 0.3).astype(np.float32)
        delta = adv - clean
        stride = 4 // shape[1]
        coords = {
            "sample_id": np.array([5, 1, 8, 3]),
            "success": np.array(success),
            "pixel_x_layer": px // stride,
            "pixel_y_layer": py // stride,
        }
        attrs = {
            "layer": f"block{i}",
            "layer_index": i,
            "stride": float(stride),
            "receptive_field": -1,
            "input_size": np.array([4, 4]),
            **LINEAGE,
        }
        with CubeWriter(directory / f"{i:02d}_block{i}.nc", shape, coords, attrs) as writer:
            writer.write(0, clean, delta, dict(zip(MAP_VARIABLES, maps_from_delta(clean, delta), strict=True)))
        data = {"clean": clean, "delta": delta, "adversarial": adv}
        cubes.append(
            xr.Dataset(
                {name: (("sample", "channel", "y", "x"), value) for name, value in data.items()},
                coords={name: ("sample", value) for name, value in coords.items()},
            )
        )
    write_layer_index(directory, [{"index": i, "file": f"{i:02d}_block{i}.nc"} for i in range(2)], LINEAGE)
    return cubes


def test_round_trip_and_normalisations(tmp_path) -> None:
    cubes = write_cubes(tmp_path, np.random.default_rng(3))
    run_stage(
        "propagation",
        {"cubes": tmp_path},
        {"out": tmp_path / "out" / "prop.nc"},
        {"propagation": {"normalisation": "image", "spread_threshold": 0.2}},
    )
    prop = open_netcdf(tmp_path / "out" / "prop.nc", kind="propagation")
    by_layer = compute_propagation(sorted(tmp_path.glob("0*.nc")), "layer", 0.2)
    assert list(prop["layer"].values) == ["block0", "block1"]
    np.testing.assert_array_equal(prop["layer_height"].values, [4, 2])
    np.testing.assert_array_equal(prop["sample_id"].values, [5, 1, 8, 3])
    assert prop.attrs["normalisation"] == "image" and prop.attrs["spread_threshold"] == 0.2
    success = np.array([True, False, True, True])
    for i, cube in enumerate(cubes):
        pm_max, pm_avg, scale = brute_force(cube["clean"].values, cube["adversarial"].values)
        np.testing.assert_allclose(prop[f"pm_max_{i}"].values, pm_max, rtol=1e-5)
        np.testing.assert_allclose(prop[f"pm_avg_{i}"].values, pm_avg, rtol=1e-5)
        norm_img = pm_max / scale[:, None, None]
        norm_layer = pm_max / scale.max()
        np.testing.assert_allclose(prop[f"pm_max_norm_{i}"].values, norm_img, rtol=1e-5)
        np.testing.assert_allclose(prop[f"pm_avg_norm_{i}"].values, pm_avg / scale[:, None, None], rtol=1e-5)
        np.testing.assert_allclose(by_layer[f"pm_max_norm_{i}"].values, norm_layer, rtol=1e-5)
        np.testing.assert_allclose(prop[f"avg_pm_max_success_{i}"].values, norm_img[success].mean(0), rtol=1e-5)
        np.testing.assert_allclose(prop[f"avg_pm_max_failure_{i}"].values, norm_img[~success].mean(0), rtol=1e-5)
        np.testing.assert_allclose(
            prop[f"avg_pm_avg_success_{i}"].values, (pm_avg / scale[:, None, None])[success].mean(0), rtol=1e-5
        )
        np.testing.assert_allclose(prop["peak"].values[i], norm_img.reshape(4, -1).max(1), rtol=1e-5)
        np.testing.assert_allclose(prop["spread"].values[i], (norm_img > 0.2).reshape(4, -1).mean(1))
        np.testing.assert_allclose(by_layer["spread"].values[i], (norm_layer > 0.2).reshape(4, -1).mean(1))
        assert prop[f"pm_max_norm_{i}"].dims == ("sample", f"y_{i}", f"x_{i}")
    assert prop["peak"].dims == ("layer", "sample")
    np.testing.assert_array_equal(prop["n_averaged_success"].values, [3, 3])
    # mass distance of layer 1 (2x2 grid) by brute force
    cube = cubes[1]
    pm_max = brute_force(cube["clean"].values, cube["adversarial"].values)[0]
    for s in range(4):
        x0, y0 = int(cube["pixel_x_layer"][s]), int(cube["pixel_y_layer"][s])
        dist = np.array([[max(abs(x - x0), abs(y - y0)) for x in range(2)] for y in range(2)])
        expected = (pm_max[s] * dist).sum() / pm_max[s].sum()
        np.testing.assert_allclose(prop["mass_distance"].values[1, s], expected, rtol=1e-5)
        np.testing.assert_allclose(prop["mass_distance_rel"].values[1, s], expected / 2, rtol=1e-5)


def test_no_failures_gives_nan_average(tmp_path) -> None:
    write_cubes(tmp_path, np.random.default_rng(4), success=(True,) * 4)
    prop = compute_propagation(sorted(tmp_path.glob("0*.nc")))
    assert np.isnan(prop["avg_pm_max_failure_0"].values).all()
    assert prop["n_averaged_failure"].values.tolist() == [0, 0]


def test_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="normalisation.*image, layer"):
        run_stage(
            "propagation", {"cubes": tmp_path}, {"out": tmp_path / "p.nc"}, {"propagation": {"normalisation": "global"}}
        )
    with pytest.raises(DataError, match="layers.json"):
        run_stage("propagation", {"cubes": tmp_path / "missing"}, {"out": tmp_path / "p.nc"})
    write_layer_index(tmp_path, [])
    with pytest.raises(DataError, match="no layers"):
        run_stage("propagation", {"cubes": tmp_path}, {"out": tmp_path / "p.nc"})


def test_stored_raw_maps_are_read_not_recomputed(tmp_path) -> None:
    """Cubes of the capture stage carry pm_max/pm_avg/scale; the propagation maps are those, not recomputed."""
    import netCDF4

    write_cubes(tmp_path, np.random.default_rng(6))
    with netCDF4.Dataset(tmp_path / "00_block0.nc", "a") as nc:
        nc["pm_max"][:] = 7
    assert (compute_propagation(sorted(tmp_path.glob("0*.nc")))["pm_max_0"].values == 7).all()


def test_foreign_netcdf_is_not_a_cube(tmp_path) -> None:
    write_netcdf(xr.Dataset({"image": ("sample", np.zeros(3))}), tmp_path / "00_x.nc", kind="dataset")
    write_layer_index(tmp_path, [{"index": 0, "file": "00_x.nc"}], LINEAGE)
    with pytest.raises(DataError, match=r"00_x.nc: is a onepixel-dataset/1 file, expected onepixel-cube/2$"):
        run_stage("propagation", {"cubes": tmp_path}, {"out": tmp_path / "p.nc"})
    write_netcdf(xr.Dataset({"image": ("sample", np.zeros(3))}, attrs=LINEAGE), tmp_path / "00_x.nc", kind="cube")
    with pytest.raises(DataError, match=r"00_x.nc: missing variable\(s\) pm_max, pm_avg, scale, pixel_x_layer"):
        run_stage("propagation", {"cubes": tmp_path}, {"out": tmp_path / "p.nc"})
    assert not (tmp_path / "p.nc").exists()


def test_cubes_given_a_file_says_a_folder_is_expected(tmp_path, capsys) -> None:
    from onepixel.cli import main

    cube = tmp_path / "00_conv1.nc"
    cube.write_bytes(b"not a folder")
    assert main(["propagation", "--cubes", str(cube), "--out", str(tmp_path / "p.nc")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {cube}: is a file; --cubes expects a folder, the layer cubes that `onepixel capture` writes "
        "(with layers.json)\n"
    )
    assert not (tmp_path / "p.nc").exists()
