"""Locality analysis of one-pixel attacks (docs/science.md#locality).

Vargas & Su (arXiv 1902.02947) find that "nearby pixels of the perturbed one
tend to share the same vulnerability". This project's test of that claim: for
each successful attack at ``(x*, y*)`` with colour ``c*``, the same colour is
written at every position of the ring at distance ``d = 1..D`` from ``(x*, y*)``,
one position at a time, and the fraction of positions that still fool the model
is compared with the same colour at uniformly random positions of the same image.

Rings (``rings``, config ``locality.rings``), for an offset ``(dx, dy)`` from the
attacked pixel:

- ``chebyshev`` (default): ring ``d`` holds the offsets with ``max(|dx|, |dy|) == d``
  (the square of side ``2d + 1``'s border; ``8 d`` positions, ring 1 = the 8 neighbours);
- ``euclidean``: ring ``d`` holds the offsets with ``round(sqrt(dx² + dy²)) == d``,
  i.e. ``d - 0.5 <= distance < d + 0.5`` (never a tie: the square root of an integer
  is never a half-integer). Ring 1 is again the 8 neighbours; rings 2 and 3 hold 12
  and 16 positions.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from onepixel.attack.results import load_job_inputs
from onepixel.attack.stage import attack_method
from onepixel.config import PIXEL_METHODS
from onepixel.engine import EngineChoice, PixelVariants, choose_engine
from onepixel.errors import ConfigError
from onepixel.files import atomic_path, write_netcdf
from onepixel.memory import budgeted_batch
from onepixel.progress import Progress, announce, duration
from onepixel.provenance import provenance
from onepixel.scoring import Classifier, as_classifier
from onepixel.stages import Job

log = logging.getLogger(__name__)

N_BOOTSTRAP = 1000
CI_LEVEL = 0.95
#: images per forward pass of the locality analysis (capped by batch_memory_mb)
LOCALITY_BATCH = 4096
RING_METRICS = ("chebyshev", "euclidean")
_RING_NAMES = {"chebyshev": "Chebyshev", "euclidean": "Euclidean (rounded)"}


def check_rings(rings: str) -> str:
    """Return ``rings`` if it names a ring metric, else raise a ConfigError."""
    if rings not in RING_METRICS:
        raise ConfigError(f"locality.rings: {rings!r} is not a ring metric; allowed: {', '.join(RING_METRICS)}")
    return rings


def ring_distance(dx: np.ndarray, dy: np.ndarray, rings: str = "chebyshev") -> np.ndarray:
    """Integer ring index of offsets ``(dx, dy)``: ``max(|dx|, |dy|)`` or ``round(hypot(dx, dy))``."""
    dx, dy = np.asarray(dx), np.asarray(dy)
    if check_rings(rings) == "chebyshev":
        return np.maximum(np.abs(dx), np.abs(dy)).astype(np.int64)
    return np.rint(np.hypot(dx, dy)).astype(np.int64)


def ring_offsets(d: int, rings: str = "chebyshev") -> np.ndarray:
    """All ``(dx, dy)`` in ring ``d`` of metric ``rings``, row by row (``[(0, 0)]`` for 0)."""
    if d < 0:
        raise ValueError(f"ring distance must be >= 0, got {d}")
    span = np.arange(-d - 1, d + 2)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    ring = ring_distance(dx, dy, rings) == d
    return np.stack([dx[ring], dy[ring]], axis=1).astype(np.int64)


def chebyshev_offsets(d: int) -> np.ndarray:
    """All ``(dx, dy)`` with ``max(|dx|, |dy|) == d``, row by row (``8 d`` of them; ``[(0, 0)]`` for 0)."""
    return ring_offsets(d, "chebyshev")


def euclidean_offsets(d: int) -> np.ndarray:
    """All ``(dx, dy)`` with ``round(sqrt(dx² + dy²)) == d``, row by row (``[(0, 0)]`` for 0)."""
    return ring_offsets(d, "euclidean")


def ring_positions(x: int, y: int, d: int, height: int, width: int, rings: str = "chebyshev") -> np.ndarray:
    """``(M, 2)`` positions ``(x, y)`` in ring ``d`` around ``(x, y)`` inside the image."""
    pos = ring_offsets(d, rings) + np.array([x, y])
    inside = (pos[:, 0] >= 0) & (pos[:, 0] < width) & (pos[:, 1] >= 0) & (pos[:, 1] < height)
    return pos[inside]


def _inside(xs: np.ndarray, ys: np.ndarray, offsets: np.ndarray, height: int, width: int) -> np.ndarray:
    """Offsets ``(M, 2)`` that keep every pixel ``(xs[j], ys[j])`` of a pattern inside the image."""
    sx = xs[None, :] + offsets[:, :1]
    sy = ys[None, :] + offsets[:, 1:]
    keep = ((sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)).all(axis=1)
    return offsets[keep]


def random_shifts(
    xs: np.ndarray, ys: np.ndarray, count: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
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
    numerator: np.ndarray,
    denominator: np.ndarray,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = CI_LEVEL,
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
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no image with positions) give NaN
        return np.moveaxis(np.nanpercentile(ratios, [tail, 100 - tail], axis=0), 0, -1)


def attack_arrays(
    images: torch.Tensor, labels: object, pixel_x: object, pixel_y: object, colors: object, targets: object | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Attack rows as ``(px, py)`` ``(N, k)``, ``colors`` ``(N, k, C)`` uint8, ``labels`` and ``targets`` ``(N,)`` int64.

    Accepts ``(N,)`` pixels and ``(N, C)`` colours for one-pixel attacks; ``targets``
    ``None`` means untargeted (stored as -1).
    """
    n, channels = images.shape[:2]
    px = np.asarray(pixel_x, dtype=np.int64).reshape(n, -1) if n else np.zeros((0, 1), np.int64)
    py = np.asarray(pixel_y, dtype=np.int64).reshape(px.shape)
    cols = np.asarray(colors).reshape(n, px.shape[1], channels).astype(np.uint8)
    labels_np = np.asarray(labels, dtype=np.int64).reshape(n)
    targets_np = np.full(n, -1, np.int64) if targets is None else np.asarray(targets, dtype=np.int64).reshape(n)
    return px, py, cols, labels_np, targets_np


def shift_engine(
    engine: str, clf: Classifier, image_shape: tuple[int, ...], pixels: int, jobs: np.ndarray, batch_size: int
) -> EngineChoice:
    """The engine of :func:`evaluate_shifts` for ``jobs`` (``auto`` resolved at the evaluations of one image per
    batch: the jobs of an image are consecutive)."""
    images = max(1, len(np.unique(jobs[:, 0]))) if len(jobs) else 1
    per_image = max(1, min(batch_size, math.ceil(len(jobs) / images)))
    return choose_engine(engine, clf.model, image_shape, pixels, clf.device, candidates=per_image)


def evaluate_shifts(
    model: nn.Module | Classifier,
    images: torch.Tensor,
    labels: np.ndarray,
    targets: np.ndarray,
    pixel_x: np.ndarray,
    pixel_y: np.ndarray,
    colors: np.ndarray,
    jobs: np.ndarray,
    batch_size: int,
    device: torch.device | str | None = None,
    output: str = "auto",
    progress: str | None = None,
    engine: str = "dense",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate every job: image ``sample`` with its attack pattern shifted by ``(dx, dy)``.

    Args:
        model: a :class:`~onepixel.scoring.Classifier` (its device is used), or a model
            returning ``output`` (``logits``, ``probabilities`` or ``auto``) run on ``device``
            (default: its own).
        images: ``(N, C, H, W)`` uint8 clean images.
        labels, targets: ``(N,)``; a negative target means untargeted.
        pixel_x, pixel_y: ``(N, k)`` attacked pixels; colors ``(N, k, C)`` uint8.
        jobs: ``(M, 3)`` int64 rows ``(sample, dx, dy)``; every shifted pixel must lie inside.
        batch_size: images per forward pass (one :meth:`Classifier.score_batch` each).
        progress: when given, the evaluations done are shown under this name
            (:class:`onepixel.progress.Progress`, e.g. ``"locality lenet"``).
        engine: ``dense``, ``incremental`` or ``auto`` (:mod:`onepixel.engine`): how the shifted images
            are evaluated.

    Returns:
        ``fooled`` ``(M,)`` bool (prediction != label when untargeted, == target when
        targeted), ``true_prob`` ``(M,)`` float64 softmax probability of the true
        class, ``pred`` ``(M,)`` int64 predicted class (argmax of the probabilities).
        A job whose model output has a NaN or an infinity is rejected (the attack's
        rule): not fooled, ``true_prob`` NaN, ``pred`` -1, counted in the classifier's
        ``rejected``.
    """
    clf = as_classifier(model, output=output, device=device)
    device = clf.device
    n_jobs = len(jobs)
    fooled, true_prob, pred = np.zeros(n_jobs, bool), np.zeros(n_jobs), np.zeros(n_jobs, np.int64)
    images = images.to(device=device, dtype=torch.uint8)
    labels_t, targets_t = (torch.as_tensor(a, device=device) for a in (labels, targets))
    px, py, cols = (torch.as_tensor(a, device=device) for a in (pixel_x, pixel_y, colors))
    jobs_t = torch.as_tensor(jobs, device=device)
    chosen = shift_engine(engine, clf, tuple(images.shape[1:]), px.shape[1], jobs, batch_size)
    variants = PixelVariants(clf.model, images, chosen.engine, device)
    bar = Progress(progress, n_jobs, "evaluations") if progress else None
    with torch.inference_mode():
        for start in range(0, n_jobs, batch_size):
            sample, dx, dy = jobs_t[start : start + batch_size].T
            xs, ys = px[sample] + dx[:, None], py[sample] + dy[:, None]
            scores = clf.score_variants(variants, sample, xs, ys, cols[sample], labels_t[sample], targets_t[sample])
            stop = start + len(sample)
            fooled[start:stop] = scores.fooled.numpy()
            true_prob[start:stop] = scores.true_prob.numpy()
            pred[start:stop] = scores.pred.numpy()
            if bar is not None:
                bar.update(len(sample))
    if bar is not None:
        bar.close()
    return fooled, true_prob, pred


def clean_true_prob(
    model: nn.Module | Classifier,
    images: torch.Tensor,
    labels: np.ndarray,
    batch_size: int,
    device: torch.device | str | None = None,
    output: str = "auto",
) -> np.ndarray:
    """``(N,)`` float64 softmax probability of the true class on the clean images (NaN where rejected).

    ``model``: a :class:`~onepixel.scoring.Classifier` or a model returning ``output``
    (see :func:`evaluate_shifts`); ``batch_size`` images per forward pass.
    """
    clf = as_classifier(model, output=output, device=device)
    out = np.zeros(len(images))
    labels_t = torch.as_tensor(labels)
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        out[start:stop] = clf.score_batch(images[start:stop], labels_t[start:stop]).true_prob.numpy()
    return out


def _locality_jobs(px, py, height, width, max_distance, random_positions, rings, rng) -> tuple[np.ndarray, np.ndarray]:
    """Jobs ``(sample, dx, dy)`` and their group (ring ``d - 1``, or ``max_distance`` for the baseline)."""
    offsets = [ring_offsets(d, rings) for d in range(1, max_distance + 1)]
    jobs, group = [np.zeros((0, 3), np.int64)], [np.zeros(0, np.int64)]
    for i in range(len(px)):
        shifts = [_inside(px[i], py[i], ring, height, width) for ring in offsets]
        shifts.append(random_shifts(px[i], py[i], random_positions, height, width, rng))
        for g, found in enumerate(shifts):
            jobs.append(np.column_stack([np.full(len(found), i), found]).astype(np.int64))
            group.append(np.full(len(found), g))
    return np.concatenate(jobs), np.concatenate(group)


def mean_ci(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images (axis 0) of finite values and its bootstrap interval (images resampled).

    Args:
        values: ``(N, ...)`` per-image values; NaN entries are left out.

    Returns:
        ``mean`` ``(...)`` and ``ci`` ``(..., 2)`` (NaN where no image has a finite value).
    """
    finite = np.isfinite(values)
    numerator, denominator = np.where(finite, values, 0.0), finite.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = numerator.sum(axis=0) / denominator.sum(axis=0)
    return mean, bootstrap_ratio_ci(numerator, denominator, seed=seed)


def locality_analysis(
    model: nn.Module | Classifier,
    images: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    pixel_x: np.ndarray,
    pixel_y: np.ndarray,
    colors: np.ndarray,
    targets: np.ndarray | None = None,
    max_distance: int = 3,
    random_positions: int = 16,
    seed: int = 0,
    batch_size: int = LOCALITY_BATCH,
    device: torch.device | str | None = None,
    rings: str = "chebyshev",
    output: str = "auto",
    progress: str | None = None,
    engine: str = "dense",
) -> xr.Dataset:
    """Success of each attack's colour moved to ring distance ``1..max_distance``, plus a random baseline.

    For ``k > 1`` pixels the whole pattern is shifted rigidly by each ring offset;
    shifts moving any pixel out of the image are dropped. Every shifted image is
    evaluated on its own, in batched forward passes.

    Args:
        model: a :class:`~onepixel.scoring.Classifier` (its device is used), or a model
            returning ``output`` for float images in [0, 1] (evaluated in eval mode).
        images: ``(N, C, H, W)`` uint8 clean images.
        labels: ``(N,)`` true classes.
        pixel_x, pixel_y: ``(N, k)`` attacked pixels (``(N,)`` for k = 1).
        colors: ``(N, k, C)`` uint8 colours of the attack (``(N, C)`` for k = 1).
        targets: ``(N,)`` target classes (fooled = prediction equals target) or ``None``;
            negative entries mean untargeted (fooled = prediction differs from label).
        max_distance: largest ring distance ``D``.
        random_positions: positions per image of the baseline (distinct, not the attacked one).
        seed: seed of the baseline positions and of the bootstrap.
        batch_size: images per forward pass.
        rings: ``chebyshev`` or ``euclidean`` (see the module docstring).
        output: what a bare ``model`` returns: ``logits``, ``probabilities`` or ``auto``
            (decided on the first batch); ignored for a Classifier.
        progress: when given, the evaluations done are shown under this name (see :func:`evaluate_shifts`).
        engine: ``dense``, ``incremental`` or ``auto`` (:mod:`onepixel.engine`); the attribute ``engine``
            records the one that ran.

    Probabilities are ``softmax`` of the logits (of ``log p`` for a model returning
    probabilities, so both read the same). An evaluation whose output has a NaN or an
    infinity is rejected (not fooled, probability NaN, left out of the mean
    probability changes); the attribute ``rejected_evaluations`` counts them, and
    ``model_output`` records the kind of output used.

    Returns:
        Dataset with ``n_positions``, ``n_fooled``, ``rate``, ``mean_true_prob`` ``(sample, distance)``;
        ``baseline_n``, ``baseline_fooled``, ``baseline_rate``, ``baseline_true_prob``,
        ``clean_true_prob`` ``(sample,)``; ``success_rate`` ``(distance,)`` = fooled / positions
        over all images, ``baseline_success_rate``, ``true_prob_change`` ``(distance,)`` = mean
        over images of (mean true-class probability on the ring - on the clean image),
        ``baseline_true_prob_change``, and 95 % bootstrap intervals over images
        (``*_ci``, last dim ``bound``).
    """
    if max_distance < 1:
        raise ConfigError(f"locality.max_distance: {max_distance} must be >= 1")
    if random_positions < 1:
        raise ConfigError(f"locality.random_positions: {random_positions} must be >= 1")
    check_rings(rings)
    n, _channels, height, width = images.shape
    px, py, cols, labels_np, targets_np = attack_arrays(images, labels, pixel_x, pixel_y, colors, targets)
    clf = as_classifier(model, output=output, device=device)
    rejected_before = clf.rejected
    jobs, group = _locality_jobs(
        px, py, height, width, max_distance, random_positions, rings, np.random.default_rng(seed)
    )
    chosen = shift_engine(engine, clf, tuple(images.shape[1:]), px.shape[1], jobs, batch_size)
    fooled, true_prob, _pred = evaluate_shifts(
        clf, images, labels_np, targets_np, px, py, cols, jobs, batch_size, progress=progress, engine=chosen.engine
    )

    shape = (n, max_distance + 1)
    counts, n_fooled, prob_sum = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape)
    np.add.at(counts, (jobs[:, 0], group), 1)
    np.add.at(n_fooled, (jobs[:, 0], group), fooled)
    np.add.at(prob_sum, (jobs[:, 0], group), true_prob)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate, mean_prob = n_fooled / counts, prob_sum / counts
        total_rate = n_fooled.sum(axis=0) / counts.sum(axis=0)
    clean = clean_true_prob(clf, images, labels_np, batch_size)
    change, change_ci = mean_ci(mean_prob - clean[:, None], seed=seed)
    ci = bootstrap_ratio_ci(n_fooled, counts, seed=seed)
    ds = _locality_dataset(
        counts, n_fooled, rate, mean_prob, total_rate, ci, px, py, labels_np, targets_np, random_positions, seed
    )
    ds = _add_probability_change(ds, clean, change, change_ci, rings)
    rejected = clf.rejected - rejected_before
    if rejected:
        log.warning("locality: %d evaluations rejected (NaN or infinite model output; counted as not fooled)", rejected)
    ds.attrs.update(
        model_output=str(clf.output or clf.requested_output), rejected_evaluations=int(rejected), engine=chosen.engine
    )
    return ds


def _locality_dataset(
    counts, n_fooled, rate, mean_prob, total_rate, ci, px, py, labels, targets, random_positions, seed
) -> xr.Dataset:
    """Package the per-group results; the last group is the random baseline."""
    d = counts.shape[1] - 1
    sd = ("sample", "distance")
    unit = {"units": "1"}
    data_vars = {
        "n_positions": (sd, counts[:, :d], {"long_name": "ring positions inside the image"}),
        "n_fooled": (sd, n_fooled[:, :d], {"long_name": "ring positions where the attack's colour fools the model"}),
        "rate": (sd, rate[:, :d], {"long_name": "fraction of ring positions that fool the model", **unit}),
        "mean_true_prob": (
            sd,
            mean_prob[:, :d],
            {"long_name": "softmax probability of the true class, mean over ring positions", **unit},
        ),
        "baseline_n": ("sample", counts[:, d], {"long_name": "random positions evaluated"}),
        "baseline_fooled": ("sample", n_fooled[:, d], {"long_name": "random positions that fool the model"}),
        "baseline_rate": (
            "sample",
            rate[:, d],
            {"long_name": "fraction of random positions that fool the model", **unit},
        ),
        "baseline_true_prob": (
            "sample",
            mean_prob[:, d],
            {"long_name": "true-class probability, mean over random positions", **unit},
        ),
        "success_rate": (
            "distance",
            total_rate[:d],
            {"long_name": "fooled / evaluated ring positions over all images", **unit},
        ),
        "baseline_success_rate": (
            (),
            total_rate[d],
            {"long_name": "fooled / evaluated random positions over all images", **unit},
        ),
        "success_rate_ci": (
            ("distance", "bound"),
            ci[:d],
            {"long_name": f"{CI_LEVEL:.0%} bootstrap interval of success_rate (images resampled)", **unit},
        ),
        "baseline_success_rate_ci": (
            "bound",
            ci[d],
            {"long_name": f"{CI_LEVEL:.0%} bootstrap interval of baseline_success_rate", **unit},
        ),
    }
    coords = {
        "distance": ("distance", np.arange(1, d + 1), {"units": "pixels"}),
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
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _add_probability_change(
    ds: xr.Dataset, clean: np.ndarray, change: np.ndarray, change_ci: np.ndarray, rings: str
) -> xr.Dataset:
    """Add the clean probability, its change per distance and the description of the rings."""
    d = ds.sizes["distance"]
    unit = {"units": "1"}
    ds["clean_true_prob"] = (
        "sample",
        clean,
        {"long_name": "softmax probability of the true class on the clean image", **unit},
    )
    ds["true_prob_change"] = (
        "distance",
        change[:d],
        {"long_name": "mean over images of (mean true-class probability on the ring - on the clean image)", **unit},
    )
    ds["true_prob_change_ci"] = (
        ("distance", "bound"),
        change_ci[:d],
        {"long_name": f"{CI_LEVEL:.0%} bootstrap interval of true_prob_change (images resampled)", **unit},
    )
    ds["baseline_true_prob_change"] = (
        (),
        change[d],
        {
            "long_name": "mean over images of (mean true-class probability at the random positions - on the clean image)",
            **unit,
        },
    )
    ds["baseline_true_prob_change_ci"] = (
        "bound",
        change_ci[d],
        {"long_name": f"{CI_LEVEL:.0%} bootstrap interval of baseline_true_prob_change", **unit},
    )
    ds["distance"].attrs["long_name"] = f"{_RING_NAMES[rings]} distance from the attacked pixel"
    ds.attrs["rings"] = rings
    ds.attrs["description"] = (
        "Locality analysis (docs/science.md#locality, interpretation of Vargas & Su 2019): the attack's colour(s) "
        f"applied at every position of the {_RING_NAMES[rings]} ring at distance d from the attacked pixel "
        + ("(max(|dx|, |dy|) == d)" if rings == "chebyshev" else "(round(sqrt(dx^2 + dy^2)) == d)")
        + " (rigid shift of the whole pattern; shifts leaving the image dropped), one at a time; baseline: "
        "the same colour at distinct uniformly random positions of the image other than the attacked one. "
        "Fooled: prediction != true class (untargeted, target_class < 0) or == target_class (targeted)."
    )
    return ds


def locality_stage(job: Job) -> xr.Dataset:
    """Locality analysis of one model's successful attacks, written to ``out_path``.

    Untargeted attacks must store a negative ``target_class``. With no successful
    attack the file has 0 samples and NaN rates. The inputs must belong together
    (:func:`onepixel.attack.results.load_attacked_model`); the file records
    ``model_sha256``, ``test_digest`` and ``attack_digest``.
    """
    cfg = job.cfg["locality"]
    attack_path, out_path = job.input("attack"), job.output()
    started, name = time.perf_counter(), f"locality {job.input('checkpoint').stem}"
    loaded = load_job_inputs(job, "locality")  # refuses inputs that do not belong together
    test, attack, dev = loaded.test, loaded.attack, loaded.device
    successful = attack.isel(sample=np.flatnonzero(attack["success"].values))
    if (method := attack_method(attack)) not in PIXEL_METHODS:
        announce(f"{name}: a {method} attack changes every pixel; locality (moving one pixel) does not apply")
        successful = successful.isel(sample=slice(0, 0))
    if successful.sizes["sample"] == 0:
        log.warning("%s: no successful attack; writing an empty locality analysis", attack_path)
    sample_id = successful["sample_id"].values
    images = test["image"].values
    batch_size = budgeted_batch(
        loaded.model, images.shape[1:], LOCALITY_BATCH, job.cfg["batch_memory_mb"], "locality batch", dev
    )
    ds = locality_analysis(
        loaded.classifier(),  # reads the model's output as the attack did (its model_output)
        torch.from_numpy(images[sample_id]),
        successful["true_class"].values,
        successful["pixel_x"].values,
        successful["pixel_y"].values,
        successful["color"].values,
        successful["target_class"].values,
        max_distance=cfg["max_distance"],
        random_positions=cfg["random_positions"],
        seed=cfg["seed"],
        batch_size=batch_size,
        device=dev,
        rings=cfg["rings"],
        progress=name,
        engine=job.cfg["engine"],
    )
    ds = ds.assign_coords(sample_id=("sample", sample_id))
    ds.attrs.update(provenance(dev))
    ds.attrs["model_output"] = loaded.model_output
    ds.attrs.update(loaded.lineage)  # model_sha256, test_digest, attack_digest: what it was made from
    write_netcdf(ds, out_path, kind="locality")
    log.info("locality of %d successful attacks -> %s", ds.sizes["sample"], out_path)
    found = (
        f"still fooling at d = 1: {100 * float(ds['success_rate'].values[0]):.1f} %, "
        f"at random positions: {100 * float(ds['baseline_success_rate']):.1f} %"
        if ds.sizes["sample"]
        else "nothing to analyse"
    )
    announce(f"{name}: {ds.sizes['sample']} successful attacks, {found}, {duration(time.perf_counter() - started)}")
    return ds


# ---------------------------------------------------------------------------
# The locality table: success at d = 1, 2, 3 and at random positions, per model

TABLE_DISTANCES = (1, 2, 3)


def locality_table(
    localities: Mapping[str, xr.Dataset], distances: Sequence[int] = TABLE_DISTANCES
) -> list[dict[str, object]]:
    """One row per model: attacks analysed, success rate (with its 95 % interval) at each distance and at random positions.

    Distances beyond a file's ``max_distance`` are left out (``None``). Rates are fractions.
    """
    rows = []
    for model, loc in localities.items():
        row: dict[str, object] = {"model": model, "attacks": int(loc.sizes["sample"]), "rings": loc.attrs["rings"]}
        known = [int(d) for d in loc["distance"].values]
        for d in distances:
            at = known.index(d) if d in known else None
            rate = None if at is None else float(loc["success_rate"].values[at])
            low, high = (None, None) if at is None else (float(v) for v in loc["success_rate_ci"].values[at])
            row |= {f"d{d}": rate, f"d{d}_low": low, f"d{d}_high": high}
        low, high = (float(v) for v in loc["baseline_success_rate_ci"].values)
        row |= {"random": float(loc["baseline_success_rate"]), "random_low": low, "random_high": high}
        rows.append(row)
    return rows


def _percent(rate: Any, low: Any, high: Any) -> str:
    """``"12.5 % [8.1, 17.0]"``; ``"–"`` for a missing or NaN rate."""
    if rate is None or not np.isfinite(rate):
        return "–"
    if low is None or not np.isfinite(low):
        return f"{100 * rate:.1f} %"
    return f"{100 * rate:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def write_locality_table(
    localities: Mapping[str, xr.Dataset],
    csv_path: str | os.PathLike[str],
    html_path: str | os.PathLike[str] | None = None,
) -> list[dict[str, object]]:
    """Write :func:`locality_table` as CSV (fractions) and, optionally, as an HTML table (percent with intervals)."""
    import csv
    import html

    rows = locality_table(localities)
    columns = ["model", "rings", "attacks"] + [
        f"{k}{s}" for k in [f"d{d}" for d in TABLE_DISTANCES] + ["random"] for s in ("", "_low", "_high")
    ]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in columns} for row in rows)
    if html_path is not None:
        heads = ["model", "successful attacks"] + [f"d&nbsp;=&nbsp;{d}" for d in TABLE_DISTANCES] + ["random positions"]
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in [
                    row["model"],
                    row["attacks"],
                    *[_percent(row[f"d{d}"], row[f"d{d}_low"], row[f"d{d}_high"]) for d in TABLE_DISTANCES],
                    _percent(row["random"], row["random_low"], row["random_high"]),
                ]
            )
            + "</tr>\n"
            for row in rows
        )
        rings = {str(row["rings"]) for row in rows}
        page = (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Locality table</title>"
            "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f0f0f0}"
            "td:first-child{text-align:left}</style></head><body>\n"
            "<h1>Locality of one-pixel attacks</h1>\n"
            f"<p>Fraction of positions at {'/'.join(sorted(rings))} distance d from a successful attack's pixel where the "
            "same colour still fools the model, and at uniformly random positions of the same image; "
            "[95 % bootstrap interval over images]. A dash: not measured (a distance beyond the study's "
            "<code>locality.max_distance</code>, or no successful attack).</p>\n"
            "<table>\n<tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>\n" + body + "</table>\n</body></html>\n"
        )
        with atomic_path(html_path) as tmp:
            tmp.write_text(page)
    return rows
