"""Propagation-map figures: the PM grid of one attack (Fig. 1a), the average PM (Fig. 1b), peak and spread against depth."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from onepixel.errors import DataError
from onepixel.figures.common import (
    add_caption,
    add_title,
    mark_edges,
    mark_pixel,
    panel_grid,
    placeholder,
    save_figure,
    show_image,
    show_map,
)


def _caption(prop: xr.Dataset) -> str:
    """One line saying what the normalised PMmax is."""
    by = "of this image" if prop.attrs["normalisation"] == "image" else "over all attacked images"
    return (
        "normalised PMmax = max over channels of |F(x_adv) − F(x)| ÷ the largest |F(x)| "
        f"{by} in that layer (1 = as large as the largest original activation)"
    )


def _layer_title(prop: xr.Dataset, i: int) -> str:
    return f"{i}: {prop['layer'].values[i]}\n{int(prop['layer_height'][i])}×{int(prop['layer_width'][i])}"


def _pixels_text(xs: np.ndarray, ys: np.ndarray) -> str:
    """``pixel x=3, y=4``, or for k pixels ``pixels (3, 4), (5, 1) as (x, y)``."""
    if len(xs) == 1:
        return f"pixel x={int(xs[0])}, y={int(ys[0])}"
    return "pixels " + ", ".join(f"({int(x)}, {int(y)})" for x, y in zip(xs, ys, strict=True)) + " as (x, y)"


#: below this largest value a PM grid gets its own colour scale (else the paper's 0 to 1)
SMALL_PM = 0.25


def grid_scale(maps: Sequence[np.ndarray]) -> float:
    """The top of a PM grid's colour scale: 1 (values above clipped), or the largest value when it is below
    :data:`SMALL_PM` (one pixel of a 224x224 image often changes a layer by a few percent of its largest
    activation, invisible on a 0-1 scale)."""
    finite = [float(np.nanmax(m)) for m in maps if np.isfinite(m).any()]
    largest = max(finite, default=0.0)
    return largest if 0.0 < largest < SMALL_PM else 1.0


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
    shown by the colour bar's arrow; when every value is below :data:`SMALL_PM`, from 0
    to the largest, as the colour bar says), the attacked pixel's column and row in each
    layer's grid shown by triangles on the map's edges (so the map stays uncovered).
    A k-pixel attack (``attack.pixels`` > 1) names, circles and points at every
    perturbed pixel; a targeted attack shows its target class and its probability.

    Args:
        prop: propagation dataset of :func:`onepixel.analysis.propagation.compute_propagation`.
        attack: the attack dataset the cubes were captured from (same sample order).
        clean_image: ``(C, H, W)`` uint8 clean image.
        sample: position along ``prop``'s ``sample`` dimension.
        class_names: class index -> name.
    """
    row = attack.isel(sample=sample)
    sample_id = int(prop["sample_id"].values[sample])
    if int(row["sample_id"]) != sample_id:
        raise DataError(
            f"attack row {sample} is image {int(row['sample_id'])}, propagation row is image {sample_id}; files do not match"
        )
    n_layers = prop.sizes["layer"]
    fig, axes = panel_grid(n_layers + 2, ncols=6)
    true_c, adv_c = int(row["true_class"]), int(row["adv_class"])
    target = int(row["target_class"]) if "target_class" in row else -1
    xs, ys = np.atleast_1d(row["pixel_x"].values).astype(int), np.atleast_1d(row["pixel_y"].values).astype(int)
    p_clean, p_adv = row["prob_clean"].values, row["prob_adv"].values
    show_image(axes[0], clean_image, f"clean image\ntrue class: {class_names[true_c]} (p={p_clean[true_c]:.2f})")
    aim = f"target: {class_names[target]} (p={p_adv[target]:.2f}), " if target >= 0 else ""
    show_image(
        axes[1],
        row["adversarial"].values,
        f"adversarial image\npredicted: {class_names[adv_c]} (p={p_adv[adv_c]:.2f})\n{aim}true class: p={p_adv[true_c]:.2f}",
    )
    mark_pixel(axes[1], xs, ys)
    height, width = clean_image.shape[-2:]
    maps = [prop[f"pm_max_norm_{i}"].values[sample] for i in range(n_layers)]
    vmax = grid_scale(maps)
    image = None
    for i in range(n_layers):
        image = show_map(axes[i + 2], maps[i], vmax, _layer_title(prop, i))
        # every pixel mapped into the layer's grid as the capture stage maps the first (floor(x * W_l / W))
        mark_edges(
            axes[i + 2],
            xs * int(prop["layer_width"].values[i]) // width,
            ys * int(prop["layer_height"].values[i]) // height,
        )
    assert image is not None  # at least one layer was drawn
    label = (
        "normalised PMmax (clipped at 1)"
        if vmax == 1.0
        else f"normalised PMmax (scale 0 – {vmax:.2g}: this attack's largest value)"
    )
    fig.colorbar(image, ax=axes[2:], extend="max" if vmax == 1.0 else "neither", shrink=0.9, label=label)
    which = "the attacked pixel's column and row" if len(xs) == 1 else "each attacked pixel's column and row"
    add_caption(
        fig,
        _caption(prop)
        + f". Triangles on the maps' edges: {which}, mapped into each layer's grid as floor(x · W_l / W).",
    )
    outcome = "successful" if bool(row["success"]) else "failed"
    method = json.loads(attack.attrs.get("attack_config", "{}")).get("method", "de")
    kind = "one-pixel" if len(xs) == 1 else f"{len(xs)}-pixel"
    where = f"{_pixels_text(xs, ys)}, circled"
    if method in ("fgsm", "pgd"):
        kind, where = (
            f"{method.upper()} (L-inf)",
            f"every pixel changed; the most-changed one, {_pixels_text(xs, ys)}, circled",
        )
    aimed = f"targeted {kind} attack (target: {class_names[target]})" if target >= 0 else f"{kind} attack"
    add_title(fig, f"Propagation maps of a {outcome} {aimed} on test image {sample_id} ({where})")
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
        return placeholder(out_base, f"{title}: no successful attack, no average propagation map", formats)
    maps = [prop[f"avg_pm_max_success_{i}"].values for i in range(n_layers)]
    finite = [m[np.isfinite(m)] for m in maps]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    fig, axes = panel_grid(n_layers, ncols=6, extra_height=1.1)
    image = None
    for i, ax in enumerate(axes):
        n_avg = int(prop["n_averaged_success"].values[i])
        note = "" if n_avg == n_success else f", n={n_avg}"
        image = show_map(ax, maps[i], vmax, _layer_title(prop, i) + note)
    assert image is not None  # at least one layer was drawn
    fig.colorbar(image, ax=axes, shrink=0.9, label="mean normalised PMmax")
    add_caption(fig, _caption(prop) + "; element-wise mean over the attacks (their pixels differ, so none is marked).")
    add_title(fig, f"{title}\nAverage propagation map (normalised PMmax) over {n_success} successful one-pixel attacks")
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
        threshold = prop.attrs["spread_threshold"]
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
    fig.legend(
        *ax_peak.get_legend_handles_labels(),
        fontsize=8,
        loc="outside lower center",
        ncols=min(4, max(1, len(props))),
        frameon=False,
    )
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out_base, formats)
