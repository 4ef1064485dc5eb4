"""Propagation maps (PM) of one-pixel attacks, layer by layer (docs/science.md#propagation-maps).

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

import logging
import time
from pathlib import Path

import numpy as np
import xarray as xr

from onepixel.cubes import INDEX_FILE, MAP_VARIABLES, read_layer_index
from onepixel.errors import ConfigError, DataError
from onepixel.files import atomic_path
from onepixel.formats import FORMAT_KEY, check_format, format_name
from onepixel.lineage import DOWNSTREAM_KEYS, check_same, recorded_lineage
from onepixel.provenance import provenance
from onepixel.stages import Job

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
    "layer grid (floor(x * W_l / W)), mass_distance_rel = mass_distance / max(H_l, W_l). Interpretation: docs/science.md#propagation-maps."
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
        raise ValueError(
            f"clean and adversarial must be equal (N, C, H, W) arrays; got {clean.shape} and {adversarial.shape}"
        )
    return maps_from_delta(clean, adversarial.astype(np.float64) - clean.astype(np.float64))


def maps_from_delta(clean: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`propagation_maps`, from ``delta = F_l(x_adv) - F_l(x)`` (what a cube stores).

    Maxima are exact in the input precision; the channel mean accumulates in float64.
    """
    if clean.shape != delta.shape or clean.ndim != 4:
        raise ValueError(f"clean and delta must be equal (N, C, H, W) arrays; got {clean.shape} and {delta.shape}")
    diff = np.abs(delta)
    scale = np.abs(clean).max(axis=(1, 2, 3), initial=0.0)
    pm_avg = diff.mean(axis=1, dtype=np.float64)
    return diff.max(axis=1).astype(np.float32), pm_avg.astype(np.float32), scale.astype(np.float32)


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


# the raw maps and coordinates only: files of capture.store maps (no clean/delta) are complete
_CUBE_REQUIRED = (*MAP_VARIABLES, "pixel_x_layer", "pixel_y_layer", "success", "sample_id")


def _check_options(normalisation: str, spread_threshold: float) -> None:
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"propagation.normalisation: {normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
    if spread_threshold < 0:
        raise ConfigError(f"propagation.spread_threshold: {spread_threshold} must be >= 0")


def _open_cube(path: Path) -> xr.Dataset:
    """A layer cube opened lazily (its arrays are read on access), with a clear error if it is not one."""
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    try:
        cube = xr.open_dataset(path, engine="netcdf4")
    except Exception as exc:  # netCDF4 raises OSError/ValueError/RuntimeError for corrupt files
        raise DataError(f"{path}: not a readable netCDF file ({exc.__class__.__name__}: {exc})") from exc
    try:
        check_format(cube.attrs.get(FORMAT_KEY), "cube", path)
        missing = [name for name in _CUBE_REQUIRED if name not in cube.variables]
        if missing:
            raise DataError(f"{path}: missing variable(s) {', '.join(missing)} of a {format_name('cube')} file")
    except DataError:
        cube.close()
        raise
    return cube


def layer_propagation(
    i: int, path: Path, normalisation: str = "image", spread_threshold: float = 0.1
) -> tuple[xr.Dataset, dict[str, np.ndarray], dict[str, object]]:
    """Propagation maps of layer ``i`` from its cube.

    Returns:
        ``(maps, summaries, info)``: the layer's variables (``pm_max_{i}`` ... and the
        averages, see :func:`compute_propagation`) with the cube's per-sample
        coordinates; per-sample summaries (``peak``, ``spread``, ...) and counts;
        and the layer's ``layer``, ``layer_index``, ``layer_height``, ``layer_width``,
        ``stride``, ``receptive_field``, ``input_size`` and ``lineage`` (the cube's
        ``model_sha256``, ``test_digest``, ``attack_digest`` it records).
    """
    with _open_cube(path) as cube:
        # the raw maps stored by the capture stage (onepixel.cubes.MAP_VARIABLES)
        pm_max, pm_avg, scale = (cube[name].values.astype(np.float32) for name in MAP_VARIABLES)
        coords = {
            name: ("sample", cube[name].values)
            for name in ("sample_id", "success", "true_class", "adv_class", "pixel_x", "pixel_y")
            if name in cube.variables
        }
        px, py = cube["pixel_x_layer"].values, cube["pixel_y_layer"].values
        success = cube["success"].values.astype(bool)
        name = str(cube.attrs["layer"])
        info = {
            "layer": name,
            "layer_index": i,
            "layer_height": pm_max.shape[1],
            "layer_width": pm_max.shape[2],
            "stride": float(cube.attrs["stride"]),
            "receptive_field": int(cube.attrs["receptive_field"]),
            "input_size": cube.attrs["input_size"],
            "lineage": {key: str(cube.attrs[key]) for key in DOWNSTREAM_KEYS if key in cube.attrs},
        }
    if normalisation == "layer":
        scale = np.full_like(scale, scale.max(initial=0.0))
    pm_max_norm, pm_avg_norm = normalise(pm_max, scale), normalise(pm_avg, scale)
    dims = ("sample", f"y_{i}", f"x_{i}")
    label = f"layer {name}"
    data_vars: dict[str, tuple] = {}
    for key, maps, what in (
        ("pm_max", pm_max, "PMmax"),
        ("pm_avg", pm_avg, "PMavg"),
        ("pm_max_norm", pm_max_norm, "normalised PMmax"),
        ("pm_avg_norm", pm_avg_norm, "normalised PMavg"),
    ):
        data_vars[f"{key}_{i}"] = (dims, maps, {"layer": name, "long_name": f"{what} of {label}", "units": "1"})
    summaries: dict[str, np.ndarray] = {}
    for outcome, select, adjective in (("success", success, "successful"), ("failure", ~success, "failed")):
        for kind, maps in (("max", pm_max_norm), ("avg", pm_avg_norm)):
            mean, count = _average(maps, select)
            long_name = f"mean normalised PM{kind} over {adjective} attacks, {label}"
            data_vars[f"avg_pm_{kind}_{outcome}_{i}"] = (
                dims[1:],
                mean,
                {"layer": name, "long_name": long_name, "units": "1"},
            )
        summaries[f"n_averaged_{outcome}"] = np.asarray(count)
    summaries.update(map_summaries(pm_max, pm_max_norm, px, py, spread_threshold))
    summaries.update(scale=scale, pixel_x_layer=px, pixel_y_layer=py)
    return xr.Dataset(data_vars, coords=coords), summaries, info


def _summary_dataset(summaries: list[dict[str, np.ndarray]], infos: list[dict[str, object]]) -> xr.Dataset:
    """The ``(layer, sample)`` summaries and ``(layer,)`` coordinates of all layers."""
    data_vars = {
        key: (
            ("layer",) if key.startswith("n_averaged") else ("layer", "sample"),
            np.stack([summary[key] for summary in summaries]),
            _SUMMARY_ATTRS[key],
        )
        for key in summaries[0]
    }
    coords = {
        key: ("layer", np.asarray([info[key] for info in infos]))
        for key in ("layer", "layer_index", "layer_height", "layer_width", "stride", "receptive_field")
    }
    return xr.Dataset(data_vars, coords=coords)


def _global_attrs(
    normalisation: str, spread_threshold: float, n_layers: int, info: dict[str, object]
) -> dict[str, object]:
    attrs: dict[str, object] = {
        "Conventions": "CF-1.10",
        "title": "propagation maps of one-pixel attacks",
        "normalisation": normalisation,
        "spread_threshold": float(spread_threshold),
        "interpretation": INTERPRETATION,
        "n_layers": n_layers,
        "input_size": info["input_size"],
    }
    return attrs


def _check_same_samples(first: xr.Dataset, maps: xr.Dataset, path: Path, first_path: Path) -> None:
    if not np.array_equal(first["sample_id"].values, maps["sample_id"].values):
        raise DataError(f"{path}: sample_id differs from {first_path}; cubes of one model must share samples")


def compute_propagation(
    cube_paths: list[Path], normalisation: str = "image", spread_threshold: float = 0.1
) -> xr.Dataset:
    """Propagation maps and their summaries for every layer cube of one model, in memory.

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
        :func:`propagation_stage` writes the same dataset a layer at a time.
    """
    _check_options(normalisation, spread_threshold)
    if not cube_paths:
        raise DataError("propagation: no layer cubes given")
    layers = [layer_propagation(i, Path(path), normalisation, spread_threshold) for i, path in enumerate(cube_paths)]
    for (maps, _, info), path in zip(layers[1:], cube_paths[1:], strict=True):
        _check_same_samples(layers[0][0], maps, Path(path), Path(cube_paths[0]))
        check_same("propagation", path, info["lineage"], cube_paths[0], layers[0][2]["lineage"])  # type: ignore[arg-type]
    ds = xr.merge(
        [maps for maps, _, _ in layers] + [_summary_dataset([s for _, s, _ in layers], [i for _, _, i in layers])],
        compat="override",
        combine_attrs="drop",
    )
    ds.attrs = {**_global_attrs(normalisation, spread_threshold, len(layers), layers[0][2]), **layers[0][2]["lineage"]}  # type: ignore[dict-item]
    return ds


_SUMMARY_ATTRS = {
    "peak": {"long_name": "maximum of the normalised PMmax", "units": "1"},
    "spread": {"long_name": "fraction of positions with normalised PMmax above spread_threshold", "units": "1"},
    "mass_distance": {
        "long_name": "PMmax-weighted mean Chebyshev distance from the attacked pixel",
        "units": "layer cells",
    },
    "mass_distance_rel": {"long_name": "mass_distance / max(layer height, layer width)", "units": "1"},
    "scale": {"long_name": "divisor of the normalised maps (max |F_l(x)|)", "units": "1"},
    "pixel_x_layer": {"long_name": "attacked pixel's column in the layer grid", "units": "layer cells"},
    "pixel_y_layer": {"long_name": "attacked pixel's row in the layer grid", "units": "layer cells"},
    "n_averaged_success": {"long_name": "successful attacks in avg_pm_*_success_*", "units": "1"},
    "n_averaged_failure": {"long_name": "failed attacks in avg_pm_*_failure_*", "units": "1"},
}


def propagation_stage(job: Job) -> xr.Dataset:
    """Compute the propagation maps of one model's cubes and write them to ``out_path``.

    The file is the dataset of :func:`compute_propagation`, written one layer at a
    time (only one layer's maps are in memory) under a temporary name that is
    renamed when complete. It carries the lineage of the cubes (``model_sha256``,
    ``test_digest``, ``attack_digest`` of their ``layers.json``); every cube must
    record the same, checked before any work.

    Returns:
        The written file, opened lazily.
    """
    cfg = job.cfg["propagation"]
    cube_dir, out_path = job.input("cubes"), job.output()
    if cube_dir.exists() and not cube_dir.is_dir():
        raise DataError(
            f"{cube_dir}: is a file; --cubes expects a folder, the layer cubes that `onepixel capture` "
            f"writes (with {INDEX_FILE})"
        )
    normalisation, spread_threshold = cfg["normalisation"], cfg["spread_threshold"]
    _check_options(normalisation, spread_threshold)
    files = read_layer_index(cube_dir)
    index = Path(cube_dir) / INDEX_FILE
    attrs: dict[str, object] = dict(recorded_lineage(index, "layers"))
    for path in files:  # every cube was made by the capture that wrote the index
        check_same("propagation", path, recorded_lineage(path, "cube"), index, attrs)  # type: ignore[arg-type]
    summaries, infos = [], []
    started = time.perf_counter()
    with atomic_path(out_path) as tmp:
        first: xr.Dataset | None = None
        for i, path in enumerate(files):
            maps, summary, info = layer_propagation(i, path, normalisation, spread_threshold)
            if first is None:
                first = maps
                maps.attrs = {
                    FORMAT_KEY: format_name("propagation"),
                    **_global_attrs(normalisation, spread_threshold, len(files), info),
                    **provenance(),
                    **attrs,
                }
                maps.to_netcdf(tmp, mode="w", engine="netcdf4", encoding=_encoding(maps))
            else:
                _check_same_samples(first, maps, path, files[0])
                maps = maps.drop_vars(list(maps.coords))
                maps.to_netcdf(tmp, mode="a", engine="netcdf4", encoding=_encoding(maps))
            summaries.append(summary)
            infos.append(info)
            log.info(
                "layer %d/%d %s: propagation maps of %d samples", i + 1, len(files), info["layer"], maps.sizes["sample"]
            )
        summary_ds = _summary_dataset(summaries, infos)
        summary_ds.to_netcdf(tmp, mode="a", engine="netcdf4")
    log.info("propagation maps of %d layers -> %s in %.1f s", len(files), out_path, time.perf_counter() - started)
    return xr.open_dataset(out_path, engine="netcdf4")


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, object]]:
    return {str(name): {"zlib": True, "complevel": 1} for name in ds.data_vars if ds[name].ndim >= 2}
