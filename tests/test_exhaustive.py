"""Tests of the exhaustive one-pixel sweep (onepixel.attack.exhaustive) and the DE-vs-sweep comparison."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.stats import binomtest
from torch import nn

from onepixel.analysis.ground_truth import compare_success, compare_with_sweep, ground_truth_summary, wilson_interval
from onepixel.attack import AttackResult, ExhaustiveAttack, OnePixelAttack, SweepResult, exhaustive
from onepixel.attack.exhaustive import color_set, grid_levels
from onepixel.data import load_digits_split
from onepixel.data.dataset import apply_pixels
from onepixel.errors import ConfigError, DataError
from onepixel.train import train_model


def small_cnn(channels: int, seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, classes)
    ).eval()


def images_6x6(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, 6, 6), generator=g, dtype=torch.uint8)


def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images.float() / 255).argmax(1)


def brute_force(model, images, labels, colors, targets=None):
    """Independent reference: python loops per image, position and colour, float64 softmax (one forward per image)."""
    n, _, h, w = images.shape
    out = {"n": np.zeros(n, int), "map": np.zeros((n, h, w), bool), "prob": np.full((n, h, w), np.inf)}
    out["best"] = [None] * n
    for i in range(n):
        cands, where = [], []
        for y, x in itertools.product(range(h), range(w)):
            for colour in colors:
                img = images[i].clone()
                img[:, y, x] = torch.tensor(colour, dtype=torch.uint8)
                cands.append(img)
                where.append((x, y, tuple(colour)))
        with torch.inference_mode():
            all_logits = model(torch.stack(cands).float() / 255).double()
        best_key = math.inf
        for (x, y, colour), logits in zip(where, all_logits, strict=True):
            p = torch.softmax(logits, 0)
            true_p = float(p[labels[i]])
            guess = int(logits.argmax())
            fooled = guess == int(targets[i]) if targets is not None else guess != int(labels[i])
            out["prob"][i, y, x] = min(out["prob"][i, y, x], true_p)
            if fooled:
                out["n"][i] += 1
                out["map"][i, y, x] = True
                key = -float(p[targets[i]]) if targets is not None else true_p
                if key < best_key:
                    best_key, out["best"][i] = key, (x, y, colour)
    return out


def check_against_reference(sweep: SweepResult, ref: dict, per_image: int) -> None:
    res = sweep.result
    assert sweep.n_fooling.tolist() == ref["n"].tolist()
    assert np.array_equal(sweep.fooled_map.numpy(), ref["map"])
    np.testing.assert_allclose(sweep.min_true_prob.numpy(), ref["prob"], rtol=0, atol=1e-6)
    assert res.success.tolist() == [b is not None for b in ref["best"]]
    assert res.queries.tolist() == [per_image] * len(res)
    assert res.generations.tolist() == [0] * len(res)
    for i, best in enumerate(ref["best"]):
        if best is not None:
            assert (int(res.pixel_x[i, 0]), int(res.pixel_y[i, 0]), tuple(res.color[i, 0].tolist())) == best


# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "channels, colors, levels", [(1, "all", 4), (1, "corners", 4), (3, "corners", 4), (3, "grid", 3)]
)
def test_sweep_equals_brute_force_loop(channels, colors, levels):
    model = small_cnn(channels, seed=channels)
    images = images_6x6(5, channels, seed=1)
    labels = predict(model, images)
    sweep = ExhaustiveAttack(model, colors=colors, levels=levels, batch_size=500).run(images, labels)
    palette = color_set(colors, channels, levels).tolist()
    ref = brute_force(model, images, labels, palette)
    assert 0 < int((ref["n"] > 0).sum()) < len(images)  # some images are attackable, some not
    check_against_reference(sweep, ref, 36 * len(palette))
    res = sweep.result
    assert torch.equal(res.adversarial, apply_pixels(images, res.pixel_x, res.pixel_y, res.color))
    assert torch.equal(res.adv_class, predict(model, res.adversarial))
    assert torch.equal(res.true_class, labels) and (res.target_class == -1).all()


def test_targeted_sweep_equals_brute_force_loop():
    model = small_cnn(3, seed=3)
    images = images_6x6(4, 3, seed=2)
    labels = predict(model, images)
    targets = (labels + 1) % 3
    sweep = ExhaustiveAttack(model, targeted=True, batch_size=100).run(images, labels, targets)
    ref = brute_force(model, images, labels, color_set("corners", 3).tolist(), targets)
    check_against_reference(sweep, ref, 36 * 8)
    assert torch.equal(sweep.result.target_class, targets)
    assert torch.equal(sweep.result.success, sweep.result.adv_class == targets)


def test_a_failed_image_reports_its_best_candidate():
    model = small_cnn(1, seed=1)
    images = images_6x6(8, 1, seed=1)
    labels = predict(model, images)
    sweep = ExhaustiveAttack(model, colors="all", batch_size=1000).run(images, labels)
    failed = (~sweep.result.success).nonzero().squeeze(1)
    assert failed.numel() > 0
    for i in failed.tolist():  # the pixel with the lowest true-class probability of the whole sweep
        x, y = int(sweep.result.pixel_x[i, 0]), int(sweep.result.pixel_y[i, 0])
        lowest = float(np.nanmin(sweep.min_true_prob[i].numpy()))
        assert float(sweep.min_true_prob[i, y, x]) == lowest
        assert abs(float(sweep.result.prob_adv[i, labels[i]]) - lowest) < 1e-6


class NanCorner(nn.Module):
    """2 classes on 1-channel images: class 1 iff pixel (x=1, y=1) > 0.9; NaN when pixel (0, 0) is < 0.1 or > 0.9."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0, 1, 1], x[:, 0, 0, 0]
        logits = torch.stack([torch.zeros_like(a), 20 * (a - 0.9)], 1)
        return torch.where(((b < 0.1) | (b > 0.9))[:, None], torch.full_like(logits, math.nan), logits)


def test_non_finite_outputs_are_rejected():
    images = torch.full((3, 1, 6, 6), 120, dtype=torch.uint8)
    sweep = ExhaustiveAttack(NanCorner(), output="logits").run(images, torch.zeros(3, dtype=torch.long))
    res = sweep.result
    assert res.rejected_candidates.tolist() == [2, 2, 2]  # both corners at (0, 0)
    assert sweep.n_fooling.tolist() == [1, 1, 1] and res.success.all()  # 255 at (1, 1)
    assert (res.pixel_x[:, 0] == 1).all() and (res.pixel_y[:, 0] == 1).all() and (res.color == 255).all()
    assert sweep.fooled_map.flatten(1).sum(1).tolist() == [1, 1, 1] and sweep.fooled_map[:, 1, 1].all()
    assert torch.isnan(sweep.min_true_prob[:, 0, 0]).all()
    assert torch.isfinite(sweep.min_true_prob.flatten(1)[:, 1:]).all()


# ---------------------------------------------------------------------------
def test_colour_sets():
    corners = color_set("corners", 3)
    assert corners.dtype == torch.uint8 and corners.shape == (8, 3)
    assert {tuple(c) for c in corners.tolist()} == set(itertools.product((0, 255), repeat=3))
    assert color_set("corners", 1).tolist() == [[0], [255]]
    assert grid_levels(4) == [0, 85, 170, 255] and grid_levels(2) == [0, 255]
    grid = color_set("grid", 3, levels=4)
    assert grid.shape == (64, 3) and set(grid.flatten().tolist()) == {0, 85, 170, 255}
    assert color_set("all", 1).flatten().tolist() == list(range(256))
    assert color_set("grid", 1, levels=256).flatten().tolist() == list(range(256))


def test_all_colours_on_three_channels_is_a_one_line_config_error():
    model = small_cnn(3)
    images = images_6x6(2, 3)
    with pytest.raises(ConfigError) as err:
        ExhaustiveAttack(model, colors="all").run(images, predict(model, images))
    assert str(err.value).startswith("colors:") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"colors": "rainbow"}, "colors"),
        ({"levels": 1}, "levels"),
        ({"levels": 300}, "levels"),
        ({"batch_size": 0}, "batch_size"),
        ({"early_stop": "yes"}, "early_stop"),
        ({"targeted": 1}, "targeted"),
        ({"output": "scores"}, "output"),
    ],
)
def test_option_validation_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        ExhaustiveAttack(small_cnn(1), **kwargs)
    assert str(err.value).startswith(f"{key}:") and "\n" not in str(err.value)


def test_targets_validation():
    model = small_cnn(1)
    images = images_6x6(2, 1)
    labels = predict(model, images)
    with pytest.raises(ConfigError, match="^targets:"):
        ExhaustiveAttack(model, targeted=True).run(images, labels)
    with pytest.raises(ConfigError, match="^targets:"):
        ExhaustiveAttack(model).run(images, labels, (labels + 1) % 3)
    with pytest.raises(DataError, match="^targets:"):
        ExhaustiveAttack(model, targeted=True).run(images, labels, labels)
    with pytest.raises(DataError, match="^labels:"):
        ExhaustiveAttack(model).run(images, torch.tensor([0, 7]))


# ---------------------------------------------------------------------------
def assert_sweeps_equal(a: SweepResult, b: SweepResult) -> None:
    for name in AttackResult.__dataclass_fields__:
        x, y = getattr(a.result, name), getattr(b.result, name)
        if x.dtype.is_floating_point:
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(x, y), name
    assert torch.equal(a.n_fooling, b.n_fooling) and torch.equal(a.fooled_map, b.fooled_map)
    torch.testing.assert_close(a.min_true_prob, b.min_true_prob, rtol=0, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("early_stop", [False, True])
def test_results_do_not_depend_on_batch_size(early_stop):
    model = small_cnn(3, seed=2)
    images = images_6x6(4, 3, seed=3)
    labels = predict(model, images)
    runs, reported = [], []
    for b in (1, 7, 10_000):
        finished: list[int] = []
        runs.append(
            ExhaustiveAttack(model, batch_size=b, early_stop=early_stop).run(
                images, labels, on_finished=finished.append
            )
        )
        reported.append(finished)
    assert 0 < int(runs[0].result.success.sum()) < 4
    for other in runs[1:]:
        assert_sweeps_equal(runs[0], other)
    assert [sum(counts) for counts in reported] == [4, 4, 4]  # progress: every image finishes once
    assert len(reported[0]) == 4 and reported[2] == [4]  # one image at a time / all in one pass


def test_early_stop_same_success_fewer_queries():
    model = small_cnn(1, seed=1)
    images = images_6x6(8, 1, seed=1)
    labels = predict(model, images)
    full = ExhaustiveAttack(model, colors="all", batch_size=2000).run(images, labels)
    quick = ExhaustiveAttack(model, colors="all", batch_size=2000, early_stop=True).run(images, labels)
    ok = full.result.success
    assert 0 < int(ok.sum()) < 8
    assert torch.equal(quick.result.success, ok)
    assert int(quick.result.queries.sum()) < int(full.result.queries.sum())
    assert (quick.result.queries[~ok] == 36 * 256).all() and (quick.result.queries[ok] < 36 * 256).all()
    # each successful image stopped at its first fooling candidate: position-major, colours in order
    for i in ok.nonzero().squeeze(1).tolist():
        j = int(quick.result.queries[i]) - 1
        pos, colour = divmod(j, 256)
        assert (int(quick.result.pixel_y[i, 0]), int(quick.result.pixel_x[i, 0])) == divmod(pos, 6)
        assert int(quick.result.color[i, 0, 0]) == colour
        first = full.fooled_map[i].flatten().nonzero()[0].item()
        assert pos == first and int(quick.n_fooling[i]) == 1
        assert bool(quick.fooled_map[i].flatten()[pos]) and int(quick.fooled_map[i].sum()) == 1
    assert quick.early_stop and not quick.exact and full.exact


def test_call_returns_adversarial_images_like_torchattacks():
    model = small_cnn(3)
    images = images_6x6(3, 3)
    labels = predict(model, images)
    floats = images.float() / 255
    adv = ExhaustiveAttack(model)(floats, labels)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, ExhaustiveAttack(model).run(images, labels).result.adversarial.float() / 255)
    assert ((adv != floats).any(1).flatten(1).sum(1) <= 1).all()


def test_select_concat_and_empty_input():
    model = small_cnn(1)
    images = images_6x6(4, 1)
    labels = predict(model, images)
    sweep = ExhaustiveAttack(model).run(images, labels)
    again = SweepResult.concat([sweep.select(slice(0, 1)), sweep.select(slice(1, 4))])
    assert_sweeps_equal(sweep, again)
    assert "SweepResult(n=4" in repr(sweep)
    empty = ExhaustiveAttack(model).run(images[:0], labels[:0])
    assert len(empty) == 0 and empty.fooled_map.shape == (0, 6, 6)


def test_docstring_examples_run():
    outcome = doctest.testmod(exhaustive, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 0 and outcome.failed == 0


# ---------------------------------------------------------------------------
# the exact oracle on scikit-learn's digits
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_lenet() -> tuple[nn.Module, xr.Dataset]:
    train, test = load_digits_split(test_fraction=0.25, seed=0)
    model, _ = train_model("lenet", train, test, epochs=3, batch_size=64, seed=0, log=lambda line: None, device="cpu")
    return model, test


def test_all_256_values_on_digits_is_the_exact_oracle_for_de(digits_lenet):
    model, test = digits_lenet
    images = torch.from_numpy(test["image"].values[:40])
    labels = torch.from_numpy(test["label"].values[:40])
    correct = predict(model, images) == labels
    images, labels = images[correct][:24], labels[correct][:24]
    sweep = ExhaustiveAttack(model, colors="all", batch_size=4096).run(images, labels)
    assert sweep.exact and sweep.result.queries.tolist() == [16_384] * len(images)
    attackable = sweep.n_fooling > 0
    assert torch.equal(sweep.result.success, attackable)
    assert 4 <= int(attackable.sum()) <= 20  # a mix of attackable and robust images
    de = OnePixelAttack(model, population=50, generations=10, seed=0, batch_size=4096).run(images, labels)
    assert not (de.success & ~attackable).any()  # DE never succeeds where the sweep says impossible
    gt = compare_with_sweep(de, sweep)
    assert gt.exact and gt.de_only.count == 0
    assert gt.de_found.rate >= 0.8, f"DE found {gt.de_found.count} of {gt.de_found.n} attackable images"
    assert gt.both.count + gt.sweep_only.count == int(attackable.sum())
    # DE's adversarial pixel is one of the sweep's fooling positions
    ok = de.success
    assert sweep.fooled_map[ok, de.pixel_y[ok, 0], de.pixel_x[ok, 0]].all()


# ---------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------
def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(81, 263)  # Newcombe (1998), Stat. Med. 17, 857, example (a): 0.2553 - 0.3662
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    ci = binomtest(3, 17).proportion_ci(method="wilson")
    assert np.allclose(wilson_interval(3, 17), (ci.low, ci.high))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_comparison_counts_on_a_hand_made_case():
    de = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    sweep = np.array([1, 1, 1, 0, 0, 1, 0, 0], bool)
    de_q = np.array([100, 300, 800, 800, 200, 800, 800, 800])
    sweep_q = np.full(8, 512)
    gt = compare_success(de, de_q, sweep, sweep_q)
    assert (gt.n, gt.both.count, gt.de_only.count, gt.sweep_only.count, gt.neither.count) == (8, 2, 1, 2, 3)
    assert (gt.de_success.count, gt.sweep_success.count) == (3, 4)
    assert (gt.de_found.count, gt.de_found.n, gt.de_found.rate) == (2, 4, 0.5)
    assert (gt.both.low, gt.both.high) == wilson_interval(2, 8)
    assert gt.de_queries_per_success == 4600 / 3 and gt.de_mean_queries_success == 200
    assert gt.sweep_queries_per_success == 512 * 8 / 4 and gt.sweep_mean_queries_success == 512
    summary = gt.to_dict()
    assert summary["de_only"] == {"count": 1, "n": 8, "rate": 0.125, "ci": [round(v, 6) for v in wilson_interval(1, 8)]}
    assert summary["exact"] is False and summary["de_queries_per_success"] == round(4600 / 3, 6)
    nothing = compare_success(np.zeros(2, bool), [5, 5], np.zeros(2, bool), [9, 9]).to_dict()
    assert nothing["de_queries_per_success"] is None and nothing["de_found"]["rate"] is None
    with pytest.raises(DataError, match="same rows"):
        compare_success(de, de_q, sweep[:4], sweep_q[:4])


def test_comparison_of_results_checks_the_rows():
    model = small_cnn(1)
    images = images_6x6(6, 1)
    labels = predict(model, images)
    sweep = ExhaustiveAttack(model, colors="all").run(images, labels)
    de = OnePixelAttack(model, population=20, generations=5, seed=0).run(images, labels)
    table = ground_truth_summary({"cnn": (de, sweep)})
    assert table["cnn"]["n"] == 6 and table["cnn"]["exact"] is True
    with pytest.raises(DataError, match="not the same images"):
        compare_with_sweep(de.select(slice(0, 3)), sweep)
