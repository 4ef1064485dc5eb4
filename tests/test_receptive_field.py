"""Tests of onepixel.analysis.receptive_field: hand-computed fields, a brute-force gradient check, the ERF."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onepixel.analysis.receptive_field import (
    ReceptiveField,
    effective_receptive_field,
    erf_radius,
    receptive_field_box,
    theoretical_receptive_fields,
)
from onepixel.errors import ConfigError
from onepixel.models import MODEL_NAMES, build_model


def step(rf: tuple[int, int, float], kernel: int, stride: int = 1, padding: int = 0) -> tuple[int, int, float]:
    """Hand rule for one window layer: size += (k-1) jump; start += ((k-1)/2 - p) jump; jump *= s."""
    size, jump, start = rf
    return size + (kernel - 1) * jump, jump * stride, start + ((kernel - 1) / 2 - padding) * jump


def as_tuple(rf: ReceptiveField) -> tuple[int, int, float]:
    return rf.size, rf.stride, rf.start


def test_lenet_by_hand() -> None:
    pixel = (1, 1, 0.0)
    # 32x32: conv5 (no padding) -> relu1; maxpool2 -> conv5 -> relu2
    relu1 = step(pixel, 5)
    relu2 = step(step(relu1, 2, 2), 5)
    assert relu1 == (5, 1, 2.0) and relu2 == (14, 2, 6.5)
    rf = theoretical_receptive_fields(build_model("lenet", 10, 3, 32), (3, 32, 32))
    assert {k: as_tuple(v) for k, v in rf.items()} == {"relu1": relu1, "relu2": relu2}
    # 8x8 digits: the convolutions are padded by 2
    relu1 = step(pixel, 5, padding=2)
    relu2 = step(step(relu1, 2, 2), 5, padding=2)
    assert relu1 == (5, 1, 0.0) and relu2 == (14, 2, 0.5)
    rf = theoretical_receptive_fields(build_model("lenet", 10, 1, 8), (1, 8, 8), ["relu1", "relu2"])
    assert {k: as_tuple(v) for k, v in rf.items()} == {"relu1": relu1, "relu2": relu2}


def resnet_by_hand(blocks: int) -> dict[str, tuple[int, int, float]]:
    """Stem conv3 (pad 1); each block two conv3 (pad 1), the first of stages 2 and 3 with stride 2.

    The residual branch (identity, or x[::2, ::2]) sees a smaller field centred on the same
    pixel, so the block's field is the residual path's.
    """
    rf = step((1, 1, 0.0), 3, padding=1)
    out = {"stem": rf}
    for stage in (1, 2, 3):
        for i in range(blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            rf = step(step(rf, 3, stride, 1), 3, 1, 1)
            out[f"layer{stage}.{i}"] = rf
    return out


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 3), ("resnet32", 5)])
def test_resnet_by_hand(name: str, blocks: int) -> None:
    hand = resnet_by_hand(blocks)
    for size in (8, 32):
        rf = theoretical_receptive_fields(build_model(name, 10, 3, size), (3, size, size))
        assert {k: as_tuple(v) for k, v in rf.items()} == hand


def test_resnet20_values() -> None:
    rf = theoretical_receptive_fields(build_model("resnet20", 10, 1, 8), (1, 8, 8))
    assert [v.size for v in rf.values()] == [3, 7, 11, 15, 21, 29, 37, 49, 65, 81]
    assert [v.stride for v in rf.values()] == [1, 1, 1, 1, 2, 2, 2, 4, 4, 4]


class Mixed(nn.Module):
    """Dilated conv, spatial F.pad, slicing, a concatenation and a residual add, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.dilated = nn.Conv2d(1, 2, 3, padding=2, dilation=2)  # size 5, start 0
        self.pool = nn.MaxPool2d(2)  # size 6, jump 2, start 0.5
        self.side = nn.Conv2d(2, 2, 1)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pool(self.dilated(x))
        shifted = F.pad(a, (1, 0, 1, 0))[:, :, :-1, :-1]  # unit 0 now sees one pool window earlier
        joined = torch.cat([a, shifted], dim=1)[:, :2] + self.side(a)
        return self.head(joined.flatten(1))


def test_mixed_operations_by_hand() -> None:
    model = Mixed()
    rf = theoretical_receptive_fields(model, (1, 8, 8), ["dilated", "pool", "side"])
    assert as_tuple(rf["dilated"]) == (5, 1, 0.0)
    assert as_tuple(rf["pool"]) == step((5, 1, 0.0), 2, 2) == (6, 2, 0.5)
    assert as_tuple(rf["side"]) == (6, 2, 0.5)
    with pytest.raises(ConfigError, match="'head' has no spatial receptive field"):
        theoretical_receptive_fields(model, (1, 8, 8), ["head"])
    with pytest.raises(ConfigError, match="'nope' is not a module or node"):
        theoretical_receptive_fields(model, (1, 8, 8), ["nope"])


def test_union_of_shifted_branches() -> None:
    """cat([a, pad-shifted a]) covers pixels -2..5 of unit 0 (a: -2..3, shifted: -4..1)."""

    class Join(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = Mixed().dilated
            self.pool = nn.MaxPool2d(2)
            self.mix = nn.Conv2d(4, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.pool(self.a(x))
            return self.mix(torch.cat([a, F.pad(a, (1, 0, 1, 0))[:, :, :-1, :-1]], dim=1))

    rf = theoretical_receptive_fields(Join(), (1, 8, 8), ["mix"])["mix"]
    assert as_tuple(rf) == (8, 2, -0.5)  # pixels -4..3: size 8, centre -0.5


def test_mode_is_restored_and_adaptive_pooling() -> None:
    model = build_model("lenet", 10, 3, 20).train()
    theoretical_receptive_fields(model, (3, 20, 20))
    assert all(m.training for m in model.modules())
    pooled = nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(3))
    assert (
        as_tuple(theoretical_receptive_fields(pooled, (1, 8, 8), ["1"])["1"]) == step((3, 1, 1.0), 2, 2) == (4, 2, 1.5)
    )
    with pytest.raises(ConfigError, match="unequal size"):
        theoretical_receptive_fields(pooled, (1, 9, 9), ["1"])


# ---------------------------------------------------------------------------
# Brute force: with positive weights, positive inputs and average instead of max
# pooling, every input pixel a unit depends on has a nonzero gradient.


def positive_model(model: nn.Module) -> nn.Module:
    """float64 copy with every weight 1/fan_in, zero biases, max pools replaced by average pools."""
    model = copy.deepcopy(model).double().eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    return model


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    out: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(o))
    model(x)
    handle.remove()
    return out[0]


def brute_force_support(
    model: nn.Module, layer: str, units: list[tuple[int, int]], shape: tuple[int, int, int]
) -> np.ndarray:
    """``(len(units), H, W)`` bool: input pixels with a nonzero gradient of each unit (summed over channels)."""
    x = torch.full((len(units), *shape), 0.5, dtype=torch.float64, requires_grad=True)
    out = layer_output(model, layer, x)
    total = sum(out[b, :, i, j].sum() for b, (i, j) in enumerate(units))
    (grad,) = torch.autograd.grad(total, x)
    return (grad != 0).any(dim=1).numpy()


def grid_units(model: nn.Module, layer: str, shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    with torch.no_grad():
        h, w = layer_output(model, layer, torch.zeros(1, *shape, dtype=torch.float64)).shape[-2:]
    return sorted({(0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1)})


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("lenet", 20),
        ("lenet", 8),
        ("resnet20", 12),
        ("nin", 12),
        ("vgg16", 12),
        ("densenet", 10),
        ("allconv", 12),
        ("wrn16_4", 12),
    ],
)
def test_brute_force_matches_theory(name: str, size: int) -> None:
    channels = 1
    model = positive_model(build_model(name, 10, channels, size))
    shape = (channels, size, size)
    fields = theoretical_receptive_fields(model, shape)
    for layer, rf in fields.items():
        units = grid_units(model, layer, shape)
        support = brute_force_support(model, layer, units, shape)
        for (i, j), seen in zip(units, support, strict=False):
            y0, y1, x0, x1 = receptive_field_box(rf, i, j, size, size)
            expected = np.zeros((size, size), bool)
            expected[y0:y1, x0:x1] = True
            assert (seen == expected).all(), f"{name} {layer} unit {(i, j)}: {rf}"


def test_receptive_field_box_clips() -> None:
    rf = ReceptiveField(size=5, stride=2, start=0.0)  # unit i sees pixels 2i-2 .. 2i+2
    assert receptive_field_box(rf, 0, 0, 8, 8) == (0, 3, 0, 3)
    assert receptive_field_box(rf, 2, 1, 8, 8) == (2, 7, 0, 5)
    assert receptive_field_box(rf, 4, 4, 8, 8) == (6, 8, 6, 8)
    assert receptive_field_box(ReceptiveField(14, 2, 0.5), 1, 1, 8, 8) == (0, 8, 0, 8)  # pixels -4..9
    assert rf.radius == 2.0 and rf.centre(3) == 6.0


# ---------------------------------------------------------------------------
# Effective receptive field


def test_erf_of_a_linear_conv_is_its_kernel() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    model = nn.Sequential(conv)
    images = torch.randint(0, 256, (5, 2, 7, 7), dtype=torch.uint8)
    erf = effective_receptive_field(model, images, "0", unit=(3, 4), batch_size=2)
    expected = np.zeros((7, 7))
    # unit (3, 4) sums all output channels: d/dx[c, 3+dy, 4+dx] = sum_o w[o, c, 1+dy, 1+dx]
    kernel = conv.weight.detach().double().sum(dim=0).abs().sum(dim=0).numpy()
    expected[2:5, 3:6] = kernel
    np.testing.assert_allclose(erf, expected, rtol=1e-5, atol=1e-7)


def test_erf_support_within_theoretical_field_and_mode_restored() -> None:
    model = build_model("resnet20", 10, 1, 12).train()
    images = torch.randint(0, 256, (4, 1, 12, 12), dtype=torch.uint8)
    layer = "layer1.1"  # field 11, stride 1: the centre unit (6, 6) sees pixels 1..11
    erf = effective_receptive_field(model, images, layer)
    assert all(m.training for m in model.modules())
    rf = theoretical_receptive_fields(model, (1, 12, 12), [layer])[layer]
    y0, y1, x0, x1 = receptive_field_box(rf, 6, 6, 12, 12)
    assert (y0, y1, x0, x1) == (1, 12, 1, 12)
    outside = np.ones_like(erf, bool)
    outside[y0:y1, x0:x1] = False
    assert erf[outside].max() == 0 and erf[6, 6] > 0
    with pytest.raises(ConfigError, match="outside"):
        effective_receptive_field(model, images, layer, unit=(20, 0))
    with pytest.raises(ConfigError, match="not a module"):
        effective_receptive_field(model, images, "nope")


def test_functional_node_names_as_get_graph_node_names_lists_them() -> None:
    from torchvision.models.feature_extraction import get_graph_node_names

    model = build_model("resnet20", 10, 3, 32)
    _train, nodes = get_graph_node_names(model)
    assert "layer1.0.add" in nodes and "layer2.0.getitem" in nodes
    rf = theoretical_receptive_fields(model, (3, 32, 32), ["layer1.0.add", "layer2.0.getitem", "layer2.0.conv1"])
    # the residual sum before the block's ReLU: the block's field; x[:, :, ::2, ::2] keeps the field, doubles the jump
    assert as_tuple(rf["layer1.0.add"]) == (7, 1, 0.0)
    assert as_tuple(rf["layer2.0.getitem"]) == (15, 2, 0.0)
    assert as_tuple(rf["layer2.0.conv1"]) == step((15, 1, 0.0), 3, 2, 1) == (17, 2, 0.0)


def test_erf_radius() -> None:
    erf = np.zeros((9, 9))
    erf[4, 4] = 10
    assert erf_radius(erf, (4, 4)) == 0
    erf[4, 6] = 1  # 1/11 of the mass at distance 2
    assert erf_radius(erf, (4, 4), mass=0.9) == 0 and erf_radius(erf, (4, 4), mass=0.95) == 2
    assert erf_radius(erf, (3.5, 3.5), mass=0.95) == 2.5
    assert np.isnan(erf_radius(np.zeros((3, 3)), (1, 1)))


def test_every_registry_model_has_fields_for_its_feature_layers() -> None:
    for name in MODEL_NAMES:
        model = build_model(name, 10, 3, 32)
        fields = theoretical_receptive_fields(model, (3, 32, 32))
        assert list(fields) == model.feature_layers
        sizes = [rf.size for rf in fields.values()]
        assert sizes == sorted(sizes) and fields[model.feature_layers[0]].size >= 3


def test_cli_prints_fields(capsys) -> None:
    from onepixel.cli import main

    assert main(["receptive-fields", "--model", "lenet", "--size", "8", "--channels", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["relu1", "5", "1", "0"] and lines[2].split() == ["relu2", "14", "2", "0.5"]
    assert main(["receptive-fields", "--model", "lenet", "--layers", "classifier.1"]) == 2
    assert "error: layers: 'classifier.1' has no spatial receptive field" in capsys.readouterr().err


def test_an_exported_programs_fields_equal_its_modules(tmp_path):
    """A torch.export program (model_sources' program) is ATen operators: convolution, pooling, ReLU."""
    from onepixel.models.sources import build_source_model

    torch.manual_seed(0)
    net = nn.Sequential(
        *(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, stride=2, dilation=2)),
        *(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)),
    ).eval()
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(net, (torch.rand(2, 3, 32, 32),), dynamic_shapes=({0: batch},)), tmp_path / "net.pt2"
    )
    eager = theoretical_receptive_fields(net, (3, 32, 32), ["1", "4"])
    exported = build_source_model("net", {"program": str(tmp_path / "net.pt2")}, 4, 3, 32)
    fields = theoretical_receptive_fields(exported, (3, 32, 32), exported.feature_layers)
    assert [(f.size, f.stride) for f in fields.values()] == [(f.size, f.stride) for f in eager.values()]
    assert [f.size for f in eager.values()] == [5, 5 + 1 + 2 * 2 * 2]  # conv 5; pool 2; conv 3 dilated 2 at stride 2
