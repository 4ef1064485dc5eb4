"""CIFAR-10: download (checksum-verified), pre-staged copies, and conversion of the python pickle batches."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import xarray as xr

from onepixel.data.cifar10_layout import (
    CIFAR10_ARCHIVE,
    CIFAR10_FILE_NAMES,
    CIFAR10_FOLDER,
    TRAIN_BATCHES,
    locate_cifar10,
)
from onepixel.data.dataset import make_dataset
from onepixel.errors import DataError
from onepixel.files import one_line

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


def check_integrity(path: str | os.PathLike[str], md5: str) -> bool:
    """Whether ``path`` exists and has md5 ``md5`` (torchvision's check, imported on first use)."""
    from torchvision.datasets.utils import check_integrity as torchvision_check_integrity

    return bool(torchvision_check_integrity(str(path), md5))


def download_and_extract_archive(url: str, download_root: Path, filename: str, md5: str) -> None:
    """torchvision's downloader (which checks the archive's md5), imported on first use: it pulls in torch."""
    from torchvision.datasets.utils import download_and_extract_archive as download

    download(url, download_root=str(download_root), filename=filename, md5=md5)


# Per-file md5 sums, as listed by torchvision.datasets.CIFAR10.
CIFAR10_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
SIDE = 32
CHANNELS = 3

# The only globals a CIFAR-10 batch pickle needs (numpy arrays); anything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain Python objects (no code execution)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        return super().find_class(module, name)


def download_cifar10(
    root: str | os.PathLike[str],
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    file_md5s: Mapping[str, str] | None = None,
    log: Callable[[str], Any] | None = print,
) -> Path:
    """Download and extract CIFAR-10 into ``root`` unless a verified copy is already there.

    Every step is checked against published md5 checksums, so a truncated or corrupt
    file is never used:

    * an extracted ``cifar-10-batches-py`` whose files all match ``file_md5s``
      (torchvision's per-file sums) is used as it is, without network;
    * otherwise a partly extracted or damaged folder is removed (with a notice to
      ``log``) and extracted again from the archive;
    * an archive ``cifar-10-python.tar.gz`` already in ``root`` (e.g. from an
      interrupted download) that does not match ``md5`` is fetched again (notice to
      ``log``); torchvision's downloader checks the new archive's md5 too.

    ``url``, ``md5`` and ``file_md5s`` default to the official archive; tests pass a
    fixture's.

    Returns:
        ``<root>/cifar-10-batches-py``.

    Raises:
        DataError: one line naming the file: the download failed, or the fetched
            archive does not match ``md5`` (it is removed, so the next run fetches it
            again).
    """
    root = Path(root)
    file_md5s = CIFAR10_FILES if file_md5s is None else file_md5s
    say = log if log is not None else (lambda line: None)
    batch_dir = root / CIFAR10_FOLDER
    if all(check_integrity(batch_dir / name, sum_) for name, sum_ in file_md5s.items()):
        return batch_dir
    archive = root / CIFAR10_ARCHIVE
    if archive.is_file() and not check_integrity(archive, md5):
        say(
            f"{archive}: md5 {_file_md5(archive)} is not the published {md5} (a truncated or corrupt download); "
            "fetching it again"
        )
        archive.unlink()
    if batch_dir.exists():
        bad = next(name for name, sum_ in file_md5s.items() if not check_integrity(batch_dir / name, sum_))
        say(
            f"{batch_dir / bad}: missing or its md5 is not the published one (a partial or damaged extraction); "
            "extracting the archive again"
        )
        shutil.rmtree(batch_dir)
    try:
        download_and_extract_archive(url, download_root=root, filename=CIFAR10_ARCHIVE, md5=md5)
    except RuntimeError as exc:
        if archive.is_file() and not check_integrity(archive, md5):
            got = _file_md5(archive)
            archive.unlink()
            raise DataError(
                f"{archive}: the downloaded archive has md5 {got}, not the published {md5} (truncated or corrupt "
                f"download from {url}); removed it, run again to fetch it anew"
            ) from exc
        raise DataError(
            f"{root}: could not download CIFAR-10 from {url} ({one_line(str(exc))}); "
            f"download it yourself and extract it so that {batch_dir} exists"
        ) from exc
    except OSError as exc:
        raise DataError(
            f"{root}: could not download CIFAR-10 from {url} ({exc.__class__.__name__}: {one_line(str(exc))}); "
            f"download it yourself and extract it so that {batch_dir} exists"
        ) from exc
    if not batch_dir.is_dir():
        raise DataError(f"{batch_dir}: missing after extracting {archive}")
    return batch_dir


def _unpickle(where: str, raw: bytes) -> dict[str, Any]:
    """Load one CIFAR-10 pickle (latin1 strings, numpy arrays only) from its bytes; ``where`` names it in errors."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # pickle raises many types for corrupt input
        raise DataError(f"{where}: not a readable CIFAR-10 pickle ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_batch(where: str, batch: dict[str, Any], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch: ``data`` (N, 3072) R,G,B planes row-major -> ``(N, 3, 32, 32)`` uint8, labels int64."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != CHANNELS * SIDE * SIDE:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{where}: 'data' must be an (N, {CHANNELS * SIDE * SIDE}) array; got {shape}")
    if data.dtype != np.uint8:
        raise DataError(f"{where}: 'data' must be uint8; got {data.dtype}")
    try:
        labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros(0, dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataError(f"{where}: 'labels' must be {data.shape[0]} class indices in [0, {num_classes})")
    return data.reshape(-1, CHANNELS, SIDE, SIDE), labels


def _md5(raw: bytes) -> str:
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def _read_folder(batch_dir: Path) -> dict[str, tuple[str, dict[str, Any], str]]:
    """``name -> (where, unpickled dict, md5 of the file)`` for every file of ``CIFAR10_FILES`` in ``batch_dir``."""
    out = {}
    for name in CIFAR10_FILE_NAMES:
        path = batch_dir / name
        if not path.is_file():
            raise DataError(f"{path}: CIFAR-10 batch file not found")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read the CIFAR-10 batch file ({exc.strerror or exc})") from exc
        out[name] = (str(path), _unpickle(str(path), raw), _md5(raw))
    return out


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The CIFAR-10 file a tar member is (``cifar-10-batches-py/<name>`` or a bare ``<name>``), else None."""
    parts = PurePosixPath(member.name).parts
    if not member.isfile() or not parts or parts[-1] not in CIFAR10_FILE_NAMES:
        return None
    return parts[-1] if len(parts) == 1 or parts[-2] == CIFAR10_FOLDER else None


def _read_archive(archive: Path) -> dict[str, tuple[str, dict[str, Any], str]]:
    """Like :func:`_read_folder`, read straight from a tar(.gz) archive (nothing is extracted to disk)."""
    out: dict[str, tuple[str, dict[str, Any], str]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = _member_name(member)
                if name is None or name in out:
                    continue
                handle = tar.extractfile(member)
                raw = handle.read() if handle is not None else b""
                where = f"{archive}:{member.name}"
                out[name] = (where, _unpickle(where, raw), _md5(raw))
    except DataError:
        raise
    except Exception as exc:  # tarfile/gzip/zlib raise many types for corrupt archives
        raise DataError(f"{archive}: not a readable tar.gz archive ({exc.__class__.__name__}: {exc})") from exc
    for name in CIFAR10_FILE_NAMES:
        if name not in out:
            raise DataError(f"{archive}:{CIFAR10_FOLDER}/{name}: CIFAR-10 batch file not found in the archive")
    return out


def _to_datasets(files: dict[str, tuple[str, dict[str, Any], str]]) -> tuple[xr.Dataset, xr.Dataset]:
    """Train (data_batch_1..5) and test (test_batch) data sets from the unpickled files."""
    meta_where, meta, _ = files["batches.meta"]
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{meta_where}: 'label_names' must be a non-empty list of class names")
    train = [_read_batch(files[name][0], files[name][1], len(names)) for name in TRAIN_BATCHES]
    test_images, test_labels = _read_batch(files["test_batch"][0], files["test_batch"][1], len(names))
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return (
        make_dataset(train_images, train_labels, names, "cifar10", "train"),
        make_dataset(test_images, test_labels, names, "cifar10", "test"),
    )


def read_cifar10_batches(batch_dir: str | os.PathLike[str]) -> tuple[xr.Dataset, xr.Dataset]:
    """Convert the extracted ``cifar-10-batches-py`` folder into ``(train, test)`` data sets.

    Returns:
        Train (data_batch_1..5) and test (test_batch) sets named "cifar10", images
        ``(N, 3, 32, 32)`` uint8, class names from ``batches.meta``.
    """
    return _to_datasets(_read_folder(Path(batch_dir)))


def read_cifar10_root(
    root: str | os.PathLike[str], log: Callable[[str], Any] | None = print
) -> tuple[xr.Dataset, xr.Dataset]:
    """Read a pre-staged CIFAR-10 copy (no network): a batch folder, a folder holding it, or the tar.gz.

    The official set is recognised by its published md5 checksums (every file's,
    as torchvision's ``CIFAR10`` lists them, or the archive's); any other copy in
    the official layout (a part of CIFAR-10, a custom set) is accepted too. Either
    way one line saying which it is and how many images it holds goes to ``log``.
    The data sets get the attributes ``source`` (``root``) and ``official_checksums``
    (1 or 0).

    Returns:
        ``(train, test)`` as :func:`read_cifar10_batches`.

    Raises:
        DataError: one line naming the file that is missing, unreadable, not a
            CIFAR-10 pickle, or has the wrong shape or labels.
    """
    kind, path = locate_cifar10(root)
    if kind == "archive":
        files = _read_archive(path)
        official = _file_md5(path) == CIFAR10_MD5
    else:
        files = _read_folder(path)
        official = all(files[name][2] == md5 for name, md5 in CIFAR10_FILES.items())
    train, test = _to_datasets(files)
    n_train, n_test = train.sizes["sample"], test.sizes["sample"]
    if official:
        notice = (
            f"{root}: the official CIFAR-10 set ({n_train} training, {n_test} test images; "
            "published md5 checksums verified)"
        )
    else:
        notice = (
            f"{root}: {n_train} training and {n_test} test images in CIFAR-10's layout; "
            "not the official CIFAR-10 set (its checksums differ from the published ones), "
            "used as a partial or custom copy"
        )
    for ds in (train, test):
        ds.attrs.update(source=str(root), official_checksums=int(official))
    if log is not None:
        log(notice)
    return train, test


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
