"""Tests of onepixel.data: digits split, netCDF round trip, CIFAR-10 reader and downloader."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from sklearn.datasets import load_digits

from helpers import _attack_file, _damaged
from onepixel.data import (
    CIFAR10_MD5,
    CIFAR10_URL,
    channel_stats,
    cifar10,
    download_cifar10,
    load_dataset,
    load_digits_split,
    make_dataset,
    prepare_dataset,
    read_cifar10_batches,
    save_dataset,
    to_float,
)
from onepixel.errors import ConfigError, DataError
from onepixel.files import write_netcdf

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 3


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_and_stratification():
    train, test = load_digits_split(test_fraction=0.25, seed=0)
    assert train.sizes["sample"] + test.sizes["sample"] == 1797
    assert test.sizes["sample"] == 450  # ceil(0.25 * 1797)
    assert train["image"].shape[1:] == (1, 8, 8)
    per_class = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(test["label"].values, minlength=10)
    assert np.all(np.abs(test_counts - 0.25 * per_class) <= 1)
    assert list(train["class_name"].values) == [str(d) for d in range(10)]
    assert train.attrs == {"dataset": "digits", "split": "train"}
    np.testing.assert_array_equal(train["sample"].values, np.arange(train.sizes["sample"]))


def test_digits_split_is_seeded():
    first, _ = load_digits_split(seed=0)
    again, _ = load_digits_split(seed=0)
    other, _ = load_digits_split(seed=1)
    xr.testing.assert_identical(first, again)
    assert not np.array_equal(first["label"].values, other["label"].values)


def test_digits_values_are_rescaled_originals():
    train, test = load_digits_split()
    images = np.concatenate([train["image"].values, test["image"].values])
    assert images.dtype == np.uint8 and images.min() == 0 and images.max() == 255
    back = np.round(images.astype(np.float64) * 16 / 255).reshape(len(images), -1)
    original = load_digits().data
    assert sorted(map(bytes, back.astype(np.uint8))) == sorted(map(bytes, original.astype(np.uint8)))
    # the value 8 of 16 is 127.5 -> 128, the value 1 is 15.9 -> 16
    assert set(np.unique(images)) == {round(v * 255 / 16 + 1e-9) for v in range(17)}


def test_digits_bad_fraction():
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digits_split(test_fraction=1.5)


# ---------------------------------------------------------------- dataset files


def _tiny_dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4, 6), dtype=np.uint8)
    return make_dataset(images, np.array([0, 1, 2, 1, 0]), ["a", "b", "c"], "toy", "train")


def test_make_dataset_layout():
    ds = _tiny_dataset()
    assert ds["image"].dims == ("sample", "channel", "y", "x")
    assert ds["image"].dtype == np.uint8 and ds["label"].dtype == np.int64
    assert ds["class_name"].dims == ("class",)
    assert "long_name" in ds["image"].attrs and "units" in ds["label"].attrs


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 1, 4, 4), np.float32), [0, 1], "uint8"),
        (np.zeros((2, 4, 4), np.uint8), [0, 1], "uint8"),
        (np.zeros((2, 1, 4, 4), np.uint8), [0], "labels"),
        (np.zeros((2, 1, 4, 4), np.uint8), [0, 3], r"\[0, 3\)"),
    ],
)
def test_make_dataset_validates(images, labels, message):
    with pytest.raises(DataError, match=message):
        make_dataset(images, np.array(labels), ["a", "b", "c"], "toy", "test")


def test_save_load_round_trip(tmp_path):
    ds = _tiny_dataset()
    path = tmp_path / "sub" / "train.nc"
    save_dataset(ds, path)
    loaded = load_dataset(path)
    xr.testing.assert_identical(loaded, ds)
    assert loaded["image"].dtype == np.uint8
    assert loaded["image"].encoding.get("zlib") is True
    assert [p.name for p in path.parent.iterdir()] == ["train.nc"]  # no temporary left behind


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="missing.nc: file not found"):
        load_dataset(tmp_path / "missing.nc")
    text = tmp_path / "notes.nc"
    text.write_text("not a netCDF file")
    with pytest.raises(DataError, match="notes.nc"):
        load_dataset(text)
    no_label = tmp_path / "no_label.nc"
    write_netcdf(_tiny_dataset().drop_vars("label"), no_label, kind="dataset")
    with pytest.raises(DataError, match="no_label.nc: missing variable.*label"):
        load_dataset(no_label)
    as_float = tmp_path / "float.nc"
    save_dataset(_tiny_dataset().assign(image=lambda d: d["image"].astype(np.float32)), as_float)
    with pytest.raises(DataError, match="float.nc: variable image must be uint8"):
        load_dataset(as_float)


def test_to_float():
    images = np.array([[[[0, 51], [255, 128]]]], dtype=np.uint8)
    out = to_float(images)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(out.numpy(), [[[[0.0, 0.2], [1.0, 128 / 255]]]], rtol=1e-6)
    assert torch.equal(to_float(torch.from_numpy(images)), out)
    with pytest.raises(TypeError, match="uint8"):
        to_float(images.astype(np.float32))


def test_channel_stats_match_numpy():
    ds = _tiny_dataset()
    mean, std = channel_stats(ds)
    pixels = ds["image"].values.astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    assert len(mean) == 3 and all(isinstance(v, float) for v in mean + std)


def test_prepare_digits_and_unknown(tmp_path):
    train_path, test_path = prepare_dataset("digits", tmp_path / "digits", test_fraction=0.2, seed=3)
    train, test = load_digits_split(test_fraction=0.2, seed=3)
    xr.testing.assert_identical(load_dataset(train_path), train)
    xr.testing.assert_identical(load_dataset(test_path), test)
    with pytest.raises(ConfigError, match="'mnist'; allowed: digits, cifar10"):
        prepare_dataset("mnist", tmp_path)


# ---------------------------------------------------------------- CIFAR-10


def _pixel(k: int, c: int, y: int, x: int) -> int:
    """Known value of image k, channel c (0=R), row y, column x in the fixture."""
    return (11 * k + 80 * c + 5 * y + x) % 256


def _cifar_row(k: int) -> np.ndarray:
    """One image in CIFAR-10's layout: 1024 R values, 1024 G, 1024 B, each plane row by row."""
    planes = [[_pixel(k, c, y, x) for y in range(32) for x in range(32)] for c in range(3)]
    return np.array(planes[0] + planes[1] + planes[2], dtype=np.uint8)


def _write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _write_cifar(root: Path) -> Path:
    """A CIFAR-10 folder with PER_BATCH images per batch; image k of the train set has label k % 10."""
    batch_dir = root / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(files):
        ks = range(b * PER_BATCH, (b + 1) * PER_BATCH)
        batch = {
            "batch_label": f"{name} of 6",
            "labels": [k % 10 for k in ks],
            "data": np.stack([_cifar_row(k) for k in ks]),
            "filenames": [f"img_{k}.png" for k in ks],
        }
        _write_pickle(batch_dir / name, batch)
    _write_pickle(batch_dir / "batches.meta", {"label_names": CIFAR_NAMES, "num_vis": 3072, "num_cases_per_batch": 3})
    return batch_dir


def test_read_cifar10_batches(tmp_path):
    train, test = read_cifar10_batches(_write_cifar(tmp_path))
    assert train["image"].shape == (5 * PER_BATCH, 3, 32, 32)
    assert test["image"].shape == (PER_BATCH, 3, 32, 32)
    assert list(train["class_name"].values) == CIFAR_NAMES
    assert train.attrs == {"dataset": "cifar10", "split": "train"}
    for k, c, y, x in [(0, 0, 0, 1), (1, 1, 2, 5), (4, 2, 31, 0), (14, 0, 7, 30)]:
        assert train["image"].values[k, c, y, x] == _pixel(k, c, y, x)
    assert test["image"].values[2, 2, 1, 3] == _pixel(5 * PER_BATCH + 2, 2, 1, 3)
    np.testing.assert_array_equal(train["label"].values, np.arange(5 * PER_BATCH) % 10)


def test_read_cifar10_errors_name_the_file(tmp_path):
    batch_dir = _write_cifar(tmp_path)
    (batch_dir / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: CIFAR-10 batch file not found"):
        read_cifar10_batches(batch_dir)
    (batch_dir / "data_batch_3").write_bytes(b"\x80\x02}q\x00(garbage")
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR-10 pickle"):
        read_cifar10_batches(batch_dir)
    _write_pickle(batch_dir / "data_batch_3", {"labels": [0, 1], "data": np.zeros((2, 100), np.uint8)})
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be an \(N, 3072\) array; got \(2, 100\)"):
        read_cifar10_batches(batch_dir)
    _write_pickle(batch_dir / "data_batch_3", {"labels": [0, 12], "data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError, match="data_batch_3: 'labels'"):
        read_cifar10_batches(batch_dir)


class _Payload:
    """Unpickling this would run code (here: harmless os.getcwd)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_read_cifar10_refuses_code(tmp_path):
    batch_dir = _write_cifar(tmp_path)
    _write_pickle(batch_dir / "test_batch", {"data": _Payload(), "labels": []})
    with pytest.raises(DataError, match="test_batch: .*refusing global posix.getcwd"):
        read_cifar10_batches(batch_dir)


def test_download_cifar10_calls_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append({"url": url, "root": Path(download_root), "filename": filename, "md5": md5})
        (Path(download_root) / "cifar-10-batches-py").mkdir(parents=True)

    monkeypatch.setattr(cifar10, "download_and_extract_archive", fake_download)
    assert download_cifar10(tmp_path) == tmp_path / "cifar-10-batches-py"
    assert calls == [{"url": CIFAR10_URL, "root": tmp_path, "filename": "cifar-10-python.tar.gz", "md5": CIFAR10_MD5}]
    assert CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


def test_download_cifar10_skips_verified_copy(tmp_path, monkeypatch):
    checked = []
    monkeypatch.setattr(cifar10, "check_integrity", lambda path, md5: checked.append((Path(path).name, md5)) or True)
    monkeypatch.setattr(cifar10, "download_and_extract_archive", lambda *a, **k: pytest.fail("downloaded"))
    assert download_cifar10(tmp_path) == tmp_path / "cifar-10-batches-py"
    assert ("data_batch_1", "c99cafc152244af753f735de768cd75f") in checked
    assert ("test_batch", "40351d587109b95175f43aff81a1287e") in checked
    assert len(checked) == 7


def test_download_cifar10_failure_is_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar10, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10 .*network unreachable"):
        download_cifar10(tmp_path)


def test_prepare_cifar10_from_raw(tmp_path, monkeypatch):
    batch_dir = _write_cifar(tmp_path / "raw")
    monkeypatch.setattr(cifar10, "check_integrity", lambda path, md5: Path(path).exists())
    train_path, test_path = prepare_dataset("cifar10", tmp_path / "out", raw_root=tmp_path / "raw")
    expected_train, expected_test = read_cifar10_batches(batch_dir)
    xr.testing.assert_identical(load_dataset(train_path), expected_train)
    xr.testing.assert_identical(load_dataset(test_path), expected_test)


# ---------------------------------------------------------------- downloads verified, damaged files named
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
        members[name] = pickle.dumps(
            {
                "batch_label": f"{name} of 6",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{b}_{k}.png" for k in range(per_batch)],
            },
            protocol=2,
        )
        if name == "test_batch":
            test_images, test_labels = data.reshape(-1, 3, 32, 32), np.array(labels)
    members["batches.meta"] = pickle.dumps(
        {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, protocol=2
    )
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
        yield {
            "path": served,
            "url": f"{base}/{served.name}",
            "base": base,
            "md5": md5,
            "sums": sums,
            "images": images,
            "labels": labels,
        }
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


@pytest.mark.parametrize("kind", ["truncated", "random", "other-stage"])
def test_a_bad_dataset_file_is_named(tmp_path, toy, kind):
    path = _attack_file(tmp_path / "attack.nc") if kind == "other-stage" else _damaged(kind, tmp_path, toy)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    if kind == "other-stage":
        assert message == f"{path}: is a onepixel-attack/2 file, expected onepixel-dataset/1"
