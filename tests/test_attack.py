"""Tests of the one-pixel attack engine, its netCDF results and the attack stage."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import onepixel.attack
from helpers import STUB_LINEAGE
from onepixel.attack import (
    AttackResult,
    ExhaustiveAttack,
    OnePixelAttack,
    de,
    load_attack,
    merge_attacks,
    result_to_dataset,
    rng,
    save_attack,
)
from onepixel.attack.rng import distinct_members, hash32
from onepixel.attack.stage import DEFAULT_ATTACK_CONFIG, select_correct_images, targets_for
from onepixel.data import make_dataset, save_dataset
from onepixel.data.dataset import apply_pixels
from onepixel.errors import ConfigError, DataError
from onepixel.stages import run_stage


def run_attack_stage(checkpoint, test, out, attack_cfg):
    """The registered attack stage, selecting its images itself, on the CPU."""
    return run_stage(
        "attack", {"checkpoint": checkpoint, "test": test}, {"out": out}, {"attack": attack_cfg, "device": "cpu"}
    )


# ---------------------------------------------------------------------------
# models whose decision is known
# ---------------------------------------------------------------------------
class PixelRule(nn.Module):
    """3 classes on 1-channel images: class 1 iff pixel (x=2, y=3) > 0.8, class 2 iff pixel (x=5, y=6) < 0.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, 0, 3, 2]
        b = x[:, 0, 6, 5]
        return torch.stack([torch.zeros_like(a), 20 * (a - 0.8), 20 * (0.2 - b)], 1)


class Boundary(nn.Module):
    """Two classes; class 1 iff the mean brightness exceeds ``level`` (ties -> class 0)."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3), dtype=torch.float64)
        return torch.stack([torch.zeros_like(m), 1000 * (m - self.level)], 1).float()


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[3.0, 0.0, -1.0]]).expand(x.shape[0], 3) + 0 * x.sum((1, 2, 3))[:, None]


class NaNWhenBright(nn.Module):
    """PixelRule, but NaN logits whenever any pixel is > 0.9."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = PixelRule()(x)
        return torch.where((x > 0.9).flatten(1).any(1)[:, None], torch.full_like(out, float("nan")), out)


class AnyPixel(nn.Module):
    """3 classes: class 1 iff some pixel > 0.8, class 2 iff some pixel < 0.2 (easy to fool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.stack([torch.zeros(x.shape[0]), 20 * (flat.amax(1) - 0.8), 20 * (0.2 - flat.amin(1))], 1)


class Recorder(nn.Module):
    """Logs every input batch it sees (copies) and returns zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 2)


def tiny_cnn(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, classes),
    ).eval()


def dim_images(n: int, seed: int = 0, low: int = 80, high: int = 180) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def predict(model, images):
    with torch.inference_mode():
        return model(images.float() / 255).argmax(1)


def assert_results_equal(a: AttackResult, b: AttackResult) -> None:
    for name in AttackResult.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if x.dtype.is_floating_point:
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(x, y), name


# ---------------------------------------------------------------------------
def test_apply_pixels_matches_loop():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (5, 3, 6, 7), generator=g, dtype=torch.uint8)
    xs = torch.stack([torch.randperm(7, generator=g)[:3] for _ in range(5)])
    ys = torch.randint(0, 6, (5, 3), generator=g)
    colors = torch.randint(0, 256, (5, 3, 3), generator=g, dtype=torch.uint8)
    out = apply_pixels(images, xs, ys, colors)
    expected = images.clone()
    for i in range(5):
        for j in range(3):
            expected[i, :, ys[i, j], xs[i, j]] = colors[i, j]
    assert torch.equal(out, expected)
    assert not torch.equal(out, images)  # input untouched, copy changed


def test_engine_builds_candidates_like_apply_pixels():
    """The in-place scatter into the float buffer equals apply_pixels(uint8) / 255."""
    rec = Recorder()
    images = torch.randint(0, 256, (3, 3, 5, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    attack = OnePixelAttack(rec, pixels=2, population=6, generations=1, batch_size=7, seed=4)
    res = attack.run(images, torch.zeros(3, dtype=torch.long))
    # first forward: the probe; last 2*3 forwards: clean + adversarial re-evaluation
    cands = torch.cat(rec.seen[1:-2])
    assert cands.shape[0] == 3 * 6 * 2  # 3 images x (init + 1 generation) x 6 members
    u8 = torch.round(cands * 255)
    assert torch.equal(u8 / 255, cands)  # exact 8-bit values
    assert ((u8 >= 0) & (u8 <= 255)).all()
    # batch 7 < population 6 * 2: one image in flight, so candidates come image by image
    clean = images.float() / 255
    per_image = cands.view(3, 12, 3, 5, 4)
    changed = (per_image != clean[:, None]).any(2).flatten(2).sum(2)
    assert (changed <= 2).all() and (changed >= 1).float().mean() > 0.9
    # the final adversarial images are apply_pixels of the reported genes
    assert torch.equal(res.adversarial, apply_pixels(images, res.pixel_x, res.pixel_y, res.color))
    assert torch.equal(rec.seen[-1], res.adversarial.float() / 255)


def test_random_streams():
    keys = hash32(torch.arange(50))
    assert keys.unique().numel() == 50
    assert ((keys >= 0) & (keys < 2**32)).all()
    member = torch.arange(4)  # smallest population: the only choices are forced
    a, b, c = distinct_members(keys, member, 3)
    stacked = torch.stack([member.expand(50, 4), a, b, c], -1)
    assert (torch.sort(stacked, -1).values == torch.arange(4)).all()
    member = torch.arange(10)
    a, b, c = distinct_members(hash32(torch.arange(2000)), member, 3)
    stacked = torch.stack([member.expand(2000, 10), a, b, c], -1)
    assert (torch.sort(stacked, -1).values.diff(dim=-1) > 0).all()
    counts = torch.bincount(a[:, 0], minlength=10).float()  # member 0 picks uniformly from 1..9
    assert counts[0] == 0 and (counts[1:] - 2000 / 9).abs().max() < 70


@pytest.mark.parametrize("wraps", [True, False])
def test_mul32_is_exact_mod_2_32(monkeypatch, wraps):
    """Both forms of the 32-bit multiply (wrapping int64 product, overflow-free split) are exact."""
    monkeypatch.setitem(rng._WRAPS, "cpu", wraps)
    values = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
    values += torch.randint(0, 2**32, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    x = torch.tensor(values, dtype=torch.int64)
    for c in (0x7FEB352D, 0x846CA68B, 0x9E3779B9, 0xFFFFFFFF, 3):
        assert rng.mul32(x, c).tolist() == [(v * c) % 2**32 for v in values]
    assert torch.equal(x, torch.tensor(values))  # the input is left alone
    assert rng.int64_mul_wraps(torch.device("cpu")) is wraps


def test_initial_population_follows_the_paper():
    genome = de._Genome.create(pixels=1, population=4000, shape=(1, 6, 8), device=torch.device("cpu"))
    genes = de._initial_population(hash32(torch.tensor([7])), genome)[0]
    x, y, col = genes[:, 0], genes[:, 1], genes[:, 2]
    assert torch.equal(x.unique(), torch.arange(8).float())
    assert torch.equal(y.unique(), torch.arange(6).float())
    assert torch.equal(col, col.round()) and col.min() == 0 and col.max() == 255
    assert abs(float(col.mean()) - 128) < 6
    # N(128, 127): ~15.7 % below 0 -> clipped to 0
    assert abs(float((col == 0).float().mean()) - 0.157) < 0.025


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["rand1", "best1bin"])
def test_untargeted_finds_the_known_pixel(strategy):
    images = dim_images(6)
    model = PixelRule()
    labels = predict(model, images)
    assert (labels == 0).all()
    attack = OnePixelAttack(model, population=100, generations=40, strategy=strategy, seed=1)
    res = attack.run(images, labels)
    assert res.success.all()
    # two ways to fool it: (2, 3) bright -> class 1, or (5, 6) dark -> class 2
    at_a = (res.pixel_x[:, 0] == 2) & (res.pixel_y[:, 0] == 3)
    at_b = (res.pixel_x[:, 0] == 5) & (res.pixel_y[:, 0] == 6)
    assert (at_a | at_b).all()
    assert (res.color[at_a, 0, 0] > 204).all() and (res.color[at_b, 0, 0] < 51).all()
    assert torch.equal(res.adv_class, torch.where(at_a, 1, 2))
    assert torch.equal(res.queries, 100 * (1 + res.generations))
    assert (res.generations <= 40).all()
    assert torch.equal(res.target_class, torch.full((6,), -1))
    # re-evaluation
    probs = torch.softmax(model(res.adversarial.float() / 255), 1)
    torch.testing.assert_close(res.prob_adv, probs)
    torch.testing.assert_close(res.prob_clean, torch.softmax(model(images.float() / 255), 1))
    changed = (res.adversarial != images).flatten(1).sum(1)
    assert (changed == 1).all()


@pytest.mark.parametrize("strategy", ["rand1", "best1bin"])
def test_targeted_finds_the_known_pixel(strategy):
    images = dim_images(4, seed=2)
    model = PixelRule()
    labels = torch.zeros(4, dtype=torch.long)
    targets = torch.tensor([1, 2, 1, 2])
    attack = OnePixelAttack(model, population=100, generations=40, strategy=strategy, targeted=True, seed=3)
    res = attack.run(images, labels, targets)
    assert res.success.all()
    assert torch.equal(res.adv_class, targets)
    assert torch.equal(res.target_class, targets)
    want_x = torch.where(targets == 1, 2, 5)
    want_y = torch.where(targets == 1, 3, 6)
    assert torch.equal(res.pixel_x[:, 0], want_x) and torch.equal(res.pixel_y[:, 0], want_y)
    assert torch.equal(res.queries, 100 * (1 + res.generations))


def test_multi_pixel_targeted_needs_both_pixels():
    """Class 1 iff a - b > 0.4 (a = pixel (2,3), b = pixel (5,6)): with a = 100 and
    b = 160 neither pixel alone suffices (1 - 0.63 and 0.39 - 0 are < 0.4)."""

    class Both(nn.Module):
        def forward(self, x):
            a, b = x[:, 0, 3, 2], x[:, 0, 6, 5]
            s = 20 * (a - b - 0.4)
            return torch.stack([torch.zeros_like(s), s], 1)

    images = dim_images(3, seed=5)
    images[:, 0, 3, 2] = 100
    images[:, 0, 6, 5] = 160
    attack = OnePixelAttack(Both(), pixels=1, population=100, generations=30, targeted=True)
    one = attack.run(images, torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long))
    assert not one.success.any()
    attack = OnePixelAttack(Both(), pixels=2, population=200, generations=60, targeted=True, seed=0)
    res = attack.run(images, torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long))
    assert res.success.all()
    assert res.pixel_x.shape == (3, 2) and res.color.shape == (3, 2, 1)
    got = {(int(x), int(y)) for x, y in zip(res.pixel_x.flatten(), res.pixel_y.flatten(), strict=True)}
    assert got == {(2, 3), (5, 6)}


# ---------------------------------------------------------------------------
def test_deterministic_and_independent_of_batching():
    model = tiny_cnn(1)
    images = torch.randint(0, 256, (9, 1, 8, 8), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    labels = predict(model, images)
    kw = {"population": 20, "generations": 8, "seed": 11}
    full = OnePixelAttack(model, batch_size=60, **kw).run(images, labels)  # 3 images in flight
    again = OnePixelAttack(model, batch_size=60, **kw).run(images, labels)
    assert_results_equal(full, again)
    assert full.generations.max() > 0 and full.generations.unique().numel() > 1  # staggered finishes
    # shards, other batch sizes (1 image in flight / more than all images / chunked populations)
    s1 = OnePixelAttack(model, batch_size=20, **kw).run(images[:4], labels[:4], ids=torch.arange(4))
    s2 = OnePixelAttack(model, batch_size=1000, **kw).run(images[4:], labels[4:], ids=torch.arange(4, 9))
    assert_results_equal(full, AttackResult.concat([s1, s2]))
    s3 = OnePixelAttack(model, batch_size=7, **kw).run(images, labels)
    assert_results_equal(full, s3)
    # a different seed gives a different search
    other = OnePixelAttack(model, population=20, generations=8, seed=12, batch_size=60).run(images, labels)
    assert not torch.equal(torch.cat([full.pixel_x, full.pixel_y], 1), torch.cat([other.pixel_x, other.pixel_y], 1))


def test_targeted_determinism_with_ids():
    model = PixelRule()
    images = dim_images(4, seed=8)
    labels = torch.zeros(4, dtype=torch.long)
    targets = torch.tensor([1, 2, 2, 1])
    ids = torch.tensor([31, 32, 41, 42])
    kw = {"population": 30, "generations": 10, "targeted": True, "seed": 5, "strategy": "best1bin"}
    full = OnePixelAttack(PixelRule(), batch_size=90, **kw).run(images, labels, targets, ids=ids)
    part = OnePixelAttack(model, batch_size=30, **kw).run(images[2:], labels[2:], targets[2:], ids=ids[2:])
    assert_results_equal(full.select(slice(2, 4)), part)


def test_early_stop_at_the_boundary():
    images = torch.full((3, 1, 8, 8), 100, dtype=torch.uint8)
    model = Boundary(float(torch.tensor(100.0) / 255))  # exactly the clean mean: a tie
    labels = predict(model, images)
    assert (labels == 0).all()
    res = OnePixelAttack(model, population=16, generations=50, seed=0).run(images, labels)
    # any brighter pixel fools it: the initial population already succeeds
    assert res.success.all()
    assert (res.generations == 0).all() and (res.queries == 16).all()
    assert (res.color[:, 0, 0] > 100).all()


def test_unattackable_uses_full_budget():
    images = dim_images(3)
    res = OnePixelAttack(Constant(), population=8, generations=5, seed=0).run(images, torch.zeros(3, dtype=torch.long))
    assert not res.success.any()
    assert (res.generations == 5).all() and (res.queries == 8 * 6).all()
    assert (res.adv_class == 0).all()
    targeted = OnePixelAttack(Constant(), population=8, generations=5, targeted=True)
    res = targeted.run(images, torch.zeros(3, dtype=torch.long), torch.full((3,), 2))
    assert not res.success.any() and (res.queries == 48).all()


def test_nan_logits_do_not_crash():
    """Logits are NaN whenever a pixel is > 0.9; PixelRule can still be fooled at (2,3) with 205..229."""
    images = dim_images(4, seed=4)
    labels = torch.zeros(4, dtype=torch.long)
    res = OnePixelAttack(NaNWhenBright(), population=100, generations=40, seed=1).run(images, labels)
    assert res.success.sum() >= 2
    assert torch.isfinite(res.prob_adv[res.success]).all()
    assert (res.color[res.success] <= 229).all()
    assert torch.equal(res.queries, 100 * (1 + res.generations))

    class AlwaysNaN(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2)
            out[:, 0] = 1
            changed = (x[:, 0] != 128 / 255).flatten(1).any(1)  # any perturbed image
            return torch.where(changed[:, None], torch.full_like(out, float("nan")), out)

    flat = torch.full((2, 1, 8, 8), 128, dtype=torch.uint8)
    res = OnePixelAttack(AlwaysNaN(), population=8, generations=3).run(flat, torch.zeros(2, dtype=torch.long))
    assert not res.success.any() and (res.generations == 3).all()


def test_score_treats_non_finite_logits_as_worst():
    attack = OnePixelAttack(PixelRule())
    logits = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [float("inf"), 0.0], [2.0, 0.0]])
    fit, ok, finite = attack._score(logits, torch.zeros(4, dtype=torch.long))
    assert ok.tolist() == [True, False, False, False]
    assert finite.tolist() == [True, False, False, True]
    assert torch.isinf(fit[1]) and fit[1] > 0 and torch.isinf(fit[2]) and fit[2] > 0
    torch.testing.assert_close(fit[[0, 3]], torch.log_softmax(logits[[0, 3]], 1)[:, 0])
    attack = OnePixelAttack(PixelRule(), targeted=True)
    fit, ok, finite = attack._score(logits, torch.ones(4, dtype=torch.long))
    assert ok.tolist() == [True, False, False, False] and torch.isinf(fit[1:3]).all()
    assert finite.tolist() == [True, False, False, True]


def test_score_finite_logits_whose_sum_overflows():
    """Huge but finite logits (their row sum overflows float32) are not treated as non-finite."""
    attack = OnePixelAttack(PixelRule())
    logits = torch.tensor([[3e38, 3e38, 0.0], [-3e38, -3e38, 1.0], [1.0, float("-inf"), 0.0]])
    fit, ok, finite = attack._score(logits, torch.tensor([2, 2, 0]))
    assert ok.tolist() == [True, False, False]
    assert finite.tolist() == [True, True, False]
    torch.testing.assert_close(fit[:2], torch.tensor([-3e38, 0.0]))
    assert torch.isinf(fit[2]) and fit[2] > 0  # a -inf logit makes the row non-finite: worst fitness


def test_model_mode_restored():
    model = tiny_cnn(0)
    model.train()
    images = dim_images(2)
    OnePixelAttack(model, population=8, generations=1).run(images, predict(model, images))
    assert model.training
    model.eval()
    OnePixelAttack(model, population=8, generations=1).run(images, predict(model, images))
    assert not model.training


def test_empty_input():
    res = OnePixelAttack(PixelRule(), population=8, generations=2).run(
        torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    )
    assert len(res) == 0 and res.adversarial.shape == (0, 1, 8, 8)


# ---------------------------------------------------------------------------
def test_de_matches_brute_force_oracle():
    model = tiny_cnn(seed=1, classes=4)  # predicts 3 of the 4 classes on these images
    images = torch.randint(0, 256, (40, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = predict(model, images)
    # every position x the 5-level grid {0, 64, 128, 191, 255}: the brute-force oracle
    sweep = ExhaustiveAttack(model, colors="grid", levels=5).run(images, labels)
    oracle = sweep.n_fooling > 0
    assert torch.equal(sweep.result.success, oracle) and (sweep.result.queries == 64 * 5).all()
    assert 10 <= int(oracle.sum()) <= 38  # a mix of attackable and robust images
    res = OnePixelAttack(model, population=100, generations=30, seed=0).run(images, labels)
    found = res.success[oracle].float().mean()
    assert found >= 0.9, f"DE found {found:.2f} of the oracle's attackable images"
    # every DE success is a real one-pixel attack: one pixel changed, misclassified on re-evaluation
    ok = res.success
    assert ((res.adversarial[ok] != images[ok]).flatten(1).sum(1) <= 1).all()
    assert torch.equal(apply_pixels(images, res.pixel_x, res.pixel_y, res.color), res.adversarial)
    assert (predict(model, res.adversarial[ok]) != labels[ok]).all()
    assert (predict(model, res.adversarial[~ok]) == labels[~ok]).all()


# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"population": 3}, "population"),
        ({"generations": 0}, "generations"),
        ({"pixels": 0}, "pixels"),
        ({"strategy": "best2exp"}, "strategy"),
        ({"F": 0.0}, "F"),
        ({"F": 2.5}, "F"),
        ({"crossover": 1.5}, "crossover"),
        ({"crossover": -0.1}, "crossover"),
        ({"batch_size": 0}, "batch_size"),
        ({"population": 4.5}, "population"),
        ({"seed": -1}, "seed"),
        ({"targeted": "yes"}, "targeted"),
    ],
)
def test_argument_validation_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        OnePixelAttack(PixelRule(), **kwargs)
    message = str(err.value)
    assert message.startswith(f"{key}:") and "\n" not in message


def test_run_input_validation():
    images = dim_images(2)
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="^targets:"):
        OnePixelAttack(PixelRule(), targeted=True).run(images, labels)
    with pytest.raises(ConfigError, match="^targets:"):
        OnePixelAttack(PixelRule()).run(images, labels, labels)
    with pytest.raises(DataError, match="^images:"):
        OnePixelAttack(PixelRule()).run(images.float(), labels)
    with pytest.raises(DataError, match="^labels:"):
        OnePixelAttack(PixelRule()).run(images, torch.tensor([0, 7]))
    with pytest.raises(DataError, match="^labels:"):
        OnePixelAttack(PixelRule()).run(images, labels[:1])
    with pytest.raises(DataError, match="^targets:"):
        OnePixelAttack(PixelRule(), targeted=True).run(images, labels, torch.tensor([1, 0]))
    with pytest.raises(DataError, match="^targets:"):
        OnePixelAttack(PixelRule(), targeted=True).run(images, labels, torch.tensor([1, 3]))


# ---------------------------------------------------------------------------
# the torchattacks-like API: float or uint8 images, adversarial images in the input's dtype
# ---------------------------------------------------------------------------
def test_float_images_are_attacked_as_their_8_bit_values():
    model = tiny_cnn(2)
    u8 = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    labels = predict(model, u8)
    attack = OnePixelAttack(model, population=12, generations=4, seed=3, batch_size=30)
    want = attack.run(u8, labels)
    off_grid = (u8.float() + torch.where(u8 < 255, 0.3, -0.3)) / 255  # rounded to the nearest 8-bit value
    for images in (u8.float() / 255, u8.double() / 255, off_grid, u8.half() / 255):
        got = attack.run(images, labels)
        assert_results_equal(want, got)
        assert got.adversarial.dtype == torch.uint8
    # calling the attack returns the adversarial images in the dtype given
    assert torch.equal(attack(u8, labels), want.adversarial)
    adv32 = attack(u8.float() / 255, labels)
    assert adv32.dtype == torch.float32 and torch.equal(adv32, want.adversarial.float() / 255)
    adv64 = attack(u8.double() / 255, labels)
    assert adv64.dtype == torch.float64 and torch.equal(adv64, want.adversarial.double() / 255)
    assert torch.equal((adv64 * 255).round().to(torch.uint8), want.adversarial)


@pytest.mark.parametrize("bad", [1.5, -0.01, float("nan")])
def test_float_images_outside_0_1_are_refused(bad):
    images = torch.full((2, 1, 8, 8), 0.5)
    images[1, 0, 2, 3] = bad
    with pytest.raises(DataError, match=r"^images: float images must lie in \[0, 1\]") as err:
        OnePixelAttack(PixelRule(), population=8, generations=1).run(images, torch.zeros(2, dtype=torch.long))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="^images:"):
        OnePixelAttack(PixelRule())(images.long(), torch.zeros(2, dtype=torch.long))


def test_result_repr_is_a_one_line_summary():
    res = small_result(4)
    text = repr(res)
    hits = int(res.success.sum())
    mean = float(res.queries.double().mean())
    assert text == (
        f"AttackResult(n=4, success={hits}/4 ({100 * hits / 4:.1f} %), pixels=1, channels=1, "
        f"image=8x8, mean queries={mean:.0f})"
    )
    assert "tensor" not in text and "\n" not in text
    assert repr(res.select(slice(0, 0))) == (
        "AttackResult(n=0, success=0/0, pixels=1, channels=1, image=8x8, mean queries=-)"
    )


def test_docstring_examples_run():
    outcome = doctest.testmod(de, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 0 and outcome.failed == 0


def test_package_exports_only_the_engine_and_its_files():
    assert sorted(onepixel.attack.__all__) == sorted(
        [
            "OnePixelAttack",
            "AttackResult",
            "STRATEGIES",
            "result_to_dataset",
            "save_attack",
            "load_attack",
            "merge_attacks",
            "ExhaustiveAttack",
            "SweepResult",
            "FGSM",
            "PGD",
            "perturbation_sizes",
        ]
    )
    # the stages live in their own module, not in the engine's namespace
    assert not hasattr(onepixel.attack, "targets_for") and not hasattr(onepixel.attack, "attack_stage")


# ---------------------------------------------------------------------------
def small_result(n=3):
    model = PixelRule()
    images = dim_images(n, seed=6)
    return OnePixelAttack(model, population=30, generations=5, seed=0).run(images, torch.zeros(n, dtype=torch.long))


def test_dataset_roundtrip(tmp_path: Path):
    res = small_result()
    cfg = {**DEFAULT_ATTACK_CONFIG, "population": 30, "generations": 5}
    attrs = {**STUB_LINEAGE, "seed": 0, "model_sha256": "ab", "extra": {"a": 1}}
    ds = result_to_dataset(res, np.array([10, 4, 7]), cfg, attrs)
    assert dict(ds.sizes) == {"sample": 3, "pixel": 1, "channel": 1, "class": 3, "y": 8, "x": 8}
    assert ds["success"].dtype == np.uint8 and ds["adversarial"].dtype == np.uint8
    assert json.loads(ds.attrs["attack_config"]) == cfg
    path = tmp_path / "attack.nc"
    save_attack(ds, path)
    back = load_attack(path)
    assert back["success"].dtype == bool
    np.testing.assert_array_equal(back["success"].values, res.success.numpy())
    np.testing.assert_array_equal(back["sample_id"].values, [10, 4, 7])
    np.testing.assert_array_equal(back["adversarial"].values, res.adversarial.numpy())
    np.testing.assert_array_equal(back["color"].values, res.color.numpy())
    np.testing.assert_array_equal(back["prob_adv"].values, res.prob_adv.numpy())
    assert back.attrs["model_sha256"] == "ab" and json.loads(back.attrs["extra"]) == {"a": 1}
    assert back["queries"].attrs["long_name"]
    with pytest.raises(DataError):
        load_attack(tmp_path / "missing.nc")
    xr.Dataset({"foo": ("a", [1])}).to_netcdf(tmp_path / "foreign.nc")
    with pytest.raises(DataError, match="foreign.nc: has no onepixel format attribute"):
        load_attack(tmp_path / "foreign.nc")
    save_attack(ds.drop_vars("rejected_candidates"), tmp_path / "thin.nc")
    with pytest.raises(DataError, match=r"thin.nc: missing variable\(s\) rejected_candidates"):
        load_attack(tmp_path / "thin.nc")


def test_merge_attacks():
    res = small_result(4)
    cfg = {"population": 30}
    ids = np.array([5, 1, 9, 3])
    whole = result_to_dataset(res, ids, cfg)
    a = result_to_dataset(res.select(slice(0, 2)), ids[:2], cfg)
    b = result_to_dataset(res.select(slice(2, 4)), ids[2:], cfg)
    xr.testing.assert_identical(merge_attacks([a, b]), whole)
    reordered = merge_attacks([b, a], order=ids)
    xr.testing.assert_identical(reordered, whole)
    with pytest.raises(DataError, match="overlap"):
        merge_attacks([a, a])
    with pytest.raises(DataError, match="attack_config"):
        merge_attacks([a, result_to_dataset(res.select(slice(2, 4)), ids[2:], {"population": 31})])


# ---------------------------------------------------------------------------
def test_select_correct_images():
    model = PixelRule()
    images = dim_images(30, seed=1)
    labels = torch.zeros(30, dtype=torch.long)
    labels[::3] = 1  # every third image is "misclassified"
    chosen = select_correct_images(model, images, labels, 8, seed=4, batch_size=7)
    assert len(chosen) == 8 and len(set(chosen.tolist())) == 8
    assert (labels[chosen] == 0).all()
    assert not np.array_equal(chosen, np.sort(chosen))  # seeded order, not sorted
    np.testing.assert_array_equal(chosen, select_correct_images(model, images, labels, 8, seed=4))
    everything = select_correct_images(model, images, labels, 100, seed=4)
    assert len(everything) == 20 and np.array_equal(everything[:8], chosen)  # prefix property
    with pytest.raises(ConfigError, match="^num_images:"):
        select_correct_images(model, images, labels, 0, seed=0)


def test_targets_for():
    labels = torch.tensor([2, 0])
    row_labels, row_targets, row_index = targets_for(labels, 3, targeted=False)
    assert row_labels.tolist() == [2, 0] and row_targets.tolist() == [-1, -1] and row_index.tolist() == [0, 1]
    row_labels, row_targets, row_index = targets_for(labels, 3, targeted=True)
    assert row_index.tolist() == [0, 0, 1, 1]
    assert row_labels.tolist() == [2, 2, 0, 0]
    assert row_targets.tolist() == [0, 1, 1, 2]


def test_defaults_match_schema():
    yaml = pytest.importorskip("yaml")
    schema_path = Path(__file__).resolve().parents[1] / "src" / "onepixel" / "config.schema.yaml"
    props = yaml.safe_load(schema_path.read_text())["properties"]["attack"]["properties"]
    assert {k: v["default"] for k, v in props.items()} == DEFAULT_ATTACK_CONFIG


@pytest.mark.parametrize("targeted", [False, True])
def test_run_attack_stage(tmp_path: Path, monkeypatch, caplog, targeted):
    """The stage on a real test file, with a rule model (known decision) in place of a checkpoint's."""
    import onepixel.models

    images = dim_images(12, seed=3).numpy()
    labels = np.zeros(12, dtype=np.int64)
    labels[5] = 2  # misclassified: never selected
    save_dataset(make_dataset(images, labels, ["zero", "one", "two"], "toy", "test"), tmp_path / "test.nc")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    monkeypatch.setattr(
        onepixel.models, "load_checkpoint", lambda path, map_location=None, **_: (AnyPixel(), {"name": "rule"})
    )
    caplog.set_level("INFO", logger="onepixel.attack")
    cfg = {"num_images": 4, "population": 40, "generations": 20, "targeted": targeted, "batch_size": 200}
    out = tmp_path / "attack.nc"
    ds = run_attack_stage(ckpt, tmp_path / "test.nc", out, cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "onepixel.attack"]
    back = load_attack(out)
    rows = 4 * (2 if targeted else 1)
    assert back.sizes["sample"] == rows
    assert 5 not in back["sample_id"].values
    assert back["success"].values.all()
    assert back.attrs["model_sha256"] == __import__("hashlib").sha256(b"weights").hexdigest()
    assert back.attrs["seed"] == 0 and back.attrs["candidates_per_s"] > 0 and "torch_version" in back.attrs
    # "shards" only says how the work is split: it is not part of the stored config; nor are the other
    # methods' keys, and a DE attack records no method (its files are those made before other methods existed)
    from onepixel.attack.stage import METHOD_KEYS

    others = {"shards", "method", *(key for name in ("exhaustive", "fgsm", "pgd") for key in METHOD_KEYS[name])}
    assert json.loads(back.attrs["attack_config"]) == {
        k: v for k, v in {**DEFAULT_ATTACK_CONFIG, **cfg}.items() if k not in others
    }
    assert back.attrs["shards"] == 1 and "shard" not in back.attrs
    assert len(lines) == 1 and "successful" in lines[0]
    if targeted:
        assert back["target_class"].values.tolist() == [1, 2] * 4
        assert ">= 1 target" in lines[0]
    xr.testing.assert_equal(ds, back.assign(success=back["success"].astype(np.uint8)))
    # a sub-selection reproduces the same rows (streams keyed by test-set index)
    cfg2 = {**cfg, "num_images": 2, "batch_size": 40}
    ds2 = run_attack_stage(ckpt, tmp_path / "test.nc", tmp_path / "a2.nc", cfg2)
    k = 2 * (2 if targeted else 1)
    for name in ("pixel_x", "pixel_y", "color", "queries", "sample_id"):
        np.testing.assert_array_equal(ds2[name].values, ds[name].values[:k])
    with pytest.raises(ConfigError, match="^unknown key attack.popsize = 3; allowed keys: F, alpha, batch_size"):
        run_attack_stage(ckpt, tmp_path / "test.nc", out, {"popsize": 3})
    with pytest.raises(ConfigError, match=r"^attack.population: 3 is out of range; must be >= 4"):
        run_attack_stage(ckpt, tmp_path / "test.nc", out, {"population": 3})


def test_run_attack_stage_with_project_models(tmp_path: Path):
    """Integration with onepixel.models / onepixel.data."""
    from onepixel import data, models

    torch.manual_seed(0)
    model = models.build_model("lenet", num_classes=3, in_channels=1, image_size=8).eval()
    images = dim_images(12, seed=11, low=0, high=256).numpy()
    labels = predict(model, torch.from_numpy(images)).numpy()
    data.save_dataset(data.make_dataset(images, labels, ["a", "b", "c"], "toy", "test"), tmp_path / "test.nc")
    models.save_checkpoint(tmp_path / "lenet.pt", model, "lenet", {"num_classes": 3, "in_channels": 1, "image_size": 8})
    cfg = {"num_images": 5, "population": 20, "generations": 3, "batch_size": 100, "seed": 2}
    ds = run_attack_stage(tmp_path / "lenet.pt", tmp_path / "test.nc", tmp_path / "a.nc", cfg)
    back = load_attack(tmp_path / "a.nc")
    assert back.sizes["sample"] == 5 and back.sizes["class"] == 3
    np.testing.assert_array_equal(back["true_class"].values, labels[back["sample_id"].values])
    np.testing.assert_array_equal(ds["adversarial"].values, back["adversarial"].values)
    # success flags agree with the model's verdict on the stored adversarial images
    adv_pred = predict(model, torch.from_numpy(back["adversarial"].values)).numpy()
    np.testing.assert_array_equal(back["success"].values, adv_pred != back["true_class"].values)
