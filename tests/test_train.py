"""Tests of onepixel.train: augmentation, prediction, training on the digits and the train stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from onepixel.data import load_digits_split, make_dataset, prepare_dataset
from onepixel.errors import ConfigError, DataError
from onepixel.models import build_model, load_checkpoint, save_checkpoint
from onepixel.stages import run_stage
from onepixel.train import (
    augment_batch,
    build_kwargs_for,
    crop_padding,
    evaluate_accuracy,
    predict_logits,
    train_model,
)

QUIET = {"log": lambda line: None, "device": "cpu"}


@pytest.fixture(scope="module")
def digits() -> tuple[xr.Dataset, xr.Dataset]:
    return load_digits_split(test_fraction=0.25, seed=0)


def _subset(ds: xr.Dataset, count: int) -> xr.Dataset:
    return ds.isel(sample=slice(count)).assign_coords(sample=np.arange(count))


def test_crop_padding():
    assert [crop_padding(s) for s in (8, 16, 28, 32, 224)] == [1, 2, 3, 4, 4]


def test_augment_batch_crops_shifted_windows():
    images = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6) + 1
    generator = torch.Generator().manual_seed(0)
    out = augment_batch(images, padding=2, flip=False, generator=generator)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(2):
        windows = [padded[n, :, dy : dy + 5, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[n], w) for w in windows)
    again = augment_batch(images, 2, False, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_batch_flips_about_half():
    images = torch.rand(400, 1, 4, 4)
    out = augment_batch(images, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 150 < sum(flipped) < 250


def test_predict_and_evaluate(digits):
    train, _ = digits
    model = build_model("lenet", in_channels=1, image_size=8)
    small = _subset(train, 37)
    x = torch.from_numpy(small["image"].values).float() / 255
    logits = predict_logits(model, x, batch_size=10)
    assert logits.shape == (37, 10) and logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
    expected = float((model(x).argmax(1).numpy() == small["label"].values).mean())
    assert evaluate_accuracy(model, small, batch_size=8) == pytest.approx(expected)


def test_build_kwargs_for(digits):
    kwargs = build_kwargs_for(digits[0])
    assert {k: kwargs[k] for k in ("num_classes", "in_channels", "image_size")} == {
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 8,
    }
    pixels = digits[0]["image"].values / 255
    assert kwargs["mean"] == pytest.approx([pixels.mean()]) and kwargs["std"] == pytest.approx([pixels.std()])


def test_lenet_learns_digits(digits):
    train, test = digits
    lines: list[str] = []
    model, metrics = train_model("lenet", train, test, epochs=20, log=lines.append, device="cpu")
    assert metrics["test_accuracy"] > 0.90
    assert metrics["train_seconds"] < 15
    assert len(lines) == 20 and lines[-1].startswith("lenet epoch 20/20: loss ")
    assert {k: metrics[k] for k in ("model", "epochs", "num_train", "num_test", "dataset")} == {
        "model": "lenet",
        "epochs": 20,
        "num_train": 1347,
        "num_test": 450,
        "dataset": "digits",
    }
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert metrics["test_accuracy"] == pytest.approx(evaluate_accuracy(model, test))
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(build_kwargs_for(train)["mean"]))


def test_training_is_seeded(digits):
    train, test = _subset(digits[0], 200), _subset(digits[1], 20)
    first, _ = train_model("lenet", train, test, epochs=2, batch_size=32, seed=5, **QUIET)
    second, _ = train_model("lenet", train, test, epochs=2, batch_size=32, seed=5, **QUIET)
    other, _ = train_model("lenet", train, test, epochs=2, batch_size=32, seed=6, **QUIET)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_batch_norm_models_train_with_odd_batches(digits):
    train, test = _subset(digits[0], 65), _subset(digits[1], 10)  # 65 = 2 x 32 + 1: last batch dropped
    _model, metrics = train_model("resnet20", train, test, epochs=1, batch_size=32, **QUIET)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    with pytest.raises(ConfigError, match="batch_size"):
        train_model("lenet", train, test, epochs=1, batch_size=1, **QUIET)


def test_flip_only_for_natural_images(digits, monkeypatch):
    import onepixel.train as train_module

    flips = []
    original = train_module.augment_batch
    monkeypatch.setattr(
        train_module, "augment_batch", lambda x, p, flip, g: flips.append((p, flip)) or original(x, p, flip, g)
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    natural = make_dataset(images, np.arange(8) % 2, ["a", "b"], "toy", "train")
    train_model("lenet", natural, natural, epochs=1, batch_size=4, **QUIET)
    train_model("lenet", _subset(digits[0], 8), _subset(digits[1], 4), epochs=1, batch_size=4, **QUIET)
    assert flips == [(4, True)] * 2 + [(1, False)] * 2


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    return prepare_dataset("digits", tmp_path_factory.mktemp("digits"))


def _train(model, digit_files, checkpoint, metrics, config, user_checkpoint=None):
    train, test = digit_files
    return run_stage(
        "train",
        {"train": train, "test": test, "user_checkpoint": [user_checkpoint] if user_checkpoint else []},
        {"checkpoint": checkpoint, "metrics": metrics},
        config,
        {"model": model},
    )


def test_train_stage_trains(tmp_path, digit_files):
    cfg = {
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.05,
        "weight_decay": 5e-4,
        "augment": True,
        "seed": 0,
        "checkpoints": {},
    }
    ckpt, metrics_path = tmp_path / "models" / "lenet.pt", tmp_path / "metrics" / "lenet.json"
    metrics = _train("lenet", digit_files, ckpt, metrics_path, {"train": cfg, "device": "cpu"})
    written = json.loads(metrics_path.read_text())
    assert written == metrics
    assert written["epochs"] == 2 and written["provenance"]["device"] == "cpu"
    model, meta = load_checkpoint(ckpt, name="lenet")
    assert meta["build_kwargs"]["in_channels"] == 1 and meta["extra"]["epochs"] == 2
    _, test = load_digits_split()
    assert evaluate_accuracy(model, test) == pytest.approx(written["test_accuracy"])


def test_train_stage_user_checkpoint(tmp_path, digit_files):
    train, test = load_digits_split()
    kwargs = build_kwargs_for(train)
    model = build_model("lenet", **kwargs)
    bare = tmp_path / "user.pt"
    torch.save(model.state_dict(), bare)
    ckpt, metrics_path = tmp_path / "lenet.pt", tmp_path / "lenet.json"
    metrics = _train("lenet", digit_files, ckpt, metrics_path, {"train": {"epochs": 50}, "device": "cpu"}, bare)
    assert metrics["epochs"] == 0 and metrics["checkpoint_source"] == str(bare)
    assert metrics["test_accuracy"] == pytest.approx(evaluate_accuracy(model, test))
    _reloaded, meta = load_checkpoint(ckpt, name="lenet")
    assert meta["build_kwargs"]["mean"] == pytest.approx(kwargs["mean"])
    with pytest.raises(DataError, match="lenet.pt: checkpoint holds a 'lenet' model, not the requested 'resnet20'"):
        _train("resnet20", digit_files, tmp_path / "r.pt", tmp_path / "r.json", {"device": "cpu"}, ckpt)
    wrong_classes = tmp_path / "wrong.pt"
    save_checkpoint(
        wrong_classes,
        build_model("lenet", num_classes=3, in_channels=1, image_size=8),
        "lenet",
        {"num_classes": 3, "in_channels": 1, "image_size": 8},
    )
    with pytest.raises(DataError, match="wrong.pt: model predicts 3 classes but the data set has 10"):
        _train("lenet", digit_files, tmp_path / "w.pt", tmp_path / "w.json", {"device": "cpu"}, wrong_classes)
