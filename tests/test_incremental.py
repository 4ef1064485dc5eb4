"""Tests of onepixel.incremental: the incremental logits equal the plain forward's, the fallback, no side effects."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onepixel.data.dataset import apply_pixels
from onepixel.incremental import IncrementalEvaluator, incremental_speedup_ceiling
from onepixel.models import MODEL_NAMES, build_model


def fresh(name: str, channels: int = 3, size: int = 32, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, image_size=size).to(dtype)
    return model.eval()


def special_positions(
    h: int, w: int, gen: torch.Generator, k: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns, rows ``(B, k)`` and which candidates are single pixels: centre, corners and edges once as one
    pixel (repeated k times, all with the same colour: ``apply_pixels`` is then well defined) and once as
    k distinct pixels around them, then random k-pixel sets."""
    fixed = torch.tensor(
        [(h // 2, w // 2), (0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (0, w // 2), (h // 2, w - 1)]
    )
    single_y, single_x = fixed[:, :1].expand(-1, k), fixed[:, 1:].expand(-1, k)
    near_y = (single_y + torch.arange(k) * 2).clamp(max=h - 1)
    near_x = (single_x - torch.arange(k) * 3).clamp(min=0)
    ry, rx = torch.randint(0, h, (5, k), generator=gen), torch.randint(0, w, (5, k), generator=gen)
    single = torch.zeros(len(fixed) * 2 + 5, dtype=torch.bool)
    single[: len(fixed)] = True
    return torch.cat([single_x, near_x, rx]), torch.cat([single_y, near_y, ry]), single


def random_colors(xs: torch.Tensor, single: torch.Tensor, channels: int, gen: torch.Generator, dtype=torch.float64):
    colors = torch.rand(xs.shape[0], xs.shape[1], channels, generator=gen, dtype=dtype)
    colors[single] = colors[single][:, :1]  # one colour for a repeated pixel
    return colors


def reference(model: nn.Module, image: torch.Tensor, xs, ys, colors) -> torch.Tensor:
    with torch.inference_mode():
        images = image[None].expand(xs.shape[0], *image.shape)
        return model(apply_pixels(images, xs, ys, colors.to(image.dtype)))


def check(model: nn.Module, image: torch.Tensor, xs, ys, colors, rtol: float) -> IncrementalEvaluator:
    """The evaluator is incremental and its logits equal the forward's within ``rtol`` of the logits' scale;
    the pixels change the logits by much more than that (the comparison is not trivial)."""
    evaluator = IncrementalEvaluator(model, image)
    assert evaluator.fallback_reason is None
    got = evaluator.logits(xs, ys, colors)
    want = reference(model, image, xs, ys, colors)
    scale = float(want.abs().max())
    assert got.shape == want.shape and got.dtype == want.dtype
    assert float((got - want).abs().max()) <= rtol * scale
    clean = reference(model, image, xs[:1], ys[:1], image[:, ys[0, 0], xs[0, 0]].expand(1, xs.shape[1], -1))
    assert float((want - clean).abs().max()) > 100 * rtol * scale
    return evaluator


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 8)])
def test_registry_models_float64(name: str, channels: int, size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    model = fresh(name, channels, size)
    image = torch.rand(channels, size, size, generator=gen, dtype=torch.float64)
    xs, ys, single = special_positions(size, size, gen)
    check(model, image, xs, ys, random_colors(xs, single, channels, gen), 1e-10)


@pytest.mark.parametrize(("name", "channels", "size", "batch", "k"), [
    ("lenet", 1, 8, 3000, 1),
    ("resnet20", 1, 8, 2000, 1),
    ("resnet20", 1, 8, 600, 3),
    ("resnet20", 3, 32, 400, 1),
    ("lenet", 3, 32, 2000, 1),
])  # fmt: skip
def test_large_batches_float32(name: str, channels: int, size: int, batch: int, k: int) -> None:
    gen = torch.Generator().manual_seed(2)
    model = fresh(name, channels, size, torch.float32)
    image = torch.rand(channels, size, size, generator=gen)
    flat = torch.stack([torch.randperm(size * size, generator=gen)[:k] for _ in range(batch)])  # distinct pixels
    xs, ys = flat % size, flat // size
    colors = torch.rand(batch, k, channels, generator=gen)
    check(model, image, xs, ys, colors, 1e-5)


def test_exhaustive_order_and_uint8() -> None:
    """Position-major batches (every colour of a pixel together, as the sweep makes them), uint8 image."""
    model = fresh("resnet20", 1, 8)
    image_u8 = torch.randint(0, 256, (1, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    pos = torch.arange(64).repeat_interleave(4)
    xs, ys = (pos % 8)[:, None], (pos // 8)[:, None]
    colors = torch.tensor([0, 85, 170, 255], dtype=torch.uint8).repeat(64).view(-1, 1, 1)
    evaluator = IncrementalEvaluator(model, image_u8)
    got = evaluator.logits(xs, ys, colors)
    want = reference(model, image_u8.double() / 255, xs, ys, colors.double() / 255)
    assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max())


class Zoo(nn.Module):
    """Every operation the evaluator handles specially, on odd map sizes (ceil modes, borders, strides)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.conv2 = nn.Conv2d(8, 8, (3, 5), stride=(1, 2), padding=(1, 2), groups=2)
        self.bn = nn.BatchNorm2d(16)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)
        self.conv3 = nn.Conv2d(16, 6, 1, padding="same")
        self.adapt = nn.AdaptiveAvgPool2d((2, 3))
        self.adapt_max = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(6 * 6 + 6 * 4 + 6 + 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pool1(self.relu(self.conv1(x)))
        b = self.conv2(a)
        c = torch.cat([b, b * 0.5 + 1], dim=1)
        c = F.relu(self.bn(c), inplace=True)
        d = F.avg_pool2d(c, 2, ceil_mode=True, count_include_pad=False)
        e = self.conv3(self.avg(c) + 0)[:, :, :, :]
        g = F.pad(e, (1, 0, 2, 1), value=0.25)
        parts = [
            self.adapt(g).flatten(1),
            self.adapt_max(g).view(g.size(0), -1),
            g.mean((2, 3)),
            F.adaptive_avg_pool2d(d[:, :6], 1).flatten(1),
        ]
        return self.fc(torch.cat(parts, 1))


class Slices(nn.Module):
    """Strided slices with offsets and channel padding (ResNet's option-A shortcut), spatial padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.conv(x))
        b = F.pad(a[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2)) + self.conv2(F.pad(a, (0, 1, 1, 0))[..., :-1, 1:])
        odd = F.pad(a[:, :, 1::2, 1::2], (0, 0, 0, 0, 0, 4), value=0.5)
        return self.fc(b.mean((-2, -1)) + odd.mean((2, 3)))


@pytest.mark.parametrize("model_cls", [Zoo, Slices])
@pytest.mark.parametrize(("h", "w"), [(13, 11), (16, 16)])
def test_special_operations_float64(model_cls: type[nn.Module], h: int, w: int) -> None:
    torch.manual_seed(4)
    model = model_cls().double().eval()
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(3, h, w, generator=gen, dtype=torch.float64)
    for k in (1, 3):
        xs, ys, single = special_positions(h, w, gen, k)
        check(model, image, xs, ys, random_colors(xs, single, 3, gen), 1e-10)


def test_dense_fraction_extremes() -> None:
    """dense_fraction 0 (everything dense from the input) and 1 (never dense) give the same logits."""
    model = fresh("resnet20", 1, 8)
    gen = torch.Generator().manual_seed(6)
    image = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64)
    xs, ys, _ = special_positions(8, 8, gen, 1)
    colors = torch.rand(xs.shape[0], 1, 1, generator=gen, dtype=torch.float64)
    want = reference(model, image, xs, ys, colors)
    for fraction in (0.0, 1.0):
        evaluator = IncrementalEvaluator(model, image, dense_fraction=fraction)
        got = evaluator.logits(xs, ys, colors)
        assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max())
        dense = [cost.dense for cost in evaluator.profile() if cost.op == "Conv2d"]
        assert all(dense) if fraction == 0.0 else not any(dense)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.fc(self.conv(x).mean((2, 3)))


class Cumulative(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).cumsum(3).flatten(1)


@pytest.mark.parametrize(("model_cls", "reason"), [(Branchy, "torch.fx cannot trace Branchy"), (Cumulative, "cumsum")])
def test_fallback(model_cls: type[nn.Module], reason: str, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(7)
    model = model_cls().eval()
    image = torch.rand(1, 8, 8)
    with caplog.at_level(logging.WARNING, logger="onepixel.incremental"):
        evaluator = IncrementalEvaluator(model, image)
        gen = torch.Generator().manual_seed(8)
        xs, ys, _ = special_positions(8, 8, gen, 1)
        colors = torch.rand(xs.shape[0], 1, 1, generator=gen)
        got = evaluator.logits(xs, ys, colors)
        evaluator.logits(xs, ys, colors)
    assert evaluator.fallback_reason is not None and reason in evaluator.fallback_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()
    assert torch.equal(got, reference(model, image, xs, ys, colors))
    assert evaluator.profile() == []
    assert incremental_speedup_ceiling(model, (1, 8, 8)) == 1.0


def test_model_unchanged() -> None:
    """Parameters, buffers (batch-norm statistics) and every submodule's mode stay as they were."""
    model = fresh("allconv", 1, 8, torch.float32).train()
    model.conv1[1].eval()  # a frozen batch norm in a training model keeps its own flag
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    image = torch.rand(1, 8, 8)
    evaluator = IncrementalEvaluator(model, image)
    xs = torch.tensor([[0], [3], [7]])
    colors = torch.rand(3, 1, 1)
    got = evaluator.logits(xs, xs, colors)
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    assert float((got - reference(model, image, xs, xs, colors)).abs().max()) <= 1e-5 * float(got.abs().max())


def test_profile_and_ceiling() -> None:
    model = fresh("resnet20", 3, 32, torch.float32)
    evaluator = IncrementalEvaluator(model, torch.rand(3, 32, 32))
    evaluator.logits(torch.tensor([[5], [20]]), torch.tensor([[9], [30]]), torch.rand(2, 1, 3))
    costs = evaluator.profile()
    convs = [c for c in costs if c.op == "Conv2d"]
    assert len(convs) == 19 and all(c.seconds >= 0 for c in costs)
    assert 0 < convs[0].area_fraction < 0.1 and not convs[0].dense and convs[-1].dense
    assert all(0 <= c.macs_fraction <= 1 for c in costs)
    ceiling = incremental_speedup_ceiling(model, (3, 32, 32))
    assert 1.3 < ceiling < 3.0  # the first stage is cheap, the later ones dense
    full, per_candidate = evaluator.macs(torch.tensor([[0], [16]]), torch.tensor([[0], [16]]))
    assert full > 0 and 0 < float(per_candidate[0]) < float(per_candidate[1]) < full


def test_bad_arguments() -> None:
    evaluator = IncrementalEvaluator(fresh("lenet", 1, 8), torch.rand(1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="lie in the 8x8 image"):
        evaluator.logits(torch.tensor([[8]]), torch.tensor([[0]]), torch.rand(1, 1, 1))
    with pytest.raises(ValueError, match="colors must be"):
        evaluator.logits(torch.tensor([[1]]), torch.tensor([[0]]), torch.rand(1, 1, 3))
    assert evaluator.logits(
        torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long), torch.rand(0, 1, 1)
    ).shape == (0, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg16", "alexnet"])
def test_torchvision_224_float64(name: str) -> None:
    import torchvision  # a runtime dependency: never skipped

    torch.manual_seed(9)
    model = getattr(torchvision.models, name)(weights=None).double().eval()
    gen = torch.Generator().manual_seed(10)
    image = torch.rand(3, 224, 224, generator=gen, dtype=torch.float64)
    xs = torch.tensor([[112] * 3, [0] * 3, [223] * 3, [112, 3, 60], [0, 1, 2], [223, 200, 223]])
    ys = torch.tensor([[112] * 3, [0] * 3, [111] * 3, [112, 100, 130], [0, 0, 1], [111, 223, 0]])
    single = torch.tensor([True, True, True, False, False, False])  # centre, corner, edge; then k = 3
    check(model, image, xs, ys, random_colors(xs, single, 3, gen), 1e-10)
