"""The attack stages of the workflow: select the correctly classified test images, attack a shard, merge the shards.

Every attack takes the same path (``attack.shards = n``, n = 1 included):
:func:`select_stage` picks the images once and writes them to a selection
file, :func:`attack_stage` with wildcard ``shard = i`` attacks the i-th of n
contiguous, disjoint parts of that selection (:func:`shard_indices`), and
:func:`merge_stage` combines the shard files into the attack file. The random streams are keyed by test-set index (and target), so the
merged result equals the unsharded one row for row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from onepixel.attack.de import OnePixelAttack
from onepixel.attack.results import (
    load_attack,
    merge_attacks,
    result_to_dataset,
    save_attack,
)
from onepixel.config import section_defaults, validate_section
from onepixel.errors import ConfigError, DataError
from onepixel.files import file_sha256, read_json, write_json
from onepixel.provenance import provenance
from onepixel.scoring import Classifier, as_classifier
from onepixel.stages import Job
from onepixel.torch_utils import deterministic_torch, eval_mode, resolve_device

#: defaults of the ``attack`` section, read from the config schema (its single source)
DEFAULT_ATTACK_CONFIG: dict[str, Any] = section_defaults("attack")

#: keys of the ``attack`` section that only say how the work is split, not what is
#: computed; they are left out of the ``attack_config`` stored with the results
EXECUTION_KEYS: tuple[str, ...] = ("shards",)


def attack_settings(attack_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """``attack_cfg`` validated against the schema's ``attack`` section and completed with its defaults.

    Raises:
        ConfigError: one line naming the key (``attack.<key>``), the value and what is
            allowed, as for the whole config (:func:`onepixel.config.validate_section`).
    """
    return validate_section("attack", attack_cfg)


def stored_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a completed ``attack`` config that determines the results (no ``EXECUTION_KEYS``)."""
    return {key: value for key, value in cfg.items() if key not in EXECUTION_KEYS}


def shard_indices(num: int, shard: int, shards: int) -> np.ndarray:
    """Positions ``(m,)`` of the ``shard``-th of ``shards`` contiguous parts of ``num`` items.

    The parts are those of ``numpy.array_split``: disjoint, in order, their sizes
    differ by at most one, and together they cover ``range(num)`` (a part is empty
    when ``shards > num``).
    """
    _check_shard(shard, shards)
    return np.array_split(np.arange(num, dtype=np.int64), shards)[shard]


def _check_shard(shard: int, shards: int) -> None:
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"shards: {shards!r} is not allowed; use an integer >= 1")
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ConfigError(f"shard: {shard!r} is not allowed; use an integer in [0, {shards - 1}] for {shards} shard(s)")


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


def predict(
    model: nn.Module | Classifier, images_uint8: torch.Tensor, batch_size: int = 512, device=None, output: str = "auto"
) -> torch.Tensor:
    """Argmax predictions ``(N,)`` (CPU int64) of ``model`` on uint8 images: :meth:`Classifier.predict`.

    ``model`` is a :class:`~onepixel.scoring.Classifier` (then ``batch_size``, ``device`` and
    ``output`` are its own) or a model returning ``output`` (``"auto"``: decided on the first
    batch). Eval mode (each submodule's training flag restored afterwards); an image whose
    output has a NaN or an infinity is predicted as -1 (never correctly classified).
    """
    return as_classifier(model, output=output, device=device, batch_size=batch_size).predict(images_uint8)


def select_correct_images(
    model: nn.Module | Classifier,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    num_images: int,
    seed: int,
    batch_size: int = 512,
    device=None,
    output: str = "auto",
) -> np.ndarray:
    """Indices of up to ``num_images`` correctly classified images, in a seeded random order.

    Correct: :func:`predict` (``model``, ``batch_size``, ``device``, ``output``) equals the label.

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
    correct = (predict(model, images_uint8, batch_size, device, output) == labels).numpy()
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


@dataclass
class _StageInputs:
    """What every attack stage starts from: the completed config, the device, the model and the test set."""

    cfg: dict[str, Any]
    device: torch.device
    model: nn.Module
    images: torch.Tensor  # (N, C, H, W) uint8, CPU
    labels: torch.Tensor  # (N,) int64
    num_classes: int


def _stage_inputs(checkpoint_path, test_path, attack_cfg, device) -> _StageInputs:
    """Validate ``attack_cfg``, resolve ``device``, load the checkpoint (onto it) and the test set."""
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    cfg = attack_settings(attack_cfg)
    dev = resolve_device(device)
    model, _meta = load_checkpoint(checkpoint_path, map_location=dev)
    test = load_dataset(test_path)
    images = torch.from_numpy(np.ascontiguousarray(test["image"].values))
    labels = torch.from_numpy(np.asarray(test["label"].values, dtype=np.int64))
    if "class_name" in test.coords:
        num_classes = int(test["class_name"].size)
    else:
        with eval_mode(model), torch.inference_mode():
            num_classes = int(model(images[:1].to(dev).float() / 255).shape[1])
    return _StageInputs(cfg, dev, model, images, labels, num_classes)


def _select(inputs: _StageInputs, log: Callable[[str], Any]) -> np.ndarray:
    """:func:`select_correct_images` with the config's ``num_images`` and ``seed``; a shortfall is logged."""
    cfg = inputs.cfg
    chosen = select_correct_images(
        inputs.model, inputs.images, inputs.labels, cfg["num_images"], cfg["seed"], device=inputs.device
    )
    if len(chosen) < cfg["num_images"]:
        log(f"attack: only {len(chosen)} correctly classified test images (asked for {cfg['num_images']})")
    return chosen


def select_stage(job: Job) -> np.ndarray:
    """Select the images of a sharded attack once and write them to ``out_path`` (JSON).

    The selection is :func:`select_correct_images` with ``num_images`` and ``seed``
    (the same images an unsharded :func:`attack_stage` attacks, in the same
    order). The file also records the seed, ``num_images``, the class count and
    the checkpoint's SHA-256, which :func:`read_selection` checks.

    Returns:
        The selected test-set indices ``(n,)`` int64.
    """
    checkpoint_path, test_path, out_path = job.input("checkpoint"), job.input("test"), job.output()
    attack_cfg, device, log = job.cfg["attack"], job.cfg["device"], job.log.info
    with deterministic_torch():
        inputs = _stage_inputs(checkpoint_path, test_path, attack_cfg, device)
        chosen = _select(inputs, log)
    cfg = inputs.cfg
    write_json(
        {
            "sample_ids": chosen.tolist(),
            "num_images": int(cfg["num_images"]),
            "seed": int(cfg["seed"]),
            "num_classes": inputs.num_classes,
            "model_sha256": file_sha256(checkpoint_path),
        },
        out_path,
        kind="selection",
    )
    log(f"attack selection: {len(chosen)} correctly classified test images (seed {cfg['seed']})")
    return chosen


def read_selection(
    path: str | os.PathLike[str],
    attack_cfg: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Test-set indices ``(n,)`` int64 of a selection file written by :func:`select_stage`.

    With ``attack_cfg`` the file's ``seed`` and ``num_images`` must equal the
    config's; with ``checkpoint_path`` it must have been made with that checkpoint.
    A mismatch is a :class:`~onepixel.errors.DataError` (re-run the selection).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: selection file not found")
    sel = read_json(file, kind="selection")
    if not isinstance(sel.get("sample_ids"), list):
        raise DataError(f"{file}: sample_ids must be a list of test-set indices")
    if attack_cfg is not None:
        cfg = attack_settings(attack_cfg)
        for key in ("seed", "num_images"):
            if sel.get(key) != cfg[key]:
                raise DataError(
                    f"{file}: made with attack.{key} = {sel.get(key)!r}, the config has {cfg[key]!r}; "
                    "re-run the selection"
                )
    if checkpoint_path is not None and sel.get("model_sha256") != file_sha256(checkpoint_path):
        raise DataError(f"{file}: made with another model than {checkpoint_path}; re-run the selection")
    ids = np.asarray(sel["sample_ids"], dtype=np.int64).reshape(-1)
    if len(np.unique(ids)) != len(ids) or (ids < 0).any():
        raise DataError(f"{file}: sample_ids must be distinct test-set indices >= 0")
    return ids


def attack_stage(job: Job) -> xr.Dataset:
    """Attack ``num_images`` correctly classified test images and write ``out_path`` (netCDF).

    The random streams are keyed by test-set index (and target), so the rows of
    any image do not depend on ``num_images``, ``batch_size`` or sharding.

    Sharding: with ``shards = n > 1`` only the ``shard``-th part
    (:func:`shard_indices`) of the selected images is attacked; the selection is
    read from ``selection_path`` (written once by :func:`select_stage`) or,
    without it, made here exactly as :func:`select_stage` makes it. The
    ``shards`` setting of ``attack_cfg`` is ignored here (it tells the workflow
    how many jobs to start); pass ``shard``/``shards``. The file records the
    attribute ``shards`` (and ``shard`` when ``shards > 1``); :func:`merge_stage`
    combines the shard files.

    Reproducibility: the stage runs under :func:`onepixel.torch_utils.deterministic_torch`
    (no TF32, deterministic cuDNN/cuBLAS choices on a GPU); on the CPU two runs with
    the same config and seed write bit-identical results (but the timing attributes).
    The file also records ``model_output`` (logits or probabilities, see
    :class:`OnePixelAttack`) and the total of ``rejected_candidates``.
    """
    checkpoint_path, test_path, out_path = job.input("checkpoint"), job.input("test"), job.output()
    attack_cfg, device, log = job.cfg["attack"], job.cfg["device"], job.log.info
    shard, shards, selection_path = job.wildcards["shard"], job.cfg["attack"]["shards"], job.inputs["selection"]
    _check_shard(shard, shards)
    with deterministic_torch():  # before the first GPU work of the process (see its docstring)
        inputs = _stage_inputs(checkpoint_path, test_path, attack_cfg, device)
        cfg, dev, images = inputs.cfg, inputs.device, inputs.images
        attack = make_attack(inputs.model, cfg, dev)
        if selection_path is not None:
            chosen = read_selection(selection_path, cfg, checkpoint_path)
            if len(chosen) and int(chosen.max()) >= images.shape[0]:
                raise DataError(
                    f"{selection_path}: sample_id {int(chosen.max())} is outside the test set "
                    f"({images.shape[0]} images); re-run the selection"
                )
        else:
            chosen = _select(inputs, log)
        chosen = chosen[shard_indices(len(chosen), shard, shards)]
        row_labels, row_targets, row_index = targets_for(inputs.labels[chosen], inputs.num_classes, cfg["targeted"])
        sample_ids = torch.from_numpy(chosen)[row_index]
        ids = sample_ids * inputs.num_classes + row_targets if cfg["targeted"] else sample_ids
        start = time.perf_counter()
        result = attack.run(images[sample_ids], row_labels, row_targets if cfg["targeted"] else None, ids=ids)
        wall = time.perf_counter() - start
    rate = attack.last_stats.get("candidates", 0) / wall if wall > 0 else float("nan")
    attrs = {
        **provenance(dev),
        "model_checkpoint": os.path.basename(os.fspath(checkpoint_path)),
        "model_sha256": file_sha256(checkpoint_path),
        "model_output": str(attack.model_output),
        "seed": int(cfg["seed"]),
        "wall_time_s": float(wall),
        "candidates_per_s": float(rate),
        "num_images": len(chosen),
        "rejected_candidates": int(attack.last_stats.get("rejected", 0)),
        "shards": int(shards),
        **({"shard": int(shard)} if shards > 1 else {}),
    }
    ds = result_to_dataset(result, sample_ids.numpy(), stored_config(cfg), attrs)
    save_attack(ds, out_path)
    where = f" (shard {shard} of {shards})" if shards > 1 else ""
    log(summary_line(ds, rate) + where)
    return ds


def merge_stage(job: Job) -> xr.Dataset:
    """Merge the shard files of one attack (:func:`attack_stage` with ``shards = n``) into ``out_path``.

    Every shard ``0 .. n-1`` must be given exactly once (in any order). Rows come
    in the order of the selection (shard order when there is no selection file),
    so the merged file equals the one an unsharded run writes, except for the
    timing attributes: ``wall_time_s`` is the sum over the shards and
    ``candidates_per_s`` the total candidates over that sum. With
    ``selection_path`` the shards must cover exactly the selected images.
    """
    shard_paths, out_path, selection_path = job.inputs["shards"], job.output(), job.inputs["selection"]
    log = job.log.info
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise DataError("merge-attack: no shard files given")
    shards = [load_attack(p) for p in paths]
    counts = {int(ds.attrs["shards"]) for ds in shards}
    index = [int(ds.attrs.get("shard", 0)) for ds in shards]  # written only when shards > 1
    if len(counts) != 1 or sorted(index) != list(range(len(paths))) or counts != {len(paths)}:
        got = ", ".join(
            f"{p.name} (shard {i} of {ds.attrs['shards']})" for p, i, ds in zip(paths, index, shards, strict=True)
        )
        raise DataError(f"merge-attack: expected shards 0..{len(paths) - 1} of {len(paths)}, each once; got {got}")
    shards = [shards[i] for i in np.argsort(index)]
    order = read_selection(selection_path) if selection_path is not None else None
    merged = merge_attacks(shards, order=order)
    ids = np.unique(merged["sample_id"].values)
    if order is not None and (len(ids) != len(order) or not np.isin(order, ids).all()):
        raise DataError(
            f"merge-attack: the shards hold {len(ids)} images but {selection_path} selects {len(order)}; "
            "were they made with another selection?"
        )
    wall = float(sum(float(ds.attrs["wall_time_s"]) for ds in shards))
    candidates = int(merged["queries"].values.sum())
    rate = candidates / wall if wall > 0 else float("nan")
    attrs = dict(merged.attrs)
    attrs.pop("shard", None)
    attrs.update(wall_time_s=wall, candidates_per_s=float(rate), num_images=len(ids), shards=len(paths))
    if "rejected_candidates" in merged:
        attrs["rejected_candidates"] = int(merged["rejected_candidates"].values.sum())
    success_attrs = dict(merged["success"].attrs)
    merged = merged.assign(success=merged["success"].astype(np.uint8))
    merged["success"].attrs.update(success_attrs)
    merged.attrs = attrs
    for var in merged.variables.values():
        var.encoding = {}
    save_attack(merged, out_path)
    log(summary_line(merged, rate) + f" (merged {len(paths)} shards)")
    return merged


def summary_line(ds: xr.Dataset, candidates_per_s: float) -> str:
    """One-line summary of an attack dataset."""
    success = np.asarray(ds["success"].values).astype(bool)
    n = success.size
    text = (
        f"attack: {int(success.sum())}/{n} successful ({100 * success.mean() if n else 0:.1f} %), "
        f"mean queries {float(np.mean(ds['queries'].values)) if n else 0:.0f}, "
        f"{candidates_per_s:.0f} candidates/s"
    )
    if "rejected_candidates" in ds and n and int(ds["rejected_candidates"].values.sum()):
        text += (
            f"; {int(ds['rejected_candidates'].values.sum())} candidates rejected "
            "(NaN or infinite model output, counted as not adversarial)"
        )
    target = np.asarray(ds["target_class"].values)
    if n and (target >= 0).any():
        ids = np.asarray(ds["sample_id"].values)
        uniq = np.unique(ids)
        any_hit = np.array([success[ids == i].any() for i in uniq])
        text += f"; {int(any_hit.sum())}/{uniq.size} images ({100 * any_hit.mean():.1f} %) fooled towards >= 1 target"
    return text
