"""Locality analysis of one-pixel attacks (PAPER.md section 3).

Vargas & Su (arXiv 1902.02947) find that "nearby pixels of the perturbed one
tend to share the same vulnerability". This project's test of that claim: for
each successful attack at ``(x*, y*)`` with colour ``c*``, the same colour is
written at every position at Chebyshev distance ``d = 1..D`` from ``(x*, y*)``,
one position at a time, and the fraction of positions that still fool the model
is compared with the same colour at uniformly random positions of the same image.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import xarray as xr
from torch import nn

from onepixel.errors import ConfigError
from onepixel.perturb import apply_pixels
from onepixel.utils import provenance, resolve_device, write_netcdf

log = logging.getLogger(__name__)

N_BOOTSTRAP = 1000
CI_LEVEL = 0.95


def chebyshev_offsets(d: int) -> np.ndarray:
    """All ``(dx, dy)`` with ``max(|dx|, |dy|) == d``, row by row (``8 d`` of them; ``[(0, 0)]`` for 0)."""
    if d < 0:
        raise ValueError(f"Chebyshev distance must be >= 0, got {d}")
    span = np.arange(-d, d + 1)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    ring = np.maximum(np.abs(dx), np.abs(dy)) == d
    return np.stack([dx[ring], dy[ring]], axis=1).astype(np.int64)


def ring_positions(x: int, y: int, d: int, height: int, width: int) -> np.ndarray:
    """``(M, 2)`` positions ``(x, y)`` at Chebyshev distance exactly ``d`` from ``(x, y)`` inside the image."""
    pos = chebyshev_offsets(d) + np.array([x, y])
    inside = (pos[:, 0] >= 0) & (pos[:, 0] < width) & (pos[:, 1] >= 0) & (pos[:, 1] < height)
    return pos[inside]


def _inside(xs: np.ndarray, ys: np.ndarray, offsets: np.ndarray, height: int, width: int) -> np.ndarray:
    """Offsets ``(M, 2)`` that keep every pixel ``(xs[j], ys[j])`` of a pattern inside the image."""
    sx = xs[None, :] + offsets[:, :1]
    sy = ys[None, :] + offsets[:, 1:]
    keep = ((sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)).all(axis=1)
    return offsets[keep]


def random_shifts(xs: np.ndarray, ys: np.ndarray, count: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``min(count, available)`` distinct non-zero rigid shifts of the pattern ``(xs, ys)`` that stay inside.

    For one pixel these are uniformly random positions of the image other than the
    attacked one, drawn without replacement.
    """
    dx = np.arange(-xs.min(), width - xs.max())
    dy = np.arange(-ys.min(), height - ys.max())
    gy, gx = np.meshgrid(dy, dx, indexing="ij")
    shifts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    shifts = shifts[(shifts != 0).any(axis=1)]
    return shifts[rng.choice(len(shifts), size=min(count, len(shifts)), replace=False)]


def bootstrap_ratio_ci(
    numerator: np.ndarray, denominator: np.ndarray, n_resamples: int = N_BOOTSTRAP, seed: int = 0, level: float = CI_LEVEL
) -> np.ndarray:
    """Percentile bootstrap interval of ``sum(numerator) / sum(denominator)``, resampling images.

    Args:
        numerator, denominator: ``(N, ...)`` per-image counts.

    Returns:
        ``(..., 2)`` lower and upper bounds (NaN when ``N == 0``).
    """
    n = len(numerator)
    if n == 0:
        return np.full((*numerator.shape[1:], 2), np.nan)
    rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    num, den = numerator[rows].sum(axis=1), denominator[rows].sum(axis=1)
    ratios = np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)
    tail = (1 - level) / 2 * 100
    with np.errstate(all="ignore"):
        return np.moveaxis(np.nanpercentile(ratios, [tail, 100 - tail], axis=0), 0, -1)


def _evaluate(model, images, labels, targets, pixel_x, pixel_y, colors, jobs, batch_size, device):
    """Fooled flag and true-class probability of every job ``(sample, dx, dy)``."""
    n_jobs = len(jobs)
    fooled = np.zeros(n_jobs, dtype=bool)
    true_prob = np.zeros(n_jobs)
    with torch.no_grad():
        for start in range(0, n_jobs, batch_size):
            sample, dx, dy = (torch.from_numpy(col) for col in jobs[start : start + batch_size].T)
            batch = apply_pixels(images[sample], pixel_x[sample] + dx[:, None], pixel_y[sample] + dy[:, None], colors[sample])
            probs = torch.softmax(model(batch.to(device).float() / 255).float(), dim=1).cpu()
            pred = probs.argmax(dim=1)
            target = targets[sample]
            hit = torch.where(target >= 0, pred == target, pred != labels[sample])
            fooled[start : start + len(sample)] = hit.numpy()
            true_prob[start : start + len(sample)] = probs.gather(1, labels[sample, None])[:, 0].double().numpy()
    return fooled, true_prob


def locality_analysis(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    pixel_x: np.ndarray,
    pixel_y: np.ndarray,
    colors: np.ndarray,
    targets: np.ndarray | None = None,
    max_distance: int = 3,
    random_positions: int = 16,
    seed: int = 0,
    batch_size: int = 4096,
    device: torch.device | str | None = None,
) -> xr.Dataset:
    """Success of each attack's colour moved to Chebyshev distance ``1..max_distance``, plus a random baseline.

    For ``k > 1`` pixels the whole pattern is shifted rigidly by each ring offset;
    shifts moving any pixel out of the image are dropped. Every shifted image is
    evaluated on its own, in batched forward passes.

    Args:
        model: returns logits for float images in [0, 1] (eval mode).
        images: ``(N, C, H, W)`` uint8 clean images.
        labels: ``(N,)`` true classes.
        pixel_x, pixel_y: ``(N, k)`` attacked pixels (``(N,)`` for k = 1).
        colors: ``(N, k, C)`` uint8 colours of the attack (``(N, C)`` for k = 1).
        targets: ``(N,)`` target classes (fooled = prediction equals target) or ``None``;
            negative entries mean untargeted (fooled = prediction differs from label).
        max_distance: largest Chebyshev distance ``D``.
        random_positions: positions per image of the baseline (distinct, not the attacked one).
        seed: seed of the baseline positions and of the bootstrap.

    Returns:
        Dataset with ``n_positions``, ``n_fooled``, ``rate``, ``mean_true_prob`` ``(sample, distance)``;
        ``baseline_n``, ``baseline_fooled``, ``baseline_rate``, ``baseline_true_prob`` ``(sample,)``;
        ``success_rate`` ``(distance,)`` = fooled / positions over all images,
        ``baseline_success_rate``, and 95 % bootstrap intervals over images
        ``success_rate_ci`` ``(distance, bound)``, ``baseline_success_rate_ci`` ``(bound,)``.
    """
    if max_distance < 1:
        raise ConfigError(f"locality.max_distance: {max_distance} must be >= 1")
    if random_positions < 1:
        raise ConfigError(f"locality.random_positions: {random_positions} must be >= 1")
    n, channels, height, width = images.shape
    px = np.asarray(pixel_x, dtype=np.int64).reshape(n, np.shape(pixel_x)[1] if np.ndim(pixel_x) == 2 else 1)
    py = np.asarray(pixel_y, dtype=np.int64).reshape(px.shape)
    cols = np.asarray(colors).reshape(n, px.shape[1], channels)
    labels_np = np.asarray(labels, dtype=np.int64).reshape(n)
    targets_np = np.full(n, -1, np.int64) if targets is None else np.asarray(targets, dtype=np.int64).reshape(n)
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device

    rng = np.random.default_rng(seed)
    rings = [chebyshev_offsets(d) for d in range(1, max_distance + 1)]
    jobs, group = [], []
    for i in range(n):
        shifts = [_inside(px[i], py[i], ring, height, width) for ring in rings]
        shifts.append(random_shifts(px[i], py[i], random_positions, height, width, rng))
        for g, offsets in enumerate(shifts):
            jobs.append(np.column_stack([np.full(len(offsets), i), offsets]))
            group.append(np.full(len(offsets), g))
    jobs_np = np.concatenate(jobs) if jobs else np.zeros((0, 3), np.int64)
    group_np = np.concatenate(group) if group else np.zeros(0, np.int64)
    fooled, true_prob = _evaluate(
        model, images.to(torch.uint8), torch.from_numpy(labels_np), torch.from_numpy(targets_np),
        torch.from_numpy(px), torch.from_numpy(py), torch.from_numpy(cols).to(torch.uint8), jobs_np, batch_size, device,
    )

    shape = (n, max_distance + 1)
    counts, n_fooled, prob_sum = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape)
    np.add.at(counts, (jobs_np[:, 0], group_np), 1)
    np.add.at(n_fooled, (jobs_np[:, 0], group_np), fooled)
    np.add.at(prob_sum, (jobs_np[:, 0], group_np), true_prob)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate, mean_prob = n_fooled / counts, prob_sum / counts
        total_rate = n_fooled.sum(axis=0) / counts.sum(axis=0)
    ci = bootstrap_ratio_ci(n_fooled, counts, seed=seed)
    return _locality_dataset(counts, n_fooled, rate, mean_prob, total_rate, ci, px, py, labels_np, targets_np, random_positions, seed)


def _locality_dataset(counts, n_fooled, rate, mean_prob, total_rate, ci, px, py, labels, targets, random_positions, seed) -> xr.Dataset:
    """Package the per-group results; the last group is the random baseline."""
    d = counts.shape[1] - 1
    sd = ("sample", "distance")
    unit = {"units": "1"}
    data_vars = {
        "n_positions": (sd, counts[:, :d], {"long_name": "ring positions inside the image"}),
        "n_fooled": (sd, n_fooled[:, :d], {"long_name": "ring positions where the attack's colour fools the model"}),
        "rate": (sd, rate[:, :d], {"long_name": "fraction of ring positions that fool the model", **unit}),
        "mean_true_prob": (sd, mean_prob[:, :d], {"long_name": "softmax probability of the true class, mean over ring positions", **unit}),
        "baseline_n": ("sample", counts[:, d], {"long_name": "random positions evaluated"}),
        "baseline_fooled": ("sample", n_fooled[:, d], {"long_name": "random positions that fool the model"}),
        "baseline_rate": ("sample", rate[:, d], {"long_name": "fraction of random positions that fool the model", **unit}),
        "baseline_true_prob": ("sample", mean_prob[:, d], {"long_name": "true-class probability, mean over random positions", **unit}),
        "success_rate": ("distance", total_rate[:d], {"long_name": "fooled / evaluated ring positions over all images", **unit}),
        "baseline_success_rate": ((), total_rate[d], {"long_name": "fooled / evaluated random positions over all images", **unit}),
        "success_rate_ci": (("distance", "bound"), ci[:d], {"long_name": f"{CI_LEVEL:.0%} bootstrap interval of success_rate (images resampled)", **unit}),
        "baseline_success_rate_ci": ("bound", ci[d], {"long_name": f"{CI_LEVEL:.0%} bootstrap interval of baseline_success_rate", **unit}),
    }
    coords = {
        "distance": ("distance", np.arange(1, d + 1), {"long_name": "Chebyshev distance from the attacked pixel", "units": "pixels"}),
        "bound": ("bound", np.array(["low", "high"])),
        "pixel_x": ("sample", px[:, 0]),
        "pixel_y": ("sample", py[:, 0]),
        "true_class": ("sample", labels),
        "target_class": ("sample", targets),
    }
    attrs = {
        "max_distance": d,
        "random_positions": random_positions,
        "seed": seed,
        "n_bootstrap": N_BOOTSTRAP,
        "ci_level": CI_LEVEL,
        "description": (
            "Locality analysis (PAPER.md section 3, interpretation of Vargas & Su 2019): the attack's colour(s) "
            "applied at every position at Chebyshev distance d from the attacked pixel (rigid shift of the whole "
            "pattern; shifts leaving the image dropped), one at a time; baseline: the same colour at distinct "
            "uniformly random positions of the image other than the attacked one. Fooled: prediction != true class "
            "(untargeted, target_class < 0) or == target_class (targeted)."
        ),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def run_locality_stage(
    checkpoint_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    attack_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    max_distance: int = 3,
    random_positions: int = 16,
    seed: int = 0,
    device: str = "auto",
) -> xr.Dataset:
    """Locality analysis of one model's successful attacks, written to ``out_path``.

    Untargeted attacks must store a negative ``target_class``. With no successful
    attack the file has 0 samples and NaN rates.
    """
    from onepixel.attack import load_attack
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    if max_distance < 1:
        raise ConfigError(f"locality.max_distance: {max_distance} must be >= 1")
    if random_positions < 1:
        raise ConfigError(f"locality.random_positions: {random_positions} must be >= 1")
    dev = resolve_device(device)
    attack = load_attack(attack_path)
    test = load_dataset(test_path)
    model, _meta = load_checkpoint(checkpoint_path, map_location=dev)
    successful = attack.isel(sample=np.flatnonzero(attack["success"].values))
    if successful.sizes["sample"] == 0:
        log.warning("%s: no successful attack; writing an empty locality analysis", attack_path)
    sample_id = successful["sample_id"].values
    ds = locality_analysis(
        model,
        torch.from_numpy(test["image"].values[sample_id]),
        successful["true_class"].values,
        successful["pixel_x"].values,
        successful["pixel_y"].values,
        successful["color"].values,
        successful["target_class"].values,
        max_distance=max_distance,
        random_positions=random_positions,
        seed=seed,
        device=dev,
    )
    ds = ds.assign_coords(sample_id=("sample", sample_id))
    ds.attrs.update(provenance(dev))
    write_netcdf(ds, out_path)
    log.info("locality of %d successful attacks -> %s", ds.sizes["sample"], out_path)
    return ds
