"""Receptive-field figures: locality decay against each layer's receptive field, and effective receptive fields."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from onepixel.figures.common import (
    MAP_CMAP,
    add_caption,
    band,
    panel_grid,
    ring_word,
    save_figure,
)

ERF_BOX = "#00e5ff"


def _rf_lines(ax: Axes, vuln: xr.Dataset, xmax: float, label_top: bool) -> None:
    """Dotted lines at each feature layer's theoretical RF radius (numbered), a dashed red line at the ERF radius."""
    shown = [(float(r), i) for i, r in enumerate(vuln["rf_radius"].values, start=1) if r <= xmax]
    clusters: list[list[tuple[float, int]]] = []  # layers whose lines are too close for separate labels
    for r, i in shown:
        ax.axvline(r, color="0.35", ls=":", lw=1.0)
        if clusters and r - clusters[-1][0][0] < max(1.0, 0.05 * xmax):
            clusters[-1].append((r, i))
        else:
            clusters.append([(r, i)])
    for cluster in clusters if label_top else []:
        first, last = cluster[0][1], cluster[-1][1]
        text = str(first) if first == last else f"{first}–{last}"
        ax.text(
            cluster[0][0],
            1.01,
            text,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=6.5,
            color="0.25",
        )
    erf_r = float(vuln.attrs["erf_radius"])
    if np.isfinite(erf_r) and erf_r <= xmax:
        ax.axvline(erf_r, color="#d62728", ls="--", lw=1.3)


def _beyond(vuln: xr.Dataset, xmax: float) -> str:
    """Which layers' RF radius lies beyond the plotted distances."""
    far = [i for i, r in enumerate(vuln["rf_radius"].values, start=1) if r > xmax]
    if not far:
        return f"radii of all {vuln.sizes['layer']} feature layers shown"
    return (
        f"layers {far[0]}–{far[-1]}: radius beyond the plot"
        if len(far) > 1
        else f"layer {far[0]}: radius beyond the plot"
    )


def _defined(x: np.ndarray, y: np.ndarray, ci: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points where ``y`` is defined, so that lines join them across the undefined ones."""
    keep = np.isfinite(y)
    return x[keep], y[keep], ci[keep]


def _rate_panel(ax: Axes, vuln: xr.Dataset, loc: xr.Dataset | None) -> float:
    """Success rate vs distance from the map (successful attacks), the locality rings and the random baseline."""
    d = vuln["distance"].values[1:]
    rate, ci = 100 * vuln["rate_success"].values[1:], 100 * vuln["rate_success_ci"].values[1:]
    d, rate, ci = _defined(d, rate, ci)  # a strided map has positions at multiples of its stride only
    ax.plot(d, rate, "-", color="C0", lw=1.6, label="map: positions at distance d")
    band(ax, d, ci[:, 0], ci[:, 1], "C0")
    ax.axhline(100 * float(vuln["random_rate_success"]), color="C0", ls="--", lw=1.2, label="map: any other position")
    if loc is not None and loc.sizes["sample"]:
        ld, lr, lci = loc["distance"].values, 100 * loc["success_rate"].values, 100 * loc["success_rate_ci"].values
        err = np.abs(np.stack([lci[:, 0], lci[:, 1]]) - lr)
        ax.errorbar(
            ld,
            lr,
            yerr=np.where(np.isfinite(err), err, 0),
            fmt="o",
            color="C1",
            ms=4,
            capsize=2,
            lw=1,
            label="locality stage: rings (all successful attacks)",
        )
    return float(np.nanmax([1.0, *rate, *ci.ravel()]))


def _moran_panel(ax: Axes, vuln: xr.Dataset) -> None:
    """Mean Moran's I of the fooled and the true-class probability maps against the lag."""
    lag = vuln["lag"].values
    for name, colour, label in (("fooled", "C3", "fooled map"), ("true_prob", "C2", "true-class probability map")):
        mean, ci = vuln[f"moran_{name}_success"].values, vuln[f"moran_{name}_success_ci"].values
        n = int(vuln[f"moran_{name}_success_n"])
        x, mean, ci = _defined(lag, mean, ci)
        ax.plot(x, mean, "-", color=colour, lw=1.6, label=f"Moran's I, {label} (n={n})")
        band(ax, x, ci[:, 0], ci[:, 1], colour)
    ax.axhline(0.0, color="0.3", lw=0.8)


def plot_receptive_fields(
    vulns: dict[str, xr.Dataset],
    localities: dict[str, xr.Dataset],
    out_base: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "How far does a one-pixel vulnerability reach?",
) -> list[Path]:
    """Locality decay beside the receptive fields, one column per model.

    Top: share of positions at distance d where a successful attack's colour also
    fools the model (from the vulnerability maps, 95 % band; dots: the locality
    stage's rings; dashed: any other position). Bottom: Moran's I of the fooled and
    the true-class probability maps per lag. Dotted verticals: theoretical RF radius
    ``(size - 1) / 2`` of feature layer i (numbered on top); red dashed: the ERF
    radius of the last layer (95 % of its mass).
    """
    names = list(vulns)
    ncols = min(4, max(1, len(names)))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.8 * ncols + 0.8, 5.8 * nrows + 1.4), layout="constrained")
    axes = fig.subplots(2 * nrows, ncols, squeeze=False)
    for k in range(nrows * ncols):
        top_ax, low_ax = axes[2 * (k // ncols), k % ncols], axes[2 * (k // ncols) + 1, k % ncols]
        if k >= len(names):
            top_ax.set_axis_off()
            low_ax.set_axis_off()
            continue
        vuln = vulns[names[k]]
        xmax = float(vuln["distance"].values[-1])
        n_success = int(vuln["attack_success"].values.sum())
        top = _rate_panel(top_ax, vuln, localities.get(names[k]))
        _moran_panel(low_ax, vuln)
        for ax, label_top in ((top_ax, True), (low_ax, False)):
            _rf_lines(ax, vuln, xmax, label_top)
            ax.set_xlim(0.5, xmax + 0.5)
            ax.grid(alpha=0.25)
        top_ax.set_ylim(0, min(100.0, top * 1.15))
        top_ax.set_title(
            f"{names[k]}: {n_success} successful attacks mapped\n{_beyond(vuln, xmax)}", fontsize=9, pad=12
        )
        top_ax.set_ylabel("fooled positions (%)")
        low_ax.set_ylabel("Moran's I (successful attacks)")
        low_ax.set_xlabel(f"{ring_word(vuln)} distance / lag d (pixels)")
    handles = [*axes[0, 0].get_legend_handles_labels()[0], *axes[1, 0].get_legend_handles_labels()[0]]
    labels = [*axes[0, 0].get_legend_handles_labels()[1], *axes[1, 0].get_legend_handles_labels()[1]]
    handles += [Line2D([], [], color="0.35", ls=":"), Line2D([], [], color="#d62728", ls="--")]
    labels = [label.split(" (n=")[0] for label in labels] + [
        "theoretical receptive-field radius (size − 1)/2 of feature layer i (i on top)",
        "effective receptive-field radius of the last feature layer (95 % of its mass)",
    ]
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=1 if ncols < 3 else 2, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out_base, formats)


def plot_erf(
    vulns: dict[str, xr.Dataset],
    out_base: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "Effective receptive fields",
) -> list[Path]:
    """The ERF of each model's last feature layer (normalised to its maximum), its theoretical field and 95 % radius."""
    fig, axes = panel_grid(len(vulns), ncols=4, extra_height=1.2)
    image = None
    for ax, (name, vuln) in zip(axes, vulns.items(), strict=True):
        erf = vuln["erf"].values
        peak = float(np.nanmax(erf)) if np.isfinite(erf).any() else 0.0
        image = ax.imshow(
            erf / peak if peak > 0 else np.zeros_like(erf), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest"
        )
        a = vuln.attrs
        cy, cx, size, radius = (
            float(a["erf_centre_y"]),
            float(a["erf_centre_x"]),
            int(a["erf_size"]),
            float(a["erf_radius"]),
        )
        half = (size - 1) / 2
        ax.add_patch(
            Rectangle((cx - half - 0.5, cy - half - 0.5), size, size, fill=False, ec=ERF_BOX, lw=1.6, clip_on=True)
        )
        if np.isfinite(radius):
            ax.add_patch(
                Rectangle(
                    (cx - radius - 0.5, cy - radius - 0.5),
                    2 * radius + 1,
                    2 * radius + 1,
                    fill=False,
                    ec="white",
                    ls="--",
                    lw=1.2,
                )
            )
        ax.plot([cx], [cy], marker="+", color=ERF_BOX, ms=8, mew=1.5)
        ax.set_xlim(-0.5, erf.shape[1] - 0.5)
        ax.set_ylim(erf.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        covers = cx - half <= 0 and cy - half <= 0 and cx + half >= erf.shape[1] - 1 and cy + half >= erf.shape[0] - 1
        whole = "\n(covers the whole image)" if covers else ""
        ax.set_title(
            f"{name}: {a['erf_layer']}\ntheoretical field {size}×{size}{whole}\n95 % of ERF within radius {radius:g}",
            fontsize=7.5,
        )
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.9, label="mean |∂ unit / ∂ input| (÷ its maximum)")
    add_caption(
        fig,
        "Gradient of the centre unit of the last feature layer (summed over channels) with respect to the "
        "input, absolute value summed over colour channels, mean over the attacked images (Luo et al. 2016). "
        "Cyan square: the unit's theoretical receptive field (cut off by the image border); white dashed: "
        "the smallest square around the unit's centre (+) holding 95 % of the ERF.",
    )
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_base, formats)
