"""CIFAR-10 from a pre-staged copy (config ``dataset.root``), and the study on real CIFAR-10 images.

The first part runs everywhere on tiny fixtures in CIFAR-10's own layout: folder
and tar.gz roots, the official-checksum check, errors naming the file, config
validation, the CLI and the workflow's wiring. The second part runs the study's
stages on the real images in ``../shared/data/cifar10-subset`` (4,660 training and
846 test images of CIFAR-10, staged beside the repository) and is skipped when
that directory is absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from onepixel.cli import main
from onepixel.config import load_config, validate_config
from onepixel.data import (
    cifar10,
    cifar10_root_files,
    load_dataset,
    prepare_dataset,
    read_cifar10_batches,
    read_cifar10_root,
)
from onepixel.errors import ConfigError, DataError
from onepixel.stages import run_stage

REPO = Path(__file__).resolve().parents[1]
SUBSET = Path(__file__).parents[1].parent / "shared/data/cifar10-subset"
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
PER_BATCH = 2


# ---------------------------------------------------------------- fixtures in the official layout


def _batch(first: int, n: int) -> dict:
    rng = np.random.default_rng(first)
    return {
        "batch_label": f"batch from {first}",
        "labels": [(first + k) % 10 for k in range(n)],
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{first + k}.png" for k in range(n)],
    }


def _pickled(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _fixture_files() -> dict[str, bytes]:
    """The seven files of a CIFAR-10 batch folder, PER_BATCH images per batch."""
    files = {"batches.meta": _pickled({"label_names": NAMES, "num_vis": 3072, "num_cases_per_batch": PER_BATCH})}
    for b, name in enumerate(FILES[1:]):
        files[name] = _pickled(_batch(b * PER_BATCH, PER_BATCH))
    return files


def _write_folder(parent: Path, files: dict[str, bytes] | None = None) -> Path:
    batch_dir = parent / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    for name, raw in (files or _fixture_files()).items():
        (batch_dir / name).write_bytes(raw)
    return batch_dir


def _write_tar(path: Path, files: dict[str, bytes] | None = None, prefix: str = "cifar-10-batches-py/") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        if prefix:
            info = tarfile.TarInfo(prefix.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, raw in reversed(list((files or _fixture_files()).items())):  # not in reading order
            info = tarfile.TarInfo(prefix + name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def _same_data(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"].values, y["image"].values)
        np.testing.assert_array_equal(x["label"].values, y["label"].values)
        assert list(x["class_name"].values) == list(y["class_name"].values)


# ---------------------------------------------------------------- reader, checksums, errors


def test_md5_table_is_torchvisions():
    from torchvision.datasets import CIFAR10

    listed = {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
    listed[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    assert listed == cifar10.CIFAR10_FILES
    assert CIFAR10.tgz_md5 == cifar10.CIFAR10_MD5


@pytest.mark.parametrize("level", ["batch_dir", "parent"])
def test_folder_root_is_read_with_a_notice(tmp_path, level):
    batch_dir = _write_folder(tmp_path)
    root = batch_dir if level == "batch_dir" else tmp_path
    notices: list[str] = []
    train, test = read_cifar10_root(root, log=notices.append)
    assert train["image"].shape == (5 * PER_BATCH, 3, 32, 32) and test["image"].shape == (PER_BATCH, 3, 32, 32)
    _same_data((train, test), read_cifar10_batches(batch_dir))
    assert len(notices) == 1 and "\n" not in notices[0]
    assert notices[0].startswith(f"{root}: 10 training and 2 test images")
    assert "not the official CIFAR-10 set" in notices[0]
    assert train.attrs["official_checksums"] == 0 and train.attrs["source"] == str(root)
    assert cifar10_root_files(root) == [batch_dir / name for name in FILES]


def test_official_checksums_are_recognised(tmp_path, monkeypatch):
    """The official set is recognised by every file's md5 (here the table is pointed at the fixture's)."""
    files = _fixture_files()
    batch_dir = _write_folder(tmp_path, files)
    monkeypatch.setattr(cifar10, "CIFAR10_FILES", {name: _md5(raw) for name, raw in files.items()})
    notices: list[str] = []
    train, test = read_cifar10_root(batch_dir, log=notices.append)
    assert notices == [
        (f"{batch_dir}: the official CIFAR-10 set (10 training, 2 test images; published md5 checksums verified)")
    ]
    assert train.attrs["official_checksums"] == 1 == test.attrs["official_checksums"]
    # one file that differs from its published checksum makes it a custom copy
    monkeypatch.setitem(cifar10.CIFAR10_FILES, "data_batch_3", "0" * 32)
    notices.clear()
    read_cifar10_root(batch_dir, log=notices.append)
    assert "not the official CIFAR-10 set" in notices[0]


@pytest.mark.parametrize("prefix", ["cifar-10-batches-py/", ""])
def test_tar_gz_root(tmp_path, monkeypatch, prefix):
    archive = _write_tar(tmp_path / "cifar-10-python.tar.gz", prefix=prefix)
    notices: list[str] = []
    data = read_cifar10_root(archive, log=notices.append)
    _same_data(data, read_cifar10_batches(_write_folder(tmp_path / "folder")))
    assert "10 training and 2 test images" in notices[0] and "not the official CIFAR-10 set" in notices[0]
    assert cifar10_root_files(archive) == [archive]
    assert not any(p.name == "cifar-10-batches-py" for p in tmp_path.iterdir())  # nothing extracted
    # the archive's own md5 identifies the official download
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", _md5(archive.read_bytes()))
    notices.clear()
    read_cifar10_root(archive, log=notices.append)
    assert notices[0].startswith(f"{archive}: the official CIFAR-10 set")


def test_tar_gz_errors_name_the_member(tmp_path):
    files = _fixture_files()
    del files["data_batch_4"]
    partial = _write_tar(tmp_path / "partial.tar.gz", files)
    with pytest.raises(
        DataError, match=r"partial\.tar\.gz:cifar-10-batches-py/data_batch_4: CIFAR-10 batch file not found"
    ):
        read_cifar10_root(partial)
    files = _fixture_files() | {"test_batch": b"\x80\x02}q\x00(garbage"}
    garbage = _write_tar(tmp_path / "garbage.tar.gz", files)
    with pytest.raises(
        DataError, match=r"garbage\.tar\.gz:cifar-10-batches-py/test_batch: not a readable CIFAR-10 pickle"
    ):
        read_cifar10_root(garbage)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(_write_tar(tmp_path / "ok.tar.gz").read_bytes()[:500])
    with pytest.raises(DataError, match=r"broken\.tar\.gz: not a readable tar\.gz archive"):
        read_cifar10_root(broken)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "data_batch_4").unlink(), r"data_batch_4: CIFAR-10 batch file not found"),
        (lambda d: (d / "data_batch_2").write_bytes(b"not a pickle"), r"data_batch_2: not a readable CIFAR-10 pickle"),
        (
            lambda d: (d / "test_batch").write_bytes(
                _pickled({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]})
            ),
            r"test_batch: 'data' must be an \(N, 3072\) array; got \(2, 1024\)",
        ),
        (
            lambda d: (d / "data_batch_5").write_bytes(
                _pickled({"data": np.zeros((2, 3072), np.uint8), "labels": [0]})
            ),
            r"data_batch_5: 'labels' must be 2 class indices",
        ),
        (
            lambda d: (d / "batches.meta").write_bytes(_pickled({"label_names": []})),
            r"batches.meta: 'label_names' must be a non-empty list",
        ),
    ],
)
def test_folder_errors_name_the_file(tmp_path, damage, message):
    batch_dir = _write_folder(tmp_path)
    damage(batch_dir)
    with pytest.raises(DataError, match=message) as info:
        read_cifar10_root(tmp_path, log=None)
    assert str(batch_dir) in str(info.value) and "\n" not in str(info.value)


def test_roots_that_are_not_cifar10(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: CIFAR-10 root not found"):
        read_cifar10_root(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not a CIFAR-10 folder: it holds neither cifar-10-batches-py/"):
        cifar10_root_files(tmp_path / "empty")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a readable tar\.gz archive"):
        read_cifar10_root(notes)
    batch_dir = _write_folder(tmp_path / "partial")
    (batch_dir / "data_batch_5").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_5: CIFAR-10 batch file not found"):
        cifar10_root_files(tmp_path / "partial")


# ---------------------------------------------------------------- config, library, CLI


def test_config_validates_the_root(tmp_path, monkeypatch):
    _write_folder(tmp_path / "staged")
    monkeypatch.chdir(tmp_path)
    config = validate_config({"dataset": {"name": "cifar10", "root": "staged"}})
    assert config["dataset"]["root"] == "staged"
    assert validate_config({})["dataset"]["root"] == ""
    with pytest.raises(ConfigError, match=r"^dataset\.root: not found: missing \(relative to the working directory "):
        validate_config({"dataset": {"name": "cifar10", "root": "missing"}})
    with pytest.raises(ConfigError, match=r"^dataset\.root: .*cifar10 only, not 'digits'"):
        validate_config({"dataset": {"root": "staged"}})
    (tmp_path / "staged" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(
        ConfigError, match=r"^dataset\.root: staged/cifar-10-batches-py/test_batch: CIFAR-10 batch file"
    ):
        validate_config({"dataset": {"name": "cifar10", "root": "staged"}})
    # without file checks (e.g. a config written for another machine) only the types are checked
    validate_config({"dataset": {"name": "cifar10", "root": "missing"}}, check_files=False)


def test_prepare_dataset_from_root(tmp_path, capsys):
    archive = _write_tar(tmp_path / "cifar-10-python.tar.gz")
    train_path, test_path = prepare_dataset("cifar10", tmp_path / "out", root=archive)
    assert "not the official CIFAR-10 set" in capsys.readouterr().out
    train = load_dataset(train_path)
    assert train.sizes["sample"] == 5 * PER_BATCH and load_dataset(test_path).sizes["sample"] == PER_BATCH
    assert train.attrs["source"] == str(archive)
    with pytest.raises(ConfigError, match="dataset.root"):
        prepare_dataset("digits", tmp_path / "digits", root=archive)


def test_cli_prepare_data_root(tmp_path, capsys):
    _write_folder(tmp_path / "staged")
    out = tmp_path / "out"
    args = ["--set", "dataset.name=cifar10", "--train", str(out / "train.nc"), "--test", str(out / "test.nc")]
    assert main(["prepare-data", "--set", f"dataset.root={tmp_path / 'staged'}", *args]) == 0
    assert "10 training and 2 test images" in capsys.readouterr().err
    assert load_dataset(out / "train.nc").sizes["sample"] == 10 and load_dataset(out / "test.nc").sizes["sample"] == 2
    assert main(["prepare-data", "--set", f"dataset.root={tmp_path / 'nope'}", *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: dataset.root: not found: {tmp_path / 'nope'}")


def test_subset_config_is_valid(monkeypatch):
    raw = yaml.safe_load((REPO / "config" / "cifar10-subset.yaml").read_text())
    assert raw["dataset"] == {"name": "cifar10", "root": "../shared/data/cifar10-subset"}
    config = load_config(REPO / "config" / "cifar10-subset.yaml", check_files=False)
    assert {"lenet", "resnet20"} <= set(config["models"]) and config["attack"]["num_images"] >= 100
    if SUBSET.is_dir():
        monkeypatch.chdir(REPO)  # the root is relative to the repository root
        load_config(REPO / "config" / "cifar10-subset.yaml")


# ---------------------------------------------------------------- the workflow's wiring


def _snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        ["snakemake", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the workflow beside a staged CIFAR-10 fixture (``../staged``, as CI's ``../shared``)."""
    base = tmp_path_factory.mktemp("wf")
    root = base / "repo"
    for name in ("workflow", "config", "src"):
        shutil.copytree(REPO / name, root / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    _write_folder(base / "staged")
    return root


@pytest.mark.slow
def test_workflow_reads_the_root_and_reruns_when_it_changes(workdir):
    config = ["--config", "dataset={'name': 'cifar10', 'root': '../staged'}"]
    dry = _snakemake(["-n", *config], workdir)
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout + dry.stderr
    assert "prepare_data" in out and "download_cifar10" not in out
    assert "../staged/cifar-10-batches-py/data_batch_1" in out  # the root's files are the inputs

    target = "results/cifar10/data/test.nc"
    made = _snakemake(["--cores", "1", target, *config], workdir)
    assert made.returncode == 0, made.stderr[-3000:]
    log = (workdir / "results" / "cifar10" / "logs" / "prepare_data.log").read_text()
    assert "../staged: 10 training and 2 test images" in log and "not the official CIFAR-10 set" in log
    assert load_dataset(workdir / target).sizes["sample"] == PER_BATCH
    done = _snakemake(["-n", target, *config], workdir)
    assert "Nothing to be done" in done.stdout + done.stderr

    batch = workdir.parent / "staged" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(_pickled(_batch(100, 3)))  # the staged copy changes
    made_at = (workdir / target).stat().st_mtime_ns
    os.utime(batch, ns=(made_at + 10**9, made_at + 10**9))
    again = _snakemake(["-n", target, *config], workdir)
    assert "prepare_data" in again.stdout + again.stderr and "Nothing to be done" not in again.stdout + again.stderr


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_workflow_stops_on_a_missing_root(workdir):
    config = ["--config", "dataset={'name': 'cifar10', 'root': '../missing'}", "study=missing"]
    result = _snakemake(["--cores", "1", *config], workdir)
    assert result.returncode != 0
    assert "error: dataset.root: not found: ../missing (relative to the working directory" in result.stderr
    assert "Traceback" not in result.stderr and "prepare_data" not in result.stdout + result.stderr
    assert not (workdir / "results" / "cifar10-missing").exists()  # not even the study's log folder


# ---------------------------------------------------------------- real CIFAR-10 images

needs_subset = pytest.mark.skipif(
    not (SUBSET / "cifar-10-batches-py").is_dir(),
    reason=f"the staged CIFAR-10 subset is not here: {SUBSET} (CI clones shared/ beside the repository)",
)


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """The staged subset written as train.nc / test.nc, with the notice printed on the way."""
    out = tmp_path_factory.mktemp("subset")
    notices: list[str] = []
    train_path, test_path = prepare_dataset("cifar10", out, root=SUBSET, log=notices.append)
    return {"train": train_path, "test": test_path, "notices": notices, "dir": out}


@needs_subset
def test_subset_reader(subset):
    train, test = load_dataset(subset["train"]), load_dataset(subset["test"])
    assert train["image"].shape == (4660, 3, 32, 32) and test["image"].shape == (846, 3, 32, 32)
    assert train["image"].dtype == np.uint8 and list(train["class_name"].values) == NAMES
    train_counts = np.bincount(train["label"].values, minlength=10)
    test_counts = np.bincount(test["label"].values, minlength=10)
    assert train_counts.min() == 435 and train_counts.max() == 489  # as the subset's README says
    assert test_counts.min() == 70 and test_counts.max() == 97
    # natural images: every channel uses most of the range and the images differ
    assert train["image"].values.std() > 40 and len(np.unique(train["image"].values[:50, 0, 16, 16])) > 20
    assert subset["notices"] == [
        (
            f"{SUBSET}: 4660 training and 846 test images in CIFAR-10's layout; not the official CIFAR-10 set "
            "(its checksums differ from the published ones), used as a partial or custom copy"
        )
    ]


@pytest.fixture(scope="module")
def lenet(subset):
    """LeNet trained briefly on the 4,660 real training images (about 20 s on 2 CPU cores)."""
    checkpoint, metrics = subset["dir"] / "lenet.pt", subset["dir"] / "lenet.json"
    cfg = {"epochs": 4, "batch_size": 128, "lr": 0.05, "augment": False, "seed": 0}
    run_stage(
        "train",
        {"train": subset["train"], "test": subset["test"]},
        {"checkpoint": checkpoint, "metrics": metrics},
        {"train": cfg, "device": "cpu"},
        {"model": "lenet"},
    )
    return checkpoint


@needs_subset
def test_lenet_learns_real_images(lenet, subset):
    metrics = json.loads((subset["dir"] / "lenet.json").read_text())
    assert metrics["num_train"] == 4660 and metrics["num_test"] == 846
    assert metrics["test_accuracy"] > 0.30, metrics  # chance is 0.10


@pytest.fixture(scope="module")
def attack(lenet, subset):
    out = subset["dir"] / "attack_lenet.nc"
    cfg = {"num_images": 24, "population": 40, "generations": 10, "seed": 0}
    run_stage("attack", {"checkpoint": lenet, "test": subset["test"]}, {"out": out}, {"attack": cfg, "device": "cpu"})
    return out


@needs_subset
def test_attack_successes_are_real_misclassifications(lenet, subset, attack):
    from onepixel.attack import load_attack
    from onepixel.models import load_checkpoint

    result = load_attack(attack)
    test = load_dataset(subset["test"])
    model, _ = load_checkpoint(lenet)
    model.eval()
    success = result["success"].values.astype(bool)
    assert result.sizes["sample"] == 24 and success.sum() > 0, "no one-pixel attack succeeded"
    clean = test["image"].values[result["sample_id"].values]
    adversarial = result["adversarial"].values
    with torch.no_grad():
        clean_pred = model(torch.from_numpy(clean).float() / 255).argmax(1).numpy()
        adv_pred = model(torch.from_numpy(adversarial).float() / 255).argmax(1).numpy()
    true = result["true_class"].values
    np.testing.assert_array_equal(true, test["label"].values[result["sample_id"].values])
    assert (clean_pred == true).all()  # only correctly classified images are attacked
    assert (adv_pred[success] != true[success]).all()  # every reported success fools the model
    assert (adv_pred[~success] == true[~success]).all()
    np.testing.assert_array_equal(adv_pred, result["adv_class"].values)
    # exactly one pixel changed, at the reported position, to the reported colour
    for i in range(len(true)):
        changed = np.argwhere((adversarial[i] != clean[i]).any(axis=0))
        x, y = int(result["pixel_x"].values[i, 0]), int(result["pixel_y"].values[i, 0])
        assert changed.tolist() in ([[y, x]], []), changed  # [] when the colour equals the original
        np.testing.assert_array_equal(adversarial[i][:, y, x], result["color"].values[i, 0])


@needs_subset
def test_capture_cubes_have_the_layer_shapes(lenet, subset, attack):
    import xarray as xr

    from onepixel.models import load_checkpoint

    files = run_stage(
        "capture",
        {"checkpoint": lenet, "test": subset["test"], "attack": attack},
        {"out": subset["dir"] / "cubes"},
        {"capture": {"store": "cubes"}, "device": "cpu"},
    )
    assert [f.name for f in files] == ["00_relu1.nc", "01_relu2.nc"]
    model, _ = load_checkpoint(lenet)
    model.eval()
    test = load_dataset(subset["test"])
    result = xr.open_dataset(attack)
    clean = torch.from_numpy(test["image"].values[result["sample_id"].values]).float() / 255
    adversarial = torch.from_numpy(result["adversarial"].values).float() / 255
    with torch.no_grad():  # the model's own submodules, called by hand without hooks

        def by_hand(x):
            relu1 = model.relu1(model.conv1(model.normalize(x)))
            return relu1, model.relu2(model.conv2(model.pool1(relu1)))

        clean_maps, adversarial_maps = by_hand(clean), by_hand(adversarial)
        expected = {"clean": clean_maps, "delta": [a - c for a, c in zip(adversarial_maps, clean_maps, strict=False)]}
    for index, (file, shape) in enumerate(zip(files, [(6, 28, 28), (16, 10, 10)], strict=True)):
        with xr.open_dataset(file) as cube:
            assert cube["clean"].shape == (24, *shape) == cube["delta"].shape
            for kind in ("clean", "delta"):
                np.testing.assert_allclose(cube[kind].values, expected[kind][index].numpy(), rtol=1e-5, atol=1e-5)
            success = cube["success"].values.astype(bool)
            # a successful one-pixel attack changes the first layer's maps (near the pixel at least)
            diff = np.abs(cube["delta"].values).max(axis=(1, 2, 3))
            assert (diff[success] > 0).all()


@needs_subset
def test_resnet20_feature_shapes_on_real_images(subset):
    from onepixel.capture import capture_activations, feature_layer_names
    from onepixel.models import build_model

    model = build_model("resnet20").eval()
    images = torch.from_numpy(load_dataset(subset["test"])["image"].values[:4]).float() / 255
    layers = feature_layer_names(model)
    cubes = capture_activations(model, images, layers, batch_size=2)
    expected = {"stem": (16, 32, 32)} | {f"layer1.{i}": (16, 32, 32) for i in range(3)}
    expected |= {f"layer2.{i}": (32, 16, 16) for i in range(3)} | {f"layer3.{i}": (64, 8, 8) for i in range(3)}
    assert {name: cube.shape[1:] for name, cube in cubes.items()} == expected
    with torch.no_grad():
        stem = model.stem(model.normalize(images))
        layer2 = model.layer2(model.layer1(stem))
    np.testing.assert_allclose(cubes["stem"], stem.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cubes["layer2.2"], layer2.numpy(), rtol=1e-4, atol=1e-4)
