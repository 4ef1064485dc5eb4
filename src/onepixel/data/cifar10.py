"""CIFAR-10: download (checksum-verified) and conversion of the python pickle batches."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from onepixel.data.dataset import make_dataset
from onepixel.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
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
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
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


def download_cifar10(root: str | os.PathLike[str]) -> Path:
    """Download and extract CIFAR-10 into ``root`` unless a verified copy is already there.

    The archive's md5 is checked by torchvision; an existing copy is kept when every
    file matches torchvision's per-file md5.

    Returns:
        ``<root>/cifar-10-batches-py``.
    """
    root = Path(root)
    batch_dir = root / CIFAR10_FOLDER
    if all(check_integrity(batch_dir / name, md5) for name, md5 in CIFAR10_FILES.items()):
        return batch_dir
    try:
        download_and_extract_archive(CIFAR10_URL, download_root=root, filename=Path(CIFAR10_URL).name, md5=CIFAR10_MD5)
    except (OSError, RuntimeError) as exc:
        raise DataError(
            f"{root}: could not download CIFAR-10 from {CIFAR10_URL} ({exc.__class__.__name__}: {exc}); "
            f"download it yourself and extract it so that {batch_dir} exists"
        ) from exc
    if not batch_dir.is_dir():
        raise DataError(f"{batch_dir}: missing after extracting {CIFAR10_URL}")
    return batch_dir


def _unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR-10 pickle (latin1 strings, numpy arrays only) as a dict."""
    if not path.is_file():
        raise DataError(f"{path}: CIFAR-10 batch file not found")
    try:
        with open(path, "rb") as handle:
            obj = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # pickle raises many types for corrupt input
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch: ``data`` (N, 3072) R,G,B planes row-major -> ``(N, 3, 32, 32)`` uint8, labels int64."""
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != CHANNELS * SIDE * SIDE:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: 'data' must be an (N, {CHANNELS * SIDE * SIDE}) array; got {shape}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8; got {data.dtype}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataError(f"{path}: 'labels' must be {data.shape[0]} class indices in [0, {num_classes})")
    return data.reshape(-1, CHANNELS, SIDE, SIDE), labels


def read_cifar10_batches(batch_dir: str | os.PathLike[str]) -> tuple[xr.Dataset, xr.Dataset]:
    """Convert the extracted ``cifar-10-batches-py`` folder into ``(train, test)`` data sets.

    Returns:
        Train (data_batch_1..5) and test (test_batch) sets named "cifar10", images
        ``(N, 3, 32, 32)`` uint8, class names from ``batches.meta``.
    """
    batch_dir = Path(batch_dir)
    meta_path = batch_dir / "batches.meta"
    names = _unpickle(meta_path).get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{meta_path}: 'label_names' must be a non-empty list of class names")
    train = [_read_batch(batch_dir / name, len(names)) for name in TRAIN_BATCHES]
    test_images, test_labels = _read_batch(batch_dir / "test_batch", len(names))
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return (
        make_dataset(train_images, train_labels, names, "cifar10", "train"),
        make_dataset(test_images, test_labels, names, "cifar10", "test"),
    )
