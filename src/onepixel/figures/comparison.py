"""Figures comparing several attacks on the same images: PM statistics against depth, average PMs by attack."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from onepixel.errors import DataError
from onepixel.figures.common import add_caption, add_title, band, placeholder, save_figure, show_map

#: the rows of :func:`pm_comparison_figure`: metric, y-axis label
_ROWS: tuple[tuple[str, str], ...] = (
    ("peak", "peak of normalised PMmax\n(1 = largest original activation)"),
    ("spread", "spread: share of positions\nwith normalised PMmax > {threshold}"),
    ("mass_distance_rel", "mass distance from the\nattacked pixel ÷ layer size"),
)
#: at most this many layers (evenly spaced, first and last included) in :func:`average_pm_by_attack_figure`
MAX_LAYERS = 6


def _colour(k: int) -> str:
    return f"C{k % 10}"


def pm_comparison_figure(
    numbers: Mapping[str, Any],
    path: str | os.PathLike[str],
    formats: Sequence[str] = ("png",),
    subset: str = "all",
    title: str | None = None,
) -> list[Path]:
    """Peak, spread and relative mass distance per layer, one line per attack with its 95 % band.

    One row per metric, one column per model; x: the captured layers in depth order (their names
    as tick labels); each attack's mean over images (``subset`` ``"all"``: every attacked image,
    ``"success"``: the successful ones) with its 95 % Student-t interval shaded.

    Args:
        numbers: the dict of :func:`onepixel.analysis.comparison.compare_attacks`.
        path: the figure's base path; ``{path}.{fmt}`` is written for each of ``formats``.

    Returns:
        The files written.
    """
    key = {"all": "layers", "success": "layers_success"}.get(subset)
    if key is None:
        raise ValueError(f"subset {subset!r} is not 'all' or 'success'")
    models = list(numbers["models"])
    attacks = numbers["attacks"]
    if not models:
        return placeholder(path, "no model to compare attacks on", formats)
    layer_counts = [len(next(iter(numbers["models"][m]["attacks"].values()))[key]) for m in models]
    width = max(3.6, 0.42 * max(layer_counts) + 1.6)
    fig = Figure(figsize=(width * len(models) + 0.8, 3 * 2.3 + 1.9), layout="constrained")
    grid = fig.subplots(len(_ROWS), len(models), squeeze=False, sharex="col")
    handles: dict[str, Any] = {}
    for col, model in enumerate(models):
        entry = numbers["models"][model]
        threshold = entry.get("spread_threshold")
        for k, (name, attack) in enumerate(entry["attacks"].items()):
            layers = sorted(attack[key].items(), key=lambda item: item[1]["index"])
            x = np.array([values["index"] for _, values in layers], dtype=float)
            for row, (metric, _) in enumerate(_ROWS):
                ax = grid[row, col]

                def column(stat: str, metric: str = metric, layers: list = layers) -> np.ndarray:
                    return np.array([np.nan if v[metric][stat] is None else v[metric][stat] for _, v in layers], float)

                colour = _colour(k)
                (line,) = ax.plot(x, column("mean"), "-o", color=colour, ms=3.5, lw=1.5)
                band(ax, x, column("low"), column("high"), colour)
                handles.setdefault(name, line)
        first = sorted(next(iter(entry["attacks"].values()))[key].items(), key=lambda item: item[1]["index"])
        ticks = [values["index"] for _, values in first]
        n_images = next(iter(entry["attacks"].values()))["images"]
        for row, (_, ylabel) in enumerate(_ROWS):
            ax = grid[row, col]
            ax.grid(alpha=0.3)
            top = ax.get_ylim()[1]
            ax.set_ylim(-0.03 * top, top)  # from 0, with room for a line at 0 (PGD's spread often is)
            if col == 0:
                ax.set_ylabel(ylabel.format(threshold=threshold if threshold is not None else "threshold"), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xticks(ticks)
            ax.set_xticklabels([name for name, _ in first], rotation=45, ha="right", rotation_mode="anchor")
        grid[0, col].set_title(f"{model} ({n_images} images)", fontsize=9)
        grid[-1, col].set_xlabel("captured layer (first → last)", fontsize=8)
    labels = [attacks[name]["label"] if name in attacks else name for name in handles]
    fig.legend(
        list(handles.values()),
        labels,
        loc="outside lower center",
        ncols=max(1, min(len(labels), int(fig.get_figwidth() // 2.0))),  # about 2 inches per entry: fits the width
        fontsize=8,
        frameon=False,
    )
    over = "every attacked image" if subset == "all" else "the successful attacks"
    add_title(
        fig,
        (title or "Propagation of each attack through the layers")
        + f"\nmean over {over} per layer, shaded: 95 % interval of the mean",
    )
    return save_figure(fig, path, formats)


def _open(path: Path) -> xr.Dataset:
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    try:
        return xr.open_dataset(path, engine="netcdf4")
    except Exception as exc:  # netCDF4 raises OSError/ValueError/RuntimeError for corrupt files
        raise DataError(f"{path}: not a readable netCDF file ({exc.__class__.__name__})") from exc


def average_all(prop: xr.Dataset, i: int) -> np.ndarray:
    """Element-wise mean normalised PMmax of layer ``i`` over every attacked image with a defined map.

    The propagation file's averages over the successful and the failed attacks, weighted by how many
    maps each averaged (``n_averaged_success`` / ``n_averaged_failure``): the mean over all defined
    maps, as the file's own averages leave undefined (NaN) maps out. NaN when no map was averaged.
    """
    n_ok, n_fail = (int(prop[f"n_averaged_{kind}"].values[i]) for kind in ("success", "failure"))
    total = n_ok + n_fail
    if total == 0:
        return np.full(prop[f"avg_pm_max_success_{i}"].shape, np.nan)
    out = np.zeros(prop[f"avg_pm_max_success_{i}"].shape)
    for kind, count in (("success", n_ok), ("failure", n_fail)):
        if count:
            out += count * prop[f"avg_pm_max_{kind}_{i}"].values.astype(np.float64)
    return out / total


def _columns(n_layers: int, most: int = MAX_LAYERS) -> list[int]:
    """At most ``most`` evenly spaced layer positions, the first and last included."""
    return sorted({round(float(v)) for v in np.linspace(0, n_layers - 1, min(n_layers, most))})


def average_pm_by_attack_figure(
    propagation: Mapping[str, str | os.PathLike[str]],
    labels: Mapping[str, str],
    model: str,
    path: str | os.PathLike[str],
    formats: Sequence[str] = ("png",),
    title: str | None = None,
    max_layers: int = MAX_LAYERS,
) -> list[Path]:
    """Average normalised PMmax of one model, one row per attack, one column per layer.

    Each cell is the element-wise mean over every attacked image of that attack (:func:`average_all`);
    with more than ``max_layers`` layers, evenly spaced ones (first and last included). One colour
    scale per column (from 0 to the column's largest mean), so the attacks of a layer compare
    directly; the attacked pixels differ between images, so none is marked.

    Args:
        propagation: ``{attack_name: propagation file}`` of the model, in row order.
        labels: attack name -> label (:func:`onepixel.analysis.comparison.attack_label`).
        path: the figure's base path; ``{path}.{fmt}`` is written for each of ``formats``.

    Returns:
        The files written.
    """
    names = list(propagation)
    if not names:
        return placeholder(path, f"{model}: no attack to draw", formats)
    props = {name: _open(Path(propagation[name])) for name in names}
    try:
        first = props[names[0]]
        layer_names = [str(v) for v in first["layer"].values]
        columns = _columns(len(layer_names), max_layers)
        maps: dict[tuple[str, int], np.ndarray | None] = {}
        counts: dict[str, int] = {}
        for name, prop in props.items():
            index = {str(v): i for i, v in enumerate(prop["layer"].values)}
            counts[name] = int(prop.sizes["sample"])
            for col in columns:
                i = index.get(layer_names[col])
                maps[(name, col)] = None if i is None else average_all(prop, i)
        sizes = {
            col: (int(first["layer_height"].values[col]), int(first["layer_width"].values[col])) for col in columns
        }
        normalisation = str(first.attrs.get("normalisation", "image"))
    finally:
        for prop in props.values():
            prop.close()
    n_rows, n_cols = len(names), len(columns)
    fig = Figure(figsize=(max(6.0, 1.75 * n_cols + 1.4), 1.75 * n_rows + 2.1), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for j, col in enumerate(columns):
        finite = [m[np.isfinite(m)] for m in (maps[(name, col)] for name in names) if m is not None]
        vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
        image = None
        for r, name in enumerate(names):
            ax = axes[r, j]
            data = maps[(name, col)]
            height, width = sizes[col]
            head = f"{col}: {layer_names[col]}\n{height}×{width}" if r == 0 else ""
            if data is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "not captured", ha="center", va="center", fontsize=8, transform=ax.transAxes)
                ax.set_title(head, fontsize=8)
                continue
            image = show_map(ax, data, vmax, head)
            if j == 0:
                ax.set_ylabel(f"{labels.get(name, name)}\n({counts[name]} images)", fontsize=8)
        if image is not None:
            bar = fig.colorbar(image, ax=list(axes[:, j]), location="bottom", shrink=0.85, aspect=12)
            bar.ax.tick_params(labelsize=7)
            bar.locator = MaxNLocator(nbins=3)
    by = "of each image" if normalisation == "image" else "over all attacked images"
    add_caption(
        fig,
        f"normalised PMmax = max over channels of |F(x_adv) − F(x)| ÷ the largest |F(x)| {by} in that layer; "
        "each cell: element-wise mean over every attacked image (successful or not). "
        "One colour scale per column (its bar below), from 0 to the column's largest mean.",
    )
    add_title(
        fig,
        f"{title or model}: average propagation map of each attack\n"
        "(rows: attacks on the same images; columns: layers, first to last)",
    )
    return save_figure(fig, path, formats)
