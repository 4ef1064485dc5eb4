"""Propagation maps (PM) of one-pixel attacks, layer by layer (PAPER.md section 2).

Interpretation used by this project (Vargas & Su, arXiv 1902.02947, define PMs
only through their Figure 1): for layer ``l`` with feature maps ``F_l(x)`` of
shape ``(C, H, W)``, ``D_l = |F_l(x_adv) - F_l(x)|``;
``PMmax_l = max_c D_l`` and ``PMavg_l = mean_c D_l``. Normalised PMs divide by
the maximum of the original layer output, ``max |F_l(x)|`` over ``(C, H, W)``,
so 1.0 means "as large as the largest original activation" ("bright colours
show differences in feature map that are close to the maximum original layer
output").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import xarray as xr

from onepixel.errors import ConfigError, DataError
from onepixel.utils import open_netcdf, provenance, write_netcdf

log = logging.getLogger(__name__)

NORMALISATIONS = ("image", "layer")

INTERPRETATION = (
    "D_l = |F_l(x_adv) - F_l(x)|; PMmax_l = max over channels of D_l, PMavg_l = mean over channels. "
    "Normalised PMs divide by max |F_l(x)| over (channel, y, x) of each clean image (normalisation=image) "
    "or over all images (normalisation=layer), so 1.0 means 'as large as the largest original activation' "
    "(Vargas & Su 2019, Fig. 1: bright colours show differences close to the maximum original layer output). "
    "Where that maximum is 0 (a dead layer) the normalised map is 0 if D_l is 0 everywhere, else NaN (undefined). "
    "Averages are element-wise means of normalised PMmax/PMavg over successful (resp. failed) attacks, NaN maps excluded. "
    "peak = max of normalised PMmax; spread = fraction of positions with normalised PMmax > spread_threshold; "
    "mass_distance = PMmax-weighted mean Chebyshev distance (layer cells) from the attacked pixel mapped into the "
    "layer grid (floor(x * W_l / W)), mass_distance_rel = mass_distance / max(H_l, W_l). Interpretation of PAPER.md section 2."
)


def propagation_maps(clean: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw propagation maps of a batch of feature maps.

    Args:
        clean: ``(N, C, H, W)`` feature maps ``F_l(x)``.
        adversarial: ``(N, C, H, W)`` feature maps ``F_l(x_adv)``.

    Returns:
        ``pm_max`` ``(N, H, W)``, ``pm_avg`` ``(N, H, W)`` (max and mean over channels of
        ``|adversarial - clean|``) and ``scale`` ``(N,)`` = ``max |clean|`` per image;
        computed in float64, returned as float32.
    """
    if clean.shape != adversarial.shape or clean.ndim != 4:
        raise ValueError(f"clean and adversarial must be equal (N, C, H, W) arrays; got {clean.shape} and {adversarial.shape}")
    diff = np.abs(adversarial.astype(np.float64) - clean.astype(np.float64))
    scale = np.abs(clean.astype(np.float64)).max(axis=(1, 2, 3), initial=0.0)
    return diff.max(axis=1).astype(np.float32), diff.mean(axis=1).astype(np.float32), scale.astype(np.float32)


def normalise(maps: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``maps / scale`` per sample; a zero scale gives 0 for an all-zero map, else NaN.

    Args:
        maps: ``(N, H, W)`` raw propagation maps.
        scale: ``(N,)`` divisor of each sample.
    """
    scale64 = scale.astype(np.float64)[:, None, None]
    out = np.divide(maps, scale64, out=np.zeros(maps.shape, np.float64), where=scale64 > 0)
    undefined = (scale <= 0) & (maps.reshape(len(maps), -1) != 0).any(axis=1)
    out[undefined] = np.nan
    return out.astype(np.float32)


def chebyshev_distance_grid(height: int, width: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(N, height, width)`` Chebyshev distance of every cell from ``(x[n], y[n])``."""
    cols = np.abs(np.arange(width)[None, None, :] - np.asarray(x)[:, None, None])
    rows = np.abs(np.arange(height)[None, :, None] - np.asarray(y)[:, None, None])
    return np.maximum(cols, rows)


def map_summaries(
    pm_max: np.ndarray, pm_max_norm: np.ndarray, x: np.ndarray, y: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Per-sample ``peak``, ``spread``, ``mass_distance`` and ``mass_distance_rel`` of one layer.

    Args:
        pm_max: ``(N, H, W)`` raw PMmax (the mass of ``mass_distance``; scale-free).
        pm_max_norm: ``(N, H, W)`` normalised PMmax (``peak``, ``spread``).
        x, y: ``(N,)`` attacked pixel in the layer's grid.
        threshold: normalised value above which a position counts as reached.

    Returns:
        ``(N,)`` arrays; NaN where the normalised map is undefined (NaN) or, for
        the distances, where the map has no mass at all.
    """
    n, height, width = pm_max.shape
    flat = pm_max_norm.reshape(n, -1)
    undefined = np.isnan(flat).any(axis=1)
    peak = flat.max(axis=1)  # NaN propagates: an undefined map has an undefined peak
    spread = (flat > threshold).mean(axis=1)
    spread[undefined] = np.nan
    mass = pm_max.astype(np.float64).reshape(n, -1)
    total = mass.sum(axis=1)
    dist = chebyshev_distance_grid(height, width, x, y).reshape(n, -1)
    mass_distance = np.full(n, np.nan)
    np.divide((mass * dist).sum(axis=1), total, out=mass_distance, where=total > 0)
    return {
        "peak": peak.astype(np.float64),
        "spread": spread,
        "mass_distance": mass_distance,
        "mass_distance_rel": mass_distance / max(height, width),
    }


def _average(maps: np.ndarray, select: np.ndarray) -> tuple[np.ndarray, int]:
    """Element-wise mean of the defined (non-NaN) maps among ``select``, and how many were averaged."""
    valid = select & ~np.isnan(maps.reshape(len(maps), -1)).any(axis=1)
    if not valid.any():
        return np.full(maps.shape[1:], np.nan, np.float32), 0
    return maps[valid].astype(np.float64).mean(axis=0).astype(np.float32), int(valid.sum())


def compute_propagation(
    cube_paths: list[Path], normalisation: str = "image", spread_threshold: float = 0.1
) -> xr.Dataset:
    """Propagation maps and their summaries for every layer cube of one model.

    Args:
        cube_paths: layer files of :func:`onepixel.capture.run_capture_stage`, in depth order.
        normalisation: ``"image"`` (divide by each clean image's ``max |F_l(x)|``) or
            ``"layer"`` (by the maximum over all images of the layer).
        spread_threshold: normalised PMmax value above which a position counts as reached.

    Returns:
        Dataset with, for layer ``i``, ``pm_max_{i}``, ``pm_avg_{i}``, ``pm_max_norm_{i}``,
        ``pm_avg_norm_{i}`` ``(sample, y_{i}, x_{i})``, ``avg_pm_{max,avg}_{success,failure}_{i}``
        ``(y_{i}, x_{i})``; ``peak``, ``spread``, ``mass_distance``, ``mass_distance_rel``,
        ``scale``, ``pixel_x_layer``, ``pixel_y_layer`` ``(layer, sample)``;
        ``n_averaged_success``/``n_averaged_failure`` ``(layer,)``.
    """
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"propagation.normalisation: {normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
    if spread_threshold < 0:
        raise ConfigError(f"propagation.spread_threshold: {spread_threshold} must be >= 0")
    if not cube_paths:
        raise DataError("propagation: no layer cubes given")
    data_vars: dict[str, tuple] = {}
    per_layer: dict[str, list] = {key: [] for key in ("layer", "layer_index", "layer_height", "layer_width", "stride")}
    summaries: dict[str, list[np.ndarray]] = {}
    reference = None
    for i, path in enumerate(cube_paths):
        cube = open_netcdf(path, required=("clean", "adversarial", "pixel_x_layer", "pixel_y_layer", "success"))
        if reference is None:
            reference = cube
        elif not np.array_equal(cube["sample_id"].values, reference["sample_id"].values):
            raise DataError(f"{path}: sample_id differs from {cube_paths[0]}; cubes of one model must share samples")
        pm_max, pm_avg, scale = propagation_maps(cube["clean"].values, cube["adversarial"].values)
        if normalisation == "layer":
            scale = np.full_like(scale, scale.max(initial=0.0))
        pm_max_norm, pm_avg_norm = normalise(pm_max, scale), normalise(pm_avg, scale)
        height, width = pm_max.shape[1:]
        dims = ("sample", f"y_{i}", f"x_{i}")
        name = str(cube.attrs.get("layer", Path(path).stem))
        label = f"layer {name}"
        data_vars[f"pm_max_{i}"] = (dims, pm_max, {"layer": name, "long_name": f"PMmax of {label}", "units": "1"})
        data_vars[f"pm_avg_{i}"] = (dims, pm_avg, {"layer": name, "long_name": f"PMavg of {label}", "units": "1"})
        data_vars[f"pm_max_norm_{i}"] = (dims, pm_max_norm, {"layer": name, "long_name": f"normalised PMmax of {label}", "units": "1"})
        data_vars[f"pm_avg_norm_{i}"] = (dims, pm_avg_norm, {"layer": name, "long_name": f"normalised PMavg of {label}", "units": "1"})
        success = cube["success"].values.astype(bool)
        for outcome, select, adjective in (("success", success, "successful"), ("failure", ~success, "failed")):
            for kind, maps in (("max", pm_max_norm), ("avg", pm_avg_norm)):
                mean, count = _average(maps, select)
                long_name = f"mean normalised PM{kind} over {adjective} attacks, {label}"
                data_vars[f"avg_pm_{kind}_{outcome}_{i}"] = (dims[1:], mean, {"layer": name, "long_name": long_name, "units": "1"})
            summaries.setdefault(f"n_averaged_{outcome}", []).append(np.asarray(count))
        px, py = cube["pixel_x_layer"].values, cube["pixel_y_layer"].values
        for key, value in map_summaries(pm_max, pm_max_norm, px, py, spread_threshold).items():
            summaries.setdefault(key, []).append(value)
        for key, value in (("scale", scale), ("pixel_x_layer", px), ("pixel_y_layer", py)):
            summaries.setdefault(key, []).append(value)
        per_layer["layer"].append(name)
        per_layer["layer_index"].append(i)
        per_layer["layer_height"].append(height)
        per_layer["layer_width"].append(width)
        per_layer["stride"].append(float(cube.attrs.get("stride", np.nan)))
    for key, values in summaries.items():
        data_vars[key] = (("layer",) if key.startswith("n_averaged") else ("layer", "sample"), np.stack(values), _SUMMARY_ATTRS[key])
    coords = {key: ("layer", np.asarray(values)) for key, values in per_layer.items()}
    for key in ("sample_id", "success", "true_class", "adv_class", "pixel_x", "pixel_y"):
        if key in reference.coords:
            coords[key] = ("sample", reference[key].values)
    attrs = {
        "normalisation": normalisation,
        "spread_threshold": float(spread_threshold),
        "interpretation": INTERPRETATION,
        "n_layers": len(cube_paths),
        **{key: value for key, value in reference.attrs.items() if key in ("input_size",)},
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


_SUMMARY_ATTRS = {
    "peak": {"long_name": "maximum of the normalised PMmax", "units": "1"},
    "spread": {"long_name": "fraction of positions with normalised PMmax above spread_threshold", "units": "1"},
    "mass_distance": {"long_name": "PMmax-weighted mean Chebyshev distance from the attacked pixel", "units": "layer cells"},
    "mass_distance_rel": {"long_name": "mass_distance / max(layer height, layer width)", "units": "1"},
    "scale": {"long_name": "divisor of the normalised maps (max |F_l(x)|)", "units": "1"},
    "pixel_x_layer": {"long_name": "attacked pixel's column in the layer grid", "units": "layer cells"},
    "pixel_y_layer": {"long_name": "attacked pixel's row in the layer grid", "units": "layer cells"},
    "n_averaged_success": {"long_name": "successful attacks in avg_pm_*_success_*", "units": "1"},
    "n_averaged_failure": {"long_name": "failed attacks in avg_pm_*_failure_*", "units": "1"},
}


def read_layer_index(cube_dir: str | os.PathLike[str]) -> list[Path]:
    """The layer files of ``cube_dir`` in depth order, from its ``layers.json``."""
    directory = Path(cube_dir)
    index = directory / "layers.json"
    if not index.is_file():
        raise DataError(f"{directory}: no layers.json; run the capture stage first")
    try:
        entries = json.loads(index.read_text())["layers"]
        files = [directory / entry["file"] for entry in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{index}: not a layer index written by the capture stage ({exc})") from exc
    if not files:
        raise DataError(f"{index}: lists no layers")
    return files


def run_propagation_stage(
    cube_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    normalisation: str = "image",
    spread_threshold: float = 0.1,
) -> xr.Dataset:
    """Compute the propagation maps of one model's cubes and write them to ``out_path``."""
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"propagation.normalisation: {normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
    ds = compute_propagation(read_layer_index(cube_dir), normalisation, spread_threshold)
    ds.attrs.update(provenance())
    encoding = {name: {"zlib": True, "complevel": 1} for name in ds.data_vars if ds[name].ndim >= 2}
    write_netcdf(ds, out_path, encoding=encoding)
    log.info("propagation maps of %d layers x %d attacks -> %s", ds.sizes["layer"], ds.sizes["sample"], out_path)
    return ds
