"""Tests of onepixel.analysis.comparison (several attacks on the same images) and its figures,
against hand computations and the real stages on the toy model."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from onepixel.analysis.comparison import (
    CSV_COLUMNS,
    METRIC_RANGES,
    METRICS,
    attack_label,
    compare_attacks,
    compare_to_sweep,
    mean_interval,
    pm_statistics,
    sweep_is_exact,
)
from onepixel.analysis.ground_truth import wilson_interval
from onepixel.attack import load_attack, save_attack
from onepixel.errors import DataError
from onepixel.files import open_netcdf, write_netcdf
from onepixel.stages import run_stage

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# mean_interval
# ---------------------------------------------------------------------------
def test_mean_interval_is_the_student_t_interval_of_the_finite_values():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0, np.nan, np.inf])
    mean, low, high, n = mean_interval(values)
    # by hand: mean 4, s^2 = (9 + 4 + 1 + 0 + 36) / 4 = 12.5, t(0.975, 4) = 2.776445
    half = 2.7764451051977987 * math.sqrt(12.5) / math.sqrt(5)
    assert n == 5 and mean == 4.0
    assert low == pytest.approx(4 - half, rel=1e-12) and high == pytest.approx(4 + half, rel=1e-12)
    assert half == pytest.approx(4.389945, abs=1e-6)
    assert stats.t.ppf(0.975, 4) == pytest.approx(2.7764451051977987, rel=1e-12)
    mean, low, high, n = mean_interval(values, level=0.9)
    assert high - mean == pytest.approx(stats.t.ppf(0.95, 4) * np.std([1, 2, 3, 4, 10], ddof=1) / math.sqrt(5))
    assert mean_interval(np.array([2.0, 2.0, 2.0])) == (2.0, 2.0, 2.0, 3)  # no spread: a point
    # clipped to the values' range: a share's interval does not reach below 0
    shares = np.array([0.0, 0.0, 0.0, 0.1])
    assert mean_interval(shares, bounds=(0.0, 1.0))[1] == 0.0 < mean_interval(shares)[2]
    assert mean_interval(shares)[1] < 0
    one = mean_interval(np.array([np.nan, 0.5]))
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2]) and one[3] == 1
    none = mean_interval(np.array([np.nan]))
    assert all(math.isnan(v) for v in none[:3]) and none[3] == 0
    with pytest.raises(ValueError, match="level"):
        mean_interval(values, level=95)


# ---------------------------------------------------------------------------
# pm_statistics
# ---------------------------------------------------------------------------
def _propagation(tmp_path, rng, n_layers=3, n=7):
    """A small propagation file of the summaries pm_statistics reads (NaN where a map is undefined)."""
    shape = (n_layers, n)
    data = {name: (("layer", "sample"), rng.random(shape)) for name in ("peak", "spread", "mass_distance_rel")}
    data["peak"][1][1, 2] = np.nan
    data["mass_distance_rel"][1][:, 0] = np.nan
    ds = xr.Dataset(
        data,
        coords={
            "sample_id": ("sample", np.arange(n) * 3),
            "success": ("sample", np.array([1, 0, 1, 1, 0, 1, 1], np.uint8)[:n]),
            "layer": ("layer", [f"conv{i}" for i in range(n_layers)]),
            "layer_index": ("layer", np.arange(n_layers)),
            "layer_height": ("layer", [8, 4, 2][:n_layers]),
            "layer_width": ("layer", [8, 4, 2][:n_layers]),
        },
        attrs={"model_sha256": "ab" * 32, "test_digest": "cd" * 32, "attack_digest": "ef" * 32},
    )
    write_netcdf(ds, tmp_path / "prop.nc", kind="propagation")
    return open_netcdf(tmp_path / "prop.nc", kind="propagation")


def test_pm_statistics_are_numpy_means_and_t_intervals_per_layer(tmp_path):
    prop = _propagation(tmp_path, np.random.default_rng(0))
    success = prop["success"].values.astype(bool)
    for subset, select in (("all", np.ones(7, bool)), ("success", success), ("failure", ~success)):
        got = pm_statistics(prop, subset)
        assert list(got["layer"].values) == ["conv0", "conv1", "conv2"]
        np.testing.assert_array_equal(got["layer_height"].values, [8, 4, 2])
        np.testing.assert_allclose(got["depth"].values, [1 / 3, 2 / 3, 1])
        assert got.attrs["subset"] == subset and got.attrs["n_samples"] == select.sum()
        for metric in METRICS:
            values = prop[metric].values[:, select]
            finite = np.isfinite(values)
            n = finite.sum(axis=1)
            mean = np.nanmean(values, axis=1)
            sem = np.nanstd(values, axis=1, ddof=1) / np.sqrt(n)
            half = stats.t.ppf(0.975, n - 1) * sem
            np.testing.assert_array_equal(got[f"{metric}_n"].values, n)
            np.testing.assert_allclose(got[f"{metric}_mean"].values, mean, rtol=1e-12)
            low, high = METRIC_RANGES[metric]
            np.testing.assert_allclose(got[f"{metric}_low"].values, np.maximum(mean - half, low), rtol=1e-12)
            np.testing.assert_allclose(got[f"{metric}_high"].values, np.minimum(mean + half, high), rtol=1e-12)
    # an undefined value is left out: layer 1 of peak has one NaN among the 7
    assert int(pm_statistics(prop)["peak_n"].values[1]) == 6
    with pytest.raises(ValueError, match="subset"):
        pm_statistics(prop, "some")


# ---------------------------------------------------------------------------
# compare_to_sweep on hand-made attack files
# ---------------------------------------------------------------------------
def _rows(keys, success, queries, config, source, channels=1, sha="ab" * 32):
    ids, targets = (np.array(v, np.int64) for v in zip(*keys, strict=True))
    ds = xr.Dataset(
        {
            "success": ("sample", np.array(success, bool)),
            "queries": ("sample", np.array(queries, np.int64)),
            "target_class": ("sample", targets),
            "color": (("sample", "pixel", "channel"), np.zeros((len(ids), 1, channels), np.uint8)),
        },
        coords={"sample_id": ("sample", ids)},
        attrs={"model_sha256": sha, "test_digest": "cd" * 32, "attack_config": json.dumps(config)},
    )
    ds.encoding["source"] = source
    return ds


KEYS = [(3, -1), (1, -1), (7, -1), (5, -1), (9, -1), (2, -1)]


def test_compare_to_sweep_matches_rows_by_image_and_target():
    de = _rows(KEYS, [1, 1, 0, 0, 1, 0], [10, 20, 400, 400, 30, 400], {"pixels": 1}, "de.nc")
    # the sweep's rows in another order: success by key, hand-made
    sweep_success = {(3, -1): 1, (1, -1): 0, (7, -1): 1, (5, -1): 0, (9, -1): 1, (2, -1): 1}
    shuffled = [KEYS[i] for i in (4, 2, 0, 5, 1, 3)]
    sweep = _rows(
        shuffled, [sweep_success[k] for k in shuffled], [64] * 6, {"method": "exhaustive", "colors": "all"}, "sw.nc"
    )
    gt = compare_to_sweep(de, sweep)
    # DE: rows 3, 1, 9; sweep: 3, 7, 9, 2 -> both {3, 9}, DE only {1}, sweep only {7, 2}, neither {5}
    assert (gt.n, gt.both.count, gt.de_only.count, gt.sweep_only.count, gt.neither.count) == (6, 2, 1, 2, 1)
    assert gt.exact and (gt.de_found.count, gt.de_found.n) == (2, 4)
    assert (gt.both.low, gt.both.high) == wilson_interval(2, 6)
    assert gt.de_queries_per_success == pytest.approx(1260 / 3) and gt.sweep_queries_per_success == 64 * 6 / 4
    # a targeted row is another row: (3, 0) is not (3, -1)
    other = _rows([*KEYS[:5], (3, 0)], [0] * 6, [1] * 6, {"method": "exhaustive"}, "other.nc")
    with pytest.raises(DataError, match=r"^comparison: de.nc and other.nc do not hold the same attacked rows.*"):
        compare_to_sweep(de, other)
    fewer = _rows(KEYS[:4], [0] * 4, [1] * 4, {"method": "exhaustive"}, "fewer.nc")
    with pytest.raises(DataError, match=r"de.nc and fewer.nc do not hold the same attacked rows"):
        compare_to_sweep(de, fewer)
    twice = _rows([*KEYS[:5], KEYS[0]], [0] * 6, [1] * 6, {"method": "exhaustive"}, "twice.nc")
    with pytest.raises(DataError, match="appears twice"):
        compare_to_sweep(de, twice)


def test_compare_to_sweep_refuses_another_model_or_not_a_sweep():
    de = _rows(KEYS, [1] * 6, [1] * 6, {"pixels": 1}, "de.nc")
    sweep = _rows(KEYS, [1] * 6, [1] * 6, {"method": "exhaustive"}, "sweep.nc", sha="99" * 32)
    with pytest.raises(DataError, match=r"^comparison: de.nc was not made with the model of sweep.nc \(model sha256"):
        compare_to_sweep(de, sweep)
    pgd = _rows(KEYS, [1] * 6, [1] * 6, {"method": "pgd", "eps": 8 / 255, "steps": 3}, "pgd.nc")
    with pytest.raises(DataError, match=r"pgd.nc is a pgd attack, not the exhaustive sweep"):
        compare_to_sweep(de, pgd)


def test_a_sweep_is_exact_only_with_every_colour_and_no_early_stop():
    def sweep(channels=1, **cfg):
        return _rows(KEYS, [0] * 6, [1] * 6, {"method": "exhaustive", **cfg}, "s.nc", channels=channels)

    assert sweep_is_exact(sweep(colors="all"))
    assert sweep_is_exact(sweep(colors="grid", levels=256))
    assert not sweep_is_exact(sweep(colors="all", early_stop=True))
    assert not sweep_is_exact(sweep(colors="corners"))
    assert not sweep_is_exact(sweep(channels=3, colors="grid", levels=255))


def test_attack_labels():
    def label(**cfg):
        return attack_label(xr.Dataset(attrs={"attack_config": json.dumps(cfg)}))

    assert label(pixels=1, population=400) == "DE 1 px"
    assert label(pixels=3) == "DE 3 px"
    assert label(pixels=1, targeted=True) == "DE 1 px, targeted"
    assert label(method="exhaustive", colors="corners") == "sweep (corners)"
    assert label(method="exhaustive", colors="all") == "sweep (all 256)"
    assert label(method="exhaustive", colors="grid", levels=4) == "sweep (grid 4)"
    assert label(method="exhaustive", colors="all", early_stop=True) == "sweep (all 256), early stop"
    assert label(method="fgsm", eps=8 / 255) == "FGSM 8/255"
    assert label(method="pgd", eps=0.03137254901960784, steps=10) == "PGD 8/255, 10 steps"
    assert label(method="pgd", eps=4 / 255, steps=1) == "PGD 4/255, 1 step"


# ---------------------------------------------------------------------------
# the real stages on the toy model
# ---------------------------------------------------------------------------
#: the attacks of the end-to-end study, in config order ("main" is the attack section)
ATTACKS = {
    "main": {"population": 20, "generations": 4},
    "de3": {"pixels": 3, "population": 20, "generations": 4},
    "sweep": {"method": "exhaustive", "colors": "corners"},
    "pgd": {"method": "pgd", "steps": 3},
    "exact": {"method": "exhaustive", "colors": "all"},
}


@pytest.fixture(scope="module")
def compared(toy, tmp_path_factory):
    """Every attack of ATTACKS on the same 6 toy images, captured and turned into propagation maps,
    then the comparison stage."""
    root = tmp_path_factory.mktemp("comparison")
    attacks, props = {}, {}
    for name, cfg in ATTACKS.items():
        out = root / f"attack_{name}.nc"
        settings = {"attack": {"num_images": 6, "batch_size": 2048, **cfg}, "device": "cpu"}
        run_stage("attack", {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"}, {"out": out}, settings)
        files = {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc", "attack": out}
        run_stage("capture", files, {"out": root / f"cubes_{name}"}, {"device": "cpu"})
        run_stage("propagation", {"cubes": root / f"cubes_{name}"}, {"out": root / f"prop_{name}.nc"}, {})
        attacks[name], props[name] = {"lenet": out}, {"lenet": root / f"prop_{name}.nc"}
    outputs = {
        "out": root / "comparison.json",
        "table": root / "comparison.html",
        "csv": root / "comparison.csv",
        "figures": root / "figures",
    }
    numbers = run_stage(  # as the CLI and the workflow run it: per_attack ports {attack: {model: path}}
        "comparison",
        {"attack": attacks, "propagation": props, "test": toy / "test.nc"},
        outputs,
        {"dataset": {"name": "digits"}, "figures": {"formats": ["png"]}},
    )
    return {"root": root, "attacks": attacks, "props": props, "outputs": outputs, "numbers": numbers}


def _success_by_row(ds):
    return {
        (int(i), int(t)): bool(s)
        for i, t, s in zip(ds["sample_id"].values, ds["target_class"].values, ds["success"].values, strict=True)
    }


@pytest.mark.slow
def test_the_ground_truth_is_the_files_success_crossed(compared):
    numbers = json.loads(compared["outputs"]["out"].read_text())
    assert list(numbers["attacks"]) == list(ATTACKS)  # config order kept
    assert numbers["sweep"] == "sweep"
    assert (
        numbers["attacks"]["sweep"]["label"] == "sweep (corners)" and numbers["attacks"]["pgd"]["pixel_attack"] is False
    )
    truth = numbers["models"]["lenet"]["ground_truth"]
    assert set(truth) == {"main", "de3"}  # every DE attack against the first sweep
    sweep = _success_by_row(load_attack(compared["attacks"]["sweep"]["lenet"]))
    for name in ("main", "de3"):
        de = _success_by_row(load_attack(compared["attacks"][name]["lenet"]))
        gt = truth[name]
        assert gt["sweep"] == "sweep" and gt["exact"] is False and gt["n"] == 6
        expected = {
            "both": sum(de[k] and sweep[k] for k in de),
            "de_only": sum(de[k] and not sweep[k] for k in de),
            "sweep_only": sum(not de[k] and sweep[k] for k in de),
            "neither": sum(not de[k] and not sweep[k] for k in de),
        }
        assert {key: gt[key]["count"] for key in expected} == expected
        assert sum(expected.values()) == gt["n"]
        assert gt["de_success"]["count"] == sum(de.values()) and gt["sweep_success"]["count"] == sum(sweep.values())
        assert gt["both"]["ci"] == pytest.approx(list(wilson_interval(expected["both"], 6)), abs=1e-6)
    assert truth["de3"]["pixels"] == 3 and truth["main"]["pixels"] == 1


@pytest.mark.slow
def test_de_never_fools_an_image_the_exact_sweep_says_cannot_be_fooled(compared):
    de, exact = (load_attack(compared["attacks"][name]["lenet"]) for name in ("main", "exact"))
    gt = compare_to_sweep(de, exact)
    assert gt.exact and gt.de_only.count == 0
    truth, hits = _success_by_row(exact), _success_by_row(de)
    assert not any(hits[k] and not truth[k] for k in hits)
    assert gt.both.count + gt.sweep_only.count == sum(truth.values())
    # the corner colours are a subset of the 256 values: what they fool, every colour fools
    corners = _success_by_row(load_attack(compared["attacks"]["sweep"]["lenet"]))
    assert all(truth[k] for k in corners if corners[k])


@pytest.mark.slow
def test_pm_statistics_of_each_attack_are_the_means_of_its_propagation_file(compared):
    numbers = compared["numbers"]
    for name in ATTACKS:
        prop = open_netcdf(compared["props"][name]["lenet"], kind="propagation")
        success = prop["success"].values.astype(bool)
        entry = numbers["models"]["lenet"]["attacks"][name]
        assert entry["rows"] == 6 and entry["success"]["count"] == int(success.sum())
        assert list(entry["layers"]) == [str(v) for v in prop["layer"].values]
        for key, select in (("layers", np.ones_like(success)), ("layers_success", success)):
            for i, layer in enumerate(prop["layer"].values):
                for metric in METRICS:
                    values = prop[metric].values[i, select]
                    got = entry[key][str(layer)][metric]
                    assert got["n"] == np.isfinite(values).sum()
                    if got["n"]:
                        assert got["mean"] == pytest.approx(np.nanmean(values), rel=1e-6, abs=1e-12)
                    if got["n"] >= 2:
                        half = stats.t.ppf(0.975, got["n"] - 1) * np.nanstd(values, ddof=1) / np.sqrt(got["n"])
                        high = min(np.nanmean(values) + half, METRIC_RANGES[metric][1])
                        assert got["high"] == pytest.approx(high, rel=1e-6, abs=1e-12)
                        assert got["low"] == pytest.approx(max(np.nanmean(values) - half, 0.0), rel=1e-6, abs=1e-12)
                    else:
                        assert got["low"] is None and got["high"] is None


@pytest.mark.slow
def test_perturbation_sizes_and_queries(compared):
    attacks = compared["numbers"]["models"]["lenet"]["attacks"]
    assert attacks["main"]["l0_mean"] <= 1 and attacks["de3"]["l0_mean"] <= 3
    assert attacks["pgd"]["linf_mean"] <= 8 and attacks["pgd"]["l0_mean"] > 3
    assert attacks["sweep"]["queries_mean"] == 64 * 2 and attacks["exact"]["queries_mean"] == 64 * 256
    queries = load_attack(compared["attacks"]["main"]["lenet"])["queries"].values
    assert attacks["main"]["queries_mean"] == pytest.approx(queries.mean(), rel=1e-6)


@pytest.mark.slow
def test_outputs_csv_html_and_figures(compared):
    outputs, numbers = compared["outputs"], compared["numbers"]
    with outputs["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    n_layers = len(numbers["models"]["lenet"]["attacks"]["main"]["layers"])
    assert rows and tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 * len(ATTACKS) * 2 * n_layers * len(METRICS)
    keys = {(r["model"], r["attack"], r["subset"], r["layer"], r["metric"]) for r in rows}
    assert len(keys) == len(rows)
    first = next(r for r in rows if r["attack"] == "pgd" and r["subset"] == "all" and r["metric"] == "peak")
    expected = numbers["models"]["lenet"]["attacks"]["pgd"]["layers"][first["layer"]]["peak"]
    assert float(first["mean"]) == expected["mean"] and int(first["n"]) == expected["n"]
    assert first["label"] == "PGD 8/255, 3 steps" and first["layer_index"] == "0"
    page = outputs["table"].read_text()
    for table in ('id="attacks"', 'id="ground-truth"', 'id="pm-statistics"'):
        assert table in page
    assert "sweep (corners)" in page and "DE 3 px" in page and page.count("<tr>") > n_layers * len(ATTACKS)
    figures = outputs["figures"]
    for path in (figures / "pm_comparison.png", figures / "lenet" / "average_pm_by_attack.png"):
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 10_000
    assert sorted(p.name for p in figures.rglob("*") if p.is_file()) == [
        "average_pm_by_attack.png",
        "pm_comparison.png",
    ]


@pytest.mark.slow
def test_files_of_another_model_or_attack_are_refused(compared, tmp_path):
    attacks, props = compared["attacks"], compared["props"]
    swapped = {**props, "pgd": props["main"]}  # the main attack's maps given as PGD's
    with pytest.raises(DataError, match=r"^comparison: .*prop_main.nc was not made from the attack of .*attack_pgd.nc"):
        compare_attacks(attacks, swapped)
    other = load_attack(attacks["main"]["lenet"])
    other.attrs["model_sha256"] = "00" * 32
    save_attack(other, tmp_path / "other.nc")
    with pytest.raises(DataError, match=r"^comparison: .*other.nc was not made with the model of .*attack_main.nc"):
        compare_attacks({**attacks, "other": {"lenet": tmp_path / "other.nc"}}, {**props, "other": props["main"]})
    with pytest.raises(DataError, match="need both an attack and a propagation file"):
        compare_attacks(attacks, {k: v for k, v in props.items() if k != "pgd"})
    without_test = compare_attacks({"main": attacks["main"]}, {"main": props["main"]})
    assert without_test["sweep"] is None and without_test["models"]["lenet"]["ground_truth"] == {}
    assert "linf_mean" not in without_test["models"]["lenet"]["attacks"]["main"]
