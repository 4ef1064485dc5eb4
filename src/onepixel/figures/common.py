"""What every figure shares: saving in several formats atomically, panel grids, maps, images and pixel marks."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from onepixel.errors import ConfigError
from onepixel.files import atomic_path

FORMATS = ("png", "pdf", "svg")
DPI = 200
MAP_CMAP = "inferno"
MARK: dict[str, Any] = {"marker": "o", "ms": 14, "mfc": "none", "ls": "none"}
PANEL_IN = 1.85


def save_figure(fig: Figure, out_base: str | os.PathLike[str], formats: Sequence[str]) -> list[Path]:
    """Save ``fig`` as ``{out_base}.{fmt}`` for each format, atomically; return the paths."""
    bad = [fmt for fmt in formats if fmt not in FORMATS]
    if bad or not formats:
        raise ConfigError(
            f"figures.formats: {bad or list(formats)!r} not allowed; use a non-empty subset of {', '.join(FORMATS)}"
        )
    paths = []
    for fmt in formats:
        path = Path(f"{out_base}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Software": "onepixel"} if fmt == "png" else None)
        paths.append(path)
    return paths


def add_caption(fig: Figure, text: str) -> None:
    """A small-print caption under the panels, wrapped to the figure's width."""
    fig.supxlabel(textwrap.fill(text, width=int(fig.get_figwidth() * 15)), fontsize=8)


def add_title(fig: Figure, text: str, fontsize: float = 10) -> None:
    """The figure's title, each line wrapped to the figure's width (a long title is not clipped)."""
    width = max(24, int(fig.get_figwidth() * 130 / fontsize))  # characters per line at about 13 per inch at 10 pt
    fig.suptitle(
        "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in text.split("\n")), fontsize=fontsize
    )


def panel_grid(n_panels: int, ncols: int, extra_height: float = 0.9) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure with ``n_panels`` square panels on at most ``ncols`` balanced columns."""
    nrows = -(-n_panels // max(1, ncols))
    ncols = -(-n_panels // nrows)
    fig = Figure(figsize=(ncols * PANEL_IN + 1.4, nrows * (PANEL_IN + 0.35) + extra_height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, list(axes[:n_panels])


def show_map(ax: Axes, data: np.ndarray, vmax: float, title: str):
    """Draw one propagation map with nearest interpolation, equal aspect and no ticks."""
    image = ax.imshow(data, cmap=MAP_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return image


def show_image(ax: Axes, image: np.ndarray, title: str) -> None:
    """Draw a ``(C, H, W)`` uint8 image (grey for one channel)."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(np.moveaxis(image, 0, -1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def mark_pixel(ax: Axes, x: ArrayLike, y: ArrayLike) -> None:
    """Circle the attacked pixel(s): cyan on a thin black halo, visible on any background."""
    ax.plot(x, y, mec="black", mew=2.6, **MARK)
    ax.plot(x, y, mec="#00e5ff", mew=1.3, **MARK)


def mark_edges(ax: Axes, x: ArrayLike, y: ArrayLike) -> None:
    """Point at the attacked pixel's column and row with triangles on the panel's top and left edges.

    Unlike a circle, these leave the map itself uncovered: in the first layers of a
    32x32 network the perturbation fills only the few cells around the pixel.
    """
    style: dict[str, Any] = {
        "ms": 7,
        "mfc": "#00e5ff",
        "mec": "black",
        "mew": 0.8,
        "ls": "none",
        "clip_on": False,
        "zorder": 5,
    }
    ax.plot(x, np.ones(np.shape(x)), marker="v", transform=ax.get_xaxis_transform(), **style)
    ax.plot(np.zeros(np.shape(y)), y, marker=">", transform=ax.get_yaxis_transform(), **style)


def placeholder(out_base: str | os.PathLike[str], text: str, formats: Sequence[str]) -> list[Path]:
    """A small figure that only says ``text`` (keeps the set of output files fixed)."""
    lines = textwrap.wrap(text, width=60, break_on_hyphens=False) or [""]  # a long model name must not run off the page
    fig = Figure(figsize=(5, max(1.5, 0.6 + 0.3 * len(lines))))
    fig.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=11)
    return save_figure(fig, out_base, formats)


def ring_word(loc: xr.Dataset) -> str:
    """ "Chebyshev" or "Euclidean (rounded)" for a locality or vulnerability file."""
    return "Euclidean (rounded)" if loc.attrs["rings"] == "euclidean" else "Chebyshev"


def band(ax: Axes, x: np.ndarray, low: np.ndarray, high: np.ndarray, colour: str, alpha: float = 0.2) -> None:
    """Shade a confidence band where it is finite."""
    finite = np.isfinite(low) & np.isfinite(high)
    if finite.any():
        ax.fill_between(x[finite], low[finite], high[finite], color=colour, alpha=alpha, lw=0)
