"""A user's own models and photographs through the whole workflow at 224x224: an image folder of real
photographs (scikit-image's), torchvision's ResNet-18 and AlexNet at fresh weights, a torch.export program
and a factory of the user's own module, attacked as each model classifies the images
(``attack.labels: predicted``), with the capture's maps only and strided vulnerability maps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from torch import nn

from conftest import check_tool
from helpers import _copy_workflow
from onepixel.data import load_dataset
from onepixel.models import load_checkpoint

pytestmark = pytest.mark.slow

skimage = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) ships the photographs")
Image = pytest.importorskip("PIL.Image")

SIZE = 224  # ImageNet's size: torchvision's Resize(256) + CenterCrop(224) of the photos
STRIDE = 28  # vulnerability maps of 8 x 8 of the 224 x 224 positions keep the CPU run short
PHOTOS = {
    "animal": ["chelsea", "cat"],
    "object": ["coffee", "rocket"],
    "scene": ["astronaut", "camera"],
}
FACTORY = '''
from torch import nn


def tiny(width: int = 4, classes: int = 3) -> nn.Module:
    """The user's own architecture."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )
'''
MODELS = ["resnet18", "alexnet", "exported", "mine"]


def _program(path: Path) -> Path:
    """A torch.export program (dynamic batch) of a small CNN for 3 x SIZE x SIZE images, 3 classes."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * ((SIZE - 4) // 2) ** 2, 3)
    ).eval()
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},)), path)
    return path


@pytest.fixture(scope="module")
def own_study(tmp_path_factory) -> Path:
    root = _copy_workflow(tmp_path_factory.mktemp("own-models"))
    for cls, names in PHOTOS.items():
        (root / "photos" / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(getattr(skimage, name)()).save(root / "photos" / cls / f"{name}.png")
    (root / "mynets.py").write_text(FACTORY)
    _program(root / "exported.pt2")
    config = {
        "dataset": {"name": "imagefolder", "root": "photos", "image_size": SIZE},
        "study": "own",
        "models": ["torchvision:resnet18", "torchvision:alexnet", "exported", "mine"],
        "model_sources": {
            "exported": {"program": "exported.pt2"},
            "mine": {"factory": "mynets:tiny", "kwargs": {"width": 4}, "run_code": True},
        },
        "threads": 1,
        "attack": {"labels": "predicted", "num_images": 3, "population": 10, "generations": 2},
        "capture": {"batch_size": 4},
        "locality": {"max_distance": 1, "random_positions": 2},
        "vulnerability": {"max_attacks": 1, "stride": STRIDE},
        "figures": {"examples": 1, "formats": ["png"]},
    }
    (root / "config" / "own.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # the factory's module
    # about 30 jobs of 15-40 s each at 224x224 (most of it starting Python and torch): 9 min on 2 busy cores
    args = ["snakemake", "--cores", "2", "--resources", "gpu=1", "--configfile", "config/own.yaml"]
    check_tool(args, root, timeout=2400, **env)
    return root


def test_every_stage_ran_for_every_own_model(own_study):
    results = own_study / "results" / "imagefolder-own"
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary["models"]) == set(MODELS)
    for model in MODELS:
        assert summary["models"][model]["attacked"] == 3, (model, summary["models"][model])
        for part in (f"propagation/{model}.nc", f"locality/{model}.nc", f"vulnerability/{model}.nc"):
            assert (results / part).is_file(), part
        assert (results / "figures" / model / "average_pm.png").stat().st_size > 10_000
    test = load_dataset(results / "data" / "test.nc")
    assert test["image"].shape == (6, 3, SIZE, SIZE) and list(test["class_name"].values) == list(PHOTOS)


def test_224_outputs_stay_small_and_the_figures_are_drawn(own_study):
    results = own_study / "results" / "imagefolder-own"
    for model in MODELS:
        cubes = sorted((results / "cubes" / model).glob("*.nc"))
        assert cubes and sum(f.stat().st_size for f in cubes) < 5 * 2**20, model  # maps only: no full cubes
        with xr.open_dataset(cubes[0]) as cube:
            assert "clean" not in cube.variables and cube["pm_max"].shape[0] == 3
        with xr.open_dataset(results / "vulnerability" / f"{model}.nc") as vuln:
            fooled = vuln["fooled"].values[0]
            x, y = int(vuln["pixel_x"].values[0, 0]), int(vuln["pixel_y"].values[0, 0])
            assert vuln.attrs["stride"] == STRIDE and (fooled >= 0).sum() == (SIZE // STRIDE) ** 2
            assert fooled[y, x] >= 0 and (fooled[y, x + 1 : x + STRIDE] == -2).all()
        # no pixel fools a model with fresh weights: the grid shows the failed attempt that came closest
        assert (results / "figures" / model / "pm_grid_0.png").stat().st_size > 50_000
        assert (results / "figures" / model / "vulnerability_maps.png").stat().st_size > 20_000


def test_the_attacks_take_each_models_own_predictions_as_the_class(own_study):
    results = own_study / "results" / "imagefolder-own"
    images = torch.from_numpy(load_dataset(results / "data" / "test.nc")["image"].values).float() / 255
    for model in ("resnet18", "exported"):  # no user code needed to load these
        net, meta = load_checkpoint(results / "models" / f"{model}.pt")
        with torch.no_grad():
            predicted = net(images).argmax(1).numpy()
        with xr.open_dataset(results / "attack" / f"{model}.nc") as attack:
            np.testing.assert_array_equal(attack["true_class"].values, predicted[attack["sample_id"].values])
    assert meta["arch"].startswith("program:")


def test_the_factory_models_checkpoint_needs_the_users_consent(own_study):
    checkpoint = own_study / "results" / "imagefolder-own" / "models" / "mine.pt"
    with pytest.raises(Exception, match="built by user code") as refused:
        load_checkpoint(checkpoint)
    assert "\n" not in str(refused.value)


def test_a_second_run_has_nothing_to_do(own_study):
    again = check_tool(["snakemake", "-n", "--configfile", "config/own.yaml"], own_study)
    assert "Nothing to be done" in again.stdout + again.stderr
