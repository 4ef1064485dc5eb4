"""Inputs that must belong together are refused, before any work, when they do not (onepixel.lineage).

One small real run on the digits (a LeNet trained for two epochs, two attacks, their cubes, maps and
analyses); then every later stage gets one file of another run and must exit with status 2 and one
line naming both files, writing nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import onepixel.models
from onepixel.attack import load_attack, save_attack
from onepixel.cli import main
from onepixel.data import load_dataset, make_dataset, save_dataset
from onepixel.data.digits import load_digits_split
from onepixel.errors import DataError
from onepixel.files import file_sha256
from onepixel.lineage import (
    attack_digest,
    check_adversarial,
    check_model_input,
    dataset_digest,
    selection_digest,
    short,
)
from onepixel.models import build_model, save_checkpoint
from onepixel.models.lenet import LeNet
from onepixel.stages import get_stage, run_stage

CFG = {
    "device": "cpu",
    "train": {"epochs": 2, "batch_size": 64, "seed": 0},
    "attack": {"num_images": 6, "population": 16, "generations": 3, "seed": 1},
    "locality": {"max_distance": 2, "random_positions": 4},
    "vulnerability": {"max_attacks": 3, "batch_size": 64},
}


def _split(ds, count: int, split: str):
    return make_dataset(
        ds["image"].values[:count], ds["label"].values[:count], [str(d) for d in range(10)], "digits", split
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> types.SimpleNamespace:
    """Digits train/test splits, a LeNet and one with other weights, two attacks of the LeNet and what is made
    from them: cubes, propagation maps, locality and vulnerability files."""
    root = tmp_path_factory.mktemp("belonging")
    train, test = load_digits_split()
    save_dataset(_split(train, 400, "train"), root / "train.nc")
    save_dataset(_split(test, 60, "test"), root / "test.nc")
    data = {"train": root / "train.nc", "test": root / "test.nc", "user_checkpoint": []}
    for name, seed in (("lenet", 0), ("other", 1)):
        run_stage(
            "train",
            data,
            {"checkpoint": root / f"{name}.pt", "metrics": root / f"{name}.json"},
            {**CFG, "train": {**CFG["train"], "seed": seed}},
            {"model": "lenet"},
        )
    model = {"checkpoint": root / "lenet.pt", "test": root / "test.nc"}
    for tag, seed in (("", 1), ("2", 2)):
        cfg = {**CFG, "attack": {**CFG["attack"], "seed": seed}}
        run_stage("attack", model, {"out": root / f"attack{tag}.nc"}, cfg)
        attacked = {**model, "attack": root / f"attack{tag}.nc"}
        run_stage("capture", attacked, {"out": root / f"cubes{tag}"}, cfg)
        run_stage("propagation", {"cubes": root / f"cubes{tag}"}, {"out": root / f"prop{tag}.nc"}, cfg)
        run_stage("locality", attacked, {"out": root / f"loc{tag}.nc"}, cfg)
        run_stage("vulnerability", attacked, {"out": root / f"vul{tag}.nc"}, cfg)
    return types.SimpleNamespace(root=root, **{p.stem: p for p in root.iterdir()})


def _refused(capsys, argv: list[object], written: Path) -> str:
    """The CLI's one-line error for ``argv`` (status 2, nothing written at ``written``), without ``error: ``."""
    capsys.readouterr()  # what earlier stages printed
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert not written.exists()
    return err[len("error: ") : -1]


# ---------------------------------------------------------------------------
# a test set, a checkpoint or an attack of another run


@pytest.mark.parametrize("stage", ["capture", "locality", "vulnerability"])
def test_the_train_split_as_test_set_is_refused(run, tmp_path, capsys, stage) -> None:
    out = tmp_path / "out"
    message = _refused(
        capsys, [stage, "--checkpoint", run.lenet, "--test", run.train, "--attack", run.attack, "--out", out], out
    )
    train, test = dataset_digest(load_dataset(run.train)), dataset_digest(load_dataset(run.test))
    assert message == (
        f"{stage}: {run.train} is not the test set {run.attack} was made on "
        f"(test digest {short(train)} != {short(test)}); pass the test set of {run.attack}"
    )
    assert load_attack(run.attack).attrs["test_digest"] == test


def test_the_selection_of_another_test_set_is_refused(run, tmp_path, capsys) -> None:
    selection = tmp_path / "selection.json"
    run_stage("select_images", {"checkpoint": run.lenet, "test": run.test}, {"out": selection}, CFG)
    out = tmp_path / "shard.nc"
    argv = ["attack", "--checkpoint", run.lenet, "--test", run.train, "--selection", selection, "--out", out]
    message = _refused(capsys, [*argv, "--set", "attack.num_images=6", "--set", "attack.seed=1"], out)
    assert message.startswith(f"attack: {run.train} is not the test set {selection} was made on (test digest ")


@pytest.mark.parametrize("stage", ["capture", "locality", "vulnerability"])
def test_a_lenet_with_other_weights_is_refused(run, tmp_path, capsys, stage) -> None:
    out = tmp_path / "out"
    message = _refused(
        capsys, [stage, "--checkpoint", run.other, "--test", run.test, "--attack", run.attack, "--out", out], out
    )
    assert message == (
        f"{stage}: checkpoint {run.other} is not the model {run.attack} was made with "
        f"(model sha256 {short(file_sha256(run.other))} != {short(file_sha256(run.lenet))}); "
        f"pass the checkpoint of {run.attack}"
    )


def test_shards_of_two_models_are_not_merged(run, tmp_path, capsys) -> None:
    shards = []
    for shard, checkpoint in enumerate((run.lenet, run.other)):
        shards.append(tmp_path / f"s{shard}.nc")
        files = {"checkpoint": checkpoint, "test": run.test}
        run_stage(
            "attack", files, {"out": shards[-1]}, {**CFG, "attack": {**CFG["attack"], "shards": 2}}, {"shard": shard}
        )
    out = tmp_path / "merged.nc"
    message = _refused(capsys, ["merge-attack", "--shards", *shards, "--out", out], out)
    assert message.startswith(f"merge-attack: {shards[1]} was not made with the model of {shards[0]} (model sha256 ")


# ---------------------------------------------------------------------------
# a model that does not take the test set's images


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    """A CIFAR-10-shaped test set: 3x32x32 images, 10 classes."""
    path = tmp_path_factory.mktemp("cifar") / "test.nc"
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    save_dataset(make_dataset(images, np.arange(20) % 10, [f"c{i}" for i in range(10)], "cifar10", "test"), path)
    return path


@pytest.mark.parametrize("stage", ["select-images", "attack"])
def test_a_digits_checkpoint_refuses_a_cifar_test_set_before_any_batch(
    run, cifar, tmp_path, capsys, monkeypatch, stage
):
    calls = []
    forward = LeNet.forward
    monkeypatch.setattr(LeNet, "forward", lambda self, x: calls.append(x.shape) or forward(self, x))
    out = tmp_path / "out.json"
    message = _refused(capsys, [stage, "--checkpoint", run.lenet, "--test", cifar, "--out", out], out)
    assert message == f"{stage}: checkpoint {run.lenet} expects 1x8x8 images, cifar10 {cifar} holds 3x32x32"
    assert calls == []  # refused from the recorded input shape, before the model ran
    # a checkpoint that records no input shape (saved by hand): its channels refuse the images
    bare = tmp_path / "bare.pt"
    save_checkpoint(
        bare,
        build_model("lenet", num_classes=10, in_channels=1, image_size=8),
        "lenet",
        {"num_classes": 10, "in_channels": 1, "image_size": 8},
    )
    message = _refused(capsys, [stage, "--checkpoint", bare, "--test", cifar, "--out", out], out)
    assert message == f"{stage}: checkpoint {bare} expects 1-channel images, cifar10 {cifar} holds 3x32x32"
    assert calls == []


def test_a_model_without_a_recorded_shape_is_probed_with_one_image(cifar) -> None:
    test = load_dataset(cifar)
    grey = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(DataError) as info:
        check_model_input("capture", grey, {}, "grey.pt", test, cifar)
    message = str(info.value)
    assert message.startswith(f"capture: checkpoint grey.pt cannot take the 3x32x32 images of cifar10 {cifar} (")
    assert "\n" not in message and "RuntimeError" in message
    three = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(DataError, match=r"^capture: checkpoint three.pt predicts 3 classes, cifar10 .*test.nc has 10$"):
        check_model_input("capture", three, {}, "three.pt", test, cifar)
    check_model_input("capture", nn.Sequential(three[:3], nn.Linear(4, 10)), {}, "ok.pt", test, cifar)


# ---------------------------------------------------------------------------
# the figures and the summary: per model, every file of one run


def _summary(run, tmp_path, **files) -> None:
    inputs = {
        "metrics": {"lenet": run.lenet.with_suffix(".json")},
        "attack": {"lenet": run.attack},
        "propagation": {"lenet": run.prop},
        "locality": {"lenet": run.loc},
    }
    inputs.update({port: {"lenet": path} for port, path in files.items()})
    outputs = {port.name: tmp_path / port.name for port in get_stage("summary").outputs}
    run_stage("summary", inputs, outputs, CFG)


def test_figures_and_summary_refuse_files_of_another_attack(run, tmp_path, capsys) -> None:
    out = tmp_path / "figures"
    base = ["figures", "--test", run.test, "--attack", f"lenet={run.attack}", "--out", out]
    message = _refused(capsys, [*base, "--propagation", f"lenet={run.prop2}", "--locality", f"lenet={run.loc}"], out)
    other, this = attack_digest(load_attack(run.attack2)), attack_digest(load_attack(run.attack))
    assert message == (
        f"figures: {run.prop2} was not made from the attack of {run.attack} "
        f"(attack digest {short(other)} != {short(this)}); pass files of one run"
    )
    message = _refused(capsys, [*base, "--propagation", f"lenet={run.prop}", "--locality", f"lenet={run.loc2}"], out)
    assert message.startswith(f"figures: {run.loc2} was not made from the attack of {run.attack} (attack digest ")
    argv = ["locality-figures", "--test", run.test, "--locality", f"lenet={run.loc}", "--out", out]
    message = _refused(capsys, [*argv, "--vulnerability", f"lenet={run.vul2}"], out)
    assert message.startswith(f"locality-figures: {run.vul2} was not made from the attack of {run.loc} (attack digest ")
    argv = ["locality-figures", "--test", run.train, "--locality", f"lenet={run.loc}", "--out", out]
    message = _refused(capsys, [*argv, "--vulnerability", f"lenet={run.vul}"], out)
    assert message.startswith(f"locality-figures: {run.train} is not the test set {run.loc} was made on (test digest ")

    _summary(run, tmp_path / "ok")  # the files of one run are accepted
    assert (tmp_path / "ok" / "summary").is_file()
    with pytest.raises(DataError) as info:
        _summary(run, tmp_path / "bad", locality=run.loc2)
    assert str(info.value) == (
        f"summary: {run.loc2} was not made from the attack of {run.attack} "
        f"(attack digest {short(other)} != {short(this)}); pass files of one run"
    )
    with pytest.raises(DataError, match=rf"^summary: {run.prop2} was not made from the attack of {run.attack} "):
        _summary(run, tmp_path / "bad", propagation=run.prop2)
    other_model = run.other.with_suffix(".json")
    with pytest.raises(DataError, match=rf"^summary: {other_model} was not made with the model of {run.attack} "):
        _summary(run, tmp_path / "bad", metrics=other_model)
    assert not (tmp_path / "bad").exists()


def test_every_file_records_what_it_was_made_from(run) -> None:
    import json

    import xarray as xr

    attack = load_attack(run.attack)
    expected = {
        "model_sha256": file_sha256(run.lenet),
        "test_digest": dataset_digest(load_dataset(run.test)),
        "attack_digest": attack_digest(attack),
    }
    assert attack.attrs["model_sha256"] == expected["model_sha256"]
    assert attack.attrs["test_digest"] == expected["test_digest"]
    assert attack.attrs["selection_digest"] == selection_digest(attack["sample_id"].values)
    layers = json.loads((run.cubes / "layers.json").read_text())
    metrics = json.loads(run.lenet.with_suffix(".json").read_text())
    assert {k: layers[k] for k in expected} == expected
    assert {k: metrics[k] for k in ("model_sha256", "test_digest")} == {
        k: expected[k] for k in ("model_sha256", "test_digest")
    }
    for path in (*sorted(run.cubes.glob("*.nc")), run.prop, run.loc, run.vul):
        with xr.open_dataset(path) as ds:
            assert {k: ds.attrs[k] for k in expected} == expected, path
    assert torch.load(run.lenet, weights_only=True)["input_shape"] == [1, 8, 8]


# ---------------------------------------------------------------------------
# the digests, by an independent computation


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def test_digests_equal_an_independent_hashlib_computation(run, tmp_path) -> None:
    test = load_dataset(run.test)
    images, labels = test["image"].values, test["label"].values
    n = len(labels)
    expected = _sha(
        f"image:|u1:{n},1,8,8;".encode(),
        np.ascontiguousarray(images).tobytes(),
        f"label:<i8:{n};".encode(),
        labels.astype("<i8").tobytes(),
    )
    assert dataset_digest(test) == expected
    # the content counts, not the file: the same data written again (other attributes, other bytes) keeps it
    again = tmp_path / "again.nc"
    save_dataset(test.assign_attrs(note="prepared again"), again)
    assert again.read_bytes() != run.test.read_bytes() and dataset_digest(load_dataset(again)) == expected
    changed = test.copy(deep=True)
    changed["image"].values[3, 0, 4, 4] ^= 1
    assert dataset_digest(changed) != expected

    assert selection_digest([5, 1, 9]) == _sha(b"sample_id:<i8:3;", np.array([5, 1, 9], "<i8").tobytes())
    assert selection_digest([1, 5, 9]) != selection_digest([5, 1, 9])  # the order is part of the selection

    attack = load_attack(run.attack)
    rows, k = attack.sizes["sample"], attack.sizes["pixel"]
    parts = []
    for name, dtype, shape in (
        ("sample_id", "<i8", f"{rows}"),
        ("target_class", "<i8", f"{rows}"),
        ("pixel_x", "<i8", f"{rows},{k}"),
        ("pixel_y", "<i8", f"{rows},{k}"),
        ("color", "|u1", f"{rows},{k},1"),
        ("success", "|u1", f"{rows}"),
    ):
        parts += [
            f"{name}:{dtype}:{shape};".encode(),
            np.ascontiguousarray(attack[name].values.astype(dtype)).tobytes(),
        ]
    assert attack_digest(attack) == _sha(*parts)
    assert attack_digest(attack.assign(success=attack["success"].astype(np.uint8))) == _sha(*parts)


# ---------------------------------------------------------------------------
# adversarial images that are not the test images with the recorded pixels


def test_a_tampered_adversarial_pixel_is_caught(run, tmp_path, capsys) -> None:
    attack = load_attack(run.attack)
    row = 2
    sid, x0, y0 = (int(attack[name].values[row].reshape(-1)[0]) for name in ("sample_id", "pixel_x", "pixel_y"))
    x, y = (x0 + 3) % 8, (y0 + 5) % 8  # not the attacked pixel
    tampered = attack.copy(deep=True)
    tampered["adversarial"].values[row, 0, y, x] ^= 0x40
    path = tmp_path / "tampered.nc"
    save_attack(tampered.assign(success=tampered["success"].astype(np.uint8)), path)
    out = tmp_path / "cubes"
    message = _refused(
        capsys, ["capture", "--checkpoint", run.lenet, "--test", run.test, "--attack", path, "--out", out], out
    )
    assert message == (
        f"capture: {path}: the adversarial image of row {row} (sample_id {sid}) is not image {sid} of {run.test} "
        f"with its recorded pixel(s): 1 of its 64 pixels differ (1 of {attack.sizes['sample']} rows differ); "
        "the attack file was altered or belongs to another test set"
    )
    test = load_dataset(run.test)
    check_adversarial("capture", attack, run.attack, test, run.test)  # the real attack passes
    recoloured = attack.copy(deep=True)
    recoloured["color"].values[row, 0, 0] ^= 0x80  # the recorded colour is not the one in the image
    with pytest.raises(DataError, match=rf"the adversarial image of row {row} \(sample_id {sid}\).*: 1 of its 64"):
        check_adversarial("locality", recoloured, "a.nc", test, run.test)
    moved = attack.copy(deep=True)
    moved["pixel_x"].values[row, 0] = 8
    with pytest.raises(DataError, match=rf"^vulnerability: a.nc: row {row} records a pixel outside the 8x8 images"):
        check_adversarial("vulnerability", moved, "a.nc", test, run.test)


def test_a_checkpoint_replaced_by_hand_is_refused_even_when_its_loader_is_replaced(run, tmp_path, monkeypatch):
    """The sha256 is that of the file on disk, whatever loads the model."""
    model, meta = onepixel.models.load_checkpoint(run.lenet)
    monkeypatch.setattr(onepixel.models, "load_checkpoint", lambda p, map_location, **_: (model, meta))
    copy = tmp_path / "lenet.pt"
    shutil.copy(run.lenet, copy)
    files = {"checkpoint": copy, "test": run.test, "attack": run.attack}
    run_stage("locality", files, {"out": tmp_path / "loc.nc"}, CFG)  # a byte-identical copy is the same model
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(DataError, match=rf"^locality: checkpoint {copy} is not the model {run.attack} was made with"):
        run_stage("locality", files, {"out": tmp_path / "loc2.nc"}, CFG)
