"""The attack stage: pick correctly classified test images, attack them, write netCDF."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from onepixel.attack.de import OnePixelAttack
from onepixel.attack.results import result_to_dataset, save_attack
from onepixel.errors import ConfigError, DataError

#: defaults of the ``attack`` section of ``config.schema.yaml``
DEFAULT_ATTACK_CONFIG: dict[str, Any] = {
    "num_images": 100,
    "pixels": 1,
    "population": 400,
    "generations": 100,
    "F": 0.5,
    "crossover": 1.0,
    "strategy": "rand1",
    "targeted": False,
    "seed": 0,
    "batch_size": 8192,
}


def attack_settings(attack_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """``attack_cfg`` completed with the defaults; unknown keys are a ConfigError."""
    cfg = dict(attack_cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULT_ATTACK_CONFIG))
    if unknown:
        raise ConfigError(
            f"attack.{unknown[0]}: unknown key; allowed keys are {', '.join(DEFAULT_ATTACK_CONFIG)}"
        )
    full = {**DEFAULT_ATTACK_CONFIG, **cfg}
    n = full["num_images"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"attack.num_images: {n!r} is not allowed; use an integer >= 1")
    return full


def make_attack(model: nn.Module, cfg: dict[str, Any], device: str | torch.device | None = None) -> OnePixelAttack:
    """An :class:`OnePixelAttack` from a (completed) ``attack`` config section."""
    return OnePixelAttack(
        model,
        pixels=cfg["pixels"],
        population=cfg["population"],
        generations=cfg["generations"],
        F=cfg["F"],
        crossover=cfg["crossover"],
        strategy=cfg["strategy"],
        targeted=cfg["targeted"],
        seed=cfg["seed"],
        batch_size=cfg["batch_size"],
        device=device,
    )


def predict(model: nn.Module, images_uint8: torch.Tensor, batch_size: int = 512, device=None) -> torch.Tensor:
    """Argmax predictions ``(N,)`` (CPU int64) of ``model`` on uint8 images, in eval mode."""
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for s in range(0, images_uint8.shape[0], batch_size):
                x = images_uint8[s : s + batch_size].to(dev).float() / 255
                out.append(model(x).argmax(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def select_correct_images(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    num_images: int,
    seed: int,
    batch_size: int = 512,
    device=None,
) -> np.ndarray:
    """Indices of up to ``num_images`` correctly classified images, in a seeded random order.

    The images are visited in the order ``numpy.random.default_rng(seed).permutation(N)``
    (sampling without replacement) and the correctly classified ones are kept
    until ``num_images`` are found (all of them if fewer). The indices are
    returned in that random order, *not* sorted, so the selection for a smaller
    ``num_images`` is a prefix of the selection for a larger one.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"num_images: {num_images!r} is not allowed; use an integer >= 1")
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (images_uint8.shape[0],):
        raise DataError(f"labels: expected shape ({images_uint8.shape[0]},); got {tuple(labels.shape)}")
    correct = (predict(model, images_uint8, batch_size, device) == labels).numpy()
    order = np.random.default_rng(seed).permutation(images_uint8.shape[0])
    return order[correct[order]][:num_images].astype(np.int64)


def targets_for(labels, num_classes: int, targeted: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the attack: ``(row_labels, row_targets, row_index)`` (int64 tensors).

    Untargeted: one row per image, target -1. Targeted: one row per (image,
    other class) pair, image-major and classes ascending; an image counts as
    attackable when any of its rows succeeds (the paper's "at least one target").
    ``row_index`` indexes ``labels``.
    """
    labels = torch.as_tensor(labels).long().cpu()
    n = labels.shape[0]
    if not targeted:
        return labels.clone(), torch.full((n,), -1, dtype=torch.long), torch.arange(n)
    classes = torch.arange(num_classes)
    mask = classes[None, :] != labels[:, None]  # (n, K)
    row_index, row_targets = mask.nonzero(as_tuple=True)
    return labels[row_index], row_targets, row_index


def run_attack_stage(
    checkpoint_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    attack_cfg: dict[str, Any],
    device: str = "auto",
    log: Callable[[str], Any] = print,
) -> xr.Dataset:
    """Attack ``num_images`` correctly classified test images and write ``out_path`` (netCDF).

    The random streams are keyed by test-set index (and target), so the rows of
    any image do not depend on ``num_images`` or ``batch_size``.
    """
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint
    from onepixel.utils import file_sha256, provenance, resolve_device

    cfg = attack_settings(attack_cfg)
    dev = resolve_device(device)
    model, _meta = load_checkpoint(checkpoint_path, map_location=dev)
    test = load_dataset(test_path)
    images = torch.from_numpy(np.ascontiguousarray(test["image"].values))
    labels = torch.from_numpy(np.asarray(test["label"].values, dtype=np.int64))
    if "class_name" in test.coords:
        num_classes = int(test["class_name"].size)
    else:
        with torch.inference_mode():
            num_classes = int(model.eval()(images[:1].to(dev).float() / 255).shape[1])
    attack = make_attack(model, cfg, dev)

    chosen = select_correct_images(model, images, labels, cfg["num_images"], cfg["seed"], device=dev)
    if len(chosen) < cfg["num_images"]:
        log(f"attack: only {len(chosen)} correctly classified test images (asked for {cfg['num_images']})")
    row_labels, row_targets, row_index = targets_for(labels[chosen], num_classes, cfg["targeted"])
    sample_ids = torch.from_numpy(chosen)[row_index]
    ids = sample_ids * num_classes + row_targets if cfg["targeted"] else sample_ids
    start = time.perf_counter()
    result = attack.run(
        images[sample_ids], row_labels, row_targets if cfg["targeted"] else None, ids=ids
    )
    wall = time.perf_counter() - start
    rate = attack.last_stats.get("candidates", 0) / wall if wall > 0 else float("nan")
    attrs = {
        **provenance(dev),
        "model_checkpoint": os.path.basename(os.fspath(checkpoint_path)),
        "model_sha256": file_sha256(checkpoint_path),
        "seed": int(cfg["seed"]),
        "wall_time_s": float(wall),
        "candidates_per_s": float(rate),
        "num_images": int(len(chosen)),
    }
    ds = result_to_dataset(result, sample_ids.numpy(), cfg, attrs)
    save_attack(ds, out_path)
    log(summary_line(ds, rate))
    return ds


def summary_line(ds: xr.Dataset, candidates_per_s: float) -> str:
    """One-line summary of an attack dataset."""
    success = np.asarray(ds["success"].values).astype(bool)
    n = success.size
    text = (
        f"attack: {int(success.sum())}/{n} successful ({100 * success.mean() if n else 0:.1f} %), "
        f"mean queries {float(np.mean(ds['queries'].values)) if n else 0:.0f}, "
        f"{candidates_per_s:.0f} candidates/s"
    )
    target = np.asarray(ds["target_class"].values)
    if n and (target >= 0).any():
        ids = np.asarray(ds["sample_id"].values)
        uniq = np.unique(ids)
        any_hit = np.array([success[ids == i].any() for i in uniq])
        text += f"; {int(any_hit.sum())}/{uniq.size} images ({100 * any_hit.mean():.1f} %) fooled towards >= 1 target"
    return text


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
