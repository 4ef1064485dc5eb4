"""Figures of the propagation-map and locality study (PNG + PDF).

Uses matplotlib's object-oriented API (``matplotlib.figure.Figure``, Agg
renderer) so no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from onepixel.errors import ConfigError, DataError
from onepixel.utils import atomic_path, open_netcdf

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
DPI = 200
MAP_CMAP = "inferno"
MARK = {"marker": "o", "ms": 14, "mfc": "none", "ls": "none"}
PANEL_IN = 1.85


def save_figure(fig: Figure, out_base: str | os.PathLike[str], formats: Sequence[str]) -> list[Path]:
    """Save ``fig`` as ``{out_base}.{fmt}`` for each format, atomically; return the paths."""
    bad = [fmt for fmt in formats if fmt not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"figures.formats: {bad or list(formats)!r} not allowed; use a non-empty subset of {', '.join(FORMATS)}")
    paths = []
    for fmt in formats:
        path = Path(f"{out_base}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Software": "onepixel"} if fmt == "png" else None)
        paths.append(path)
    return paths


def _caption(prop: xr.Dataset) -> str:
    """One line saying what the normalised PMmax is."""
    by = "of this image" if prop.attrs.get("normalisation", "image") == "image" else "over all attacked images"
    return (
        "normalised PMmax = max over channels of |F(x_adv) − F(x)| ÷ the largest |F(x)| "
        f"{by} in that layer (1 = as large as the largest original activation)"
    )


def _add_caption(fig: Figure, text: str) -> None:
    """A small-print caption under the panels, wrapped to the figure's width."""
    fig.supxlabel(textwrap.fill(text, width=int(fig.get_figwidth() * 15)), fontsize=8)


def _grid(n_panels: int, ncols: int, extra_height: float = 0.9) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure with ``n_panels`` square panels on at most ``ncols`` balanced columns."""
    nrows = -(-n_panels // max(1, ncols))
    ncols = -(-n_panels // nrows)
    fig = Figure(figsize=(ncols * PANEL_IN + 1.4, nrows * (PANEL_IN + 0.35) + extra_height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, list(axes[:n_panels])


def _show_map(ax: Axes, data: np.ndarray, vmax: float, title: str):
    """Draw one propagation map with nearest interpolation, equal aspect and no ticks."""
    image = ax.imshow(data, cmap=MAP_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return image


def _show_image(ax: Axes, image: np.ndarray, title: str) -> None:
    """Draw a ``(C, H, W)`` uint8 image (grey for one channel)."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(np.moveaxis(image, 0, -1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def _mark(ax: Axes, x: object, y: object) -> None:
    """Circle the attacked pixel(s): cyan on a thin black halo, visible on any background."""
    ax.plot(x, y, mec="black", mew=2.6, **MARK)
    ax.plot(x, y, mec="#00e5ff", mew=1.3, **MARK)


def _mark_edges(ax: Axes, x: object, y: object) -> None:
    """Point at the attacked pixel's column and row with triangles on the panel's top and left edges.

    Unlike a circle, these leave the map itself uncovered: in the first layers of a
    32x32 network the perturbation fills only the few cells around the pixel.
    """
    style = {"ms": 7, "mfc": "#00e5ff", "mec": "black", "mew": 0.8, "ls": "none", "clip_on": False, "zorder": 5}
    ax.plot(x, np.ones(np.shape(x)), marker="v", transform=ax.get_xaxis_transform(), **style)
    ax.plot(np.zeros(np.shape(y)), y, marker=">", transform=ax.get_yaxis_transform(), **style)


def _layer_title(prop: xr.Dataset, i: int) -> str:
    return f"{i}: {prop['layer'].values[i]}\n{int(prop['layer_height'][i])}×{int(prop['layer_width'][i])}"


def plot_pm_grid(
    prop: xr.Dataset,
    attack: xr.Dataset,
    clean_image: np.ndarray,
    sample: int,
    out_base: str | os.PathLike[str],
    class_names: Sequence[str],
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Figure 1a of the paper: one attack's normalised PMmax, layer by layer.

    Panels: the clean image, the adversarial image (attacked pixel circled), then
    every layer's normalised PMmax on one colour scale from 0 to 1 (values above 1,
    i.e. differences larger than the largest original activation, are clipped and
    shown by the colour bar's arrow), the attacked pixel's column and row in each
    layer's grid shown by triangles on the map's edges (so the map stays uncovered).

    Args:
        prop: propagation dataset of :func:`onepixel.propagation.compute_propagation`.
        attack: the attack dataset the cubes were captured from (same sample order).
        clean_image: ``(C, H, W)`` uint8 clean image.
        sample: position along ``prop``'s ``sample`` dimension.
        class_names: class index -> name.
    """
    row = attack.isel(sample=sample)
    sample_id = int(prop["sample_id"].values[sample])
    if int(row["sample_id"]) != sample_id:
        raise DataError(f"attack row {sample} is image {int(row['sample_id'])}, propagation row is image {sample_id}; files do not match")
    n_layers = prop.sizes["layer"]
    fig, axes = _grid(n_layers + 2, ncols=6)
    true_c, adv_c = int(row["true_class"]), int(row["adv_class"])
    px, py = int(row["pixel_x"].values[0]), int(row["pixel_y"].values[0])
    p_clean, p_adv = row["prob_clean"].values, row["prob_adv"].values
    _show_image(axes[0], clean_image, f"clean image\ntrue class: {class_names[true_c]} (p={p_clean[true_c]:.2f})")
    _show_image(
        axes[1], row["adversarial"].values,
        f"adversarial image\npredicted: {class_names[adv_c]} (p={p_adv[adv_c]:.2f})\ntrue class: p={p_adv[true_c]:.2f}",
    )
    _mark(axes[1], row["pixel_x"].values, row["pixel_y"].values)
    image = None
    for i in range(n_layers):
        image = _show_map(axes[i + 2], prop[f"pm_max_norm_{i}"].values[sample], 1.0, _layer_title(prop, i))
        _mark_edges(axes[i + 2], prop["pixel_x_layer"].values[i, sample], prop["pixel_y_layer"].values[i, sample])
    fig.colorbar(image, ax=axes[2:], extend="max", shrink=0.9, label="normalised PMmax (clipped at 1)")
    _add_caption(fig, _caption(prop) + ". Triangles on the maps' edges: the attacked pixel's column and row, "
                 "mapped into each layer's grid as floor(x · W_l / W).")
    outcome = "successful" if bool(row["success"]) else "failed"
    kind = "one-pixel" if attack.sizes.get("pixel", 1) == 1 else f"{attack.sizes['pixel']}-pixel"
    fig.suptitle(
        f"Propagation maps of a {outcome} {kind} attack on test image {sample_id} (pixel x={px}, y={py}, circled)",
        fontsize=10,
    )
    return save_figure(fig, out_base, formats)


def plot_average_pm(
    prop: xr.Dataset, out_base: str | os.PathLike[str], title: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Figure 1b of the paper: mean normalised PMmax over all successful attacks, per layer.

    One colour scale from 0 to the largest mean value of any layer. The attacked
    pixel differs between attacks, so it is not marked.
    """
    n_layers = prop.sizes["layer"]
    n_success = int(prop["success"].values.sum())
    if n_success == 0:
        return _placeholder(out_base, f"{title}: no successful attack, no average propagation map", formats)
    maps = [prop[f"avg_pm_max_success_{i}"].values for i in range(n_layers)]
    finite = [m[np.isfinite(m)] for m in maps]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    fig, axes = _grid(n_layers, ncols=6, extra_height=1.1)
    image = None
    for i, ax in enumerate(axes):
        n_avg = int(prop["n_averaged_success"].values[i])
        note = "" if n_avg == n_success else f", n={n_avg}"
        image = _show_map(ax, maps[i], vmax, _layer_title(prop, i) + note)
    fig.colorbar(image, ax=axes, shrink=0.9, label="mean normalised PMmax")
    _add_caption(fig, _caption(prop) + "; element-wise mean over the attacks (their pixels differ, so none is marked).")
    fig.suptitle(f"{title}\nAverage propagation map (normalised PMmax) over {n_success} successful one-pixel attacks", fontsize=10)
    return save_figure(fig, out_base, formats)


def _placeholder(out_base: str | os.PathLike[str], text: str, formats: Sequence[str]) -> list[Path]:
    """A small figure that only says ``text`` (keeps the set of output files fixed)."""
    fig = Figure(figsize=(5, 1.5))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    return save_figure(fig, out_base, formats)


def plot_locality(
    localities: dict[str, xr.Dataset],
    out_base: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "Locality of one-pixel vulnerability",
) -> list[Path]:
    """Success rate of the attack's colour moved to Chebyshev distance d, per model.

    Solid line with 95 % bootstrap band: ring positions at distance d; dashed line
    (same colour, dotted band): the same colour at random positions of the image.
    """
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.subplots()
    colours = [f"C{i}" for i in range(10)]
    max_d, top = 1, 0.0
    for k, (name, loc) in enumerate(localities.items()):
        colour = colours[k % len(colours)]
        d = loc["distance"].values
        max_d = max(max_d, int(d.max(initial=1)))
        rate, ci = 100 * loc["success_rate"].values, 100 * loc["success_rate_ci"].values
        base, base_ci = 100 * float(loc["baseline_success_rate"]), 100 * loc["baseline_success_rate_ci"].values
        n = loc.sizes["sample"]
        top = np.nanmax([top, *rate, *ci.ravel(), base, *base_ci])
        ax.plot(d, rate, "-o", color=colour, lw=1.8, ms=5, label=f"{name}: ring at distance d (n={n} attacks)")
        ax.fill_between(d, ci[:, 0], ci[:, 1], color=colour, alpha=0.2, lw=0)
        ax.axhline(base, color=colour, ls="--", lw=1.4, label=f"{name}: random positions")
        if np.isfinite(base_ci).all():
            ax.axhspan(base_ci[0], base_ci[1], color=colour, alpha=0.08, lw=0)
    ax.set_xticks(range(1, max_d + 1))
    ax.set_xlim(0.7, max_d + 0.3)
    ax.set_ylim(0, min(100.0, 10 * np.ceil(top * 1.15 / 10)) or 100.0)
    ax.set_xlabel("Chebyshev distance d from the attacked pixel (pixels)")
    ax.set_ylabel("positions where the same colour\nstill fools the model (%)")
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(f"{title}\nshaded: 95 % bootstrap confidence intervals over the attacked images", fontsize=10)
    return save_figure(fig, out_base, formats)


def plot_pm_depth(
    props: dict[str, xr.Dataset],
    out_base: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "Propagation of one-pixel perturbations through the network",
) -> list[Path]:
    """Mean peak and spread of the normalised PMmax (successful attacks) against relative depth.

    Relative depth of layer i of L captured layers is ``(i + 1) / L``.
    """
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax_peak, ax_spread = fig.subplots(1, 2)
    threshold = None
    for k, (name, prop) in enumerate(props.items()):
        success = prop["success"].values.astype(bool)
        depth = (np.arange(prop.sizes["layer"]) + 1) / prop.sizes["layer"]
        threshold = prop.attrs.get("spread_threshold", threshold)
        label = f"{name} ({int(success.sum())} successful attacks)"
        for ax, key in ((ax_peak, "peak"), (ax_spread, "spread")):
            values = prop[key].values[:, success]
            mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values])
            ax.plot(depth, mean, "-o", color=f"C{k % 10}", ms=4, lw=1.6, label=label)
    ax_peak.axhline(1.0, color="0.4", ls=":", lw=1)
    ax_peak.set_ylabel("peak of normalised PMmax\n(1 = largest original activation)")
    ax_spread.set_ylabel(f"fraction of positions with\nnormalised PMmax > {threshold}")
    ax_spread.set_ylim(bottom=0)
    ax_peak.set_ylim(bottom=0)
    for ax, letter in ((ax_peak, "a"), (ax_spread, "b")):
        ax.set_xlabel("relative depth of the layer (first → last captured layer)")
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"({letter}) {'peak' if letter == 'a' else 'spread'}, mean over successful attacks", fontsize=10)
    fig.legend(*ax_peak.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=min(4, max(1, len(props))), frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out_base, formats)


def run_figures_stage(
    dataset_name: str,
    models: list[str],
    test_path: str | os.PathLike[str],
    attack_paths: dict[str, str | os.PathLike[str]],
    propagation_paths: dict[str, str | os.PathLike[str]],
    locality_paths: dict[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    examples: int = 2,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """All figures of one dataset.

    Per model: ``{model}/pm_grid_{k}`` for the first ``examples`` successful attacks
    (a placeholder saying so when there are fewer) and ``{model}/average_pm``;
    across models: ``locality`` and ``pm_depth``. Each in every format.
    """
    from onepixel.attack import load_attack
    from onepixel.data import load_dataset

    bad = [fmt for fmt in formats if fmt not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"figures.formats: {bad or list(formats)!r} not allowed; use a non-empty subset of {', '.join(FORMATS)}")
    if examples < 0:
        raise ConfigError(f"figures.examples: {examples} must be >= 0")
    for key, paths in (("attack", attack_paths), ("propagation", propagation_paths), ("locality", locality_paths)):
        missing = [m for m in models if m not in paths]
        if missing:
            raise ConfigError(f"figures: no {key} file given for model(s) {', '.join(missing)}")
    out = Path(out_dir)
    test = load_dataset(test_path)
    class_names = [str(c) for c in test["class_name"].values]
    written: list[Path] = []
    summaries: dict[str, xr.Dataset] = {}
    for model in models:
        attack = load_attack(attack_paths[model])
        prop = open_netcdf(propagation_paths[model], required=("peak", "spread", "pixel_x_layer", "n_averaged_success"))
        successful = np.flatnonzero(prop["success"].values)
        for k in range(examples):
            base = out / model / f"pm_grid_{k}"
            if k < len(successful):
                s = int(successful[k])
                image = test["image"].values[int(prop["sample_id"].values[s])]
                written += plot_pm_grid(prop, attack, image, s, base, class_names, formats)
            else:
                written += _placeholder(base, f"{model}: {len(successful)} successful attack(s), so no example {k + 1} to draw", formats)
        written += plot_average_pm(prop, out / model / "average_pm", f"{model} on {dataset_name}", formats)
        summaries[model] = prop[["peak", "spread"]]
    localities = {m: open_netcdf(locality_paths[m], required=("success_rate", "success_rate_ci")) for m in models}
    written += plot_locality(localities, out / "locality", formats, title=f"Locality of one-pixel vulnerability ({dataset_name})")
    written += plot_pm_depth(summaries, out / "pm_depth", formats, title=f"Propagation through depth ({dataset_name})")
    log.info("wrote %d figure files under %s", len(written), out)
    return written
