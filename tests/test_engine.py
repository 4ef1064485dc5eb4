"""Tests of onepixel.engine: which engine ``auto`` picks, and that every stage gives the dense results with the
incremental engine (pixel variants in float64, the sweep, DE, locality, vulnerability, the attack stage)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import onepixel.attack.stage as stage
from helpers import _assert_bit_identical
from onepixel.analysis.locality import evaluate_shifts, locality_analysis
from onepixel.analysis.vulnerability import all_shifts, vulnerability_dataset, vulnerability_maps
from onepixel.attack import ExhaustiveAttack, OnePixelAttack, load_attack, result_to_dataset
from onepixel.attack.stage import make_attack, partial_path
from onepixel.config import validate_config
from onepixel.engine import (
    AUTO_MIN_SPEEDUP,
    ENGINES,
    OVERHEAD_MACS_PER_STEP,
    EngineChoice,
    PixelVariants,
    check_engine,
    choose_engine,
    expected_speedup,
)
from onepixel.errors import ConfigError
from onepixel.incremental import IncrementalEvaluator, incremental_cost, incremental_speedup_ceiling
from onepixel.models import build_model
from test_attack_resume import CONFIG, Stop, count_runs, partial_rows, stop_after
from test_attack_resume import attack as attack_stage


def fresh(name: str, channels: int, size: int, classes: int = 10, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=classes, in_channels=channels, image_size=size).to(dtype).eval()


def uint8_images(n: int, channels: int, size: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)


def predictions(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's own classes: labels that make an untargeted attack on fresh weights meaningful."""
    with torch.inference_mode():
        return model(images.float() / 255).argmax(1)


class Branchy(nn.Module):
    """Data-dependent control flow in ``forward``: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x >= 0).all()):  # true for every image in [0, 1]: the same function per image and per batch
            x = x * 2 - 1
        return self.fc(torch.tanh(self.conv(x)).mean((2, 3)))


class Counting(nn.Module):
    """Records its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


@pytest.fixture
def incremental_calls(monkeypatch) -> list[int]:
    """Candidates evaluated by the incremental evaluator from now on (one entry per call)."""
    calls: list[int] = []
    real = IncrementalEvaluator.logits

    def counting(self, xs, ys, colors):
        calls.append(int(xs.shape[0]))
        return real(self, xs, ys, colors)

    monkeypatch.setattr(IncrementalEvaluator, "logits", counting)
    return calls


# ===========================================================================
# 1. check_engine and choose_engine
# ===========================================================================
@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_an_engine_asked_for_is_taken(engine: str) -> None:
    assert check_engine(engine) == engine
    resnet = fresh("resnet20", 3, 32)
    for pixels, device in ((1, "cpu"), (3, "cpu"), (1, torch.device("cuda")), (1, "meta")):
        assert choose_engine(engine, resnet, (3, 32, 32), pixels, device) == EngineChoice(engine, "asked for")
    assert choose_engine(engine, Branchy(), (3, 8, 8), 1, "cpu").engine == engine


def test_auto_is_dense_for_several_pixels() -> None:
    choice = choose_engine("auto", fresh("resnet20", 3, 32), (3, 32, 32), 3, "cpu")
    assert choice.engine == "dense" and "3 pixels" in choice.reason


@pytest.mark.parametrize("device", [torch.device("cuda"), "cuda:1", torch.device("meta")])
def test_auto_is_dense_off_the_cpu_without_needing_the_device(device) -> None:
    """Decided from the device's type alone: no GPU needed (none here in CI), the model is not moved."""
    model = fresh("resnet20", 3, 32)
    choice = choose_engine("auto", model, (3, 32, 32), 1, device)
    assert choice.engine == "dense" and f"device {torch.device(device).type}" in choice.reason
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_auto_is_dense_for_the_digits_lenet() -> None:
    model = fresh("lenet", 1, 8)
    ceiling = incremental_speedup_ceiling(model, (1, 8, 8), positions=64)
    assert ceiling == pytest.approx(1.1, abs=0.1)  # nearly every layer's change covers its map
    choice = choose_engine("auto", model, (1, 8, 8), 1, "cpu")
    assert choice.engine == "dense" and f"multiply-accumulate ratio {ceiling:.2f}" in choice.reason


def test_the_cost_model_by_hand() -> None:
    """expected_speedup = B full / (B incremental + steps * OVERHEAD_MACS_PER_STEP), from counted MACs."""
    model = fresh("lenet", 3, 32)
    cost = incremental_cost(model, (3, 32, 32), positions=64)
    # LeNet at 32x32: 0.65 M MACs per image (conv 3->6 5x5 on 28x28, conv 6->16 5x5 on 10x10, 400-120-84-10)
    full = 6 * 3 * 25 * 28 * 28 + 16 * 6 * 25 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10
    assert cost.full_macs == full and cost.fallback_reason is None and cost.steps > 0
    assert cost.ceiling == pytest.approx(full / cost.incremental_macs)
    for batch in (1, 40, 1024):
        want = batch * full / (batch * cost.incremental_macs + cost.steps * OVERHEAD_MACS_PER_STEP)
        assert expected_speedup(cost, batch) == pytest.approx(want)
    assert expected_speedup(cost, 40) < AUTO_MIN_SPEEDUP <= expected_speedup(cost, 1024)


def test_auto_weighs_the_candidates_per_call() -> None:
    """LeNet's DE at population 40 stays dense (the per-call cost of the nodes dominates), its sweep and the
    vulnerability maps (1,024 candidates of an image per call) go incremental."""
    model = fresh("lenet", 3, 32)
    assert choose_engine("auto", model, (3, 32, 32), 1, "cpu", candidates=40).engine == "dense"
    assert choose_engine("auto", model, (3, 32, 32), 1, "cpu", candidates=1024).engine == "incremental"
    assert OnePixelAttack(model, population=40, engine="auto").choose_engine((3, 32, 32)).engine == "dense"
    assert OnePixelAttack(model, population=400, engine="auto").choose_engine((3, 32, 32)).engine == "incremental"
    assert ExhaustiveAttack(model, engine="auto").choose_engine((3, 32, 32)).engine == "incremental"


def test_auto_is_incremental_for_resnet20_at_32x32() -> None:
    model = fresh("resnet20", 3, 32)
    cost = incremental_cost(model, (3, 32, 32), positions=64)
    for candidates in (40, 1024):
        choice = choose_engine("auto", model, (3, 32, 32), 1, torch.device("cpu"), candidates=candidates)
        speedup = expected_speedup(cost, candidates)
        assert speedup >= AUTO_MIN_SPEEDUP and choice.engine == "incremental" and f"{speedup:.2f}" in choice.reason
        assert choose_engine("auto", model, (3, 32, 32), 1, "cpu", candidates=candidates) == choice  # no timing


def test_auto_is_dense_for_a_model_the_evaluator_cannot_trace() -> None:
    assert choose_engine("auto", Branchy(), (3, 8, 8), 1, "cpu").engine == "dense"


@pytest.mark.parametrize("engine", ["fast", "Dense", "", None, 1])
def test_an_unknown_engine_is_a_one_line_config_error(engine: object) -> None:
    message = f"engine: {engine!r} is unknown; use one of dense, incremental, auto"
    with pytest.raises(ConfigError) as info:
        check_engine(engine)
    assert str(info.value) == message and "\n" not in message
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        choose_engine(engine, fresh("lenet", 1, 8), (1, 8, 8), 1, "cpu")
    with pytest.raises(ConfigError) as info:
        check_engine(engine, key="attack.engine")
    assert str(info.value).startswith("attack.engine: ")
    assert ENGINES == ("dense", "incremental", "auto")


def test_an_unknown_engine_is_refused_before_any_work() -> None:
    model = Counting()
    with pytest.raises(ConfigError, match="^engine: 'fast' is unknown; use one of dense, incremental, auto$"):
        OnePixelAttack(model, engine="fast")
    with pytest.raises(ConfigError, match="^engine: 'fast' is unknown"):
        ExhaustiveAttack(model, engine="fast")
    with pytest.raises(ConfigError, match="^engine: 'fast' is unknown"):
        make_attack(model, stage.attack_settings({}), "cpu", engine="fast")
    images = uint8_images(2, 3, 8)
    one = np.array([[1], [2]])
    with pytest.raises(ConfigError, match="^engine: 'fast' is unknown"):
        locality_analysis(model, images, np.zeros(2), one, one, np.zeros((2, 1, 3), np.uint8), engine="fast")
    assert model.calls == 0
    # the config key: the schema names it and its values
    with pytest.raises(ConfigError, match="^engine: 'fast' is not allowed; allowed values: dense, incremental, auto$"):
        validate_config({"engine": "fast"}, check_files=False)
    assert validate_config({}, check_files=False)["engine"] == "auto"


# ===========================================================================
# 2. PixelVariants
# ===========================================================================
def built(images: torch.Tensor, rows, xs, ys, colors) -> torch.Tensor:
    """The variant images, built pixel by pixel in a loop (independent of apply_pixels)."""
    out = images[rows].clone()
    for b in range(len(rows)):
        for j in range(xs.shape[1]):
            out[b, :, ys[b, j], xs[b, j]] = colors[b, j]
    return out


def variants_case(n: int, rows: list[int], k: int, size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """float64 images ``(n, 3, size, size)`` in [0, 1], and ``len(rows)`` candidates with k distinct pixels each."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=gen, dtype=torch.float64)
    flat = torch.stack([torch.randperm(size * size, generator=gen)[:k] for _ in rows])
    xs, ys = flat % size, flat // size
    colors = torch.rand(len(rows), k, 3, generator=gen, dtype=torch.float64)
    return images, torch.tensor(rows), xs, ys, colors


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """Equal within ``rtol`` of the outputs' scale."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert float((got - want).abs().max()) <= rtol * float(want.abs().max())


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", ["lenet", "resnet20"])
def test_pixel_variants_incremental_equals_dense_in_float64(name: str, k: int) -> None:
    model = fresh(name, 3, 16, dtype=torch.float64)
    rows = [2, 0, 2, 3, 1, 0, 2, 3, 3, 1, 0, 2, 1, 3]  # repeated, unsorted: more rows than cached images
    images, rows_t, xs, ys, colors = variants_case(4, rows, k, 16, seed=k)
    with torch.inference_mode():
        want = model(built(images, rows_t, xs, ys, colors))
        clean = model(images[rows_t])
    assert float((want - clean).abs().max()) > 1e-4 * float(want.abs().max())  # the pixels matter
    dense = PixelVariants(model, images, "dense", "cpu")
    incremental = PixelVariants(model, images, "incremental", "cpu", cached_images=1)
    with torch.inference_mode():
        assert torch.equal(dense(rows_t, xs, ys, colors), want)
        assert_close(incremental(rows_t, xs, ys, colors), want, 1e-10)
        assert incremental.fallback_reason is None and incremental.engine == "incremental"
        assert len(incremental._evaluators) == 1  # least recently used images dropped
        # the cache again (another order, with the clean activations of the last image kept), then after drop
        flip = torch.arange(len(rows) - 1, -1, -1)
        assert_close(incremental(rows_t[flip], xs[flip], ys[flip], colors[flip]), want[flip], 1e-10)
        incremental.drop(torch.tensor([2, 0]))
        incremental.drop([3, 1, 7])  # images not cached: nothing to forget
        assert len(incremental._evaluators) == 0
        assert_close(incremental(rows_t, xs, ys, colors), want, 1e-10)
        # an empty batch
        no_rows, no_pixels = torch.zeros(0, dtype=torch.long), torch.zeros(0, k, dtype=torch.long)
        for variants in (dense, incremental):
            out = variants(no_rows, no_pixels, no_pixels, torch.zeros(0, k, 3, dtype=torch.float64))
            assert out.shape == (0, 10) and out.dtype == torch.float64


def test_pixel_variants_with_a_large_cache_and_a_single_image() -> None:
    model = fresh("lenet", 3, 16, dtype=torch.float64)
    images, rows, xs, ys, colors = variants_case(3, [1] * 5 + [0] * 3 + [2, 1], 1, 16, seed=7)
    incremental = PixelVariants(model, images, "incremental", "cpu")
    with torch.inference_mode():
        want = model(built(images, rows, xs, ys, colors))
        assert_close(incremental(rows, xs, ys, colors), want, 1e-10)
        assert sorted(incremental._evaluators) == [0, 1, 2]
        one = rows == 1
        assert_close(incremental(rows[one], xs[one], ys[one], colors[one]), want[one], 1e-10)


def test_pixel_variants_mix_uint8_and_float_images_and_colours() -> None:
    """uint8 or [0, 1] float images and colours in any combination: the same variants with either engine."""
    gen = torch.Generator().manual_seed(3)
    images_u8 = torch.randint(0, 256, (3, 3, 16, 16), generator=gen, dtype=torch.uint8)
    rows, xs, ys = torch.tensor([1, 0, 2, 1]), torch.tensor([[0], [5], [15], [9]]), torch.tensor([[3], [15], [0], [9]])
    colors_u8 = torch.randint(0, 256, (4, 1, 3), generator=gen, dtype=torch.uint8)
    # float32: the engines' input in the stages; dense is exactly the built uint8 images divided by 255
    model = fresh("lenet", 3, 16)
    with torch.inference_mode():
        want = model(built(images_u8, rows, xs, ys, colors_u8).float() / 255)
        for engine in ("dense", "incremental"):
            for images in (images_u8, images_u8.float() / 255):
                for colors in (colors_u8, colors_u8.float() / 255):
                    got = PixelVariants(model, images, engine, "cpu")(rows, xs, ys, colors)
                    if engine == "dense":
                        assert torch.equal(got, want), (images.dtype, colors.dtype)
                    else:
                        assert_close(got, want, 1e-5)
    # float64 images with uint8 colours
    model64 = fresh("lenet", 3, 16, dtype=torch.float64)
    images64 = images_u8.double() / 255
    with torch.inference_mode():
        want64 = model64(built(images64, rows, xs, ys, colors_u8.double() / 255))
        for engine in ("dense", "incremental"):
            assert_close(PixelVariants(model64, images64, engine, "cpu")(rows, xs, ys, colors_u8), want64, 1e-10)


def test_pixel_variants_of_a_model_torch_fx_cannot_trace(caplog: pytest.LogCaptureFixture) -> None:
    """Evaluated by the plain forward pass, with one warning naming why, for every image."""
    torch.manual_seed(4)
    model = Branchy().double().eval()
    images, rows, xs, ys, colors = variants_case(3, [2, 0, 1, 2, 0, 1, 1], 3, 8, seed=5)
    with caplog.at_level(logging.WARNING):
        variants = PixelVariants(model, images, "incremental", "cpu", cached_images=1)
        with torch.inference_mode():
            got = variants(rows, xs, ys, colors)
            again = variants(rows, xs, ys, colors)
            want = model(built(images, rows, xs, ys, colors))
            dense = PixelVariants(model, images, "dense", "cpu")(rows, xs, ys, colors)
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "torch.fx cannot trace Branchy" in warnings[0].getMessage()
    assert variants.fallback_reason is not None and "torch.fx cannot trace Branchy" in variants.fallback_reason
    assert_close(got, want, 1e-12)
    assert_close(got, dense, 1e-12)
    assert torch.equal(got, again)


def test_pixel_variants_refuses_auto_and_unknown_engines() -> None:
    model = fresh("lenet", 1, 8)
    for engine in ("auto", "fast"):
        with pytest.raises(ValueError, match="resolve 'auto' first"):
            PixelVariants(model, uint8_images(1, 1, 8), engine, "cpu")
    assert PixelVariants(model, uint8_images(1, 1, 8), "dense", "cpu").fallback_reason is None


# ===========================================================================
# 3.-4. the attacks
# ===========================================================================
@pytest.fixture(scope="module")
def lenet16() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh 3-class LeNet at 3x16x16, 8 images and its own classes of them: DE fools some of them at
    various generations and fails on others (population 16, 10 generations)."""
    model = fresh("lenet", 3, 16, classes=3, seed=1)
    images = uint8_images(8, 3, 16, seed=1)
    return model, images, predictions(model, images)


@pytest.mark.parametrize("targeted", [False, True])
def test_exhaustive_incremental_equals_dense(lenet16, incremental_calls, targeted: bool) -> None:
    model, images, labels = lenet16
    targets = (labels + 1) % 3 if targeted else None
    sweeps = {}
    for engine in ("dense", "incremental"):
        attack = ExhaustiveAttack(model, colors="corners", batch_size=1000, targeted=targeted, engine=engine)
        before = len(incremental_calls)
        sweeps[engine] = attack.run(images, labels, targets)
        assert attack.engine_used == EngineChoice(engine, "asked for")
        assert (len(incremental_calls) > before) == (engine == "incremental")
    dense, incremental = sweeps["dense"], sweeps["incremental"]
    assert sum(incremental_calls) == 8 * 16 * 16 * 8  # every candidate, evaluated incrementally
    fooled = int(dense.result.success.sum())
    assert (0 < fooled < 8) if targeted else fooled == 8  # a real sweep: towards the targets, 3 images resist
    assert int(dense.fooled_map.sum()) > 50
    assert torch.equal(dense.n_fooling, incremental.n_fooling)
    assert torch.equal(dense.fooled_map, incremental.fooled_map)
    for field in ("success", "pixel_x", "pixel_y", "color", "adversarial", "adv_class", "queries"):
        assert torch.equal(getattr(dense.result, field), getattr(incremental.result, field)), field
    torch.testing.assert_close(dense.min_true_prob, incremental.min_true_prob, rtol=0, atol=1e-5, equal_nan=True)
    # float64 reference of the map of one image: the minimum true-class probability over the 8 corner colours
    model64 = fresh("lenet", 3, 16, classes=3, seed=1, dtype=torch.float64)
    corners = torch.tensor([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], dtype=torch.uint8)
    pos = torch.arange(256).repeat_interleave(8)
    xs, ys, colors = (pos % 16)[:, None], (pos // 16)[:, None], corners.repeat(256, 1)[:, None]
    with torch.inference_mode():
        ref = torch.softmax(model64(built(images.double() / 255, torch.full((2048,), 3), xs, ys, colors / 255)), 1)
    ref_map = ref[:, labels[3]].view(256, 8).min(1).values.view(16, 16)
    torch.testing.assert_close(incremental.min_true_prob[3].double(), ref_map, rtol=0, atol=1e-5)


#: (pixels, targeted, strategy)
DE_CASES = [(1, False, "rand1"), (1, True, "best1bin"), (3, True, "rand1")]


@pytest.fixture(scope="module")
def de_runs(lenet16) -> dict:
    """DE on lenet16 with each engine (twice incremental), for every (pixels, targeted, strategy) case."""
    model, images, labels = lenet16
    runs: dict = {}
    for pixels, targeted, strategy in DE_CASES:
        targets = (labels + 1) % 3 if targeted else None
        for engine, run in (("dense", 0), ("incremental", 0), ("incremental", 1)):
            attack = OnePixelAttack(
                model,
                pixels=pixels,
                population=16,
                generations=10,
                strategy=strategy,
                targeted=targeted,
                seed=5,
                batch_size=64,
                engine=engine,
            )
            runs[pixels, targeted, strategy, engine, run] = (attack.run(images, labels, targets), attack.engine_used)
    return runs


@pytest.mark.parametrize("case", DE_CASES)
def test_de_incremental_equals_dense(de_runs, case) -> None:
    dense, dense_engine = de_runs[(*case, "dense", 0)]
    incremental, incremental_engine = de_runs[(*case, "incremental", 0)]
    assert dense_engine == EngineChoice("dense", "asked for")
    assert incremental_engine == EngineChoice("incremental", "asked for")
    assert 0 < int(dense.success.sum()) < 8 and int(dense.generations.max()) > 0  # a real search
    assert len(set(dense.generations.tolist())) > 2
    for field in ("success", "pixel_x", "pixel_y", "color", "queries", "generations", "adversarial", "adv_class"):
        assert torch.equal(getattr(dense, field), getattr(incremental, field)), field
    torch.testing.assert_close(dense.prob_adv, incremental.prob_adv, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", DE_CASES)
def test_de_incremental_is_deterministic(de_runs, case) -> None:
    first, second = de_runs[(*case, "incremental", 0)][0], de_runs[(*case, "incremental", 1)][0]
    for field in first.__dataclass_fields__:
        a, b = getattr(first, field), getattr(second, field)
        assert a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes(), field


def test_de_evaluates_its_candidates_incrementally(lenet16, incremental_calls) -> None:
    model, images, labels = lenet16
    result = OnePixelAttack(model, population=16, generations=3, seed=5, engine="incremental").run(images, labels)
    assert sum(incremental_calls) == int(result.queries.sum())  # every candidate
    incremental_calls.clear()
    OnePixelAttack(model, population=16, generations=3, seed=5, engine="dense").run(images, labels)
    assert incremental_calls == []


def test_de_auto_on_resnet20_at_32x32(incremental_calls) -> None:
    model = fresh("resnet20", 3, 32)
    images = uint8_images(2, 3, 32, seed=2)
    labels = predictions(model, images)
    attack = OnePixelAttack(model, population=40, generations=1, seed=0, engine="auto")
    assert attack.engine == "auto" and attack.engine_used is None
    result = attack.run(images, labels)
    assert attack.engine_used is not None and attack.engine_used.engine == "incremental"
    assert attack.engine_used.reason.startswith("auto: expected speed-up")
    assert sum(incremental_calls) == int(result.queries.sum())
    three = OnePixelAttack(model, pixels=3, population=6, generations=1, seed=0, engine="auto")
    three.run(images[:1], labels[:1])
    assert three.engine_used is not None and three.engine_used.engine == "dense"


# ===========================================================================
# 5. locality and vulnerability
# ===========================================================================
@pytest.fixture(scope="module")
def swept(lenet16) -> tuple[nn.Module, torch.Tensor, torch.Tensor, xr.Dataset]:
    """lenet16's images with the pixels of its targeted exhaustive sweep (the best ones: 5 fool, 3 do not)."""
    model, images, labels = lenet16
    targets = (labels + 1) % 3
    sweep = ExhaustiveAttack(model, colors="corners", targeted=True, batch_size=2048).run(images, labels, targets)
    result = sweep.result
    return model, images, labels, result_to_dataset(result, np.arange(8), {})


def test_evaluate_shifts_incremental_equals_dense(swept) -> None:
    model, images, labels, attack = swept
    px, py, cols = attack["pixel_x"].values, attack["pixel_y"].values, attack["color"].values
    jobs, _ = all_shifts(px, py, 16, 16)
    args = (images, labels.numpy(), attack["target_class"].values, px, py, cols, jobs, 97)
    dense = evaluate_shifts(model, *args, engine="dense")
    incremental = evaluate_shifts(model, *args, engine="incremental")
    assert 0 < dense[0].sum() < len(jobs) // 2
    assert np.array_equal(dense[0], incremental[0]) and np.array_equal(dense[2], incremental[2])
    np.testing.assert_allclose(incremental[1], dense[1], rtol=0, atol=1e-5)
    # float64 reference of every shifted image
    model64 = fresh("lenet", 3, 16, classes=3, seed=1, dtype=torch.float64)
    rows = torch.from_numpy(jobs[:, 0])
    xs, ys = torch.from_numpy(px[jobs[:, 0]] + jobs[:, 1:2]), torch.from_numpy(py[jobs[:, 0]] + jobs[:, 2:3])
    colors = torch.from_numpy(cols[jobs[:, 0]]).double() / 255
    with torch.inference_mode():
        probs = torch.softmax(model64(built(images.double() / 255, rows, xs, ys, colors)), 1)
    np.testing.assert_allclose(incremental[1], probs[torch.arange(len(jobs)), labels[rows]].numpy(), rtol=0, atol=1e-5)


def test_locality_incremental_equals_dense(swept, incremental_calls) -> None:
    model, images, labels, attack = swept
    args = (model, images, labels, attack["pixel_x"].values, attack["pixel_y"].values, attack["color"].values)
    # untargeted (the sweep's pixels fool more often so): some rings and random positions fool
    kwargs = {"max_distance": 3, "random_positions": 32, "seed": 2, "batch_size": 50}
    dense = locality_analysis(*args, **kwargs, engine="dense")
    assert incremental_calls == [] and dense.attrs["engine"] == "dense"
    incremental = locality_analysis(*args, **kwargs, engine="incremental")
    assert incremental_calls and incremental.attrs["engine"] == "incremental"
    # LeNet at 16x16 (MAC ratio 3.3) with about 80 candidates of an image per call: the nodes' per-call cost
    # dominates, so auto keeps it dense (benchmarks/engines.py measured the incremental path slower there)
    auto = locality_analysis(*args, **kwargs, engine="auto")
    assert auto.attrs["engine"] == "dense"
    assert int(dense["n_fooled"].sum()) > 0 and int(dense["baseline_fooled"].sum()) > 0
    for ds in (incremental, auto):
        for name in ("n_positions", "n_fooled", "baseline_n", "baseline_fooled", "success_rate", "rate"):
            xr.testing.assert_identical(dense[name], ds[name])
        for name in ("mean_true_prob", "baseline_true_prob", "clean_true_prob", "true_prob_change"):
            np.testing.assert_allclose(ds[name].values, dense[name].values, rtol=0, atol=1e-5)
        assert {k: v for k, v in ds.attrs.items() if k != "engine"} == {
            k: v for k, v in dense.attrs.items() if k != "engine"
        }


def test_locality_auto_on_the_digits_lenet_is_dense(incremental_calls) -> None:
    model = fresh("lenet", 1, 8, classes=3)
    images = uint8_images(3, 1, 8)
    one = np.array([[1], [4], [6]])
    ds = locality_analysis(
        model, images, predictions(model, images), one, one, np.full((3, 1, 1), 255, np.uint8), engine="auto"
    )
    assert ds.attrs["engine"] == "dense" and incremental_calls == []


def test_vulnerability_incremental_equals_dense(swept, incremental_calls) -> None:
    model, images, labels, attack = swept
    maps = {
        engine: vulnerability_maps(
            model,
            images,
            labels.numpy(),
            attack["pixel_x"].values,
            attack["pixel_y"].values,
            attack["color"].values,
            attack["target_class"].values,
            batch_size=300,
            stride=2,
            engine=engine,
        )
        for engine in ("dense", "incremental")
    }
    (fooled, prob, pred), (fooled_i, prob_i, pred_i) = maps["dense"], maps["incremental"]
    assert (fooled == 1).sum() > 0 and (fooled == 0).sum() > 0 and (fooled == -2).sum() > 0
    assert np.array_equal(fooled, fooled_i) and np.array_equal(pred, pred_i)
    np.testing.assert_allclose(prob_i, prob, rtol=0, atol=1e-5)
    assert np.array_equal(np.isnan(prob), np.isnan(prob_i))
    incremental_calls.clear()
    datasets = {
        engine: vulnerability_dataset(model, attack, images, batch_size=500, engine=engine) for engine in ENGINES
    }
    assert incremental_calls  # the incremental engine ran the evaluator
    assert {engine: ds.attrs["engine"] for engine, ds in datasets.items()} == {
        "dense": "dense",
        "incremental": "incremental",
        "auto": "dense",  # LeNet at 16x16, 64 positions per image with stride 2: too few candidates per call
    }
    dense = datasets["dense"]
    assert int((dense["fooled"] == 1).sum()) > 0
    for engine in ("incremental", "auto"):
        ds = datasets[engine]
        for name in ("fooled", "pred_class", "profile_n", "profile_fooled"):
            xr.testing.assert_identical(dense[name], ds[name])
        np.testing.assert_allclose(ds["true_prob"].values, dense["true_prob"].values, rtol=0, atol=1e-5)
        np.testing.assert_allclose(ds["profile_true_prob"].values, dense["profile_true_prob"].values, rtol=0, atol=1e-5)


def test_vulnerability_auto_with_three_pixels_is_dense(lenet16, incremental_calls) -> None:
    model, images, labels = lenet16
    result = OnePixelAttack(model, pixels=3, population=8, generations=1, seed=1).run(images[:2], labels[:2])
    ds = vulnerability_dataset(model, result_to_dataset(result, np.arange(2), {}), images[:2], engine="auto")
    assert ds.attrs["engine"] == "dense" and incremental_calls == []


# ===========================================================================
# 6. the attack stage
# ===========================================================================
def test_the_attack_file_records_the_engine_that_ran(toy, tmp_path, incremental_calls) -> None:
    cfg = {**CONFIG, "num_images": 6}
    auto = attack_stage(toy, tmp_path / "auto.nc", cfg)  # the config's default, auto: the 8x8 digits LeNet is dense
    assert auto.attrs["engine"] == "dense" and incremental_calls == []
    incremental = attack_stage(toy, tmp_path / "incremental.nc", cfg, engine="incremental")
    assert incremental.attrs["engine"] == "incremental" and incremental_calls
    assert load_attack(tmp_path / "auto.nc").attrs["engine"] == "dense"
    assert load_attack(tmp_path / "incremental.nc").attrs["engine"] == "incremental"
    assert 0 < int(auto["success"].sum()) < 6
    # the same rows either way (the engines agree to float rounding, no near-tie here); the attributes differ
    # in the engine and in the config (its digest and the study's config record engine)
    config = {key: auto.attrs[key] for key in ("config_digest", "study_config")}
    assert json.loads(incremental.attrs["study_config"])["engine"] == "incremental"
    _assert_bit_identical(auto, incremental.assign_attrs(engine="dense", **config), "incremental attack")
    sweep = attack_stage(toy, tmp_path / "sweep.nc", {**cfg, "method": "exhaustive"}, engine="incremental")
    assert sweep.attrs["engine"] == "incremental"
    assert (
        attack_stage(toy, tmp_path / "fgsm.nc", {**cfg, "method": "fgsm"}, engine="incremental").attrs["engine"]
        == "dense"
    )


def test_an_incremental_attack_resumes_from_its_partial_file(toy, tmp_path, monkeypatch) -> None:
    reference = attack_stage(toy, tmp_path / "reference.nc", CONFIG, engine="incremental")
    out = tmp_path / "shard.nc"
    monkeypatch.setattr(stage, "PARTIAL_EVERY_S", 0.0)
    with monkeypatch.context() as patch:
        stop_after(patch, 4)
        with pytest.raises(Stop):
            attack_stage(toy, out, CONFIG, engine="incremental")
    kept = partial_rows(partial_path(out))
    assert 4 <= kept < 12
    with xr.open_dataset(partial_path(out), engine="netcdf4") as partial:
        assert partial.attrs["engine"] == "incremental"
    runs = count_runs(monkeypatch)
    resumed = attack_stage(toy, out, CONFIG, engine="incremental")
    assert runs == [(kept, 12 - kept)]
    _assert_bit_identical(reference, resumed, "resumed incremental attack")


@pytest.mark.parametrize(("first", "second"), [("dense", "incremental"), ("incremental", "dense")])
def test_a_partial_file_of_another_engine_is_not_resumed(toy, tmp_path, monkeypatch, capfd, first, second) -> None:
    out = tmp_path / "shard.nc"
    monkeypatch.setattr(stage, "PARTIAL_EVERY_S", 0.0)
    with monkeypatch.context() as patch:
        stop_after(patch, 4)
        with pytest.raises(Stop):
            attack_stage(toy, out, CONFIG, engine=first)
    with xr.open_dataset(partial_path(out), engine="netcdf4") as partial:
        assert partial.attrs["engine"] == first and int(partial.sizes["row"]) >= 4
    capfd.readouterr()
    runs = count_runs(monkeypatch)
    result = attack_stage(toy, out, CONFIG, engine=second)
    err = capfd.readouterr().err
    assert f"attack: ignoring {partial_path(out)}: made with another engine; attacking every image" in err
    assert runs == [(0, 12)] and not partial_path(out).exists()
    assert result.attrs["engine"] == second
