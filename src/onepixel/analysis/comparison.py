"""Several attacks on the same images of each model, compared: success, cost, ground truth and propagation.

A study runs its main attack (the config's ``attack`` section, usually one-pixel DE) and the
further attacks of the config's ``attacks`` (name -> overrides of ``attack``: a 3-pixel DE, the
exhaustive sweep, FGSM, PGD) on the same correctly classified images of every model. Each has its
attack file and, through capture and propagation, its propagation-map (PM) file. This module puts
them side by side, per model:

* **success and cost** of every attack: the share of attacked rows (images; image-target pairs
  when targeted) it fools, with its 95 % Wilson score interval
  (:func:`onepixel.analysis.ground_truth.wilson_interval`), its mean queries per row and, when the
  test set is given, the perturbation's mean L-inf (8-bit levels), L2 and L0 (pixels changed)
  sizes (:func:`onepixel.attack.gradient.perturbation_sizes`; an attack file holds the adversarial
  image, not the clean one);
* **ground truth**: every DE attack against the first exhaustive sweep (:func:`compare_to_sweep`,
  rows matched by ``(sample_id, target_class)``): images fooled by both, by DE only, by the sweep
  only, by neither, the share of the sweep-attackable images DE finds and the queries per success
  (:class:`~onepixel.analysis.ground_truth.GroundTruth`, Wilson intervals). With an exact sweep (every
  colour: ``colors = all`` on one-channel images, no ``early_stop``) a one-pixel DE can find nothing
  the sweep misses (``DE only`` = 0); a k-pixel DE (k > 1) searches a larger space, so it can;
* **propagation**: per layer, the mean over images of each attack's per-image PM summaries
  ``peak`` (largest normalised PMmax), ``spread`` (share of positions whose normalised PMmax exceeds
  ``propagation.spread_threshold``) and ``mass_distance_rel`` (PMmax-weighted mean Chebyshev
  distance from the attacked pixel, over the layer's size), over every attacked image
  (``subset = "all"``: a failed attack's perturbation propagates too) and over the successful ones
  (``"success"``), each with the 95 % Student-t interval of the mean over images
  (:func:`mean_interval`: ``mean ± t_{0.975, n-1} · s / sqrt(n)``, ``s`` the sample standard
  deviation; undefined values, NaN, are left out). Images are the unit: the interval says how well
  the images attacked estimate the mean over the model's correctly classified test images. For
  gradient attacks (FGSM, PGD), which change every pixel, the "attacked pixel" of ``mass_distance``
  is the most-changed one (:func:`onepixel.attack.gradient.largest_change`).

Intervals are per attack and layer, not corrected for multiple comparisons; two attacks whose
intervals are disjoint differ clearly, overlapping intervals do not say they are equal (the
attacks share images, so a paired comparison would be sharper).
"""

from __future__ import annotations

import csv
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy import stats

from onepixel.analysis.ground_truth import CI_LEVEL, GroundTruth, Proportion, compare_success
from onepixel.attack.results import attack_config, load_attack
from onepixel.attack.stage import attack_method
from onepixel.config import PIXEL_METHODS
from onepixel.errors import DataError
from onepixel.files import atomic_path, write_json
from onepixel.formats import FORMAT_KEY, check_format
from onepixel.lineage import attack_lineage, check_same, check_test_set, recorded_lineage, require
from onepixel.progress import announce
from onepixel.stages import Job

PathLike = str | os.PathLike[str]

#: the per-image PM summaries of a propagation file that are compared (``(layer, sample)`` variables)
METRICS: tuple[str, ...] = ("peak", "spread", "mass_distance_rel")
#: which attacked rows a PM statistic is over
SUBSETS: tuple[str, ...] = ("all", "success", "failure")
#: the subsets the comparison reports (JSON ``layers`` / ``layers_success``, the CSV)
REPORTED_SUBSETS: tuple[str, ...] = ("all", "success")
#: the four numbers of one statistic
STATISTICS: tuple[str, ...] = ("mean", "low", "high", "n")
#: the name of the main attack (the config's ``attack`` section) among the attacks compared
MAIN = "main"

INTERVALS = (
    "means over images with their 95 % Student-t interval (mean ± t(0.975, n-1) · s/√n, NaN values left out; "
    "no interval for n < 2); proportions with their 95 % Wilson score interval"
)


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------
def _levels_text(eps: float) -> str:
    """``8/255``: the eps-ball's radius in 8-bit levels, as the stored images obey it."""
    from onepixel.attack.gradient import eps_levels

    return f"{eps_levels(eps)}/255"


def attack_label(attack: xr.Dataset) -> str:
    """A short human label of an attack file, from its ``attack_config``.

    ``DE 1 px``, ``DE 3 px``, ``sweep (corners)``, ``sweep (all 256)``, ``sweep (grid 4)``,
    ``FGSM 8/255``, ``PGD 8/255, 10 steps`` (eps in 8-bit levels, :func:`onepixel.attack.gradient.eps_levels`);
    ``, early stop`` for a sweep that stopped at its first fooling candidate, ``, targeted`` for targeted attacks.
    """
    cfg = attack_config(attack) if "attack_config" in attack.attrs else {}
    method = str(cfg.get("method", "de"))
    if method == "exhaustive":
        colors = str(cfg.get("colors", "corners"))
        what = {"all": "all 256", "grid": f"grid {int(cfg.get('levels', 4))}"}.get(colors, colors)
        label = f"sweep ({what})" + (", early stop" if cfg.get("early_stop") else "")
    elif method == "fgsm":
        label = f"FGSM {_levels_text(float(cfg['eps']))}"
    elif method == "pgd":
        steps = int(cfg["steps"])
        label = f"PGD {_levels_text(float(cfg['eps']))}, {steps} step{'s' if steps != 1 else ''}"
    elif method == "de":
        label = f"DE {int(cfg.get('pixels', 1))} px"
    else:
        label = method
    return label + (", targeted" if cfg.get("targeted") else "")


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------
#: the range of each PM summary: its intervals are clipped to it (a share cannot be below 0)
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "peak": (0.0, math.inf),
    "spread": (0.0, 1.0),
    "mass_distance_rel": (0.0, 1.0),
}


def mean_interval(
    values: np.ndarray, level: float = CI_LEVEL, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float, float, int]:
    """Mean of the finite ``values`` and its Student-t confidence interval.

    ``mean ± t_{(1 + level)/2, n-1} · s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof = 1``) of the ``n`` finite values (NaN and infinities are left out), clipped to
    ``bounds``, the range the values can take.

    Returns:
        ``(mean, low, high, n)``; NaN bounds when ``n < 2`` (and a NaN mean when ``n == 0``).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, max(mean - half, bounds[0]), min(mean + half, bounds[1]), n


def _subset_mask(success: np.ndarray, subset: str) -> np.ndarray:
    if subset not in SUBSETS:
        raise ValueError(f"subset {subset!r} is not one of {', '.join(SUBSETS)}")
    success = np.asarray(success).astype(bool)
    return np.ones_like(success) if subset == "all" else success if subset == "success" else ~success


def pm_statistics(propagation: xr.Dataset, subset: str = "all", level: float = CI_LEVEL) -> xr.Dataset:
    """Per layer, the mean and 95 % interval over images of each PM summary of :data:`METRICS`.

    Args:
        propagation: a propagation dataset (:func:`onepixel.analysis.propagation.compute_propagation`,
            or the file of the ``propagation`` stage): ``peak``, ``spread``, ``mass_distance_rel``
            ``(layer, sample)`` and the per-sample ``success``.
        subset: ``"all"`` (every attacked row), ``"success"`` (the successful attacks) or
            ``"failure"``.

    Returns:
        Dataset over ``layer`` with ``{metric}_mean``, ``{metric}_low``, ``{metric}_high``
        (float64) and ``{metric}_n`` (int64) per metric (:func:`mean_interval` of the layer's
        values over the subset, clipped to :data:`METRIC_RANGES`), the propagation file's layer coordinates (``layer`` names,
        ``layer_index``, sizes, ...) and ``depth``, the relative depth ``(i + 1) / L`` of layer i of
        L; attributes ``subset``, ``level``, ``n_samples`` (rows in the subset).
    """
    missing = [name for name in (*METRICS, "success") if name not in propagation.variables]
    if missing:
        raise DataError(f"propagation: missing variable(s) {', '.join(missing)} of a propagation file")
    select = _subset_mask(propagation["success"].values, subset)
    n_layers = propagation.sizes["layer"]
    data: dict[str, Any] = {}
    for metric in METRICS:
        values = propagation[metric].transpose("layer", "sample").values[:, select]
        rows = [mean_interval(values[i], level, METRIC_RANGES[metric]) for i in range(n_layers)]
        long_name = propagation[metric].attrs.get("long_name", metric)
        for k, stat in enumerate(STATISTICS):
            column = np.array([row[k] for row in rows], dtype=np.int64 if stat == "n" else np.float64)
            what = {
                "mean": f"mean over images of {long_name}",
                "low": f"lower bound of the {level:.0%} Student-t interval of the mean of {metric}",
                "high": f"upper bound of the {level:.0%} Student-t interval of the mean of {metric}",
                "n": f"images with a defined {metric}",
            }[stat]
            data[f"{metric}_{stat}"] = ("layer", column, {"long_name": what})
    coords: dict[str, Any] = {
        str(name): ("layer", coord.values) for name, coord in propagation.coords.items() if coord.dims == ("layer",)
    }
    coords["depth"] = ("layer", (np.arange(n_layers) + 1) / max(1, n_layers), {"long_name": "relative depth (i+1)/L"})
    return xr.Dataset(
        data,
        coords=coords,
        attrs={"subset": subset, "level": float(level), "n_samples": int(select.sum()), "intervals": INTERVALS},
    )


# ---------------------------------------------------------------------------
# DE against the sweep
# ---------------------------------------------------------------------------
def _where(ds: xr.Dataset, default: str) -> str:
    return str(ds.encoding.get("source", default))


def sweep_is_exact(sweep: xr.Dataset) -> bool:
    """Whether an exhaustive attack file's colour set held every colour (``256^C``) and nothing stopped early.

    As :attr:`onepixel.attack.exhaustive.SweepResult.exact`: ``colors = all`` (one channel), or
    ``grid`` with 256 levels per channel; never with ``early_stop``.
    """
    cfg = attack_config(sweep)
    channels = int(sweep.sizes["channel"])
    colors, levels = cfg.get("colors", "corners"), int(cfg.get("levels", 4))
    size = {"corners": 2**channels, "grid": levels**channels, "all": 256 if channels == 1 else 0}.get(colors, 0)
    return size == 256**channels and not bool(cfg.get("early_stop", False))


def _row_keys(ds: xr.Dataset) -> list[tuple[int, int]]:
    ids = np.asarray(ds["sample_id"].values, dtype=np.int64)
    targets = np.asarray(ds["target_class"].values, dtype=np.int64)
    return [(int(i), int(t)) for i, t in zip(ids, targets, strict=True)]


def _check_same_origin(stage: str, path: str, ds: xr.Dataset, ref_path: str, ref: xr.Dataset) -> None:
    """Refuse ``ds`` when its ``model_sha256`` or ``test_digest`` differs from ``ref``'s (one line naming both)."""
    keys = ("model_sha256", "test_digest")
    check_same(
        stage, path, require(ds.attrs, keys, path, "attack"), ref_path, require(ref.attrs, keys, ref_path, "attack")
    )


def compare_to_sweep(de: xr.Dataset, sweep: xr.Dataset) -> GroundTruth:
    """DE's attack file against the exhaustive sweep's on the same rows: a :class:`GroundTruth`.

    Rows are matched by ``(sample_id, target_class)`` (in DE's order); success is each file's
    re-evaluated ``success``, queries its ``queries``; ``exact`` is :func:`sweep_is_exact`.

    Raises:
        DataError: one line naming both files when the sweep file is not an exhaustive attack,
            the two were made with another model or test set (``model_sha256``, ``test_digest``),
            or they do not hold the same rows (each row once).
    """
    de_path, sweep_path = _where(de, "the DE attack file"), _where(sweep, "the sweep file")
    if attack_method(sweep) != "exhaustive":
        raise DataError(
            f"comparison: {sweep_path} is a {attack_method(sweep)} attack, not the exhaustive sweep to compare "
            f"{de_path} with"
        )
    _check_same_origin("comparison", de_path, de, sweep_path, sweep)
    de_keys, sweep_keys = _row_keys(de), _row_keys(sweep)
    position = {key: i for i, key in enumerate(sweep_keys)}
    repeated = len(set(de_keys)) != len(de_keys) or len(position) != len(sweep_keys)
    only_de = [key for key in de_keys if key not in position]
    if repeated or only_de or len(de_keys) != len(sweep_keys):
        if repeated:
            why = "a (sample_id, target_class) row appears twice"
        elif only_de:
            sid, target = only_de[0]
            why = f"{len(only_de)} of its {len(de_keys)} rows are not in the sweep's {len(sweep_keys)} (e.g. sample_id {sid}, target_class {target})"
        else:
            why = f"it holds {len(de_keys)} rows, the sweep {len(sweep_keys)}"
        raise DataError(
            f"comparison: {de_path} and {sweep_path} do not hold the same attacked rows ({why}); "
            "attack the same images (one attack.num_images and attack.seed)"
        )
    order = np.array([position[key] for key in de_keys], dtype=np.int64)
    return compare_success(
        np.asarray(de["success"].values, bool),
        np.asarray(de["queries"].values),
        np.asarray(sweep["success"].values, bool)[order],
        np.asarray(sweep["queries"].values)[order],
        exact=sweep_is_exact(sweep),
    )


# ---------------------------------------------------------------------------
# all attacks of all models
# ---------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """JSON-safe number: 7 significant digits, ``None`` for NaN or infinity."""
    number = float(value)
    return float(f"{number:.7g}") if math.isfinite(number) else None


def _read_propagation(path: Path) -> xr.Dataset:
    """The per-sample summaries and layer coordinates of a propagation file (not its maps), in memory."""
    file = os.fspath(path)
    try:
        with xr.open_dataset(file, engine="netcdf4") as ds:
            check_format(ds.attrs.get(FORMAT_KEY), "propagation", file)
            missing = [name for name in (*METRICS, "success", "sample_id") if name not in ds.variables]
            if missing:
                raise DataError(f"{file}: missing variable(s) {', '.join(missing)} of a propagation file")
            keep = [name for name in ds.data_vars if "layer" in ds[name].dims and "sample" in ds[name].dims]
            out = ds[keep].load()
            out.attrs = dict(ds.attrs)
    except DataError:
        raise
    except Exception as exc:  # netCDF4 raises OSError/ValueError/RuntimeError for corrupt files
        raise DataError(
            f"{file}: not a readable netCDF file, truncated or corrupt? ({exc.__class__.__name__})"
        ) from exc
    return out


def _layer_numbers(statistics: xr.Dataset) -> dict[str, dict[str, Any]]:
    """``{layer: {"index", "depth", metric: {mean, low, high, n}}}`` of a :func:`pm_statistics` dataset, in depth order."""
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(str(n) for n in statistics["layer"].values):
        entry: dict[str, Any] = {"index": i, "depth": _number(statistics["depth"].values[i])}
        for metric in METRICS:
            entry[metric] = {
                stat: int(statistics[f"{metric}_{stat}"].values[i])
                if stat == "n"
                else _number(statistics[f"{metric}_{stat}"].values[i])
                for stat in STATISTICS
            }
        out[name] = entry
    return out


def _sizes(attack: xr.Dataset, test: xr.Dataset) -> dict[str, float | None]:
    """Mean L-inf (8-bit levels), L2 ([0, 1] scale) and L0 (pixels changed) of an attack's perturbations."""
    import torch

    from onepixel.attack.gradient import perturbation_sizes

    ids = np.asarray(attack["sample_id"].values, dtype=np.int64)
    clean = torch.from_numpy(np.ascontiguousarray(test["image"].values[ids]))
    adversarial = torch.from_numpy(np.ascontiguousarray(attack["adversarial"].values))
    if len(ids) == 0:
        return {"linf_mean": None, "l2_mean": None, "l0_mean": None}
    sizes = perturbation_sizes(clean, adversarial)
    return {
        "linf_mean": _number(sizes.linf.double().mean()),
        "l2_mean": _number(sizes.l2.mean()),
        "l0_mean": _number(sizes.perturbed_pixels.double().mean()),
    }


def _paths(mapping: Mapping[str, Mapping[str, PathLike]], what: str) -> dict[str, dict[str, Path]]:
    if not mapping:
        raise DataError(f"comparison: no {what} files given")
    return {str(name): {str(m): Path(p) for m, p in dict(files).items()} for name, files in mapping.items()}


def _check_inputs(attacks: dict[str, dict[str, Path]], propagation: dict[str, dict[str, Path]]) -> list[str]:
    """The models, after checking that every attack has one attack and one propagation file per model."""
    names = list(attacks)
    if list(propagation) != names and set(propagation) != set(names):
        odd = sorted(set(names) ^ set(propagation))
        raise DataError(
            f"comparison: attack(s) {', '.join(odd)} need both an attack and a propagation file; "
            f"got attack files for {', '.join(names)} and propagation files for {', '.join(propagation)}"
        )
    models = list(attacks[names[0]])
    for name in names:
        for files, what in ((attacks[name], "attack"), (propagation[name], "propagation")):
            if set(files) != set(models):
                odd = sorted(set(models) ^ set(files))
                raise DataError(
                    f"comparison: attack {name!r} has no {what} file, or one too many, for model(s) {', '.join(odd)}; "
                    f"every attack needs one for each of {', '.join(models)}"
                )
    return models


def compare_attacks(
    attacks: Mapping[str, Mapping[str, PathLike]],
    propagation: Mapping[str, Mapping[str, PathLike]],
    test: PathLike | None = None,
) -> dict[str, Any]:
    """Every attack of every model side by side: success, cost, ground truth, PM statistics per layer.

    Args:
        attacks: ``{attack_name: {model: attack file}}``; ``"main"`` is the config's ``attack``
            section, the others the config's ``attacks`` keys, in config order (the order kept here).
        propagation: ``{attack_name: {model: propagation file}}`` of the same attacks and models.
        test: the test set (optional): with it, the perturbation sizes (``linf_mean``, ``l2_mean``,
            ``l0_mean``) of every attack are given, and every attack file is checked to be on it.

    Before any work, for each model every attack file must record the ``model_sha256`` and
    ``test_digest`` of the first attack's file, and each propagation file must have been made from
    its attack file (the ``attack_digest`` it records, :mod:`onepixel.lineage`); otherwise a
    one-line DataError names the two files.

    Returns:
        A JSON-able dict (numbers, strings, lists, ``None`` for NaN and infinity)::

            {"level": 0.95, "intervals": "...", "sweep": "sweep" or None,
             "attacks": {name: {"label", "method", "pixel_attack", "config"}},
             "models": {model: {
                 "normalisation", "spread_threshold",
                 "attacks": {name: {"label", "rows", "images", "success": Proportion.to_dict(),
                                    "queries_mean", ["linf_mean", "l2_mean", "l0_mean"],
                                    "layers": {layer: {"index", "depth",
                                                       "peak"/"spread"/"mass_distance_rel":
                                                           {"mean", "low", "high", "n"}}},
                                    "layers_success": {...}}},
                 "ground_truth": {de_name: {"sweep", "pixels", **GroundTruth.to_dict()}}}}}

        ``layers`` are over every attacked row, ``layers_success`` over the successful ones;
        ``ground_truth`` holds every DE attack against the first exhaustive attack (empty without one).
    """
    attack_paths, prop_paths = _paths(attacks, "attack"), _paths(propagation, "propagation")
    models = _check_inputs(attack_paths, prop_paths)
    names = list(attack_paths)
    loaded = {name: {model: load_attack(attack_paths[name][model]) for model in models} for name in names}
    test_ds = None
    if test is not None:
        from onepixel.data import load_dataset

        test_ds = load_dataset(test)
    for model in models:  # the files of each model belong together, before any work
        ref_path, ref = attack_paths[names[0]][model], loaded[names[0]][model]
        for name in names:
            path, ds = attack_paths[name][model], loaded[name][model]
            _check_same_origin("comparison", os.fspath(path), ds, os.fspath(ref_path), ref)
            prop_path = prop_paths[name][model]
            check_same("comparison", prop_path, recorded_lineage(prop_path, "propagation"), path, attack_lineage(ds))
            if test is not None and test_ds is not None:
                check_test_set("comparison", test, test_ds, path, str(ds.attrs["test_digest"]))
    methods = {name: attack_method(loaded[name][models[0]]) for name in names}
    sweep = next((name for name in names if methods[name] == "exhaustive"), None)
    out: dict[str, Any] = {
        "level": CI_LEVEL,
        "intervals": INTERVALS,
        "sweep": sweep,
        "attacks": {
            name: {
                "label": attack_label(loaded[name][models[0]]),
                "method": methods[name],
                "pixel_attack": methods[name] in PIXEL_METHODS,
                "config": attack_config(loaded[name][models[0]]),
            }
            for name in names
        },
        "models": {},
    }
    for model in models:
        entry: dict[str, Any] = {"attacks": {}, "ground_truth": {}}
        for name in names:
            attack, prop_path = loaded[name][model], prop_paths[name][model]
            prop = _read_propagation(prop_path)
            if not np.array_equal(prop["sample_id"].values, attack["sample_id"].values):
                raise DataError(
                    f"comparison: {prop_path} holds other rows than {attack_paths[name][model]}; pass files of one run"
                )
            entry.setdefault("normalisation", str(prop.attrs.get("normalisation", "")))
            entry.setdefault("spread_threshold", _number(prop.attrs.get("spread_threshold", math.nan)))
            success = np.asarray(attack["success"].values, bool)
            queries = np.asarray(attack["queries"].values, dtype=np.float64)
            numbers: dict[str, Any] = {
                "label": out["attacks"][name]["label"],
                "rows": int(success.size),
                "images": int(np.unique(attack["sample_id"].values).size),
                "success": Proportion.of(int(success.sum()), int(success.size)).to_dict(),
                "queries_mean": _number(queries.mean()) if queries.size else None,
                "attack_digest": attack_lineage(attack)["attack_digest"],  # what summary.json checks it against
            }
            if test_ds is not None:
                numbers.update(_sizes(attack, test_ds))
            numbers["layers"] = _layer_numbers(pm_statistics(prop, "all"))
            numbers["layers_success"] = _layer_numbers(pm_statistics(prop, "success"))
            entry["attacks"][name] = numbers
        if sweep is not None:
            for name in names:
                if methods[name] == "de":
                    truth = compare_to_sweep(loaded[name][model], loaded[sweep][model])
                    pixels = int(loaded[name][model].sizes.get("pixel", 1))
                    entry["ground_truth"][name] = {"sweep": sweep, "pixels": pixels, **truth.to_dict()}
        out["models"][model] = entry
    return out


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------
CSV_COLUMNS = (
    "model",
    "attack",
    "label",
    "subset",
    "layer",
    "layer_index",
    "depth",
    "metric",
    "mean",
    "low",
    "high",
    "n",
)


def comparison_rows(numbers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The PM statistics of :func:`compare_attacks` as long rows (the columns of :data:`CSV_COLUMNS`):
    one per model, attack, subset (``all``, ``success``), layer and metric."""
    rows: list[dict[str, Any]] = []
    for model, entry in numbers["models"].items():
        for name, attack in entry["attacks"].items():
            for subset, key in (("all", "layers"), ("success", "layers_success")):
                for layer, values in attack[key].items():
                    for metric in METRICS:
                        rows.append(
                            {
                                "model": model,
                                "attack": name,
                                "label": attack["label"],
                                "subset": subset,
                                "layer": layer,
                                "layer_index": values["index"],
                                "depth": values["depth"],
                                "metric": metric,
                                **{stat: values[metric][stat] for stat in STATISTICS},
                            }
                        )
    return rows


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> None:
    """Write :func:`comparison_rows` as CSV atomically (missing values empty)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if row.get(key) is None else row[key] for key in CSV_COLUMNS} for row in rows)


_DASH = "&ndash;"


def _percent(value: Any) -> str:
    return _DASH if value is None else f"{100 * value:.1f}&nbsp;%"


def _share(p: Mapping[str, Any]) -> str:
    """``33.3 % (12.1 – 64.6) · 2/6``: a proportion, its Wilson interval and its counts."""
    low, high = p["ci"]
    ci = "" if low is None else f' <span class="ci">({100 * low:.1f}&nbsp;&ndash;&nbsp;{100 * high:.1f})</span>'
    return f'{_percent(p["rate"])}{ci} <span class="n">{p["count"]}/{p["n"]}</span>'


def _mean(stat: Mapping[str, Any], digits: int = 3) -> str:
    """``0.412 [0.301, 0.523]``: a mean and its interval."""
    if stat["mean"] is None:
        return _DASH
    ci = (
        "" if stat["low"] is None else f' <span class="ci">[{stat["low"]:.{digits}f}, {stat["high"]:.{digits}f}]</span>'
    )
    return f"{stat['mean']:.{digits}f}{ci}"


def _count(value: Any, digits: int = 0) -> str:
    return _DASH if value is None else f"{value:,.{digits}f}"


_STYLE = (
    "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f0f0f0}"
    "td:first-child{text-align:left}caption{text-align:left;font-weight:bold;margin-bottom:.4em}"
    ".ci,.n{color:#666;font-size:85%}td.name{text-align:left}</style>"
)


_NAME_CELL = ' class="name"'


def _table(table_id: str, caption: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        f'<table id="{table_id}"><caption>{caption}</caption>',
        "<tr>" + "".join(f"<th>{cell}</th>" for cell in head) + "</tr>",
        *(
            "<tr>" + "".join(f"<td{_NAME_CELL if i < 3 else ''}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
            for row in rows
        ),
        "</table>",
    ]


def comparison_html(numbers: Mapping[str, Any], dataset: str = "") -> str:
    """A self-contained HTML page (styled like :func:`onepixel.summary.summary_html`) with the tables
    ``attacks`` (success and cost of every attack), ``ground-truth`` (every DE attack against the
    sweep: the four cells, each success, the share of sweep-attackable images DE finds, queries per
    success) and ``pm-statistics`` (per model, layer and attack the mean [95 % interval] of peak,
    spread and relative mass distance over every attacked image)."""
    attacks = numbers["attacks"]
    esc = html.escape

    def label(name: str) -> str:
        return f'{esc(attacks[name]["label"])} <span class="n">({esc(name)})</span>'

    has_sizes = any("linf_mean" in a for entry in numbers["models"].values() for a in entry["attacks"].values())
    head = ["model", "attack", "method", "rows", "success (95&nbsp;% interval)", "mean queries"]
    if has_sizes:
        head += ["mean L&infin; (levels)", "mean L2", "mean L0 (pixels)"]
    overview = []
    for model, entry in numbers["models"].items():
        for name, a in entry["attacks"].items():
            row = [esc(model), label(name), esc(attacks[name]["method"]), str(a["rows"]), _share(a["success"])]
            row.append(_count(a["queries_mean"]))
            if has_sizes:
                row += [_count(a.get("linf_mean"), 1), _count(a.get("l2_mean"), 3), _count(a.get("l0_mean"), 1)]
            overview.append(row)
    truth_rows = []
    for model, entry in numbers["models"].items():
        for name, gt in entry["ground_truth"].items():
            sweep = gt["sweep"]
            truth_rows.append(
                [
                    esc(model),
                    label(name),
                    label(sweep) + (" <b>exact</b>" if gt["exact"] else ""),
                    str(gt["n"]),
                    *(_share(gt[key]) for key in ("both", "de_only", "sweep_only", "neither")),
                    _share(gt["de_success"]),
                    _share(gt["sweep_success"]),
                    _share(gt["de_found"]),
                    f"{_count(gt['de_queries_per_success'])} / {_count(gt['sweep_queries_per_success'])}",
                ]
            )
    pm_rows = []
    for model, entry in numbers["models"].items():
        first = next(iter(entry["attacks"].values()))
        for layer in first["layers"]:
            for name, a in entry["attacks"].items():
                values = a["layers"].get(layer)
                if values is None:
                    continue
                pm_rows.append(
                    [
                        esc(model),
                        f"{values['index']}: {esc(layer)}",
                        label(name),
                        *(_mean(values[metric]) for metric in METRICS),
                        str(values["peak"]["n"]),
                    ]
                )
    title = f"Attacks compared{': ' + esc(dataset) if dataset else ''}"
    thresholds = sorted(
        {str(e.get("spread_threshold")) for e in numbers["models"].values() if e.get("spread_threshold") is not None}
    )
    spread = f"share of positions with normalised PMmax &gt; {', '.join(thresholds) or 'the threshold'}"
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title>',
        _STYLE,
        "</head><body>",
        f"<h1>{title}</h1>",
        *_table(
            "attacks",
            "Every attack on the same images: the share of attacked rows it fools (95&nbsp;% Wilson interval, "
            "count/rows) and its mean model queries per row",
            head,
            overview,
        ),
    ]
    if truth_rows:
        parts += _table(
            "ground-truth",
            "DE against the exhaustive sweep on the same images (rows matched by image and target): the share "
            "of images fooled by both, by DE only, by the sweep only, by neither (95&nbsp;% Wilson intervals); "
            "&ldquo;DE finds&rdquo; is the share of the sweep-attackable images DE fools too. With an exact sweep "
            "(every colour) a one-pixel DE cannot fool an image the sweep does not",
            [
                "model",
                "DE attack",
                "sweep",
                "images",
                "both",
                "DE only",
                "sweep only",
                "neither",
                "DE success",
                "sweep success",
                "DE finds",
                "queries per success (DE / sweep)",
            ],
            truth_rows,
        )
    else:
        parts.append("<p>No exhaustive sweep among the attacks: no ground truth for DE.</p>")
    parts += _table(
        "pm-statistics",
        "Propagation per layer: mean over every attacked image, with its 95&nbsp;% Student-t interval, of the "
        f"peak of the normalised PMmax (1 = the largest original activation), its spread ({spread}) and the "
        "PMmax-weighted mean distance from the attacked pixel over the layer's size",
        ["model", "layer", "attack", "peak", "spread", "mass distance (rel.)", "images"],
        pm_rows,
    )
    prov = numbers.get("provenance", {})
    made = ", ".join(f"{key} {esc(str(prov[key]))}" for key in ("git_commit", "config_digest") if key in prov)
    parts += [f"<p>{esc(numbers.get('intervals', INTERVALS))}.</p>", f"<p>Made from {made}.</p>" if made else ""]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------
def _summary_line(numbers: Mapping[str, Any], dataset: str) -> str:
    """``comparison digits: 4 attacks x 2 models; lenet: DE 1 px found 5 of 6 sweep-attackable images, ...``."""
    n_attacks, n_models = len(numbers["attacks"]), len(numbers["models"])
    parts = []
    for model, entry in numbers["models"].items():
        main = entry["ground_truth"].get(MAIN) or next(iter(entry["ground_truth"].values()), None)
        if main is not None:
            found = main["de_found"]
            parts.append(f"{model}: DE found {found['count']} of {found['n']} sweep-attackable images")
        else:
            rates = ", ".join(
                f"{a['label']} {a['success']['count']}/{a['success']['n']}" for a in entry["attacks"].values()
            )
            parts.append(f"{model}: {rates} fooled")
    where = f" {dataset}" if dataset else ""
    return (
        f"comparison{where}: {n_attacks} attack(s) x {n_models} model(s); "
        + "; ".join(parts[:3])
        + ("; ..." if len(parts) > 3 else "")
    )


def comparison_stage(job: Job) -> dict[str, Any]:
    """Compare the attacks of every model: ``out`` (comparison.json), ``table`` (HTML page), ``csv``
    (PM statistics, long) and ``figures`` (a folder: ``pm_comparison.<fmt>`` and
    ``<model>/average_pm_by_attack.<fmt>``, every format of ``figures.formats``).

    ``job.inputs["attack"]`` and ``job.inputs["propagation"]`` are ``{attack_name: {model: path}}``
    (:func:`compare_attacks`); an optional ``job.inputs["test"]`` (the test set) adds the
    perturbation sizes.

    Returns:
        The numbers written to comparison.json.
    """
    from onepixel.figures.comparison import average_pm_by_attack_figure, pm_comparison_figure

    dataset = str(job.cfg["dataset"]["name"])
    formats = tuple(job.cfg["figures"]["formats"])
    test = job.inputs.get("test")
    numbers = compare_attacks(job.inputs["attack"], job.inputs["propagation"], test=test)
    numbers = write_json({"dataset": dataset, **numbers}, job.output("out"), kind="comparison", sort_keys=False)
    with atomic_path(job.output("table")) as tmp:
        tmp.write_text(comparison_html(numbers, dataset))
    write_rows_csv(comparison_rows(numbers), job.output("csv"))
    out = job.output("figures")
    written = pm_comparison_figure(
        numbers, out / "pm_comparison", formats, title=f"Propagation of each attack through the layers ({dataset})"
    )
    labels = {name: info["label"] for name, info in numbers["attacks"].items()}
    for model in numbers["models"]:
        paths = {name: Path(files[model]) for name, files in job.inputs["propagation"].items()}
        written += average_pm_by_attack_figure(
            paths, labels, model, out / model / "average_pm_by_attack", formats, title=f"{model} on {dataset}"
        )
    job.log.info("wrote %d comparison figure files under %s", len(written), out)
    announce(_summary_line(numbers, dataset))
    return numbers
