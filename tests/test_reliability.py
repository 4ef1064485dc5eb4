"""Reliability and bad input (issue 8): clear errors, safe loading, nothing lost, reproducible results.

1. config errors in the workflow stop it before any job, in one line (the schema audit is in test_config.py);
2. corrupt, truncated or foreign files (download, netCDF, checkpoints) give one line naming the file;
3. interruption: SIGTERM/user errors in a job script; a real interrupted workflow resumes (marked slow);
4. determinism: the same config and seed give bit-identical attacks, cubes and propagation maps on the CPU;
5. input ranges: any image size and channel count, train-mode models, probability outputs, NaN outputs;
6. load: the engine streams images to the device and its memory does not grow with the image count.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.deterministic
import xarray as xr
from torch import nn

from onepixel.attack import (
    OnePixelAttack,
    load_attack,
    result_to_dataset,
    run_attack_stage,
    save_attack,
)
from onepixel.cli import main
from onepixel.data import (
    download_cifar10,
    load_dataset,
    make_dataset,
    read_cifar10_batches,
    save_dataset,
)
from onepixel.errors import DataError
from onepixel.models import build_model, load_checkpoint, save_checkpoint
from onepixel.torch_utils import deterministic_torch, eval_mode

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: attributes that describe the run (timing, place), not the result
RUN_ATTRS = ("wall_time_s", "candidates_per_s", "seconds", "write_rate", "git_commit", "platform")


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "SNAKEMAKE_PROFILE"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def _copy_workflow(root: Path) -> Path:
    """A scratch copy of the workflow's files (runs never touch the repository's results/)."""
    for name in ("workflow", "config", "src"):
        shutil.copytree(REPO / name, root / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A LeNet checkpoint (3 classes, 1x8x8) and a 24-image test set in the project's formats."""
    root = tmp_path_factory.mktemp("toy")
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=3, in_channels=1, image_size=8).eval()
    images = torch.randint(0, 256, (24, 1, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    labels[::5] = (labels[::5] + 1) % 3  # some misclassified: never attacked
    save_dataset(make_dataset(images.numpy(), labels.numpy(), ["a", "b", "c"], "toy", "test"), root / "test.nc")
    save_checkpoint(root / "lenet.pt", model, "lenet", {"num_classes": 3, "in_channels": 1, "image_size": 8})
    return root


# ===========================================================================
# 1. config errors stop `snakemake` before any job, in one line
# ===========================================================================
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return _copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["attack={popsize: 10}"], "error: unknown key attack.popsize = '10'; allowed keys: F, batch_size"),
        (["train={lr: .nan}"], "error: train.lr: nan is not allowed; must be a finite number"),
        (["dataset={name: mnist}"], "error: dataset.name: 'mnist' is not allowed; allowed values: digits, cifar10"),
        (["locality={max_distance: 0}"], "error: locality.max_distance: 0 is out of range; must be >= 1"),
    ],
    ids=["unknown-key", "nan", "dataset", "distance"],
)
def test_snakemake_stops_on_a_bad_config_before_any_job(workdir, override, expected):
    result = subprocess.run(["snakemake", "-n", "--config", *override], cwd=workdir, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


# ===========================================================================
# 2. files: downloads verified by checksum, corrupt or foreign files named
# ===========================================================================
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _cifar_archive(path: Path, per_batch: int = 3) -> tuple[str, dict[str, str], np.ndarray, np.ndarray]:
    """A small archive in the layout of the official cifar-10-python.tar.gz.

    ``cifar-10-batches-py/`` holds ``batches.meta``, ``data_batch_1..5``, ``test_batch``
    (pickles of dicts with ``batch_label``, ``labels``, ``data`` (N, 3072) uint8 with the
    R, G, B planes row by row, ``filenames``) and ``readme.html``.

    Returns:
        The archive's md5, every batch file's md5, and the test images ``(N, 3, 32, 32)``
        and labels as they must come out.
    """
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {}
    test_images = test_labels = None
    for b, name in enumerate(CIFAR_FILES[1:]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [(b + k) % 10 for k in range(per_batch)]
        members[name] = pickle.dumps({"batch_label": f"{name} of 6", "labels": labels, "data": data,
                                      "filenames": [f"img_{b}_{k}.png" for k in range(per_batch)]}, protocol=2)
        if name == "test_batch":
            test_images, test_labels = data.reshape(-1, 3, 32, 32), np.array(labels)
    members["batches.meta"] = pickle.dumps({"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch,
                                            "num_vis": 3072}, protocol=2)
    members["readme.html"] = b"<html>fixture</html>"
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    sums = {name: hashlib.md5(members[name]).hexdigest() for name in CIFAR_FILES}
    return hashlib.md5(path.read_bytes()).hexdigest(), sums, test_images, test_labels


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines on stderr
        pass


@pytest.fixture()
def cifar_server(tmp_path):
    """The fixture archive served over HTTP on localhost, fetched by the same downloader as the official one."""
    folder = tmp_path / "served"
    folder.mkdir()
    served = folder / "cifar-10-python.tar.gz"
    md5, sums, images, labels = _cifar_archive(served)
    handler = functools.partial(_Quiet, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        yield {"path": served, "url": f"{base}/{served.name}", "base": base, "md5": md5, "sums": sums,
               "images": images, "labels": labels}
        server.shutdown()


def test_download_is_verified_and_a_truncated_archive_is_fetched_again(tmp_path, cifar_server):
    s = cifar_server
    root = tmp_path / "raw"
    root.mkdir()
    # an interrupted earlier download: the first half of the archive
    (root / "cifar-10-python.tar.gz").write_bytes(s["path"].read_bytes()[: s["path"].stat().st_size // 2])
    notices: list[str] = []
    batch_dir = download_cifar10(root, url=s["url"], md5=s["md5"], file_md5s=s["sums"], log=notices.append)
    assert batch_dir == root / "cifar-10-batches-py"
    assert any("truncated or corrupt download" in line and "fetching it again" in line for line in notices), notices
    assert hashlib.md5((root / "cifar-10-python.tar.gz").read_bytes()).hexdigest() == s["md5"]
    _train, test = read_cifar10_batches(batch_dir)
    np.testing.assert_array_equal(test["image"].values, s["images"])
    np.testing.assert_array_equal(test["label"].values, s["labels"])
    # a verified copy is used as it is: no network (the URL is gone)
    notices.clear()
    gone = f"{s['base']}/nowhere.tar.gz"
    assert download_cifar10(root, url=gone, md5=s["md5"], file_md5s=s["sums"], log=notices.append) == batch_dir
    assert notices == []


def test_a_corrupt_download_is_reported_and_removed(tmp_path, cifar_server):
    s = cifar_server
    damaged = s["path"].with_name("damaged.tar.gz")
    raw = bytearray(s["path"].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: same size, other md5
    damaged.write_bytes(bytes(raw))
    root = tmp_path / "raw"
    with pytest.raises(DataError) as info:
        download_cifar10(root, url=f"{s['base']}/{damaged.name}", md5=s["md5"], file_md5s=s["sums"], log=None)
    message = str(info.value)
    assert message.startswith(f"{root / 'cifar-10-python.tar.gz'}: the downloaded archive has md5 ")
    assert f"not the published {s['md5']}" in message and "truncated or corrupt" in message and "\n" not in message
    assert not (root / "cifar-10-python.tar.gz").exists()  # the next run fetches it anew
    assert not (root / "cifar-10-batches-py").exists()


def test_a_damaged_extraction_is_extracted_again(tmp_path, cifar_server):
    s = cifar_server
    root = tmp_path / "raw"
    batch_dir = download_cifar10(root, url=s["url"], md5=s["md5"], file_md5s=s["sums"], log=None)
    test_batch = batch_dir / "test_batch"
    test_batch.write_bytes(test_batch.read_bytes()[:100])  # e.g. a full disk during extraction
    (batch_dir / "data_batch_2").unlink()
    notices: list[str] = []
    gone = f"{s['base']}/nowhere.tar.gz"  # the verified archive is reused: no download
    assert download_cifar10(root, url=gone, md5=s["md5"], file_md5s=s["sums"], log=notices.append) == batch_dir
    assert len(notices) == 1 and "extracting the archive again" in notices[0]
    assert hashlib.md5(test_batch.read_bytes()).hexdigest() == s["sums"]["test_batch"]
    np.testing.assert_array_equal(read_cifar10_batches(batch_dir)[1]["image"].values, s["images"])


def _attack_file(path: Path) -> Path:
    model = build_model("lenet", num_classes=3, in_channels=1, image_size=8).eval()
    images = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    res = OnePixelAttack(model, population=8, generations=1).run(images, torch.zeros(3, dtype=torch.long))
    save_attack(result_to_dataset(res, np.arange(3), {"population": 8}), path)
    return path


def _damaged(kind: str, tmp_path: Path, toy: Path) -> Path:
    """A file that is not what its reader expects."""
    if kind == "truncated":
        path = _attack_file(tmp_path / "truncated.nc")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random":
        path = tmp_path / "random.nc"
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path = tmp_path / "empty.nc"
        path.write_bytes(b"")
    elif kind == "other-stage":  # the reader gets the output of another stage
        path = tmp_path / "other.nc"
        shutil.copy(toy / "test.nc", path)
    else:
        raise ValueError(kind)
    return path


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "other-stage"])
def test_a_bad_attack_file_is_named(tmp_path, toy, kind):
    path = _damaged(kind, tmp_path, toy)
    with pytest.raises(DataError) as info:
        load_attack(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    if kind == "other-stage":
        assert "missing variable(s) success" in message and "expected an attack result" in message
        assert "the file holds image, label" in message
    else:
        assert "not a readable netCDF file" in message


@pytest.mark.parametrize("kind", ["truncated", "random", "other-stage"])
def test_a_bad_dataset_file_is_named(tmp_path, toy, kind):
    path = _attack_file(tmp_path / "attack.nc") if kind == "other-stage" else _damaged(kind, tmp_path, toy)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    if kind == "other-stage":
        assert "missing variable(s) image, label" in message and "adversarial" in message


class _Payload:
    """Unpickling this would run a shell command (it must never be unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoint(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A checkpoint file that must be refused, and the start of the message expected after its name."""
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(3000))
        return path, "not a readable PyTorch checkpoint"
    if kind == "truncated":
        save_checkpoint(path, build_model("lenet"), "lenet", {})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "not a readable PyTorch checkpoint, truncated or corrupt?"
    if kind == "whole-model-pickle":  # torch.save(model): loading it runs the class's code
        torch.save(build_model("lenet"), path)
        return path, "refused, it contains onepixel.models.lenet.LeNet, which would need arbitrary code execution"
    if kind == "code-payload":
        torch.save({"state_dict": build_model("lenet").state_dict(), "x": _Payload(tmp_path / "PWNED")}, path)
        return path, "refused, it contains posix.system, which would need arbitrary code execution"
    if kind == "plain-pickle":  # not torch.save's format at all, with a payload
        path.write_bytes(pickle.dumps(_Payload(tmp_path / "PWNED"), protocol=4))
        return path, "refused by weights_only loading"
    raise ValueError(kind)


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


def test_the_cli_names_a_corrupt_checkpoint_in_one_line(tmp_path, toy, capsys):
    path, _ = _bad_checkpoint("truncated", tmp_path)
    status = main(["attack", "--checkpoint", str(path), "--test", str(toy / "test.nc"), "--out", str(tmp_path / "a.nc")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"error: {path}: not a readable PyTorch checkpoint") and err.count("\n") == 1
    assert not (tmp_path / "a.nc").exists()


# ===========================================================================
# 3. interruption: job scripts clean up on SIGTERM and report user errors in one line
# ===========================================================================
_JOB = """
import os, signal, sys, time
from pathlib import Path
from onepixel.errors import DataError
from onepixel.files import atomic_path
from onepixel.jobs import log_to

out = Path(sys.argv[1])
with log_to(out / "job.log"):
    print("started")
    if sys.argv[2] == "sigterm":
        with atomic_path(out / "result.nc") as tmp:
            tmp.write_bytes(b"half a result")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # never reached: the handler raises at once
            tmp.write_bytes(b"the whole result")
    else:
        raise DataError("checkpoint.pt: not a readable PyTorch checkpoint")
"""


def test_a_job_killed_by_sigterm_leaves_no_partial_file(tmp_path):
    result = subprocess.run([sys.executable, "-c", _JOB, str(tmp_path), "sigterm"], env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.log"]  # no result.nc, no temporary file
    assert (tmp_path / "job.log").read_text() == "started\n"


def test_a_user_error_in_a_job_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-c", _JOB, str(tmp_path), "error"], env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: checkpoint.pt: not a readable PyTorch checkpoint\n"
    assert (tmp_path / "job.log").read_text() == "started\nerror: checkpoint.pt: not a readable PyTorch checkpoint\n"


def test_ctrl_c_in_the_cli_is_one_line(monkeypatch, capsys):
    import onepixel.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(onepixel.cli, "_cmd_validate", interrupted)
    assert main(["validate-config"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and err.count("\n") == 1


# ===========================================================================
# 4. determinism: same config and seed -> bit-identical results on the CPU
# ===========================================================================
def _assert_bit_identical(a: xr.Dataset, b: xr.Dataset, what: str) -> None:
    """Every variable and coordinate equal byte for byte (floats included), and the attributes but the run's."""
    assert set(a.variables) == set(b.variables), what
    for name in a.variables:
        x, y = a[name].variable, b[name].variable
        assert x.dims == y.dims and x.dtype == y.dtype and x.attrs == y.attrs, (what, name)
        assert np.ascontiguousarray(x.values).tobytes() == np.ascontiguousarray(y.values).tobytes(), (what, name)
    keys = lambda ds: {k for k in ds.attrs if k not in RUN_ATTRS}
    assert keys(a) == keys(b), what
    for key in keys(a):
        assert np.array_equal(np.asarray(a.attrs[key]), np.asarray(b.attrs[key])), (what, key)


def test_the_attack_stage_is_bit_identical_across_runs(toy, tmp_path):
    cfg = {"num_images": 8, "population": 24, "generations": 6, "batch_size": 50, "seed": 7, "targeted": True}
    for name in ("a.nc", "b.nc"):
        run_attack_stage(toy / "lenet.pt", toy / "test.nc", tmp_path / name, cfg, device="cpu", log=lambda line: None)
    a, b = load_attack(tmp_path / "a.nc"), load_attack(tmp_path / "b.nc")
    assert a.sizes["sample"] == 8 * 2 and 0 < int(a["success"].sum()) < 16  # a real search: some fooled, some not
    _assert_bit_identical(a, b, "attack")
    assert a.attrs["model_output"] == "logits"


def test_capture_and_propagation_are_bit_identical_across_runs(toy, tmp_path):
    from onepixel.capture import run_capture_stage
    from onepixel.analysis.propagation import run_propagation_stage

    attack = tmp_path / "attack.nc"
    run_attack_stage(toy / "lenet.pt", toy / "test.nc", attack, {"num_images": 6, "population": 16, "generations": 3},
                     device="cpu", log=lambda line: None)
    for run in ("a", "b"):
        run_capture_stage(toy / "lenet.pt", toy / "test.nc", attack, tmp_path / f"cubes_{run}", device="cpu")
        run_propagation_stage(tmp_path / f"cubes_{run}", tmp_path / f"pm_{run}.nc")
    cubes = sorted(p.name for p in (tmp_path / "cubes_a").glob("*.nc"))
    assert cubes and cubes == sorted(p.name for p in (tmp_path / "cubes_b").glob("*.nc"))
    for name in cubes:
        with xr.open_dataset(tmp_path / "cubes_a" / name) as a, xr.open_dataset(tmp_path / "cubes_b" / name) as b:
            _assert_bit_identical(a.load(), b.load(), name)
    with xr.open_dataset(tmp_path / "pm_a.nc") as a, xr.open_dataset(tmp_path / "pm_b.nc") as b:
        _assert_bit_identical(a.load(), b.load(), "propagation")
        assert any(np.issubdtype(v.dtype, np.floating) and v.size for v in a.data_vars.values())


def test_deterministic_torch_sets_and_restores_the_flags():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32,
              torch.are_deterministic_algorithms_enabled())
    fill = torch.utils.deterministic.fill_uninitialized_memory
    with deterministic_torch():
        assert cudnn.deterministic and not cudnn.benchmark and not cudnn.allow_tf32 and not matmul.allow_tf32
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in {":4096:8", ":16:8"}
    assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32,
            torch.are_deterministic_algorithms_enabled()) == before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill


# ===========================================================================
# 5. input ranges
# ===========================================================================
def small_model(channels: int, classes: int = 4, seed: int = 0) -> nn.Module:
    """A random CNN for any input size: strided conv, ReLU, adaptive pooling, linear."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(24, classes)).eval()


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images.float() / 255)


@pytest.mark.parametrize(
    ("channels", "height", "width"),
    [(1, 8, 8), (3, 8, 8), (1, 32, 32), (3, 32, 32), (3, 13, 40), (1, 224, 224), (3, 224, 224)],
    ids=lambda v: str(v),
)
def test_any_image_size_and_channel_count(channels, height, width):
    model = small_model(channels)
    images = torch.randint(0, 256, (3, channels, height, width), generator=torch.Generator().manual_seed(height),
                           dtype=torch.uint8)
    labels = _forward(model, images).argmax(1)
    res = OnePixelAttack(model, population=10, generations=2, batch_size=25, seed=1).run(images, labels)
    assert res.pixel_x.shape == (3, 1) and res.color.shape == (3, 1, channels)
    assert ((res.pixel_x >= 0) & (res.pixel_x < width)).all() and ((res.pixel_y >= 0) & (res.pixel_y < height)).all()
    # the adversarial image is the clean one with exactly the reported pixel replaced (computed here by hand)
    expected = images.clone()
    for i in range(3):
        expected[i, :, res.pixel_y[i, 0], res.pixel_x[i, 0]] = res.color[i, 0]
    assert torch.equal(res.adversarial, expected)
    # probabilities and verdicts are the model's own on the stored images
    logits = _forward(model, res.adversarial)
    torch.testing.assert_close(res.prob_adv, torch.softmax(logits, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.prob_clean, torch.softmax(_forward(model, images), 1), rtol=0, atol=1e-6)
    assert torch.equal(res.success, logits.argmax(1) != labels)
    assert torch.equal(res.queries, 10 * (1 + res.generations)) and (res.rejected_candidates == 0).all()


class _Mixed(nn.Module):
    """BatchNorm model; batch statistics in train mode would change its outputs and running stats."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.BatchNorm2d(4)  # left in eval mode by its user while the rest trains
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.frozen(self.bn(self.conv(x)))))


def test_a_model_in_train_mode_is_attacked_in_eval_mode_and_restored():
    torch.manual_seed(3)
    model = _Mixed()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.train()
    model.frozen.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = copy.deepcopy(model).eval()
    images = torch.randint(60, 200, (5, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    labels = _forward(reference, images).argmax(1)

    res = OnePixelAttack(model, population=12, generations=3, seed=2).run(images, labels)

    assert {name: m.training for name, m in model.named_modules()} == flags  # every module's own flag back
    after = model.state_dict()
    for key, value in state.items():  # running_mean, running_var, num_batches_tracked untouched
        assert torch.equal(after[key], value), key
    expected = OnePixelAttack(reference, population=12, generations=3, seed=2).run(images, labels)
    for name in ("pixel_x", "pixel_y", "color", "success", "queries", "adversarial"):
        assert torch.equal(getattr(res, name), getattr(expected, name)), name
    torch.testing.assert_close(res.prob_clean, torch.softmax(_forward(reference, images), 1), rtol=0, atol=1e-6)


class _PixelRule(nn.Module):
    """3 classes on 1-channel images: class 1 iff pixel (x=2, y=3) > 0.8, class 2 iff pixel (x=5, y=6) < 0.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0, 3, 2], x[:, 0, 6, 5]
        return torch.stack([torch.zeros_like(a), 20 * (a - 0.8), 20 * (0.2 - b)], 1)


class _Softmaxed(nn.Module):
    """The same decision, returning probabilities (a softmax layer at the end)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_PixelRule()(x), 1)


@pytest.mark.parametrize("output", ["auto", "probabilities"])
def test_models_returning_probabilities(output):
    images = torch.randint(80, 180, (6, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.long)
    attack = OnePixelAttack(_Softmaxed(), population=60, generations=30, seed=1, output=output)
    res = attack.run(images, labels)
    assert attack.model_output == "probabilities"
    # the stored probabilities are the model's own output (not a softmax of it)
    torch.testing.assert_close(res.prob_adv, _forward(_Softmaxed(), res.adversarial), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.prob_clean, _forward(_Softmaxed(), images), rtol=0, atol=1e-6)
    # the search is the one on logits: both find the known pixels
    assert res.success.all()
    at_a = (res.pixel_x[:, 0] == 2) & (res.pixel_y[:, 0] == 3)
    at_b = (res.pixel_x[:, 0] == 5) & (res.pixel_y[:, 0] == 6)
    assert (at_a | at_b).all()
    logit_attack = OnePixelAttack(_PixelRule(), population=60, generations=30, seed=1,
                                  output="auto" if output == "auto" else "logits")
    logit_res = logit_attack.run(images, labels)
    assert logit_attack.model_output == "logits" and logit_res.success.all()
    torch.testing.assert_close(logit_res.prob_adv, torch.softmax(_forward(_PixelRule(), logit_res.adversarial), 1))


class _NaNAbove(nn.Module):
    """_PixelRule, but NaN (or +inf) outputs whenever some pixel is brighter than 0.9; counts them per image.

    ``clean`` are the attacked images: a candidate belongs to the image it differs from in at most one pixel.
    """

    def __init__(self, clean: torch.Tensor, value: float) -> None:
        super().__init__()
        self.clean = clean.float() / 255
        self.value = value
        self.calls: list[torch.Tensor] = []  # per forward call: bad outputs per image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _PixelRule()(x)
        bad = (x > 0.9).flatten(1).any(1)
        owner = (x[:, None] != self.clean[None]).flatten(2).sum(2).argmin(1)
        self.calls.append(torch.bincount(owner[bad], minlength=len(self.clean)))
        return torch.where(bad[:, None], torch.full_like(out, self.value), out)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_outputs_are_rejected_counted_and_the_run_goes_on(value, tmp_path):
    images = torch.randint(60, 180, (4, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    model = _NaNAbove(images, value)
    labels = torch.zeros(4, dtype=torch.long)
    attack = OnePixelAttack(model, population=50, generations=20, seed=3, batch_size=100)
    res = attack.run(images, labels)
    # forward calls: the probe, the DE's candidate batches, then the clean and adversarial re-evaluation
    counted = torch.stack(model.calls[1:-2]).sum(0)
    assert counted.sum() > 0  # the colour prior N(128, 127) draws many values > 229
    assert torch.equal(res.rejected_candidates, counted)
    assert attack.last_stats["rejected"] == int(counted.sum())
    # rejected candidates never count as successes; bright pixels (> 229) were never chosen
    assert (res.color[:, 0, 0] <= 229).all() and torch.isfinite(res.prob_adv).all()
    assert res.success.sum() >= 2 and torch.equal(res.queries, 50 * (1 + res.generations))
    # stored with the result
    save_attack(result_to_dataset(res, np.arange(4), {"population": 50}), tmp_path / "a.nc")
    np.testing.assert_array_equal(load_attack(tmp_path / "a.nc")["rejected_candidates"].values, counted.numpy())


def test_eval_mode_restores_each_module():
    model = _Mixed().train()
    model.frozen.eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model.bn.training and not model.frozen.training


# ===========================================================================
# 6. load: images stream to the device; memory does not grow with the image count
# ===========================================================================
def test_the_engine_moves_images_to_the_device_a_batch_at_a_time(monkeypatch):
    """Only the images entering the batch (and a re-evaluation chunk) are copied, never the whole set."""
    n, population, batch_size = 300, 10, 40  # 4 images in flight, re-evaluation chunks of 40
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model = small_model(1)
    labels = _forward(model, images).argmax(1)
    storage = images.untyped_storage().data_ptr()
    moved: list[int] = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if self.dim() == 4 and self.dtype == torch.uint8 and self.untyped_storage().data_ptr() == storage:
            moved.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    res = OnePixelAttack(model, population=population, generations=3, batch_size=batch_size).run(images, labels)
    monkeypatch.undo()
    assert len(res) == n
    assert max(moved) <= batch_size  # never the whole set
    assert sum(moved) == 4 + n + n  # the probe, each image once into the batch, once for re-evaluation


@pytest.mark.slow
def test_attack_memory_does_not_grow_with_the_image_count():
    """benchmarks/attack_memory.py at 500 and 5,000 images: the peak grows by the result arrays only.

    With glibc's mmap threshold fixed, so that the peak shows the arrays the engine keeps rather than how
    the C library's heap happens to fragment (see the benchmark's docstring)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import attack_memory
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import argparse

    args = argparse.Namespace(channels=3, size=16, population=4, generations=1, batch_size=1024, device="cpu",
                              threads=1)
    small, big = (attack_memory.measure_in_subprocess(n, args, fixed_mmap=True) for n in (500, 5000))
    assert big["result"] > 9 * small["result"] > 0 and big["candidates"] > 9 * small["candidates"]
    growth = (big["peak"] - big["result"]) - (small["peak"] - small["result"])
    assert growth < 3 * 2**20, f"working memory grew by {growth / 2**20:.1f} MiB from 500 to 5,000 images"


# ===========================================================================
# 3. interruption of a real workflow run (SIGINT during the attack, SIGTERM during capture)
# ===========================================================================
def _job_blocks(text: str) -> dict[int, tuple[str, str]]:
    """Snakemake's log: {jobid: (rule, output)} of every job it started."""
    jobs = {}
    for block in re.split(r"\n\s*\n", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        jobid = re.search(r"^\s+jobid: (\d+)", block, re.MULTILINE)
        output = re.search(r"^\s+output: (.+)$", block, re.MULTILINE)
        if rule and jobid:
            jobs[int(jobid.group(1))] = (rule.group(1), output.group(1).strip() if output else "")
    return jobs


def _finished(text: str) -> list[int]:
    return [int(j) for j in re.findall(r"Finished jobid: (\d+) \(Rule: \w+\)", text)]


def _job_counts(text: str) -> dict[str, int]:
    """The ``Job stats`` table Snakemake prints before running: {rule: count}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["job", "count"])
    counts = {}
    for line in lines[start + 2:]:
        parts = line.split()
        if not parts or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _snakemake(root: Path, args: list[str], log: Path, trigger=None, sig: int = signal.SIGINT) -> tuple[int, str]:
    """Run snakemake in its own process group; once ``trigger(output so far)`` is true, send ``sig`` to the
    whole group (as Ctrl-C in a terminal or a batch scheduler's cancel does). Returns (status, output)."""
    fired = False
    with open(log, "w") as handle:
        proc = subprocess.Popen(["snakemake", *args], cwd=root, env=_env(), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while trigger is not None and proc.poll() is None:
                if trigger(log.read_text()):
                    os.killpg(proc.pid, sig)
                    fired = True
                    break
                time.sleep(0.01)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert trigger is None or fired, f"the run ended before the moment to interrupt it:\n{text[-3000:]}"
    return proc.returncode, text


def _leftovers(root: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.<random>.tmp``) under results/ and resources/."""
    return [p for top in ("results", "resources") for p in (root / top).rglob(".*.tmp")]


@pytest.mark.slow
def test_an_interrupted_workflow_resumes_without_redoing_finished_shards(tmp_path):
    """Ctrl-C during the sharded attack, then SIGTERM during capture, then a clean rerun: shards that had
    finished are kept (same mtime, not rescheduled), nothing partial is taken as complete, and the merged
    attack equals an unsharded one. Finally a corrupt user checkpoint fails its job with one line."""
    root = _copy_workflow(tmp_path / "run")
    config = ["--cores", "1", "--configfile", "config/test.yaml", "--config", "models=[lenet]", "train={epochs: 1}",
              "attack={shards: 3, num_images: 6, population: 20, generations: 4}", "device=cpu", "threads=1",
              "capture={batch_size: 2}"]
    target = "results/digits/cubes/lenet"
    shard_dir = root / "results/digits/attack/lenet"

    # 1: Ctrl-C once a shard job has finished and the next one is running (its script has opened its log)
    def next_shard_running(text: str) -> bool:
        jobs = _job_blocks(text)
        finished = sum(jobs.get(j, ("",))[0] == "attack_shard" for j in _finished(text))
        started = len(list((root / "logs/digits").glob("attack_lenet_shard_*.log")))
        return finished >= 1 and started > finished

    status, text = _snakemake(root, [*config, "--", target], tmp_path / "run1.log",
                              trigger=next_shard_running, sig=signal.SIGINT)
    assert status != 0
    jobs = _job_blocks(text)
    done = {Path(jobs[j][1]).name for j in _finished(text) if jobs[j][0] == "attack_shard"}
    assert len(done) >= 1
    present = {p.name for p in shard_dir.glob("shard_*.nc")}
    assert done <= present and len(present) < 3 and not (root / "results/digits/attack/lenet.nc").exists()
    for name in present:  # whatever exists is complete
        assert load_attack(shard_dir / name).sizes["sample"] == 2
    assert _leftovers(root) == []
    mtimes = {name: (shard_dir / name).stat().st_mtime_ns for name in done}

    # 2: resume; SIGTERM to the whole group (what a batch scheduler sends) once capture is running
    capture_log = root / "logs/digits/capture_lenet.log"
    status, text = _snakemake(root, [*config, "--rerun-incomplete", "--", target], tmp_path / "run2.log",
                              trigger=lambda text: capture_log.exists(), sig=signal.SIGTERM)
    assert status != 0
    counts = _job_counts(text)
    assert counts.get("attack_shard") == 3 - len(done), counts  # finished shards are not redone
    assert "train" not in counts and "attack_select" not in counts and "prepare_data" not in counts
    assert {name: (shard_dir / name).stat().st_mtime_ns for name in done} == mtimes
    assert sorted(p.name for p in shard_dir.glob("shard_*.nc")) == [f"shard_{i}-of-3.nc" for i in range(3)]
    assert not (root / target / "layers.json").exists()  # capture did not complete
    assert _leftovers(root) == []

    # 3: finish; only capture is left
    status, text = _snakemake(root, [*config, "--rerun-incomplete", "--", target], tmp_path / "run3.log")
    assert status == 0, text[-3000:]
    assert _job_counts(text) == {"capture": 1}
    assert {name: (shard_dir / name).stat().st_mtime_ns for name in done} == mtimes
    cubes = sorted((root / target).glob("*.nc"))
    assert cubes and (root / target / "layers.json").is_file()
    for cube in cubes:
        with xr.open_dataset(cube) as ds:
            assert ds.sizes["sample"] == 6
    assert _leftovers(root) == []

    # the merged attack equals an unsharded attack of the same model (streams keyed by test-set index)
    merged = load_attack(root / "results/digits/attack/lenet.nc")
    whole = run_attack_stage(root / "results/digits/models/lenet.pt", root / "resources/datasets/digits/test.nc",
                             tmp_path / "unsharded.nc", {"num_images": 6, "population": 20, "generations": 4},
                             device="cpu", log=lambda line: None)
    for name in ("sample_id", "success", "pixel_x", "pixel_y", "color", "adversarial", "queries"):
        np.testing.assert_array_equal(merged[name].values, whole[name].values.astype(merged[name].dtype), name)

    # 4: a user error inside a job (a corrupt checkpoint of the user's) is one line, no traceback
    bad = root / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    status, text = _snakemake(root, [*config[:-1], "capture={batch_size: 2}",
                                     "train={epochs: 1, checkpoints: {lenet: bad.pt}}", "--",
                                     "results/digits/models/lenet.pt"], tmp_path / "run4.log")
    assert status != 0
    errors = {line for line in text.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1, text[-3000:]
    assert errors.pop().startswith("error: bad.pt: not a readable PyTorch checkpoint")
    assert "Traceback" not in text
