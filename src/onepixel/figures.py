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
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

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


def _ring_word(loc: xr.Dataset) -> str:
    """"Chebyshev" or "Euclidean (rounded)" for a locality or vulnerability file."""
    return "Euclidean (rounded)" if loc.attrs.get("rings") == "euclidean" else "Chebyshev"


def _band(ax: Axes, x: np.ndarray, low: np.ndarray, high: np.ndarray, colour: str, alpha: float = 0.2) -> None:
    """Shade a confidence band where it is finite."""
    finite = np.isfinite(low) & np.isfinite(high)
    if finite.any():
        ax.fill_between(x[finite], low[finite], high[finite], color=colour, alpha=alpha, lw=0)


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
        ax_rate.plot(d, rate, "-o", color=colour, lw=1.8, ms=5, label=f"{name}: ring at distance d (n={loc.sizes['sample']} attacks)")
        _band(ax_rate, d, ci[:, 0], ci[:, 1], colour)
        ax_rate.axhline(base, color=colour, ls="--", lw=1.4, label=f"{name}: random positions")
        if np.isfinite(base_ci).all():
            ax_rate.axhspan(base_ci[0], base_ci[1], color=colour, alpha=0.08, lw=0)
        if "true_prob_change" in loc:
            change, change_ci = loc["true_prob_change"].values, loc["true_prob_change_ci"].values
            ax_prob.plot(d, change, "-o", color=colour, lw=1.8, ms=5)
            _band(ax_prob, d, change_ci[:, 0], change_ci[:, 1], colour)
            ax_prob.axhline(float(loc["baseline_true_prob_change"]), color=colour, ls="--", lw=1.4)
    ring = _ring_word(next(iter(localities.values()))) if localities else "Chebyshev"
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
    fig.suptitle(f"{title}\nshaded: 95 % bootstrap confidence intervals over the attacked images; dashed: random positions",
                 fontsize=10)
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


# ---------------------------------------------------------------------------
# Vulnerability maps and receptive fields (onepixel.vulnerability, onepixel.receptive_field)

FOOLED_CMAP = ("#dcdcdc", "#d62728")  # not fooled, fooled
PROB_CMAP = "viridis"
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
        ax.text(cluster[0][0], 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=6.5, color="0.25")
    erf_r = float(vuln.attrs.get("erf_radius", np.nan))
    if np.isfinite(erf_r) and erf_r <= xmax:
        ax.axvline(erf_r, color="#d62728", ls="--", lw=1.3)


def _beyond(vuln: xr.Dataset, xmax: float) -> str:
    """Which layers' RF radius lies beyond the plotted distances."""
    far = [i for i, r in enumerate(vuln["rf_radius"].values, start=1) if r > xmax]
    if not far:
        return f"radii of all {vuln.sizes['layer']} feature layers shown"
    return f"layers {far[0]}–{far[-1]}: radius beyond the plot" if len(far) > 1 else f"layer {far[0]}: radius beyond the plot"


def _rate_panel(ax: Axes, vuln: xr.Dataset, loc: xr.Dataset | None) -> float:
    """Success rate vs distance from the map (successful attacks), the locality rings and the random baseline."""
    d = vuln["distance"].values[1:]
    rate, ci = 100 * vuln["rate_success"].values[1:], 100 * vuln["rate_success_ci"].values[1:]
    ax.plot(d, rate, "-", color="C0", lw=1.6, label="map: positions at distance d")
    _band(ax, d, ci[:, 0], ci[:, 1], "C0")
    ax.axhline(100 * float(vuln["random_rate_success"]), color="C0", ls="--", lw=1.2, label="map: any other position")
    if loc is not None and loc.sizes["sample"]:
        ld, lr, lci = loc["distance"].values, 100 * loc["success_rate"].values, 100 * loc["success_rate_ci"].values
        err = np.abs(np.stack([lci[:, 0], lci[:, 1]]) - lr)
        ax.errorbar(ld, lr, yerr=np.where(np.isfinite(err), err, 0), fmt="o", color="C1", ms=4, capsize=2, lw=1,
                    label="locality stage: rings (all successful attacks)")
    return float(np.nanmax([1.0, *rate, *ci.ravel()]))


def _moran_panel(ax: Axes, vuln: xr.Dataset) -> None:
    """Mean Moran's I of the fooled and the true-class probability maps against the lag."""
    lag = vuln["lag"].values
    for name, colour, label in (("fooled", "C3", "fooled map"), ("true_prob", "C2", "true-class probability map")):
        mean, ci = vuln[f"moran_{name}_success"].values, vuln[f"moran_{name}_success_ci"].values
        n = int(vuln[f"moran_{name}_success_n"])
        ax.plot(lag, mean, "-", color=colour, lw=1.6, label=f"Moran's I, {label} (n={n})")
        _band(ax, lag, ci[:, 0], ci[:, 1], colour)
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
        top_ax.set_title(f"{names[k]}: {n_success} successful attacks mapped\n{_beyond(vuln, xmax)}", fontsize=9, pad=12)
        top_ax.set_ylabel("fooled positions (%)")
        low_ax.set_ylabel("Moran's I (successful attacks)")
        low_ax.set_xlabel(f"{_ring_word(vuln)} distance / lag d (pixels)")
    handles = [*axes[0, 0].get_legend_handles_labels()[0], *axes[1, 0].get_legend_handles_labels()[0]]
    labels = [*axes[0, 0].get_legend_handles_labels()[1], *axes[1, 0].get_legend_handles_labels()[1]]
    handles += [Line2D([], [], color="0.35", ls=":"), Line2D([], [], color="#d62728", ls="--")]
    labels = [label.split(" (n=")[0] for label in labels] + [
        "theoretical receptive-field radius (size − 1)/2 of feature layer i (i on top)",
        "effective receptive-field radius of the last feature layer (95 % of its mass)"]
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=1 if ncols < 3 else 2, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out_base, formats)


def plot_erf(vulns: dict[str, xr.Dataset], out_base: str | os.PathLike[str], formats: Sequence[str] = ("png", "pdf"),
             title: str = "Effective receptive fields") -> list[Path]:
    """The ERF of each model's last feature layer (normalised to its maximum), its theoretical field and 95 % radius."""
    fig, axes = _grid(len(vulns), ncols=4, extra_height=1.2)
    image = None
    for ax, (name, vuln) in zip(axes, vulns.items()):
        erf = vuln["erf"].values
        peak = float(np.nanmax(erf)) if np.isfinite(erf).any() else 0.0
        image = ax.imshow(erf / peak if peak > 0 else np.zeros_like(erf), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
        a = vuln.attrs
        cy, cx, size, radius = float(a["erf_centre_y"]), float(a["erf_centre_x"]), int(a["erf_size"]), float(a["erf_radius"])
        half = (size - 1) / 2
        ax.add_patch(Rectangle((cx - half - 0.5, cy - half - 0.5), size, size, fill=False, ec=ERF_BOX, lw=1.6, clip_on=True))
        if np.isfinite(radius):
            ax.add_patch(Rectangle((cx - radius - 0.5, cy - radius - 0.5), 2 * radius + 1, 2 * radius + 1, fill=False,
                                   ec="white", ls="--", lw=1.2))
        ax.plot([cx], [cy], marker="+", color=ERF_BOX, ms=8, mew=1.5)
        ax.set_xlim(-0.5, erf.shape[1] - 0.5)
        ax.set_ylim(erf.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        covers = cx - half <= 0 and cy - half <= 0 and cx + half >= erf.shape[1] - 1 and cy + half >= erf.shape[0] - 1
        whole = "\n(covers the whole image)" if covers else ""
        ax.set_title(f"{name}: {a['erf_layer']}\ntheoretical field {size}×{size}{whole}\n95 % of ERF within radius {radius:g}", fontsize=7.5)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.9, label="mean |∂ unit / ∂ input| (÷ its maximum)")
    _add_caption(fig, "Gradient of the centre unit of the last feature layer (summed over channels) with respect to the "
                 "input, absolute value summed over colour channels, mean over the attacked images (Luo et al. 2016). "
                 "Cyan square: the unit's theoretical receptive field (cut off by the image border); white dashed: "
                 "the smallest square around the unit's centre (+) holding 95 % of the ERF.")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_base, formats)


def _example_rows(vuln: xr.Dataset, examples: int) -> list[int]:
    """The first ``examples`` successful attacks and the first failed one."""
    success = vuln["attack_success"].values.astype(bool)
    return [*np.flatnonzero(success)[:examples].tolist(), *np.flatnonzero(~success)[:1].tolist()]


def _colour_text(colour: np.ndarray) -> str:
    return str(int(colour[0])) if colour.size == 1 else "(" + ", ".join(str(int(c)) for c in colour) + ")"


def plot_vulnerability_examples(
    vuln: xr.Dataset,
    images: np.ndarray,
    out_base: str | os.PathLike[str],
    class_names: Sequence[str],
    examples: int = 2,
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "Vulnerability maps",
) -> list[Path]:
    """Per example attack: the image (attacked pixel circled), where its colour fools the model, the true-class probability.

    Args:
        vuln: a vulnerability file (:func:`onepixel.vulnerability.run_vulnerability_stage`).
        images: ``(N_test, C, H, W)`` uint8 test images (indexed by ``sample_id``).
        examples: successful attacks shown; the first failed attack (its best colour) is added.
    """
    rows = _example_rows(vuln, examples)
    if not rows:
        return _placeholder(out_base, f"{title}: no attack mapped", formats)
    fig = Figure(figsize=(3 * PANEL_IN + 1.6, len(rows) * (PANEL_IN + 0.55) + 1.3), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    fooled_cmap = ListedColormap(FOOLED_CMAP).with_extremes(bad="#7f7f7f")  # grey: the pattern does not fit there
    prob_image = None
    for r, row in enumerate(rows):
        s = vuln.isel(sample=row)
        sid, true_c, target = int(s["sample_id"]), int(s["true_class"]), int(s["target_class"])
        px, py = s["pixel_x"].values, s["pixel_y"].values
        fooled = s["fooled"].values.astype(float)
        fooled[fooled < 0] = np.nan
        verb = "succeeded" if bool(s["attack_success"]) else "failed (best colour found)"
        aim = f", target {class_names[target]}" if target >= 0 else ""
        _show_image(axes[r, 0], images[sid], f"test image {sid}, true class {class_names[true_c]}{aim}\nattack {verb}\n"
                    f"colour {_colour_text(s['color'].values[0])} at x={int(px[0])}, y={int(py[0])}")
        share = np.nanmean(fooled) * 100
        axes[r, 1].imshow(fooled, cmap=fooled_cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[r, 1].set_title(f"same colour at each position:\nfools the model at {share:.0f} % of them (red)", fontsize=8)
        prob_image = axes[r, 2].imshow(s["true_prob"].values, cmap=PROB_CMAP, vmin=0, vmax=1, interpolation="nearest")
        axes[r, 2].set_title(f"probability of the true class\n({class_names[true_c]}) with the colour there", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            _mark(ax, px, py)
    fig.colorbar(prob_image, ax=axes[:, 2], shrink=0.8, label="true-class probability")
    legend = [Patch(fc=FOOLED_CMAP[1], label="fooled"), Patch(fc=FOOLED_CMAP[0], label="not fooled")]
    fig.legend(handles=legend, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(f"{title}\nthe attack's colour written at every position of the image, one at a time (attacked pixel circled)",
                 fontsize=10)
    return save_figure(fig, out_base, formats)


def run_locality_figures_stage(
    dataset_name: str,
    models: list[str],
    test_path: str | os.PathLike[str],
    locality_paths: dict[str, str | os.PathLike[str]],
    vulnerability_paths: dict[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    examples: int = 2,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Locality table, receptive-field overlay, ERF figure and vulnerability-map examples of one dataset.

    Writes ``locality_table.csv`` / ``.html``, ``receptive_fields``, ``erf`` and
    ``{model}/vulnerability_maps`` (each figure in every format) under ``out_dir``.
    """
    from onepixel.data import load_dataset
    from onepixel.locality import write_locality_table

    bad = [fmt for fmt in formats if fmt not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"figures.formats: {bad or list(formats)!r} not allowed; use a non-empty subset of {', '.join(FORMATS)}")
    if examples < 0:
        raise ConfigError(f"figures.examples: {examples} must be >= 0")
    for key, paths in (("locality", locality_paths), ("vulnerability", vulnerability_paths)):
        missing = [m for m in models if m not in paths]
        if missing:
            raise ConfigError(f"figures: no {key} file given for model(s) {', '.join(missing)}")
    out = Path(out_dir)
    test = load_dataset(test_path)
    class_names = [str(c) for c in test["class_name"].values]
    localities = {m: open_netcdf(locality_paths[m], required=("success_rate", "success_rate_ci")) for m in models}
    vulns = {m: open_netcdf(vulnerability_paths[m], required=("fooled", "rate_success", "rf_radius", "erf")) for m in models}
    write_locality_table(localities, out / "locality_table.csv", out / "locality_table.html")
    written = [out / "locality_table.csv", out / "locality_table.html"]
    written += plot_receptive_fields(vulns, localities, out / "receptive_fields", formats,
                                     title=f"How far does a one-pixel vulnerability reach? ({dataset_name})")
    written += plot_erf(vulns, out / "erf", formats, title=f"Effective receptive fields of the last feature layer ({dataset_name})")
    for model in models:
        written += plot_vulnerability_examples(vulns[model], test["image"].values, out / model / "vulnerability_maps",
                                               class_names, examples, formats, title=f"Vulnerability maps of {model} ({dataset_name})")
    log.info("wrote %d locality / receptive-field files under %s", len(written), out)
    return written
