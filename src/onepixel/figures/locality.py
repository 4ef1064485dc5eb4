"""The locality figure: success of the attack's colour against the distance from the attacked pixel, per model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from onepixel.figures.common import band, ring_word, save_figure


def plot_locality(
    localities: dict[str, xr.Dataset],
    out_base: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "Locality of one-pixel vulnerability",
) -> list[Path]:
    """Success rate and true-class probability change of the attack's colour moved to distance d, per model.

    (a) Solid line with 95 % bootstrap band: ring positions at distance d; dashed
    line (same colour, faint band): the same colour at random positions of the image.
    (b) Mean change of the true-class probability against the clean image (0 = no
    effect; negative = the model is pushed away from the true class), same styles.
    """
    fig = Figure(figsize=(11.5, 5.0), layout="constrained")
    ax_rate, ax_prob = fig.subplots(1, 2)
    max_d, top = 1, 0.0
    for k, (name, loc) in enumerate(localities.items()):
        colour = f"C{k % 10}"
        d = loc["distance"].values
        max_d = max(max_d, int(d.max(initial=1)))
        rate, ci = 100 * loc["success_rate"].values, 100 * loc["success_rate_ci"].values
        base, base_ci = 100 * float(loc["baseline_success_rate"]), 100 * loc["baseline_success_rate_ci"].values
        top = np.nanmax([top, *rate, *ci.ravel(), base, *base_ci])
        ax_rate.plot(
            d,
            rate,
            "-o",
            color=colour,
            lw=1.8,
            ms=5,
            label=f"{name}: ring at distance d (n={loc.sizes['sample']} attacks)",
        )
        band(ax_rate, d, ci[:, 0], ci[:, 1], colour)
        ax_rate.axhline(base, color=colour, ls="--", lw=1.4, label=f"{name}: random positions")
        if np.isfinite(base_ci).all():
            ax_rate.axhspan(base_ci[0], base_ci[1], color=colour, alpha=0.08, lw=0)
        if "true_prob_change" in loc:
            change, change_ci = loc["true_prob_change"].values, loc["true_prob_change_ci"].values
            ax_prob.plot(d, change, "-o", color=colour, lw=1.8, ms=5)
            band(ax_prob, d, change_ci[:, 0], change_ci[:, 1], colour)
            ax_prob.axhline(float(loc["baseline_true_prob_change"]), color=colour, ls="--", lw=1.4)
    ring = ring_word(next(iter(localities.values()))) if localities else "Chebyshev"
    for ax in (ax_rate, ax_prob):
        ax.set_xticks(range(1, max_d + 1))
        ax.set_xlim(0.7, max_d + 0.3)
        ax.set_xlabel(f"{ring} distance d from the attacked pixel (pixels)")
        ax.grid(alpha=0.3)
    ax_rate.set_ylim(0, min(100.0, 10 * np.ceil(top * 1.15 / 10)) or 100.0)
    ax_rate.set_ylabel("positions where the same colour\nstill fools the model (%)")
    ax_rate.set_title("(a) success rate of the attack's colour", fontsize=10)
    ax_prob.axhline(0.0, color="0.3", lw=0.8)
    ax_prob.set_ylabel("change of the true-class probability\n(mean over images; vs. the clean image)")
    ax_prob.set_title("(b) true-class probability, change from the clean image", fontsize=10)
    fig.legend(*ax_rate.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(
        f"{title}\nshaded: 95 % bootstrap confidence intervals over the attacked images; dashed: random positions",
        fontsize=10,
    )
    return save_figure(fig, out_base, formats)
