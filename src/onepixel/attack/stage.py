"""The attack stages of the workflow: select the correctly classified test images, attack a shard, merge the shards.

Every attack takes the same path (``attack.shards = n``, n = 1 included):
:func:`select_stage` picks the images once and writes them to a selection
file, :func:`attack_stage` with wildcard ``shard = i`` attacks the i-th of n
contiguous, disjoint parts of that selection (:func:`shard_indices`), and
:func:`merge_stage` combines the shard files into the attack file. The random streams are keyed by test-set index (and target), so the
merged result equals the unsharded one row for row.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from onepixel.attack.de import FinishedRows, OnePixelAttack
from onepixel.attack.exhaustive import ExhaustiveAttack, SweepResult
from onepixel.attack.gradient import FGSM, PGD
from onepixel.attack.results import (
    REQUIRED_ATTRS,
    add_sweep_maps,
    load_attack,
    merge_attacks,
    result_to_dataset,
    save_attack,
)
from onepixel.config import runs_user_code, section_defaults, validate_section
from onepixel.engine import check_engine
from onepixel.errors import ConfigError, DataError
from onepixel.files import atomic_path, file_sha256, one_line, read_json, write_json
from onepixel.lineage import check_model_input, check_same, dataset_digest, selection_digest, short
from onepixel.memory import budgeted_batch
from onepixel.progress import Progress, announce, duration
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


#: the keys each attack method reads besides the common ones (num_images, targeted, labels, seed, batch_size)
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "de": ("pixels", "population", "generations", "F", "crossover", "strategy"),
    "exhaustive": ("colors", "levels", "early_stop"),
    "fgsm": ("eps",),
    "pgd": ("eps", "alpha", "steps", "random_start"),
}


def stored_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a completed ``attack`` config that determines the results.

    No ``EXECUTION_KEYS``, and only the keys of its ``method`` (a DE attack
    records no ``method``, as before other methods existed, so its files stay the same).
    """
    method = cfg.get("method", "de")
    others = {key for name, keys in METHOD_KEYS.items() if name != method for key in keys} - set(METHOD_KEYS[method])
    dropped = {*EXECUTION_KEYS, *others, *(("method",) if method == "de" else ())}
    return {key: value for key, value in cfg.items() if key not in dropped}


def attack_method(attack: xr.Dataset) -> str:
    """The ``method`` an attack file was made with (``de`` for files that record none)."""
    return str(json.loads(attack.attrs.get("attack_config", "{}")).get("method", "de"))


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


#: the class of each attack method; each takes the method's METHOD_KEYS, targeted and batch_size as keywords
ATTACK_CLASSES: dict[str, type] = {"de": OnePixelAttack, "exhaustive": ExhaustiveAttack, "fgsm": FGSM, "pgd": PGD}
#: methods whose results depend on attack.seed (the others are deterministic without one)
SEEDED_METHODS = ("de", "pgd")
#: methods that evaluate pixel candidates, with the config's engine (the gradient attacks run the plain model)
ENGINE_METHODS = ("de", "exhaustive")


def _engine_of(attack: Any, image_shape: tuple[int, ...]) -> str:
    """The engine the attack will run (``dense`` for the gradient attacks), resolved before it runs."""
    if not hasattr(attack, "choose_engine"):
        return "dense"
    return str(attack.choose_engine(tuple(int(v) for v in image_shape)).engine)


def make_attack(
    model: nn.Module, cfg: dict[str, Any], device: str | torch.device | None = None, engine: str = "dense"
) -> Any:
    """The attack of a (completed) ``attack`` config section: its ``method``'s class of :data:`ATTACK_CLASSES`.

    :class:`OnePixelAttack` (de), :class:`~onepixel.attack.exhaustive.ExhaustiveAttack`,
    :class:`~onepixel.attack.gradient.FGSM` or :class:`~onepixel.attack.gradient.PGD`,
    with the config's values of the method's keys (:data:`METHOD_KEYS`); the pixel attacks
    (:data:`ENGINE_METHODS`) evaluate their candidates with ``engine`` (:mod:`onepixel.engine`).
    """
    method = cfg.get("method", "de")
    options = {key: cfg[key] for key in METHOD_KEYS[method]}
    if method in SEEDED_METHODS:
        options["seed"] = cfg["seed"]
    if method in ENGINE_METHODS:
        options["engine"] = check_engine(engine)
    return ATTACK_CLASSES[method](
        model, **options, targeted=cfg["targeted"], batch_size=cfg["batch_size"], device=device
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
    """What every attack stage starts from: the completed config, the device, the model and the test set
    (and what identifies them: the checkpoint's sha256, the test set's digest)."""

    cfg: dict[str, Any]
    device: torch.device
    model: nn.Module
    images: torch.Tensor  # (N, C, H, W) uint8, CPU
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    model_sha256: str
    test_digest: str


def _stage_inputs(
    checkpoint_path, test_path, attack_cfg, device, stage: str = "attack", allow_code: bool = False
) -> _StageInputs:
    """Validate ``attack_cfg``, resolve ``device``, load the checkpoint (onto it; ``allow_code``: its model may be
    built by the user's factory) and the test set, and check that the model takes the test set's images
    (:func:`onepixel.lineage.check_model_input`, named ``stage``)."""
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    cfg = attack_settings(attack_cfg)
    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint_path, map_location=dev, allow_code=allow_code)
    test = load_dataset(test_path)
    check_model_input(stage, model, meta, checkpoint_path, test, test_path, dev)
    images = torch.from_numpy(np.ascontiguousarray(test["image"].values))
    labels = torch.from_numpy(np.asarray(test["label"].values, dtype=np.int64))
    if cfg["labels"] == "predicted":  # unlabelled images, random-weight models: the model's own classes
        labels = predict(model, images, device=dev).long()
    if "class_name" in test.coords:
        num_classes = int(test["class_name"].size)
    else:
        with eval_mode(model), torch.inference_mode():
            num_classes = int(model(images[:1].to(dev).float() / 255).shape[1])
    return _StageInputs(
        cfg, dev, model, images, labels, num_classes, file_sha256(checkpoint_path), dataset_digest(test)
    )


def _select(inputs: _StageInputs, log: Callable[[str], Any]) -> np.ndarray:
    """:func:`select_correct_images` with the config's ``num_images`` and ``seed``; a shortfall is logged."""
    cfg = inputs.cfg
    chosen = select_correct_images(
        inputs.model, inputs.images, inputs.labels, cfg["num_images"], cfg["seed"], device=inputs.device
    )
    if len(chosen) < cfg["num_images"]:
        announce(
            f"attack: only {len(chosen)} of the test images are correctly classified, fewer than "
            f"attack.num_images = {cfg['num_images']}: attacking those {len(chosen)}"
        )
    return chosen


def select_stage(job: Job) -> np.ndarray:
    """Select the images of a sharded attack once and write them to ``out_path`` (JSON).

    The selection is :func:`select_correct_images` with ``num_images`` and ``seed``
    (the same images an unsharded :func:`attack_stage` attacks, in the same
    order). The file also records the seed, ``num_images``, the class count,
    the checkpoint's SHA-256 (``model_sha256``) and the test set's digest
    (``test_digest``), which :func:`read_selection` checks.

    Returns:
        The selected test-set indices ``(n,)`` int64.
    """
    checkpoint_path, test_path, out_path = job.input("checkpoint"), job.input("test"), job.output()
    attack_cfg, device, log = job.cfg["attack"], job.cfg["device"], job.log.info
    with deterministic_torch():
        inputs = _stage_inputs(
            checkpoint_path,
            test_path,
            attack_cfg,
            device,
            "select-images",
            runs_user_code(job.cfg),
        )
        chosen = _select(inputs, log)
    cfg = inputs.cfg
    write_json(
        {
            "sample_ids": chosen.tolist(),
            "num_images": int(cfg["num_images"]),
            "seed": int(cfg["seed"]),
            "num_classes": inputs.num_classes,
            "model_sha256": inputs.model_sha256,
            "test_digest": inputs.test_digest,
        },
        out_path,
        kind="selection",
    )
    log(f"attack selection: {len(chosen)} correctly classified test images (seed {cfg['seed']})")
    return chosen


def _selection_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a selection file, with its ``sample_ids``, ``model_sha256`` and ``test_digest`` checked."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: selection file not found")
    sel = read_json(file, kind="selection")
    if not isinstance(sel.get("sample_ids"), list):
        raise DataError(f"{file}: sample_ids must be a list of test-set indices")
    for key in ("model_sha256", "test_digest"):
        if not isinstance(sel.get(key), str) or not sel[key]:
            raise DataError(f"{file}: records no {key} (what the selection was made from); re-run the selection")
    return sel


def read_selection(
    path: str | os.PathLike[str],
    attack_cfg: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    test_digest: str | None = None,
    test_path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Test-set indices ``(n,)`` int64 of a selection file written by :func:`select_stage`.

    With ``attack_cfg`` the file's ``seed`` and ``num_images`` must equal the
    config's; with ``checkpoint_path`` it must have been made with that checkpoint;
    with ``test_digest`` (:func:`onepixel.lineage.dataset_digest` of the test set at
    ``test_path``) on that test set. The file must record ``model_sha256`` and
    ``test_digest``. A mismatch is a :class:`~onepixel.errors.DataError` (re-run the selection).
    """
    file = Path(path)
    sel = _selection_record(file)
    if test_digest is not None and sel["test_digest"] != test_digest:
        raise DataError(
            f"attack: {test_path or 'the test set'} is not the test set {file} was made on "
            f"(test digest {short(test_digest)} != {short(sel['test_digest'])}); pass the test set of the selection"
        )
    if attack_cfg is not None:
        cfg = attack_settings(attack_cfg)
        for key in ("seed", "num_images"):
            if sel.get(key) != cfg[key]:
                raise DataError(
                    f"{file}: made with attack.{key} = {sel.get(key)!r}, the config has {cfg[key]!r}; "
                    "re-run the selection"
                )
    if checkpoint_path is not None and (sha := file_sha256(checkpoint_path)) != sel["model_sha256"]:
        raise DataError(
            f"{file}: made with another model than {checkpoint_path} "
            f"(model sha256 {short(sha)} != {short(sel['model_sha256'])}); re-run the selection"
        )
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
    :class:`OnePixelAttack`), the total of ``rejected_candidates`` and what it was
    made from: ``model_sha256`` (the checkpoint's sha256), ``test_digest`` and
    ``selection_digest`` (of the whole selection, before sharding; :mod:`onepixel.lineage`).
    """
    checkpoint_path, test_path, out_path = job.input("checkpoint"), job.input("test"), job.output()
    attack_cfg, device, log = job.cfg["attack"], job.cfg["device"], job.log.info
    shard, shards, selection_path = job.wildcards["shard"], job.cfg["attack"]["shards"], job.inputs["selection"]
    _check_shard(shard, shards)
    with deterministic_torch():  # before the first GPU work of the process (see its docstring)
        inputs = _stage_inputs(
            checkpoint_path,
            test_path,
            attack_cfg,
            device,
            allow_code=runs_user_code(job.cfg),
        )
        cfg, dev, images = inputs.cfg, inputs.device, inputs.images
        attack = make_attack(inputs.model, cfg, dev, engine=job.cfg["engine"])
        if selection_path is not None:
            chosen = read_selection(selection_path, cfg, checkpoint_path, inputs.test_digest, test_path)
            if len(chosen) and int(chosen.max()) >= images.shape[0]:
                raise DataError(
                    f"{selection_path}: sample_id {int(chosen.max())} is outside the test set "
                    f"({images.shape[0]} images); re-run the selection"
                )
        else:
            chosen = _select(inputs, log)
        selected = selection_digest(chosen)  # the whole selection, the same in every shard
        budget = job.cfg["batch_memory_mb"]
        if cfg["method"] in ("fgsm", "pgd") and budget:  # a backward pass holds about twice the forward's memory
            budget = max(1, budget // 3)
        attack.batch_size = budgeted_batch(
            inputs.model, images.shape[1:], attack.batch_size, budget, "attack.batch_size", dev
        )
        chosen = chosen[shard_indices(len(chosen), shard, shards)]
        row_labels, row_targets, row_index = targets_for(inputs.labels[chosen], inputs.num_classes, cfg["targeted"])
        sample_ids = torch.from_numpy(chosen)[row_index]
        ids = sample_ids * inputs.num_classes + row_targets if cfg["targeted"] else sample_ids
        start = time.perf_counter()
        engine = _engine_of(attack, images.shape[1:])
        partial = _PartialFile(out_path, _partial_key(checkpoint_path, test_path, cfg, dev, engine), ids.numpy())
        finished = partial.load()
        name = f"attack {Path(checkpoint_path).stem}" + (f" shard {shard}/{shards}" if shards > 1 else "")
        unit = "image-target pairs" if cfg["targeted"] else "images"
        with partial.kept_on_error(), Progress(name, len(ids), unit, initial=len(finished or ())) as progress:

            def on_finished(rows: FinishedRows) -> None:
                progress.update(len(rows))
                partial.add(rows)

            targets = row_targets if cfg["targeted"] else None
            if isinstance(attack, OnePixelAttack):
                result = attack.run(
                    images[sample_ids], row_labels, targets, ids=ids, finished=finished, on_finished=on_finished
                )
            else:  # the other methods keep no search state to resume: a shard reruns whole
                result = _run_whole(attack, images[sample_ids], row_labels, targets, ids, progress.update)
                progress.update(len(ids) - progress.n)
        wall = time.perf_counter() - start
    stats = attack.last_stats
    rate = stats.get("attacked_candidates", stats.get("candidates", 0)) / wall if wall > 0 else float("nan")
    attrs = {
        **provenance(dev),
        "model_checkpoint": os.path.basename(os.fspath(checkpoint_path)),
        "model_sha256": inputs.model_sha256,
        "test_digest": inputs.test_digest,
        "selection_digest": selected,
        "model_output": str(attack.model_output),
        "seed": int(cfg["seed"]),
        "wall_time_s": float(wall),
        "candidates_per_s": float(rate),
        "num_images": len(chosen),
        "rejected_candidates": int(attack.last_stats.get("rejected", 0)),
        "engine": engine,
        "shards": int(shards),
        **({"shard": int(shard)} if shards > 1 else {}),
    }
    sweep = result if isinstance(result, SweepResult) else None
    ds = result_to_dataset(sweep.result if sweep else result, sample_ids.numpy(), stored_config(cfg), attrs)
    if sweep is not None:
        ds = add_sweep_maps(ds, sweep.n_fooling, sweep.fooled_map, sweep.min_true_prob)
    with partial.kept_on_error():
        save_attack(ds, out_path)
    partial.remove()
    where = f" (shard {shard} of {shards})" if shards > 1 else ""
    log(summary_line(ds, rate) + where)
    resumed = f", {len(finished)} of them resumed from {partial.path.name}" if finished else ""
    announce(f"{name}: {_fooled_text(ds)}, {duration(wall)}{resumed}")
    return ds


def _run_whole(
    attack: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: Any,
    ids: torch.Tensor,
    on_finished: Callable[[int], object],
) -> Any:
    """The result of an exhaustive (a :class:`SweepResult`, its progress image by image) or gradient attack
    on every row at once."""
    if isinstance(attack, ExhaustiveAttack):
        return attack.run(images, labels, targets, on_finished=on_finished)
    return attack.run(images, labels, targets, ids=ids)


def _fooled_text(ds: xr.Dataset) -> str:
    """``63/100 fooled, 15,228 queries per image`` (targeted: per image-target pair, and the images fooled)."""
    success = np.asarray(ds["success"].values).astype(bool)
    n = success.size
    queries = float(np.mean(ds["queries"].values)) if n else 0.0
    target = np.asarray(ds["target_class"].values)
    if n and (target >= 0).any():
        ids = np.asarray(ds["sample_id"].values)
        uniq = np.unique(ids)
        images = sum(bool(success[ids == i].any()) for i in uniq)
        return (
            f"{int(success.sum())}/{n} image-target pairs fooled ({images}/{uniq.size} images towards >= 1 target), "
            f"{queries:,.0f} queries per pair"
        )
    return f"{int(success.sum())}/{n} fooled, {queries:,.0f} queries per image"


# ---------------------------------------------------------------------------
# the partial file: a long attack keeps its finished images
# ---------------------------------------------------------------------------
#: seconds between two writes of an attack's partial file (the shard's images finished so far)
PARTIAL_EVERY_S = 120.0
#: the format of the partial file, a transient file read only by :func:`attack_stage`
PARTIAL_FORMAT = "onepixel-attack-partial/1"
#: what a partial file must have been made with to be resumed (its attributes)
_PARTIAL_KEY = ("engine", "model_sha256", "test_sha256", "attack_config", "device", "onepixel_version", "torch_version")


def partial_path(out_path: str | os.PathLike[str]) -> Path:
    """The partial file of an attack output ``x.nc``: ``x.partial.nc`` beside it.

    Snakemake does not manage it (it is no rule's output), so its cleanup of an
    interrupted job's outputs leaves it for the rerun.
    """
    out = Path(out_path)
    return out.with_name(f"{out.stem if out.suffix == '.nc' else out.name}.partial.nc")


def _partial_key(
    checkpoint_path: Path, test_path: Path, cfg: dict[str, Any], dev: torch.device, engine: str
) -> dict[str, str]:
    """What the rows of an attack depend on besides the selection: model, test set, attack config, device,
    engine, versions."""
    info = provenance(dev)
    return {
        "engine": engine,
        "model_sha256": file_sha256(checkpoint_path),
        "test_sha256": file_sha256(test_path),
        "attack_config": json.dumps(stored_config(cfg), sort_keys=True),
        "device": str(info["device"]),
        "onepixel_version": str(info["onepixel_version"]),
        "torch_version": str(info["torch_version"]),
    }


class _PartialFile:
    """The images of an attack that finished DE, kept in ``<out>.partial.nc`` while the attack runs.

    :meth:`add` collects the images as they finish and rewrites the file (atomically:
    temporary name, then rename) when the last write is :data:`PARTIAL_EVERY_S`
    seconds old; :meth:`kept_on_error` writes it once more when the attack fails
    or is stopped (SIGTERM, Ctrl-C), so a kill loses at most the last
    ``PARTIAL_EVERY_S`` seconds. :meth:`load` takes the file of an earlier run
    back only if it was made with the same model, test set, attack config,
    device and versions, for the same rows (selection and shard); else it is
    ignored with a one-line notice (and replaced by this run's).

    The file holds DE's outcome per finished row (:class:`FinishedRows`: genes,
    generations, DE's verdict, rejected candidates), keyed by the row's stream id;
    the final rows are rebuilt from it exactly as an uninterrupted run builds them.
    """

    def __init__(self, out_path: str | os.PathLike[str], key: dict[str, str], ids: np.ndarray) -> None:
        self.path = partial_path(out_path)
        self.key, self.ids = key, np.asarray(ids, dtype=np.int64)
        self.parts: list[FinishedRows] = []
        self.count = self.written = 0  # rows collected, rows in the file
        self.last = time.monotonic()
        self.failed = False

    def load(self) -> FinishedRows | None:
        """The finished rows of an earlier run of this attack, or ``None`` (no file, or not this attack's)."""
        if not self.path.is_file():
            return None
        why = None
        try:
            with xr.open_dataset(self.path, engine="netcdf4") as opened:
                ds = opened.load()
        except Exception as exc:  # netCDF4 raises OSError/ValueError/RuntimeError for damaged files
            why = f"not readable ({one_line(f'{exc.__class__.__name__}: {exc}', 120)})"
        else:
            if ds.attrs.get("format") != PARTIAL_FORMAT:
                why = f"not a {PARTIAL_FORMAT} file"
            else:
                other = [key for key in _PARTIAL_KEY if str(ds.attrs.get(key)) != self.key[key]]
                if other:
                    why = "made with another " + ", ".join(other)
                elif not np.array_equal(ds["shard_ids"].values, self.ids):
                    why = "made for other images (another selection or shard)"
        if why is not None:
            announce(f"attack: ignoring {self.path}: {why}; attacking every image of the shard")
            return None
        row_id = np.asarray(ds["row_id"].values, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        rows = order[np.searchsorted(self.ids[order], row_id)]
        finished = FinishedRows(
            rows=torch.from_numpy(rows.astype(np.int64)),
            genes=torch.from_numpy(np.ascontiguousarray(ds["genes"].values, dtype=np.float32)),
            generations=torch.from_numpy(ds["generations"].values.astype(np.int64)),
            de_success=torch.from_numpy(ds["de_success"].values.astype(bool)),
            rejected=torch.from_numpy(ds["rejected"].values.astype(np.int64)),
        )
        self.parts, self.count = [finished], len(finished)
        self.written = self.count
        announce(
            f"attack: resuming from {self.path}: {len(finished)} of {len(self.ids)} done, "
            f"attacking the other {len(self.ids) - len(finished)}"
        )
        return finished

    def add(self, rows: FinishedRows) -> None:
        """Rows that just finished DE; the file is rewritten when its last write is old enough."""
        self.parts.append(rows)
        self.count += len(rows)
        if time.monotonic() - self.last >= PARTIAL_EVERY_S:
            self.write()

    def write(self) -> None:
        """Write every row collected so far (when there are new ones). A failure (a full disk) is logged
        once and the attack goes on: the rows not kept are attacked again by a rerun."""
        self.last = time.monotonic()
        if self.count == self.written:
            return
        rows = FinishedRows.concat(self.parts)
        self.parts = [rows]
        ds = xr.Dataset(
            {
                "row_id": ("row", self.ids[rows.rows.numpy()]),
                "genes": (("row", "gene"), rows.genes.numpy().astype(np.float32)),
                "generations": ("row", rows.generations.numpy().astype(np.int64)),
                "de_success": ("row", rows.de_success.numpy().astype(np.uint8)),
                "rejected": ("row", rows.rejected.numpy().astype(np.int64)),
                "shard_ids": ("shard_row", self.ids),
            },
            attrs={"format": PARTIAL_FORMAT, **self.key},
        )
        try:
            with atomic_path(self.path) as tmp:
                ds.to_netcdf(tmp, engine="netcdf4")
        except Exception as exc:  # OSError (disk full), or netCDF4's RuntimeError
            if not self.failed:
                announce(f"attack: could not write {self.path.name} ({one_line(str(exc))}); going on without it")
            self.failed = True
            return
        self.written = self.count

    @contextlib.contextmanager
    def kept_on_error(self) -> Iterator[None]:
        """On any exception in the block (SIGTERM's SystemExit and Ctrl-C included) write the file once more."""
        try:
            yield
        except BaseException:
            self.write()
            raise

    def remove(self) -> None:
        """The output is written: the partial file is no longer needed."""
        self.path.unlink(missing_ok=True)


def merge_stage(job: Job) -> xr.Dataset:
    """Merge the shard files of one attack (:func:`attack_stage` with ``shards = n``) into ``out_path``.

    Every shard ``0 .. n-1`` must be given exactly once (in any order). Rows come
    in the order of the selection (shard order when there is no selection file),
    so the merged file equals the one an unsharded run writes, except for the
    timing attributes: ``wall_time_s`` is the sum over the shards and
    ``candidates_per_s`` the total candidates over that sum. With
    ``selection_path`` the shards must cover exactly the selected images. The shards
    must record the same ``model_sha256``, ``test_digest`` and ``selection_digest``
    (and those of the selection file, when given); the merged file keeps them.
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
        raise DataError(f"merge-attack: {_shard_problem(paths, index, counts)}; got {got}")
    paths = [paths[i] for i in np.argsort(index)]
    shards = [shards[i] for i in np.argsort(index)]
    made_from = [{key: str(ds.attrs[key]) for key in REQUIRED_ATTRS} for ds in shards]
    for path, lineage in zip(paths[1:], made_from[1:], strict=True):
        check_same("merge-attack", path, lineage, paths[0], made_from[0])
    order = read_selection(selection_path) if selection_path is not None else None
    merged = merge_attacks(shards, order=order)
    ids = np.unique(merged["sample_id"].values)
    if order is not None and (len(ids) != len(order) or not np.isin(order, ids).all()):
        raise DataError(
            f"merge-attack: the shards hold {len(ids)} images but {selection_path} selects {len(order)}; "
            "were they made with another selection?"
        )
    if selection_path is not None and order is not None:
        sel = _selection_record(selection_path)
        recorded = {"model_sha256": sel["model_sha256"], "test_digest": sel["test_digest"]}
        check_same(
            "merge-attack",
            paths[0],
            made_from[0],
            selection_path,
            {**recorded, "selection_digest": selection_digest(order)},
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
    announce(f"merge-attack {Path(out_path).stem}: {_fooled_text(merged)}, {len(paths)} shard(s) merged")
    return merged


def _shard_problem(paths: list[Path], index: list[int], counts: set[int]) -> str:
    """What is wrong with a set of shard files: the missing shards (named), the repeated ones, mixed splits."""
    if len(counts) != 1:
        return f"the files come from attacks split into {' and '.join(map(str, sorted(counts)))} shards"
    n = counts.pop()
    problems = []
    missing = sorted(set(range(n)) - set(index))
    if missing:
        pattern = re.fullmatch(r"shard_\d+-of-\d+\.nc", paths[0].name)
        names = [str(paths[0].parent / f"shard_{i}-of-{n}.nc") for i in missing] if pattern else []
        problems.append(
            f"shard(s) {', '.join(map(str, missing))} of {n} missing" + (f" ({', '.join(names)})" if names else "")
        )
    repeated = sorted({i for i in index if index.count(i) > 1})
    if repeated:
        problems.append(f"shard(s) {', '.join(map(str, repeated))} given more than once")
    if not problems:
        problems.append(f"shard numbers {sorted(index)}")
    return f"expected shards 0..{n - 1} of {n}, each once: " + "; ".join(problems)


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
