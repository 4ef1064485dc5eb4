"""Tests of onepixel.models.sources: torchvision models, torch.export programs and factories as onepixel models.

Small inputs throughout (8x8 to 64x64, batches of 1-6), so the module runs in well under a minute on a CPU.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import textwrap
import urllib.error
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from onepixel.attack import OnePixelAttack
from onepixel.capture import FeatureExtractor
from onepixel.cli import main
from onepixel.errors import ConfigError, DataError
from onepixel.models import (
    SourceModel,
    build_model,
    build_source_model,
    default_feature_layers,
    load_checkpoint,
    save_checkpoint,
)
from onepixel.models.programs import check_program, pickle_globals

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RESNET18_BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


class _Payload:
    """Unpickling this would run a shell command (it must never be unpickled by onepixel)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet", num_classes=3, in_channels=1, image_size=8).eval()


@pytest.fixture(scope="module")
def program_file(lenet, tmp_path_factory) -> Path:
    """The registry's LeNet (8x8, 1 channel, 3 classes) exported with a dynamic batch and saved as a .pt2."""
    path = tmp_path_factory.mktemp("program") / "lenet.pt2"
    exported = torch.export.export(lenet, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, path)
    return path


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of the .pt2 zip ``src`` with ``change(entry name, bytes) -> bytes`` applied to every entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))
    return dst


# ---------------------------------------------------------------------------
# torchvision


@pytest.mark.parametrize(("arch", "input_size"), [("resnet18", 40), ("alexnet", 64)])
def test_torchvision_logits_are_resize_normalize_net_in_float64(arch, input_size):
    model = build_source_model(
        "tv", {"torchvision": arch, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": input_size}, 3, 3, 32
    )
    assert isinstance(model, SourceModel) and model.arch == f"torchvision:{arch}"
    model = model.double().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # by hand: bilinear resize without antialiasing, then (x - mean) / std with the float32 constants Normalize keeps
    resized = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).double().view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).double().view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.net((resized - mean) / std)
        got = model(x)
    assert got.shape == (2, 3)
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    assert model.build_kwargs["input_size"] == input_size and model.build_kwargs["num_classes"] == 3


def test_fresh_torchvision_weights_are_seeded():
    a = build_source_model("r", {"torchvision": "resnet18"}, 3, 3, 32, seed=7)
    state = torch.get_rng_state()
    b = build_source_model("r", {"torchvision": "resnet18"}, 3, 3, 32, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    c = build_source_model("r", {"torchvision": "resnet18"}, 3, 3, 32, seed=8)
    assert torch.equal(a.net.conv1.weight, b.net.conv1.weight)
    assert not torch.equal(a.net.conv1.weight, c.net.conv1.weight)
    assert isinstance(a.resize, nn.Identity)  # same size: no resize


def test_default_feature_layers():
    resnet = build_source_model("r", {"torchvision": "resnet18"}, 3, 3, 32)
    assert resnet.feature_layers == [f"net.{name}" for name in RESNET18_BLOCKS]
    assert default_feature_layers(resnet.net, (3, 32, 32)) == RESNET18_BLOCKS
    for arch in ("vgg11", "alexnet"):  # every ReLU with a 4-D output (not the classifier's), in order
        with torch.device("meta"):  # shapes only: no weights to initialise
            net = torchvision.models.get_model(arch, num_classes=3)
        relus = [f"features.{i}" for i, module in enumerate(net.features) if isinstance(module, nn.ReLU)]
        assert default_feature_layers(net, (3, 64, 64)) == relus
    assert len(relus) == 5

    class Twice(nn.Module):  # one ReLU module called twice: fx node names tell the calls apart
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2, self.relu = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv2(self.relu(self.conv1(x)))).flatten(1)

    twice = Twice()
    assert default_feature_layers(twice, (1, 8, 8)) == ["relu", "relu_1"]

    class Branchy(Twice):  # data-dependent control flow: fx cannot trace it, so modules (hooks) in call order
        def forward(self, x):
            x = self.relu(self.conv1(x))
            return self.conv2(x).flatten(1) if x.sum() > 0 else x.flatten(1)

    assert default_feature_layers(Branchy(), (1, 8, 8)) == ["relu"]
    captured = FeatureExtractor(twice, ["relu", "relu_1"])(torch.rand(1, 1, 8, 8))
    assert captured["relu"].shape == (1, 2, 6, 6) and captured["relu_1"].shape == (1, 2, 4, 4)


def test_layers_override_and_capture():
    model = build_source_model("r", {"torchvision": "resnet18", "layers": ["layer4.1", "net.layer1.0"]}, 3, 3, 32)
    assert model.feature_layers == ["net.layer4.1", "net.layer1.0"]
    model = build_source_model("r", {"torchvision": "resnet18", "input_size": 64}, 3, 3, 32).eval()
    captured = FeatureExtractor(model, model.feature_layers)(torch.rand(2, 3, 32, 32))
    assert captured["net.layer1.0"].shape == (2, 64, 16, 16) and captured["net.layer4.1"].shape == (2, 512, 2, 2)
    with pytest.raises(ConfigError) as exc:
        build_source_model("r", {"torchvision": "resnet18", "layers": ["layer9"]}, 3, 3, 32)
    assert _one_line(exc).startswith(
        "model_sources.r.layers: unknown layer(s) 'layer9'; valid names include net.layer1.0"
    )
    with pytest.raises(ConfigError, match=r"layer 'net.fc' outputs \(1, 3\), not a \(N, C, H, W\) feature map"):
        build_source_model("r", {"torchvision": "resnet18", "layers": ["fc"]}, 3, 3, 32)


def test_torchvision_errors_are_one_line():
    cases = [
        ({"torchvision": "resnet19"}, 3, 3, "model_sources.m.torchvision: 'resnet19' is not a torchvision classification model"),
        ({"torchvision": "resnet18"}, 3, 1, "model_sources.m.torchvision: resnet18 takes 3-channel (RGB) images; the dataset has 1"),
        ({"torchvision": "resnet18", "weights": "IMAGENET9K"}, 3, 3, "model_sources.m.weights: 'IMAGENET9K' is not a weights name of torchvision's resnet18; allowed: IMAGENET1K_V1, DEFAULT"),
        ({"torchvision": "resnet18", "weights": "IMAGENET1K_V1"}, 3, 3, "model_sources.m.weights: resnet18 IMAGENET1K_V1 has 1000 classes, the dataset has 3"),
        ({"torchvision": "resnet18", "mean": [0.5]}, 3, 3, "model_sources.m.mean: [0.5] has 1 value(s)"),
        ({"torchvision": "vit_b_16"}, 3, 3, "model_sources.m: torchvision:vit_b_16 does not run on 3x32x32 images"),
        ({}, 3, 3, "model_sources.m: give exactly one of torchvision, program, factory (got none)"),
    ]  # fmt: skip
    for source, classes, channels, start in cases:
        with pytest.raises(ConfigError) as exc:
            build_source_model("m", source, classes, channels, 32)
        assert _one_line(exc).startswith(start), str(exc.value)
        if source.get("torchvision") == "resnet19":
            assert "e.g. resnet18, resnet50, vgg16, alexnet" in str(exc.value)


def test_named_weights_are_downloaded_checked_and_set_the_preprocessing(monkeypatch):
    torch.manual_seed(3)
    published = torchvision.models.resnet18(num_classes=1000).state_dict()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append((url, kwargs))
        return published

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = build_source_model("r", {"torchvision": "resnet18", "weights": "IMAGENET1K_V1"}, 1000, 3, 32).eval()
    assert calls[0][0].endswith("resnet18-f37072fd.pth")
    assert calls[0][1] == {"progress": False, "check_hash": True, "weights_only": True}
    assert model.input_size == 224 and isinstance(model.resize, nn.Upsample)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(model.net.fc.weight, published["fc.weight"])

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(DataError) as exc:
        build_source_model("r", {"torchvision": "resnet18", "weights": "IMAGENET1K_V1"}, 1000, 3, 32)
    message = _one_line(exc)
    assert message.startswith("model_sources.r.weights: cannot get torchvision's resnet18 IMAGENET1K_V1 from https://")
    assert "give it as model_sources.r.state_dict instead" in message


def test_state_dict_round_trip_and_misfits(tmp_path, lenet):
    torch.manual_seed(5)
    net = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
    for i, wrapped in enumerate([net.state_dict(), {"state_dict": net.state_dict()}, {"model": net.state_dict()}]):
        torch.save(wrapped, tmp_path / f"r18_{i}.pt")
        model = build_source_model(
            "r", {"torchvision": "resnet18", "state_dict": f"r18_{i}.pt"}, 3, 3, 32, base_dir=tmp_path
        ).eval()
        with torch.no_grad():
            assert torch.equal(model(x), expected)

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "ten.pt")
    with pytest.raises(DataError) as exc:
        build_source_model("r", {"torchvision": "resnet18", "state_dict": "ten.pt"}, 3, 3, 32, base_dir=tmp_path)
    assert _one_line(exc) == (
        f"model_sources.r.state_dict: {tmp_path / 'ten.pt'}: its torchvision:resnet18 has 10 classes "
        "(fc.weight, fc.bias), the dataset has 3"
    )
    torch.save(lenet.state_dict(), tmp_path / "lenet.pt")
    with pytest.raises(DataError) as exc:
        build_source_model("r", {"torchvision": "resnet18", "state_dict": "lenet.pt"}, 3, 3, 32, base_dir=tmp_path)
    message = _one_line(exc)
    assert message.startswith(
        f"model_sources.r.state_dict: {tmp_path / 'lenet.pt'}: is not a state_dict of torchvision:resnet18; "
    )
    assert (
        "missing keys: bn1.weight, bn1.bias" in message and "unexpected keys: normalize.mean, normalize.std" in message
    )
    assert "shape mismatches (file vs model): conv1.weight (6, 1, 5, 5) vs (64, 3, 7, 7)" in message
    torch.save({"x": _Payload(tmp_path / "PWNED")}, tmp_path / "code.pt")
    with pytest.raises(DataError, match="refused, it contains posix.system"):
        build_source_model("r", {"torchvision": "resnet18", "state_dict": "code.pt"}, 3, 3, 32, base_dir=tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_torchvision_checkpoint_round_trip_without_user_code(tmp_path):
    model = build_source_model(
        "r", {"torchvision": "resnet18", "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": 40}, 3, 3, 32
    )
    model.net.bn1.running_mean.uniform_()  # weights that differ from a fresh build
    path = tmp_path / "r.pt"
    save_checkpoint(path, model, name=model.arch, build_kwargs=model.build_kwargs, input_shape=(3, 32, 32))
    assert torch.load(path, weights_only=True)["arch"] == "torchvision:resnet18"
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, SourceModel) and not loaded.training
    assert loaded.feature_layers == model.feature_layers and loaded.input_size == 40
    assert meta["arch"] == "torchvision:resnet18" and meta["input_shape"] == [3, 32, 32]
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


# ---------------------------------------------------------------------------
# torch.export programs


def test_program_is_the_registry_model(program_file, lenet, tmp_path):
    model = build_source_model("p", {"program": str(program_file)}, 3, 1, 8).eval()
    assert model.arch == "program:lenet.pt2" and model.input_size == 8
    assert model.feature_layers == ["net.relu_default", "net.relu_default_1"]  # relu1, relu2 of the LeNet
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), lenet(x), rtol=0, atol=1e-6)
        assert model(x[:1]).shape == (1, 3)  # dynamic batch: one image works too
    captured = FeatureExtractor(model, model.feature_layers)(x)
    assert captured["net.relu_default"].shape == (5, 6, 8, 8) and captured["net.relu_default_1"].shape == (5, 16, 4, 4)

    images = torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    labels = lenet(images.float() / 255).argmax(1)
    settings = {"population": 16, "generations": 4, "pixels": 3, "seed": 11}  # 3 pixels: some attacks succeed
    expected = OnePixelAttack(lenet, **settings).run(images, labels)
    got = OnePixelAttack(model, **settings).run(images, labels)
    assert 0 < int(expected.success.sum()) < len(images)
    for field in fields(expected):
        assert torch.equal(getattr(got, field.name), getattr(expected, field.name)), field.name

    # the checkpoint holds the archive's bytes: self-contained, re-checked when loaded
    path = tmp_path / "p.pt"
    save_checkpoint(path, model, name=model.arch, build_kwargs=model.build_kwargs)
    stored = torch.load(path, weights_only=True)["state_dict"]["program._extra_state"]
    assert stored.dtype == torch.uint8 and stored.numpy().tobytes() == program_file.read_bytes()
    program_file_copy = program_file.read_bytes()
    loaded, _ = load_checkpoint(path)
    assert loaded.feature_layers == model.feature_layers and program_file.read_bytes() == program_file_copy
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_program_exported_for_one_batch_size_is_refused(lenet, tmp_path):
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(lenet, (torch.rand(1, 1, 8, 8),)), path)
    with pytest.raises(DataError) as exc:
        build_source_model("p", {"program": str(path)}, 3, 1, 8)
    assert _one_line(exc).startswith(f"model_sources.p.program: {path}: exported for batches of exactly 1 image(s)")


def test_corrupt_programs_are_one_line(program_file, tmp_path):
    data = program_file.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    torch.save({"w": torch.ones(2)}, tmp_path / "not_a_program.pt2")
    cases = {
        "random.pt2": os.urandom(3000),
        "truncated.pt2": data[: len(data) // 2],
        "flipped.pt2": bytes(flipped),
        "not_a_program.pt2": (tmp_path / "not_a_program.pt2").read_bytes(),
    }
    starts = {
        "random.pt2": "not a torch.export .pt2 archive (not a readable zip file",
        "truncated.pt2": "not a torch.export .pt2 archive (not a readable zip file",
        "flipped.pt2": "corrupt .pt2 archive (",
        "not_a_program.pt2": "not a torch.export .pt2 archive (no archive_format pt2",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as exc:
            build_source_model("p", {"program": name}, 3, 1, 8, base_dir=tmp_path)
        assert _one_line(exc).startswith(f"model_sources.p.program: {tmp_path / name}: {starts[name]}"), str(exc.value)


def test_programs_that_would_run_code_are_refused(program_file, tmp_path):
    def pickled_weight(marker: Path):
        payload = io.BytesIO()
        torch.save(_Payload(marker), payload)

        def change(name: str, data: bytes) -> bytes:
            if name.endswith("data/weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["conv1.weight"]["use_pickle"] = (
                    True  # torch.export.load unpickles it (weights_only=False)
                )
                return json.dumps(config).encode()
            return payload.getvalue() if name.endswith("data/weights/weight_0") else data

        return change

    # the crafted file is a real attack: torch.export.load alone runs its command
    _rewrite(program_file, tmp_path / "plain.pt2", pickled_weight(tmp_path / "RAN_PLAIN"))
    with pytest.raises(Exception):  # noqa: B017 (torch fails after the payload ran)
        torch.export.load(tmp_path / "plain.pt2")
    assert (tmp_path / "RAN_PLAIN").exists()

    _rewrite(program_file, tmp_path / "evil.pt2", pickled_weight(tmp_path / "PWNED"))
    with pytest.raises(DataError) as exc:
        build_source_model("p", {"program": "evil.pt2"}, 3, 1, 8, base_dir=tmp_path)
    assert _one_line(exc) == (
        f"model_sources.p.program: {tmp_path / 'evil.pt2'}: refused, its data/weights/weight_0 is a pickle that "
        "weights_only loading refuses (it would call posix.system: loading it would run arbitrary code); "
        "export a model whose weights are plain tensors"
    )
    assert not (tmp_path / "PWNED").exists()

    # a shape expression is evaluated by sympy (eval): only arithmetic on symbols passes
    def expression(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            return data.replace(
                b"Symbol(", b"__import__('os').system('touch " + str(tmp_path / "PWNED").encode() + b"') or Symbol("
            )
        return data

    _rewrite(program_file, tmp_path / "expr.pt2", expression)
    with pytest.raises(DataError, match=r"refused, models/model.json has a shape expression with '__import__'"):
        build_source_model("p", {"program": "expr.pt2"}, 3, 1, 8, base_dir=tmp_path)
    assert not (tmp_path / "PWNED").exists()

    # a weight's name becomes code in module(): only dotted names pass
    def name(entry: str, data: bytes) -> bytes:
        return data.replace(b'"conv1.weight"', b'"conv1.we\\"ight"') if entry.endswith("_config.json") else data

    _rewrite(program_file, tmp_path / "name.pt2", name)
    with pytest.raises(DataError, match="not a plain dotted name"):
        check_program((tmp_path / "name.pt2").read_bytes(), "name.pt2")


def test_pickle_globals_follow_the_stack():
    assert pickle_globals(pickle.dumps(_Payload(Path("x")), protocol=4)) == ["posix.system"]
    assert pickle_globals(pickle.dumps(_Payload(Path("x")), protocol=0)) == ["posix.system"]
    # strings pushed and popped again do not hide the pair STACK_GLOBAL takes
    sneaky = (
        b"\x80\x04\x8c\x05posix\x8c\x06system\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v200\x93\x8c\x04true\x85R."
    )
    assert pickle_globals(sneaky) == ["posix.system"]


# ---------------------------------------------------------------------------
# factories


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    name = "onepixel_test_user_nets"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def small_cnn(width=4, classes=3, channels=1):
                return nn.Sequential(
                    nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    nn.Linear(width, classes),
                )

            def broken(**kwargs):
                raise RuntimeError("no GPU here")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name
    sys.modules.pop(name, None)


def test_factory_runs_only_with_run_code(factory_module, tmp_path):
    spec = f"{factory_module}:small_cnn"
    with pytest.raises(ConfigError) as exc:
        build_source_model("mine", {"factory": spec}, 3, 1, 8)
    assert _one_line(exc) == (
        f"model_sources.mine.factory runs your code ({spec}): set model_sources.mine.run_code: true to allow it"
    )
    assert factory_module not in sys.modules  # refused before importing anything

    source = {"factory": spec, "run_code": True, "kwargs": {"width": 5}}
    model = build_source_model("mine", source, 3, 1, 8, seed=2).eval()
    again = build_source_model("mine", source, 3, 1, 8, seed=2).eval()
    assert model.arch == f"factory:{spec}" and model.feature_layers == ["net.1"]
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert model(x).shape == (2, 3) and torch.equal(model(x), again(x))

    for bad, start in [
        ({"factory": f"{factory_module}:broken", "run_code": True}, f"model_sources.mine.factory: {factory_module}:broken(**{{}}) failed (RuntimeError: no GPU here)"),
        ({"factory": "no_such_module_here:f", "run_code": True}, "model_sources.mine.factory: cannot import no_such_module_here (ModuleNotFoundError"),
        ({"factory": spec, "run_code": True, "kwargs": {"classes": 5}}, "model_sources.mine: factory:" + spec + " has 5 classes, the dataset has 3"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as exc:
            build_source_model("mine", bad, 3, 1, 8)
        assert _one_line(exc).startswith(start), str(exc.value)

    path = tmp_path / "mine.pt"
    save_checkpoint(path, model, name=model.arch, build_kwargs=model.build_kwargs)
    sys.modules.pop(factory_module, None)
    with pytest.raises(DataError) as exc:
        load_checkpoint(path)
    assert _one_line(exc).startswith(
        f"{path}: its model is built by user code ({spec}); load it with load_checkpoint(..., allow_code=True)"
    )
    assert factory_module not in sys.modules
    loaded, meta = load_checkpoint(path, allow_code=True)
    assert meta["build_kwargs"]["kwargs"] == {"width": 5}
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------------------
# onepixel layers


def test_layers_command(capsys, program_file):
    assert main(["layers", "lenet", "--channels", "1", "--size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[1:]] == [["relu1", "6x8x8"], ["relu2", "16x4x4"]]
    assert main(["layers", "torchvision:resnet18", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [f"net.{name}" for name in RESNET18_BLOCKS]
    assert lines[1].split()[1] == "64x16x16" and lines[-1].split()[1] == "512x2x2"
    assert main(["layers", "torchvision:resnet18", "--size", "64", "--all"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert {"net.layer1.0", "net.layer1.0.relu", "net.layer1.0.relu_1", "net.fc"} <= set(names)
    assert main(["layers", f"program:{program_file}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"# program:{program_file}: 1x8x8 images")
    assert [line.split() for line in lines[1:]] == [["net.relu_default", "6x8x8"], ["net.relu_default_1", "16x4x4"]]
    assert main(["layers", "torchvision:resnet19"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: model_sources.layers.torchvision: 'resnet19' is not a torchvision"
    )


def test_image_size_zero_takes_what_the_models_weights_expect() -> None:
    from onepixel.data.stages import folder_sizes

    def sizes(models: dict, **dataset) -> dict:
        config = {"dataset": {"name": "imagenet-val", "image_size": 0, "resize_size": 0, **dataset}}
        return folder_sizes({**config, "models": [*models, "lenet"], "model_sources": models})

    resnet50 = {"r50": {"torchvision": "resnet50", "weights": "IMAGENET1K_V2"}}
    assert sizes(resnet50) == {"image_size": 224, "resize_size": 232}  # torchvision's published eval transforms
    assert sizes({**resnet50, "alex": {"torchvision": "alexnet", "weights": "IMAGENET1K_V1"}}) == {
        "image_size": 224,
        "resize_size": 0,  # 232 and 256: image_size / 0.875
    }
    assert sizes({"mine": {"program": "m.pt2", "input_size": 96}}) == {"image_size": 96, "resize_size": 110}
    assert sizes({"fresh": {"torchvision": "resnet18"}}) == {"image_size": 0, "resize_size": 0}  # 224 later
    assert sizes(resnet50, image_size=160) == {"image_size": 160, "resize_size": 0}  # given: kept
    with pytest.raises(
        ConfigError,
        match=r"^dataset.image_size: 0 takes the size the models expect, but they differ "
        r"\(r50 224, v 299\); give dataset.image_size",
    ):
        sizes({**resnet50, "v": {"torchvision": "inception_v3", "weights": "IMAGENET1K_V1"}})
