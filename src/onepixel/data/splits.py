"""The train and test splits of a data set by name, and writing them as netCDF files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
import xarray as xr

from onepixel.config import FOLDER_DATASETS
from onepixel.data import DATASET_NAMES
from onepixel.data.cifar10 import download_cifar10, read_cifar10_batches, read_cifar10_root
from onepixel.data.dataset import make_dataset, save_dataset
from onepixel.data.digits import load_digits_split
from onepixel.data.images import read_image_folder, read_imagenet_val
from onepixel.errors import ConfigError

_ROOT_IS = {"imagefolder": "the folder of class sub-folders", "imagenet-val": "the folder of validation images"}
#: the attributes of a folder data set's test split its empty train split shares
_SHARED_ATTRS = ("image_size", "resize_size", "source_root")


def empty_train(test: xr.Dataset) -> xr.Dataset:
    """A train split of no images, of the shape and classes of ``test`` (the folder data sets have no training images)."""
    _, channels, height, width = test["image"].shape
    ds = make_dataset(
        np.zeros((0, channels, height, width), dtype=np.uint8),
        np.zeros(0, dtype=np.int64),
        [str(name) for name in test["class_name"].values],
        str(test.attrs["dataset"]),
        "train",
    )
    ds.attrs.update({key: test.attrs[key] for key in _SHARED_ATTRS if key in test.attrs})
    return ds


class FolderOptions(TypedDict, total=False):
    """The keyword options of the folder data sets (imagefolder, imagenet-val); see :func:`dataset_splits`."""

    classes: str | os.PathLike[str] | None
    labels_file: str | os.PathLike[str] | None
    image_size: int
    resize_size: int
    max_images: int
    bad_images: str


def _folder_splits(
    name: str,
    root: str | os.PathLike[str] | None,
    seed: int,
    log: Callable[[str], Any] | None,
    folder: FolderOptions,
) -> tuple[xr.Dataset, xr.Dataset]:
    if not root:
        raise ConfigError(f"dataset.root: required for dataset.name {name} ({_ROOT_IS[name]})")
    classes, labels_file = folder.get("classes"), folder.get("labels_file")
    options: dict[str, Any] = {
        "image_size": folder.get("image_size", 0),
        "resize_size": folder.get("resize_size", 0),
        "max_images": folder.get("max_images", 0),
        "seed": seed,
        "bad_images": folder.get("bad_images", "error"),
        "log": log,
    }
    if name == "imagefolder":
        if labels_file:
            raise ConfigError("dataset.labels_file: read for dataset.name imagenet-val only, not 'imagefolder'")
        test = read_image_folder(root, classes_file=classes or None, **options)
    else:
        if classes:
            raise ConfigError(
                "dataset.classes: read for dataset.name imagefolder only, not 'imagenet-val' "
                "(its classes are those of torchvision's ImageNet weights)"
            )
        if not labels_file:
            raise ConfigError(
                "dataset.labels_file: required for dataset.name imagenet-val (lines '<file name> <class index or "
                "WordNet id>', or the devkit's ILSVRC2012_validation_ground_truth.txt)"
            )
        test = read_imagenet_val(root, labels_file, **options)
    return empty_train(test), test


def dataset_splits(
    name: str,
    raw_root: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    log: Callable[[str], Any] | None = print,
    **folder: Unpack[FolderOptions],
) -> tuple[xr.Dataset, xr.Dataset]:
    """The train and test splits of data set ``name``.

    "digits" is split with ``test_fraction`` and ``seed``. "cifar10" keeps its own
    split; it is read from ``root`` when given (a pre-staged copy: the
    ``cifar-10-batches-py`` folder, a folder holding it, or the official tar.gz; see
    :func:`read_cifar10_root`, which reports to ``log`` whether it is the official
    set), else downloaded into ``raw_root`` (required then).

    "imagefolder" (``root/<class>/<image>``, class names from ``classes`` or the
    sorted folders; :func:`~onepixel.data.images.read_image_folder`) and
    "imagenet-val" (``root`` a flat folder of validation images, ``labels_file``;
    :func:`~onepixel.data.images.read_imagenet_val`) are all test images: their train
    split holds no image, of the same shape and classes. Their keyword options
    (:class:`FolderOptions`): images ``image_size`` square (0: 224), the shorter side resized to ``resize_size`` (0:
    ``image_size / 0.875``) before the centre crop; ``max_images`` (0: all) are a
    sample drawn with ``seed``; ``bad_images`` ("error" or "skip") says what an
    undecodable image does.
    """
    unknown = sorted(set(folder) - set(FolderOptions.__annotations__))
    if unknown:
        raise TypeError(
            f"dataset_splits: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(FolderOptions.__annotations__)}"
        )
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
    if name in FOLDER_DATASETS:
        return _folder_splits(name, root, seed, log, folder)
    raise ConfigError(f"dataset.name: unknown data set {name!r}; allowed: {', '.join(DATASET_NAMES)}")


def prepare_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    raw_root: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    log: Callable[[str], Any] | None = print,
    **folder: Unpack[FolderOptions],
) -> tuple[Path, Path]:
    """Write ``out_dir/train.nc`` and ``out_dir/test.nc`` of :func:`dataset_splits` (downloads go to ``out_dir/raw``).

    The keyword arguments are the folder data sets' options (:class:`FolderOptions`).

    Returns:
        The paths of the train and test files.
    """
    out = Path(out_dir)
    splits = dataset_splits(
        name,
        out / "raw" if raw_root is None else raw_root,
        test_fraction,
        seed,
        root,
        log,
        **folder,
    )
    paths = (out / "train.nc", out / "test.nc")
    for ds, path in zip(splits, paths, strict=True):
        save_dataset(ds, path)
    return paths
