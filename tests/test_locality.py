"""Tests of onepixel.analysis.locality on rings, the baseline and a model with a known vulnerable block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

import onepixel.models
from helpers import P_CLEAN, P_FOOLED, BlockModel, fake_checkpoint, save_attack_rows
from onepixel.analysis.locality import (
    bootstrap_ratio_ci,
    chebyshev_offsets,
    euclidean_offsets,
    locality_analysis,
    locality_table,
    random_shifts,
    ring_distance,
    ring_positions,
    write_locality_table,
)
from onepixel.errors import ConfigError
from onepixel.files import open_netcdf, write_netcdf
from onepixel.stages import run_stage


def test_chebyshev_offsets() -> None:
    for d in range(1, 5):
        offsets = chebyshev_offsets(d)
        assert len(offsets) == 8 * d == len({tuple(o) for o in offsets})
        assert (np.abs(offsets).max(axis=1) == d).all()
    np.testing.assert_array_equal(chebyshev_offsets(0), [[0, 0]])


def test_ring_positions_inside_and_at_borders() -> None:
    assert len(ring_positions(4, 4, 2, 9, 9)) == 16
    assert {tuple(p) for p in ring_positions(0, 0, 1, 8, 8)} == {(1, 0), (0, 1), (1, 1)}
    assert {tuple(p) for p in ring_positions(0, 0, 2, 8, 8)} == {(2, 0), (2, 1), (2, 2), (1, 2), (0, 2)}
    assert len(ring_positions(0, 4, 1, 8, 8)) == 5  # left edge
    assert len(ring_positions(7, 7, 3, 8, 8)) == 7  # corner, distance 3


def test_random_shifts_exclude_original_and_are_seeded() -> None:
    xs, ys = np.array([2]), np.array([5])
    a = random_shifts(xs, ys, 63, 8, 8, np.random.default_rng(7))
    assert len(a) == 63 == len({tuple(s) for s in a}) and not (a == 0).all(axis=1).any()
    positions = a + np.array([2, 5])  # the shifted pixel
    assert (positions >= 0).all() and (positions < 8).all()
    b = random_shifts(xs, ys, 10, 8, 8, np.random.default_rng(7))
    c = random_shifts(xs, ys, 10, 8, 8, np.random.default_rng(7))
    np.testing.assert_array_equal(b, c)
    assert len(random_shifts(xs, ys, 100, 8, 8, np.random.default_rng(0))) == 63
    # a two-pixel pattern only moves where both pixels stay inside
    two = random_shifts(np.array([0, 7]), np.array([0, 0]), 100, 8, 8, np.random.default_rng(0))
    assert (two[:, 0] == 0).all() and len(two) == 7


def test_known_block_rates() -> None:
    # attack at (3, 3), the block's corner: ring 1 hits (4,3),(3,4),(4,4) = 3/8; ring 2 hits 5/16; ring 3 (24 cells, all inside) none.
    # Sample 1 is targeted at class 2, which the model never predicts.
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    loc = locality_analysis(
        BlockModel(),
        images,
        np.zeros(2),
        np.array([[3], [3]]),
        np.array([[3], [3]]),
        np.full((2, 1, 1), 255, np.uint8),
        targets=np.array([-1, 2]),
        max_distance=3,
        random_positions=100,
        batch_size=7,
    )
    np.testing.assert_array_equal(loc["n_positions"].values, [[8, 16, 24]] * 2)
    np.testing.assert_array_equal(loc["n_fooled"].values, [[3, 5, 0], [0, 0, 0]])
    np.testing.assert_allclose(loc["rate"].values[0], [3 / 8, 5 / 16, 0])
    np.testing.assert_allclose(loc["mean_true_prob"].values[0, 0], (3 * P_FOOLED + 5 * P_CLEAN) / 8, rtol=1e-5)
    np.testing.assert_allclose(loc["mean_true_prob"].values[0, 2], P_CLEAN, rtol=1e-5)
    np.testing.assert_array_equal(loc["baseline_n"].values, [63, 63])
    np.testing.assert_array_equal(loc["baseline_fooled"].values, [8, 0])  # 9 block cells minus the original
    np.testing.assert_allclose(loc["success_rate"].values, [3 / 16, 5 / 32, 0])
    np.testing.assert_allclose(float(loc["baseline_success_rate"]), 8 / 126)
    np.testing.assert_array_equal(loc["distance"].values, [1, 2, 3])


def test_bootstrap_ci_contains_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 20, (40, 3))
    fooled = rng.binomial(counts, [0.8, 0.5, 0.2])
    ci = bootstrap_ratio_ci(fooled, counts, seed=3)
    estimate = fooled.sum(0) / counts.sum(0)
    assert ci.shape == (3, 2) and (ci[:, 0] <= estimate).all() and (estimate <= ci[:, 1]).all()
    assert (ci[:, 1] - ci[:, 0] > 0).all()
    np.testing.assert_array_equal(ci, bootstrap_ratio_ci(fooled, counts, seed=3))
    assert np.isnan(bootstrap_ratio_ci(fooled[:0], counts[:0])).all()


def test_locality_dataset_ci_and_seed() -> None:
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 200, (6, 1, 8, 8), dtype=np.uint8))
    args = (
        BlockModel(),
        images,
        np.zeros(6),
        rng.integers(1, 7, (6, 1)),
        rng.integers(1, 7, (6, 1)),
        np.full((6, 1, 1), 255, np.uint8),
    )
    a = locality_analysis(*args, random_positions=5, seed=11)
    b = locality_analysis(*args, random_positions=5, seed=11)
    xr.testing.assert_identical(a, b)
    ci = a["success_rate_ci"].values
    assert ((ci[:, 0] <= a["success_rate"].values + 1e-12) & (a["success_rate"].values <= ci[:, 1] + 1e-12)).all()
    assert list(a["bound"].values) == ["low", "high"] and a["baseline_n"].values.tolist() == [5] * 6


def test_invalid_settings() -> None:
    with pytest.raises(ConfigError, match="max_distance"):
        locality_analysis(
            BlockModel(), torch.zeros(1, 1, 8, 8, dtype=torch.uint8), [0], [[1]], [[1]], [[[255]]], max_distance=0
        )


def fake_stage_inputs(tmp_path, monkeypatch, success):
    n = len(success)
    test = xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), np.zeros((10, 1, 8, 8), np.uint8)),
            "label": ("sample", np.zeros(10, np.int64)),
        },
        coords={"class_name": ("class", ["zero", "one", "two"])},
    )
    attack = xr.Dataset(
        {
            "success": ("sample", np.array(success)),
            "pixel_x": (("sample", "pixel"), np.full((n, 1), 3)),
            "pixel_y": (("sample", "pixel"), np.full((n, 1), 3)),
            "color": (("sample", "pixel", "channel"), np.full((n, 1, 1), 255, np.uint8)),
            "true_class": ("sample", np.zeros(n, np.int64)),
            "target_class": ("sample", np.full(n, -1)),
        },
        coords={"sample_id": ("sample", np.arange(n) + 2)},
    )
    write_netcdf(test, tmp_path / "test.nc", kind="dataset")
    monkeypatch.chdir(tmp_path)  # the tests name the checkpoint c.pt
    save_attack_rows(attack, test, tmp_path / "a.nc", fake_checkpoint(tmp_path / "c.pt"))
    monkeypatch.setattr(onepixel.models, "load_checkpoint", lambda p, map_location, **_: (BlockModel(), {}))


def test_stage_uses_successful_attacks_only(tmp_path, monkeypatch) -> None:
    fake_stage_inputs(tmp_path, monkeypatch, [True, False, True])
    ds = run_stage(
        "locality",
        {"checkpoint": "c.pt", "test": tmp_path / "test.nc", "attack": tmp_path / "a.nc"},
        {"out": tmp_path / "loc.nc"},
        {"locality": {"max_distance": 2}, "device": "cpu"},
    )
    saved = open_netcdf(tmp_path / "loc.nc", kind="locality")
    np.testing.assert_array_equal(saved["sample_id"].values, [2, 4])
    np.testing.assert_allclose(saved["success_rate"].values, [3 / 8, 5 / 16])
    np.testing.assert_allclose(saved["success_rate"].values, ds["success_rate"].values)


def test_stage_without_successful_attacks(tmp_path, monkeypatch) -> None:
    fake_stage_inputs(tmp_path, monkeypatch, [False, False])
    run_stage(
        "locality",
        {"checkpoint": "c.pt", "test": tmp_path / "test.nc", "attack": tmp_path / "a.nc"},
        {"out": tmp_path / "loc.nc"},
        {"device": "cpu"},
    )
    saved = open_netcdf(tmp_path / "loc.nc", kind="locality")
    assert saved.sizes["sample"] == 0 and saved.sizes["distance"] == 3
    assert np.isnan(saved["success_rate"].values).all() and np.isnan(float(saved["baseline_success_rate"]))
    assert np.isnan(saved["success_rate_ci"].values).all()


def test_euclidean_rings_by_hand() -> None:
    # ring d: offsets with d - 0.5 <= sqrt(dx^2 + dy^2) < d + 0.5
    ring1 = {(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)} - {(0, 0)}  # 1 and sqrt(2) = 1.41
    ring2 = {(2, 0), (-2, 0), (0, 2), (0, -2)} | {
        (sx * a, sy * b) for a, b in ((2, 1), (1, 2)) for sx in (1, -1) for sy in (1, -1)
    }  # 2, 2.24
    ring3 = (
        {(3, 0), (-3, 0), (0, 3), (0, -3)}
        | {(sx * 2, sy * 2) for sx in (1, -1) for sy in (1, -1)}  # 3, 2.83
        | {(sx * a, sy * b) for a, b in ((3, 1), (1, 3)) for sx in (1, -1) for sy in (1, -1)}
    )  # 3.16
    for d, expected in ((1, ring1), (2, ring2), (3, ring3)):
        offsets = euclidean_offsets(d)
        assert {tuple(o) for o in offsets} == expected and len(offsets) == len(expected)
    assert [len(euclidean_offsets(d)) for d in (1, 2, 3)] == [8, 12, 16]
    np.testing.assert_array_equal(euclidean_offsets(0), [[0, 0]])


def test_ring_distance_brute_force() -> None:
    dx, dy = np.meshgrid(np.arange(-6, 7), np.arange(-6, 7))
    expected = [
        [round(math.sqrt(a * a + b * b)) for a, b in zip(row_x, row_y, strict=False)]
        for row_x, row_y in zip(dx, dy, strict=False)
    ]
    np.testing.assert_array_equal(ring_distance(dx, dy, "euclidean"), expected)
    np.testing.assert_array_equal(ring_distance(dx, dy), np.maximum(abs(dx), abs(dy)))
    with pytest.raises(ConfigError, match="locality.rings: 'manhattan'"):
        ring_distance(dx, dy, "manhattan")
    # every offset of a 13x13 window belongs to exactly one ring
    for rings in ("chebyshev", "euclidean"):
        counted = sum(len(ring_positions(6, 6, d, 13, 13, rings)) for d in range(10))
        assert counted == 13 * 13


def test_euclidean_block_rates() -> None:
    # attack at (3, 3): Euclidean ring 2 = 12 offsets; block cells (rows/cols 3..5) among them: (5,3),(3,5),(5,4),(4,5) -> 4
    loc = locality_analysis(
        BlockModel(),
        torch.zeros(1, 1, 9, 9, dtype=torch.uint8),
        np.zeros(1),
        np.array([[3]]),
        np.array([[3]]),
        np.full((1, 1, 1), 255, np.uint8),
        max_distance=3,
        random_positions=5,
        rings="euclidean",
    )
    np.testing.assert_array_equal(loc["n_positions"].values, [[8, 12, 16]])
    np.testing.assert_array_equal(loc["n_fooled"].values, [[3, 4, 1]])  # ring 3 holds (5, 5) = offset (2, 2)
    assert loc.attrs["rings"] == "euclidean" and "Euclidean" in loc["distance"].attrs["long_name"]


def test_true_prob_change_per_distance() -> None:
    # two untargeted images, attack at (3, 3); the clean images are classified as class 0 with P_CLEAN.
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    loc = locality_analysis(
        BlockModel(),
        images,
        np.zeros(2),
        np.array([[3], [3]]),
        np.array([[3], [3]]),
        np.array([[[255]], [[0]]], np.uint8),
        max_distance=2,
        random_positions=63,
    )
    np.testing.assert_allclose(loc["clean_true_prob"].values, [P_CLEAN, P_CLEAN], rtol=1e-6)
    # image 0: ring 1 has 3 of 8 fooled, ring 2 5 of 16; image 1 (colour 0) changes nothing
    ring_mean = np.array([(3 * P_FOOLED + 5 * P_CLEAN) / 8, (5 * P_FOOLED + 11 * P_CLEAN) / 16])
    expected = (ring_mean - P_CLEAN + 0.0) / 2
    np.testing.assert_allclose(loc["true_prob_change"].values, expected, rtol=1e-5)
    baseline = ((8 * P_FOOLED + 55 * P_CLEAN) / 63 - P_CLEAN) / 2
    np.testing.assert_allclose(float(loc["baseline_true_prob_change"]), baseline, rtol=1e-5)
    ci = loc["true_prob_change_ci"].values
    assert (
        (ci[:, 0] <= loc["true_prob_change"].values + 1e-12) & (loc["true_prob_change"].values <= ci[:, 1] + 1e-12)
    ).all()


def test_locality_table(tmp_path) -> None:
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    loc = locality_analysis(
        BlockModel(),
        images,
        np.zeros(2),
        np.array([[3], [3]]),
        np.array([[3], [3]]),
        np.full((2, 1, 1), 255, np.uint8),
        max_distance=2,
        random_positions=63,
    )
    rows = locality_table({"block": loc})
    assert rows[0]["model"] == "block" and rows[0]["attacks"] == 2
    assert rows[0]["d1"] == pytest.approx(3 / 8) and rows[0]["d2"] == pytest.approx(5 / 16) and rows[0]["d3"] is None
    assert rows[0]["random"] == pytest.approx(8 / 63)
    write_locality_table({"block": loc}, tmp_path / "t.csv", tmp_path / "t.html")
    text = (tmp_path / "t.csv").read_text().splitlines()
    assert text[0].startswith("model,rings,attacks,d1,d1_low,d1_high") and text[1].startswith(
        "block,chebyshev,2,0.375,"
    )
    assert "37.5 % [37.5, 37.5]" in (tmp_path / "t.html").read_text()
