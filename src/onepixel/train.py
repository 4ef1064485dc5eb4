"""Training and evaluating the model zoo (SGD + one-cycle schedule, on-the-fly augmentation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from onepixel.data import channel_stats, load_dataset, to_float
from onepixel.errors import ConfigError, DataError
from onepixel.files import file_sha256, write_json
from onepixel.lineage import dataset_digest
from onepixel.models import (
    build_model,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)
from onepixel.progress import Progress, announce, duration
from onepixel.provenance import provenance
from onepixel.stages import Job
from onepixel.torch_utils import resolve_device, seed_everything

TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "augment", "seed")


def predict_logits(
    model: nn.Module, images_float: torch.Tensor, batch_size: int = 512, device: torch.device | str | None = None
) -> torch.Tensor:
    """Logits of ``images_float`` ``(N, C, H, W)`` in [0, 1] as a CPU float32 tensor ``(N, num_classes)``.

    The model is put in eval mode; ``device`` defaults to the device of its parameters.
    """
    device = next(model.parameters()).device if device is None else torch.device(device)
    model.eval()
    outputs = []
    with torch.inference_mode():
        for batch in images_float.split(batch_size):
            outputs.append(model(batch.to(device)).float().cpu())
    return torch.cat(outputs)


def evaluate_accuracy(
    model: nn.Module, ds: xr.Dataset, batch_size: int = 512, device: torch.device | str | None = None
) -> float:
    """Fraction of ``ds`` whose arg-max logit is the label (uint8 images converted batch by batch)."""
    images = torch.from_numpy(ds["image"].values)
    labels = torch.from_numpy(ds["label"].values)
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = predict_logits(model, to_float(images[start : start + batch_size]), batch_size, device)
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(len(labels), 1)


def build_kwargs_for(ds: xr.Dataset) -> dict[str, Any]:
    """``build_model`` keyword arguments that fit data set ``ds`` (classes, channels, size, mean/std)."""
    mean, std = channel_stats(ds)
    _, channels, height, width = ds["image"].shape
    return {
        "num_classes": int(ds.sizes["class"]),
        "in_channels": int(channels),
        "image_size": int(min(height, width)),
        "mean": list(mean),
        "std": list(std),
    }


def crop_padding(image_size: int) -> int:
    """Random-crop padding: 4 px for images of 32 px and more, ``max(1, size // 8)`` below (1 px at 8x8)."""
    return 4 if image_size >= 32 else max(1, image_size // 8)


def augment_batch(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and optional horizontal flip of ``(N, C, H, W)`` images.

    Random numbers come from the CPU ``generator``, so results do not depend on the device.
    """
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (offsets[0, :, None] + torch.arange(height, device=images.device))[:, :, None]  # (N, H, 1)
    cols = (offsets[1, :, None] + torch.arange(width, device=images.device))[:, None, :]  # (N, 1, W)
    cropped = padded[torch.arange(n, device=images.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if not flip:
        return cropped
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)[:, None, None, None]
    return torch.where(flips, cropped.flip(3), cropped)


def _epoch_batches(num: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a last batch of a single image is dropped (batch norm needs two)."""
    return [batch for batch in torch.randperm(num, generator=generator).split(batch_size) if len(batch) > 1]


def _steps_per_epoch(num: int, batch_size: int) -> int:
    """Number of batches ``_epoch_batches`` yields."""
    return num // batch_size + (1 if num % batch_size > 1 else 0)


def train_model(
    name: str,
    train_ds: xr.Dataset,
    test_ds: xr.Dataset,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    augment: bool = True,
    seed: int = 0,
    device: str = "auto",
    log: Callable[[str], Any] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train architecture ``name`` on ``train_ds`` and evaluate it on both splits.

    SGD (momentum 0.9, Nesterov) with a one-cycle learning rate peaking at ``lr``,
    cross-entropy loss; augmentation = random crop (``crop_padding``) plus horizontal
    flips unless the data set is "digits". Deterministic for a ``seed`` on the CPU.

    Returns:
        ``(model, metrics)``: the model on the CPU in eval mode and
        ``{"model", "test_accuracy", "train_accuracy", "params", "epochs", "train_seconds",
        "num_train", "num_test", "dataset"}``.
    """
    if batch_size < 2:
        raise ConfigError(f"train.batch_size: {batch_size} is too small for batch normalisation; use >= 2")
    if train_ds.sizes["sample"] < 2:
        raise DataError(f"{train_ds.attrs.get('dataset')}/train: {train_ds.sizes['sample']} image(s); need at least 2")
    generator = seed_everything(seed)
    dev = resolve_device(device)
    kwargs = build_kwargs_for(train_ds)
    model = build_model(name, **kwargs).to(dev)
    images = torch.from_numpy(train_ds["image"].values).to(dev)
    labels = torch.from_numpy(train_ds["label"].values).to(dev)
    steps = _steps_per_epoch(len(labels), batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps)
    padding, flip = crop_padding(kwargs["image_size"]), train_ds.attrs.get("dataset") != "digits"
    start = time.perf_counter()
    progress = Progress(f"train {name}", epochs * steps, "batches")
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for batch in _epoch_batches(len(labels), batch_size, generator):
            batch = batch.to(dev)
            x = to_float(images[batch])
            x = augment_batch(x, padding, flip, generator) if augment else x
            logits = model(x)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == labels[batch]).sum())
            seen += len(batch)
            progress.update()
        log(f"{name} epoch {epoch}/{epochs}: loss {total_loss / seen:.4f}, train accuracy {correct / seen:.4f}")
    progress.close()
    metrics = _metrics(name, model, train_ds, test_ds, epochs, time.perf_counter() - start)
    return model.cpu().eval(), metrics


def _metrics(
    name: str, model: nn.Module, train_ds: xr.Dataset, test_ds: xr.Dataset, epochs: int, seconds: float
) -> dict[str, Any]:
    """The metrics dict of a trained (or loaded, ``epochs=0``) model, evaluated on both splits."""
    return {
        "model": name,
        "test_accuracy": evaluate_accuracy(model, test_ds),
        "train_accuracy": evaluate_accuracy(model, train_ds),
        "params": count_parameters(model),
        "epochs": epochs,
        "train_seconds": round(seconds, 3),
        "num_train": int(train_ds.sizes["sample"]),
        "num_test": int(test_ds.sizes["sample"]),
        "dataset": str(train_ds.attrs.get("dataset", "unknown")),
    }


def _check_fits(checkpoint: str, model: nn.Module, ds: xr.Dataset, expected: dict[str, Any]) -> None:
    """Raise a DataError when ``model`` takes other channels or predicts other classes than ``ds`` has."""
    mean: torch.Tensor = model.normalize.mean  # type: ignore[assignment]
    channels, want_channels = int(mean.shape[1]), expected["in_channels"]
    if channels != want_channels:
        raise DataError(f"{checkpoint}: model takes {channels} channel(s) but the images have {want_channels}")
    classes, want_classes = predict_logits(model, to_float(ds["image"].values[:1])).shape[1], expected["num_classes"]
    if classes != want_classes:
        raise DataError(f"{checkpoint}: model predicts {classes} classes but the data set has {want_classes}")


def _evaluate_user_checkpoint(
    model_name: str, checkpoint: str, train_ds: xr.Dataset, test_ds: xr.Dataset, device: torch.device
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load a user's checkpoint (bare state_dicts get build kwargs from the data) and evaluate it."""
    expected = build_kwargs_for(train_ds)
    model, meta = load_checkpoint(checkpoint, name=model_name, build_kwargs=expected)
    _check_fits(checkpoint, model, test_ds, expected)
    metrics = _metrics(model_name, model.to(device), train_ds, test_ds, epochs=0, seconds=0.0)
    metrics["checkpoint_source"] = str(checkpoint)
    return model.cpu(), meta["build_kwargs"], metrics


def _evaluate_source_model(
    model_name: str,
    source: dict[str, Any],
    seed: int,
    train_ds: xr.Dataset,
    test_ds: xr.Dataset,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build a model of ``model_sources`` (onepixel.models.sources) for the data set's images and evaluate it."""
    from onepixel.models import build_source_model

    _, channels, size, _ = test_ds["image"].shape
    classes = int(test_ds["class_name"].size)
    model = build_source_model(model_name, source, classes, int(channels), int(size), seed=seed, base_dir=Path.cwd())
    metrics = _metrics(model_name, model.to(device), train_ds, test_ds, epochs=0, seconds=0.0)
    metrics["model_source"] = str(model.arch)
    return model.cpu(), dict(model.build_kwargs), metrics


def train_stage(job: Job) -> dict[str, Any]:
    """Train model ``job.wildcards["model"]`` (or load the user's checkpoint and evaluate it); write its
    checkpoint and metrics JSON.

    The checkpoint records the ``input_shape`` ``[C, H, W]`` of the training images; the metrics
    record ``test_digest`` (:func:`onepixel.lineage.dataset_digest` of the test set) and
    ``model_sha256`` (the checkpoint file's sha256), which the summary checks against the attack.

    Returns:
        The metrics as written (with ``provenance``).
    """
    model_name = job.wildcards["model"]
    started = time.perf_counter()
    train_ds, test_ds = load_dataset(job.input("train")), load_dataset(job.input("test"))
    dev = resolve_device(job.cfg["device"])
    user_checkpoints = job.inputs["user_checkpoint"] or [job.cfg["train"]["checkpoints"].get(model_name)]
    source = job.cfg["model_sources"].get(model_name)
    arch = model_name
    if source:
        model, build_kwargs, metrics = _evaluate_source_model(
            model_name, source, job.cfg["train"]["seed"], train_ds, test_ds, dev
        )
        arch = str(model.arch)
    elif user_checkpoints[0]:
        model, build_kwargs, metrics = _evaluate_user_checkpoint(
            model_name, str(user_checkpoints[0]), train_ds, test_ds, dev
        )
    else:
        options = {key: job.cfg["train"][key] for key in TRAIN_KEYS}
        model, metrics = train_model(model_name, train_ds, test_ds, device=str(dev), **options)
        build_kwargs = build_kwargs_for(train_ds)
    metrics["test_digest"] = dataset_digest(test_ds)  # the test set it was evaluated on (onepixel.lineage)
    metrics["provenance"] = provenance(dev)
    input_shape = tuple(int(s) for s in train_ds["image"].shape[1:])
    save_checkpoint(job.output("checkpoint"), model, arch, build_kwargs, extra=metrics, input_shape=input_shape)
    metrics["model_sha256"] = file_sha256(job.output("checkpoint"))  # after the save: the file's own sha256
    written = write_json(metrics, job.output("metrics"), kind="metrics")
    how = f"checkpoint {user_checkpoints[0]} evaluated" if user_checkpoints[0] else f"{metrics['epochs']} epochs"
    if source:
        how = f"{arch} evaluated"
    announce(
        f"train {model_name}: test accuracy {100 * metrics['test_accuracy']:.1f} %, "
        f"train accuracy {100 * metrics['train_accuracy']:.1f} %, {how}, {duration(time.perf_counter() - started)}"
    )
    return written
