"""onepixel.estimate and `onepixel estimate`: FLOPs per image and the GPU time of a study's attack, maps and locality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchvision
from torch import nn

from onepixel.analysis.vulnerability import evaluated_positions
from onepixel.cli import main
from onepixel.config import validate_config
from onepixel.estimate import (
    DEFAULT_RATIO,
    DEFAULT_TFLOPS,
    Geometry,
    build_fresh_model,
    estimate_study,
    forward_flops,
    locality_positions,
    map_positions,
    queries_per_row,
    stage_passes,
)
from onepixel.models import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's weights download fails the test: the estimate builds fresh weights."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize(
    ("arch", "weights", "gmacs"),
    [("resnet50", "IMAGENET1K_V2", 4.1), ("alexnet", "IMAGENET1K_V1", 0.71)],
)
def test_torchvision_flops_at_224_are_the_published_figures(arch, weights, gmacs):
    flops = forward_flops(torchvision.models.get_model(arch, weights=None), (3, 224, 224))
    published = torchvision.models.get_model_weights(arch)[weights].meta["_ops"]  # GMACs, as torchvision counts
    assert flops / 2e9 == pytest.approx(published, rel=1e-3)
    assert flops / 2e9 == pytest.approx(gmacs, rel=0.01)


def test_a_tiny_conv_nets_flops_are_its_hand_count():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)
    )
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)  # 2 x outputs x multiply-adds per output (bias not counted)
    linear = 2 * 64 * 10
    assert forward_flops(net, (3, 8, 8)) == conv + linear == 15_104


def test_named_weights_are_not_downloaded_and_lend_their_crop_size(no_download):
    cfg = validate_config(
        {
            "dataset": {"name": "imagenet-val", "root": "nowhere", "labels_file": "none.txt", "image_size": 256},
            "models": ["resnet50"],
            "model_sources": {"resnet50": {"torchvision": "resnet50", "weights": "IMAGENET1K_V2"}},
        },
        check_files=False,
    )
    model = build_fresh_model("resnet50", cfg, Geometry(3, 256, 1000))
    assert model.input_size == 224  # resized inside the model to the weights' crop, so FLOPs are those at 224
    assert forward_flops(model, (3, 256, 256)) == forward_flops(torchvision.models.resnet50(), (3, 224, 224))


def _small_config(**attack) -> dict:
    return validate_config(
        {
            "models": ["lenet", "resnet20"],
            "attack": {"num_images": 10, "population": 8, "generations": 3, **attack},
            "vulnerability": {"max_attacks": 4, "stride": 2},
            "locality": {"max_distance": 2, "random_positions": 5},
        }
    )


def test_the_estimate_arithmetic_of_a_small_study():
    cfg = _small_config()
    digits = Geometry(1, 8, 10)
    passes = stage_passes(cfg, digits)
    assert passes.attack == 10 * 8 * (3 + 1)  # images x population x (generations + 1)
    assert passes.vulnerability == 4 * 4 * 4  # max_attacks x (8 / stride)^2
    assert passes.locality == 10 * (8 + 16 + 5 + 1)  # rings d = 1, 2 + random positions + the clean image
    assert stage_passes(_small_config(targeted=True), digits).attack == 9 * passes.attack  # 9 other classes
    sweep = dict(cfg, attack={**cfg["attack"], "method": "exhaustive", "colors": "all"})
    assert stage_passes(sweep, digits).attack == 10 * 8 * 8 * 256  # every position x every grey level
    rgb = Geometry(3, 32, 10)
    corners = dict(cfg, attack={**cfg["attack"], "method": "exhaustive", "colors": "corners"})
    assert queries_per_row(corners["attack"], rgb) == 8192  # 32 x 32 positions x 8 corners
    assert queries_per_row({**cfg["attack"], "method": "pgd", "steps": 10}, rgb) == 30  # forward + backward
    # further attacks of the same images add their passes, and the pixel ones their locality analysis
    further = validate_config(
        {**cfg, "attacks": {"de3": {"pixels": 3}, "sweep": {"method": "exhaustive"}, "pgd": {"method": "pgd"}}}
    )
    with_all = stage_passes(further, digits)
    assert with_all.attack == passes.attack * 2 + 10 * 8 * 8 * 2 + 10 * 3 * 10  # DE twice, 2 grey corners, PGD
    assert with_all.locality == 3 * passes.locality and with_all.vulnerability == passes.vulnerability

    tflops, ratio = 1e-6, 0.5  # 0.5 MFLOP/s effective: seconds = passes x FLOPs / 5e5
    estimates = estimate_study(cfg, tflops, ratio)
    assert [e.model for e in estimates] == ["lenet", "resnet20"]
    for e in estimates:
        assert e.flops == forward_flops(build_model(e.model, 10, 1, 8), (1, 8, 8))
        assert e.seconds("attack") == pytest.approx(320 * e.flops / 5e5)
        assert e.total_seconds == pytest.approx((320 + 64 + 300) * e.flops / 5e5)


@pytest.mark.parametrize(("size", "stride", "window"), [(8, 1, 0), (8, 2, 0), (10, 3, 0), (9, 4, 0), (12, 2, 3)])
def test_map_positions_bound_what_the_vulnerability_maps_evaluate(size, stride, window):
    yy, xx = np.divmod(np.arange(size * size), size)
    mapped = evaluated_positions(xx[:, None], yy[:, None], size, size, stride, window).sum(1)
    assert mapped.max() == map_positions(size, stride, window)  # the bound is reached for some attacked pixel
    if size % stride == 0 and not window:
        assert (mapped == map_positions(size, stride)).all()
    assert map_positions(224, 4) == 3_136 and map_positions(224) == 50_176


def test_locality_positions_count_every_ring():
    assert locality_positions({"rings": "chebyshev", "max_distance": 3, "random_positions": 16}) == 48 + 16 + 1
    assert locality_positions({"rings": "euclidean", "max_distance": 3, "random_positions": 16}) == 36 + 16 + 1


def test_the_command_prints_one_line_per_model_and_a_total(tmp_path, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(
        "models: [lenet, resnet20]\nattack: {num_images: 10, population: 8, generations: 3}\n"
        "vulnerability: {max_attacks: 4, stride: 2}\nlocality: {max_distance: 2, random_positions: 5}\n"
    )
    assert main(["estimate", "--config", str(config), "--tflops", "1e-6", "--ratio", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert list(rows) == ["lenet", "resnet20", "total"] and lines[0].split()[:2] == ["model", "GFLOP/image"]
    estimates = {e.model: e for e in estimate_study(_small_config(), 1e-6, 0.5)}
    for model, e in estimates.items():
        assert float(rows[model][1]) == pytest.approx(e.flops / 1e9, rel=1e-3)
        assert rows[model][2:5] == ["320", "64", "300"]
        assert float(rows[model][-2]) == pytest.approx(e.total_seconds / 3600, abs=0.005)
    assert float(rows["total"][7]) == pytest.approx(sum(e.total_seconds for e in estimates.values()) / 3600, abs=0.01)
    assert any(line.startswith("assumes 1e-06 TFLOP/s") for line in lines)


def test_the_imagenet_config_is_estimated_without_its_data_or_the_network(capsys, no_download):
    assert main(["estimate", "--config", str(REPO / "config" / "imagenet.yaml")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert float(rows["resnet50"][1]) == pytest.approx(8.18, abs=0.01)
    assert float(rows["alexnet"][1]) == pytest.approx(1.43, abs=0.01)
    assert rows["resnet50"][2] == f"{500 * 400 * 101:,d}"
    hours = 500 * 400 * 101 * float(rows["resnet50"][1]) * 1e9 / (DEFAULT_TFLOPS * 1e12 * DEFAULT_RATIO) / 3600
    assert float(rows["resnet50"][5]) == pytest.approx(hours, abs=0.01)


@pytest.mark.parametrize("value", ["fast", "0", "-3", "nan", "inf"])
def test_a_bad_tflops_is_one_line(value, capsys):
    assert main(["estimate", "--tflops", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tflops: ") and err.count("\n") == 1 and value in err
