"""Tests of onepixel.models: the zoo's shapes, sizes, feature layers, normalisation and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import _bad_checkpoint
from onepixel.errors import ConfigError, DataError
from onepixel.models import (
    MODEL_NAMES,
    Normalize,
    build_model,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)

# Parameter counts at 32x32x3, 10 classes (paper's zoo: LeNet 62K, AllConv 1.4M, NiN 970K, ResNet-32 470K, ...).
PARAM_RANGES = {
    "lenet": (61_000, 63_000),
    "allconv": (1_300_000, 1_450_000),
    "nin": (940_000, 1_000_000),
    "vgg16": (14_500_000, 15_000_000),
    "resnet20": (260_000, 280_000),
    "resnet32": (450_000, 480_000),
    "densenet": (700_000, 900_000),
    "wrn16_4": (2_650_000, 2_800_000),
}
SHAPES = [((2, 3, 32, 32), 3, 32), ((2, 1, 8, 8), 1, 8), ((1, 3, 64, 64), 3, 64)]


def test_model_names():
    assert MODEL_NAMES == ("lenet", "allconv", "nin", "vgg16", "resnet20", "resnet32", "densenet", "wrn16_4")
    assert set(PARAM_RANGES) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes_and_size(name):
    for shape, channels, size in SHAPES:
        model = build_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
        with torch.no_grad():
            logits = model(torch.rand(shape))
        assert logits.shape == (shape[0], 7) and logits.dtype == torch.float32
        assert torch.isfinite(logits).all()
    model = build_model(name)
    assert model.arch == name
    low, high = PARAM_RANGES[name]
    assert low <= count_parameters(model) <= high


def test_lenet_keeps_classic_shapes_at_32():
    model = build_model("lenet")
    shapes = {}
    for layer in ("relu1", "relu2"):
        model.get_submodule(layer).register_forward_hook(lambda m, i, o, layer=layer: shapes.update({layer: o.shape}))
    model(torch.rand(1, 3, 32, 32))
    assert shapes == {"relu1": (1, 6, 28, 28), "relu2": (1, 16, 10, 10)}
    assert count_parameters(model) == 62_006  # 456 + 2416 + 48120 + 10164 + 850


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_feature_layers_hooks(name):
    model = build_model(name, in_channels=1, image_size=8).eval()
    modules = dict(model.named_modules())
    assert model.feature_layers and all(layer in modules for layer in model.feature_layers)
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for layer in model.feature_layers:
        modules[layer].register_forward_hook(lambda m, i, o, layer=layer: seen.append((layer, o, o.clone())))
    with torch.no_grad():
        model(torch.rand(2, 1, 8, 8))
    assert [layer for layer, _, _ in seen] == model.feature_layers  # each fires once, in depth order
    for layer, output, copy in seen:
        assert output.dim() == 4 and output.shape[0] == 2, layer
        assert torch.equal(output, copy), f"{layer} output modified in place after the hook"


def test_normalize_matches_manual():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    norm = Normalize(3, mean, std)
    x = torch.rand(4, 3, 5, 6)
    manual = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(norm(x), manual)
    assert set(norm.state_dict()) == {"mean", "std"}
    model = build_model("resnet20", mean=mean, std=std)
    assert isinstance(next(iter(model.children())), Normalize)
    torch.testing.assert_close(model.state_dict()["normalize.std"].flatten(), torch.tensor(std))


def test_build_model_errors():
    with pytest.raises(ConfigError, match="'resnet18'; allowed: lenet, allconv, nin, vgg16"):
        build_model("resnet18")
    with pytest.raises(ConfigError, match="3 value"):
        build_model("lenet", mean=(0.5,), std=(0.5,))
    with pytest.raises(ConfigError, match="std"):
        build_model("lenet", in_channels=1, mean=(0.5,), std=(0.0,))
    with pytest.raises(ConfigError, match="image_size"):
        build_model("lenet", image_size=4)


@pytest.mark.parametrize("name", ["lenet", "resnet20", "densenet"])
def test_checkpoint_round_trip(tmp_path, name):
    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 8, "mean": (0.3,), "std": (0.4,)}
    model = build_model(name, **kwargs)
    model.train()
    model(torch.rand(8, 1, 8, 8))  # move batch-norm running statistics away from their defaults
    model.eval()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model, name, kwargs, extra={"test_accuracy": 0.5, "source": tmp_path})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "onepixel-checkpoint/1" and raw["arch"] == name
    assert raw["build_kwargs"]["mean"] == [0.3]  # tuples stored as plain lists
    loaded, meta = load_checkpoint(path, map_location=torch.device("cpu"), name=name)
    assert not loaded.training and loaded.arch == name
    assert next(loaded.parameters()).device.type == "cpu"
    assert meta["extra"] == {"test_accuracy": 0.5, "source": str(tmp_path)}
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_of_other_arch(tmp_path):
    path = tmp_path / "resnet20.pt"
    save_checkpoint(path, build_model("resnet20"), "resnet20", {})
    message = "resnet20.pt: checkpoint holds a 'resnet20' model, not the requested 'resnet32'"
    with pytest.raises(DataError, match=message):
        load_checkpoint(path, name="resnet32")


def test_bare_state_dict(tmp_path):
    model = build_model("resnet20", in_channels=1).eval()
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    loaded, meta = load_checkpoint(path, name="resnet20", build_kwargs={"in_channels": 1})
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta == {"arch": "resnet20", "build_kwargs": {"in_channels": 1}, "extra": {}, "input_shape": None}
    with pytest.raises(DataError, match="bare.pt: is a bare state_dict"):
        load_checkpoint(path)
    missing = r"bare.pt: state_dict does not fit a 'resnet32' model; missing keys: layer1\.3\."
    with pytest.raises(DataError, match=missing):
        load_checkpoint(path, name="resnet32", build_kwargs={"in_channels": 1})
    shapes = r"shape mismatches \(file vs model\): normalize\.mean .*stem\.0\.weight \(16, 1, 3, 3\) vs \(16, 3, 3, 3\)"
    with pytest.raises(DataError, match=shapes):
        load_checkpoint(path, name="resnet20", build_kwargs={"in_channels": 3})


def test_unexpected_keys_listed(tmp_path):
    state = build_model("lenet").state_dict()
    state["extra_layer.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    with pytest.raises(DataError, match="unexpected keys: extra_layer.weight"):
        load_checkpoint(path, name="lenet", build_kwargs={})


class Custom:
    """A class that weights_only loading must refuse."""


def test_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Custom()}, path)
    refused = "evil.pt: refused, it contains .*Custom, which would need arbitrary code execution"
    with pytest.raises(DataError, match=refused):
        load_checkpoint(path, name="lenet", build_kwargs={})


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(DataError, match="nothing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DataError, match="garbage.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(garbage)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, build_model("lenet"), "lenet", {})
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(DataError, match="truncated.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3}, other)
    with pytest.raises(DataError, match="other.pt: neither an onepixel checkpoint nor a state_dict"):
        load_checkpoint(other)


def test_save_checkpoint_rejects_objects(tmp_path):
    with pytest.raises(TypeError, match="plain data"):
        save_checkpoint(tmp_path / "x.pt", build_model("lenet"), "lenet", {"layer": nn.ReLU()})
    assert not list(tmp_path.iterdir())


# checkpoints of other architectures, damaged or unsafe files: refused, the file named
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["random", "truncated", "whole-model-pickle", "code-payload", "plain-pickle"])
def test_a_bad_checkpoint_is_refused_and_named(tmp_path, kind):
    path, expected = _bad_checkpoint(kind, tmp_path)
    with pytest.raises(DataError) as info:
        load_checkpoint(path, name="lenet", build_kwargs={})
    message = str(info.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message
    assert not (tmp_path / "PWNED").exists()  # nothing was executed


def _key_listing(keys: list[str]) -> str:
    """How the loader lists keys: the first 5, then the count of the others."""
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def test_a_checkpoint_of_another_architecture_is_refused_with_the_keys_listed(tmp_path):
    resnet = build_model("resnet20", num_classes=10, in_channels=1, image_size=8)
    path = tmp_path / "resnet20.pt"
    save_checkpoint(path, resnet, "resnet20", {"num_classes": 10, "in_channels": 1, "image_size": 8})
    lenet_keys = list(build_model("lenet", num_classes=10, in_channels=1, image_size=8).state_dict())
    resnet_keys = list(resnet.state_dict())
    missing = [k for k in lenet_keys if k not in resnet_keys]
    unexpected = [k for k in resnet_keys if k not in lenet_keys]
    with pytest.raises(DataError) as info:
        load_checkpoint(path, name="lenet")
    message = str(info.value)
    assert message.startswith(f"{path}: checkpoint holds a 'resnet20' model, not the requested 'lenet'; ")
    assert f"missing keys: {_key_listing(missing)}" in message
    assert f"unexpected keys: {_key_listing(unexpected)}" in message
    # the same weights as a bare state_dict: the same keys listed
    bare = tmp_path / "bare.pt"
    torch.save(resnet.state_dict(), bare)
    with pytest.raises(DataError) as info:
        load_checkpoint(bare, name="lenet", build_kwargs={"num_classes": 10, "in_channels": 1, "image_size": 8})
    assert f"missing keys: {_key_listing(missing)}" in str(info.value)
    assert f"unexpected keys: {_key_listing(unexpected)}" in str(info.value)
