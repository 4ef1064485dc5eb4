"""config/imagenet.yaml, the paper's setting on ImageNet: it validates, and on a tiny fake ILSVRC2012 validation
folder (scikit-image's photographs) its dry run plans every stage for ResNet-50 and AlexNet without the network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import check_tool
from helpers import _copy_workflow
from onepixel.config import load_config, validate_config
from onepixel.errors import ConfigError
from onepixel.study import layout

skimage = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) ships the photographs")
Image = pytest.importorskip("PIL.Image")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "imagenet.yaml"
#: the fake validation folder: photograph -> class index (torchvision's order: 281 tabby cat, 967 espresso)
PHOTOS = {"astronaut": 834, "chelsea": 281, "coffee": 967, "rocket": 657}
MODELS = ["resnet50", "alexnet"]
#: rule -> jobs of the dry run: one dataset, both models through every per-model stage, the study-wide figures
EXPECTED_JOBS = {
    "prepare_data": 1,
    **{
        rule: len(MODELS)
        for rule in (
            "train",
            "select_images",
            "attack",
            "merge_attack",
            "capture",
            "propagation",
            "locality",
            "vulnerability",
        )
    },
    "figures": 1,
    "locality_figures": 1,
    "summary": 1,
    "all": 1,
}


@pytest.fixture(scope="module")
def fake_val(tmp_path_factory) -> Path:
    """``val/ILSVRC2012_val_0000000k.JPEG`` (a flat folder, as ILSVRC2012_img_val.tar unpacks) and ``labels.txt``."""
    root = tmp_path_factory.mktemp("imagenet")
    (root / "val").mkdir()
    lines = []
    for k, (photo, index) in enumerate(PHOTOS.items(), start=1):
        name = f"ILSVRC2012_val_{k:08d}.JPEG"
        Image.fromarray(getattr(skimage, photo)()).convert("RGB").save(root / "val" / name, format="JPEG", quality=90)
        lines.append(f"{name} {index}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


def _dataset_override(fake_val: Path) -> dict[str, str]:
    return {"root": str(fake_val / "val"), "labels_file": str(fake_val / "labels.txt")}


def test_the_config_is_the_papers_setting_on_imagenet():
    cfg = load_config(CONFIG, check_files=False)
    assert cfg["dataset"]["name"] == "imagenet-val" and cfg["dataset"]["max_images"] == 500
    assert cfg["models"] == MODELS
    assert {name: (s["torchvision"], s["weights"]) for name, s in cfg["model_sources"].items()} == {
        "resnet50": ("resnet50", "IMAGENET1K_V2"),
        "alexnet": ("alexnet", "IMAGENET1K_V1"),
    }
    attack = cfg["attack"]
    assert (attack["pixels"], attack["population"], attack["generations"], attack["targeted"]) == (1, 400, 100, False)
    assert (attack["strategy"], attack["F"], attack["num_images"]) == ("rand1", 0.5, 500)
    assert cfg["capture"]["store"] == "maps"
    assert cfg["vulnerability"]["stride"] > 1
    assert layout(cfg).root == "results/imagenet-val-paper"


def test_the_placeholder_folder_is_named_in_one_line():
    with pytest.raises(ConfigError, match=r"^dataset\.root: not found: data/imagenet/val") as missing:
        load_config(CONFIG)
    assert "\n" not in str(missing.value)


def test_the_config_validates_with_the_users_folder(fake_val):
    raw = yaml.safe_load(CONFIG.read_text())
    raw["dataset"].update(_dataset_override(fake_val))
    cfg = validate_config(raw)  # the files are checked now
    assert cfg["dataset"]["root"] == str(fake_val / "val")


def _job_counts(text: str) -> dict[str, int]:
    """The ``Job stats`` table of a dry run: {rule: count}."""
    table = text[text.index("Job stats:") :]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE) if rule != "total"}


@pytest.mark.slow  # starts snakemake in a subprocess
def test_the_dry_run_plans_every_stage_for_both_models_offline(fake_val, tmp_path):
    root = _copy_workflow(tmp_path / "repo")
    torch_home = tmp_path / "torch-home"  # where torchvision would put downloaded weights
    dataset = ", ".join(f"{key}: {value}" for key, value in _dataset_override(fake_val).items())
    dead = "http://127.0.0.1:9"  # any download would fail here instead of reaching the network
    result = check_tool(
        ["snakemake", "-n", "--configfile", "config/imagenet.yaml", "--config", f"dataset={{{dataset}}}"],
        root,
        TORCH_HOME=str(torch_home),
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        ALL_PROXY=dead,
        NO_PROXY="",
    )
    out = result.stdout + result.stderr
    assert _job_counts(out) == EXPECTED_JOBS, out[-3000:]
    for model in MODELS:
        assert f"results/imagenet-val-paper/models/{model}.pt" in out
        assert f"results/imagenet-val-paper/vulnerability/{model}.nc" in out
    assert str(fake_val / "labels.txt") in out  # an input of prepare_data: a changed labels file reruns the study
    assert not torch_home.exists() or not any(torch_home.rglob("*")), "the dry run fetched something"
    assert not (root / "results").exists()
