"""The train and test splits of a data set by name, and writing them as netCDF files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xarray as xr

from onepixel.data import DATASET_NAMES
from onepixel.data.cifar10 import download_cifar10, read_cifar10_batches, read_cifar10_root
from onepixel.data.dataset import save_dataset
from onepixel.data.digits import load_digits_split
from onepixel.errors import ConfigError


def dataset_splits(
    name: str,
    raw_root: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    log: Callable[[str], Any] | None = print,
) -> tuple[xr.Dataset, xr.Dataset]:
    """The train and test splits of data set ``name``.

    "digits" is split with ``test_fraction`` and ``seed``. "cifar10" keeps its own
    split; it is read from ``root`` when given (a pre-staged copy: the
    ``cifar-10-batches-py`` folder, a folder holding it, or the official tar.gz; see
    :func:`read_cifar10_root`, which reports to ``log`` whether it is the official
    set), else downloaded into ``raw_root`` (required then).
    """
    if root and name == "digits":
        raise ConfigError("dataset.root: a pre-staged copy is read for dataset.name cifar10 only, not 'digits'")
    if name == "digits":
        return load_digits_split(test_fraction=test_fraction, seed=seed)
    if name == "cifar10" and root:
        return read_cifar10_root(root, log=log)
    if name == "cifar10":
        if raw_root is None:
            raise ConfigError(
                "dataset.root: empty, and no download folder given; set dataset.root or download CIFAR-10"
            )
        return read_cifar10_batches(download_cifar10(raw_root))
    raise ConfigError(f"dataset.name: unknown data set {name!r}; allowed: {', '.join(DATASET_NAMES)}")


def prepare_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    raw_root: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    log: Callable[[str], Any] | None = print,
) -> tuple[Path, Path]:
    """Write ``out_dir/train.nc`` and ``out_dir/test.nc`` of :func:`dataset_splits` (downloads go to ``out_dir/raw``).

    Returns:
        The paths of the train and test files.
    """
    out = Path(out_dir)
    splits = dataset_splits(name, out / "raw" if raw_root is None else raw_root, test_fraction, seed, root, log)
    paths = (out / "train.nc", out / "test.nc")
    for ds, path in zip(splits, paths, strict=True):
        save_dataset(ds, path)
    return paths
