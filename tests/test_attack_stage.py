"""Reliability of the attack (onepixel.attack): bad input named, reproducible results, any input range, bounded memory.

1. a damaged or foreign attack file gives one line naming the file;
2. determinism: the same config and seed give a bit-identical attack stage on the CPU;
3. input ranges: any image size and channel count, train-mode models, probability outputs, NaN outputs;
4. load: the engine streams images to the device and its memory does not grow with the image count.
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from helpers import REPO, STUB_LINEAGE, _assert_bit_identical, _damaged, _Mixed
from onepixel.attack import (
    OnePixelAttack,
    load_attack,
    result_to_dataset,
    save_attack,
)
from onepixel.errors import DataError
from onepixel.stages import run_stage


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "other-stage"])
def test_a_bad_attack_file_is_named(tmp_path, toy, kind):
    path = _damaged(kind, tmp_path, toy)
    with pytest.raises(DataError) as info:
        load_attack(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    if kind == "other-stage":
        assert message == f"{path}: is a onepixel-dataset/1 file, expected onepixel-attack/2"
    else:
        assert "not a readable netCDF file" in message


def test_the_attack_stage_is_bit_identical_across_runs(toy, tmp_path):
    cfg = {"num_images": 8, "population": 24, "generations": 6, "batch_size": 50, "seed": 7, "targeted": True}
    for name in ("a.nc", "b.nc"):
        run_stage(
            "attack",
            {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"},
            {"out": tmp_path / name},
            {"attack": cfg, "device": "cpu"},
        )
    a, b = load_attack(tmp_path / "a.nc"), load_attack(tmp_path / "b.nc")
    assert a.sizes["sample"] == 8 * 2 and 0 < int(a["success"].sum()) < 16  # a real search: some fooled, some not
    _assert_bit_identical(a, b, "attack")
    assert a.attrs["model_output"] == "logits"


def test_predicted_labels_attack_every_image_as_the_model_classifies_it(toy, tmp_path):
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    cfg = {"num_images": 24, "population": 8, "generations": 2, "seed": 3}
    paths = {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"}
    given = run_stage("attack", paths, {"out": tmp_path / "given.nc"}, {"attack": cfg, "device": "cpu"})
    own = run_stage(
        "attack", paths, {"out": tmp_path / "own.nc"}, {"attack": {**cfg, "labels": "predicted"}, "device": "cpu"}
    )
    model, _ = load_checkpoint(toy / "lenet.pt")
    images = torch.from_numpy(load_dataset(toy / "test.nc")["image"].values)
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1).numpy()
    assert given.sizes["sample"] == 19  # toy's every fifth label is wrong: those images are not attacked
    assert own.sizes["sample"] == 24 and sorted(own["sample_id"].values.tolist()) == list(range(24))
    np.testing.assert_array_equal(own["true_class"].values, predicted[own["sample_id"].values])
    assert json.loads(load_attack(tmp_path / "own.nc").attrs["attack_config"])["labels"] == "predicted"


# ===========================================================================
# 5. input ranges
# ===========================================================================
def small_model(channels: int, classes: int = 4, seed: int = 0) -> nn.Module:
    """A random CNN for any input size: strided conv, ReLU, adaptive pooling, linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, classes),
    ).eval()


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images.float() / 255)


@pytest.mark.parametrize(
    ("channels", "height", "width"),
    [(1, 8, 8), (3, 8, 8), (1, 32, 32), (3, 32, 32), (3, 13, 40), (1, 224, 224), (3, 224, 224)],
    ids=lambda v: str(v),
)
def test_any_image_size_and_channel_count(channels, height, width):
    model = small_model(channels)
    images = torch.randint(
        0, 256, (3, channels, height, width), generator=torch.Generator().manual_seed(height), dtype=torch.uint8
    )
    labels = _forward(model, images).argmax(1)
    res = OnePixelAttack(model, population=10, generations=2, batch_size=25, seed=1).run(images, labels)
    assert res.pixel_x.shape == (3, 1) and res.color.shape == (3, 1, channels)
    assert ((res.pixel_x >= 0) & (res.pixel_x < width)).all() and ((res.pixel_y >= 0) & (res.pixel_y < height)).all()
    # the adversarial image is the clean one with exactly the reported pixel replaced (computed here by hand)
    expected = images.clone()
    for i in range(3):
        expected[i, :, res.pixel_y[i, 0], res.pixel_x[i, 0]] = res.color[i, 0]
    assert torch.equal(res.adversarial, expected)
    # probabilities and verdicts are the model's own on the stored images
    logits = _forward(model, res.adversarial)
    torch.testing.assert_close(res.prob_adv, torch.softmax(logits, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.prob_clean, torch.softmax(_forward(model, images), 1), rtol=0, atol=1e-6)
    assert torch.equal(res.success, logits.argmax(1) != labels)
    assert torch.equal(res.queries, 10 * (1 + res.generations)) and (res.rejected_candidates == 0).all()


def test_a_model_in_train_mode_is_attacked_in_eval_mode_and_restored():
    torch.manual_seed(3)
    model = _Mixed()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.train()
    model.frozen.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = copy.deepcopy(model).eval()
    images = torch.randint(60, 200, (5, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    labels = _forward(reference, images).argmax(1)

    res = OnePixelAttack(model, population=12, generations=3, seed=2).run(images, labels)

    assert {name: m.training for name, m in model.named_modules()} == flags  # every module's own flag back
    after = model.state_dict()
    for key, value in state.items():  # running_mean, running_var, num_batches_tracked untouched
        assert torch.equal(after[key], value), key
    expected = OnePixelAttack(reference, population=12, generations=3, seed=2).run(images, labels)
    for name in ("pixel_x", "pixel_y", "color", "success", "queries", "adversarial"):
        assert torch.equal(getattr(res, name), getattr(expected, name)), name
    torch.testing.assert_close(res.prob_clean, torch.softmax(_forward(reference, images), 1), rtol=0, atol=1e-6)


class _PixelRule(nn.Module):
    """3 classes on 1-channel images: class 1 iff pixel (x=2, y=3) > 0.8, class 2 iff pixel (x=5, y=6) < 0.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0, 3, 2], x[:, 0, 6, 5]
        return torch.stack([torch.zeros_like(a), 20 * (a - 0.8), 20 * (0.2 - b)], 1)


class _Softmaxed(nn.Module):
    """The same decision, returning probabilities (a softmax layer at the end)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_PixelRule()(x), 1)


@pytest.mark.parametrize("output", ["auto", "probabilities"])
def test_models_returning_probabilities(output):
    images = torch.randint(80, 180, (6, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.long)
    attack = OnePixelAttack(_Softmaxed(), population=60, generations=30, seed=1, output=output)
    res = attack.run(images, labels)
    assert attack.model_output == "probabilities"
    # the stored probabilities are the model's own output (not a softmax of it)
    torch.testing.assert_close(res.prob_adv, _forward(_Softmaxed(), res.adversarial), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.prob_clean, _forward(_Softmaxed(), images), rtol=0, atol=1e-6)
    # the search is the one on logits: both find the known pixels
    assert res.success.all()
    at_a = (res.pixel_x[:, 0] == 2) & (res.pixel_y[:, 0] == 3)
    at_b = (res.pixel_x[:, 0] == 5) & (res.pixel_y[:, 0] == 6)
    assert (at_a | at_b).all()
    logit_attack = OnePixelAttack(
        _PixelRule(), population=60, generations=30, seed=1, output="auto" if output == "auto" else "logits"
    )
    logit_res = logit_attack.run(images, labels)
    assert logit_attack.model_output == "logits" and logit_res.success.all()
    torch.testing.assert_close(logit_res.prob_adv, torch.softmax(_forward(_PixelRule(), logit_res.adversarial), 1))


class _NaNAbove(nn.Module):
    """_PixelRule, but NaN (or +inf) outputs whenever some pixel is brighter than 0.9; counts them per image.

    ``clean`` are the attacked images: a candidate belongs to the image it differs from in at most one pixel.
    """

    def __init__(self, clean: torch.Tensor, value: float) -> None:
        super().__init__()
        self.clean = clean.float() / 255
        self.value = value
        self.calls: list[torch.Tensor] = []  # per forward call: bad outputs per image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _PixelRule()(x)
        bad = (x > 0.9).flatten(1).any(1)
        owner = (x[:, None] != self.clean[None]).flatten(2).sum(2).argmin(1)
        self.calls.append(torch.bincount(owner[bad], minlength=len(self.clean)))
        return torch.where(bad[:, None], torch.full_like(out, self.value), out)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_outputs_are_rejected_counted_and_the_run_goes_on(value, tmp_path):
    images = torch.randint(60, 180, (4, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    model = _NaNAbove(images, value)
    labels = torch.zeros(4, dtype=torch.long)
    attack = OnePixelAttack(model, population=50, generations=20, seed=3, batch_size=100)
    res = attack.run(images, labels)
    # forward calls: the probe, the DE's candidate batches, then the clean and adversarial re-evaluation
    counted = torch.stack(model.calls[1:-2]).sum(0)
    assert counted.sum() > 0  # the colour prior N(128, 127) draws many values > 229
    assert torch.equal(res.rejected_candidates, counted)
    assert attack.last_stats["rejected"] == int(counted.sum())
    # rejected candidates never count as successes; bright pixels (> 229) were never chosen
    assert (res.color[:, 0, 0] <= 229).all() and torch.isfinite(res.prob_adv).all()
    assert res.success.sum() >= 2 and torch.equal(res.queries, 50 * (1 + res.generations))
    # stored with the result
    save_attack(result_to_dataset(res, np.arange(4), {"population": 50}, STUB_LINEAGE), tmp_path / "a.nc")
    np.testing.assert_array_equal(load_attack(tmp_path / "a.nc")["rejected_candidates"].values, counted.numpy())


# ===========================================================================
# 6. load: images stream to the device; memory does not grow with the image count
# ===========================================================================
def test_the_engine_moves_images_to_the_device_a_batch_at_a_time(monkeypatch):
    """Only the images entering the batch (and a re-evaluation chunk) are copied, never the whole set."""
    n, population, batch_size = 300, 10, 40  # 4 images in flight, re-evaluation chunks of 40
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model = small_model(1)
    labels = _forward(model, images).argmax(1)
    storage = images.untyped_storage().data_ptr()
    moved: list[int] = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if self.dim() == 4 and self.dtype == torch.uint8 and self.untyped_storage().data_ptr() == storage:
            moved.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    res = OnePixelAttack(model, population=population, generations=3, batch_size=batch_size).run(images, labels)
    monkeypatch.undo()
    assert len(res) == n
    assert max(moved) <= batch_size  # never the whole set
    assert sum(moved) == 4 + n + n  # the probe, each image once into the batch, once for re-evaluation


@pytest.mark.slow
def test_attack_memory_does_not_grow_with_the_image_count():
    """benchmarks/attack_memory.py at 500 and 5,000 images: the peak grows by the result arrays only.

    With glibc's mmap threshold fixed, so that the peak shows the arrays the engine keeps rather than how
    the C library's heap happens to fragment (see the benchmark's docstring)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import attack_memory
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import argparse

    args = argparse.Namespace(
        channels=3, size=16, population=4, generations=1, batch_size=1024, device="cpu", threads=1
    )
    small, big = (attack_memory.measure_in_subprocess(n, args, fixed_mmap=True) for n in (500, 5000))
    assert big["result"] > 9 * small["result"] > 0 and big["candidates"] > 9 * small["candidates"]
    growth = (big["peak"] - big["result"]) - (small["peak"] - small["result"])
    assert growth < 3 * 2**20, f"working memory grew by {growth / 2**20:.1f} MiB from 500 to 5,000 images"
