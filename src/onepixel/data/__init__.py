"""Image data sets: digits (bundled with scikit-learn), CIFAR-10 and folders of photographs, stored as netCDF.

The names below are loaded on first use, so that the workflow's main process (which
only validates the config) does not import torch, xarray or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onepixel.data.cifar10 import (
        CIFAR10_MD5,
        CIFAR10_URL,
        download_cifar10,
        read_cifar10_batches,
        read_cifar10_root,
    )
    from onepixel.data.cifar10_layout import cifar10_root_files, locate_cifar10
    from onepixel.data.dataset import channel_stats, load_dataset, make_dataset, save_dataset, to_float
    from onepixel.data.digits import load_digits_split
    from onepixel.data.images import (
        default_resize_size,
        imagenet_categories,
        load_image,
        read_image_folder,
        read_imagenet_labels,
        read_imagenet_val,
        read_meta_mat,
    )
    from onepixel.data.splits import dataset_splits, prepare_dataset

#: the data sets the workflow can prepare (dataset.name)
DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10", "imagefolder", "imagenet-val")

#: public name -> the submodule that defines it
_HOMES: dict[str, str] = {
    **dict.fromkeys(
        ("CIFAR10_MD5", "CIFAR10_URL", "download_cifar10", "read_cifar10_batches", "read_cifar10_root"), "cifar10"
    ),
    **dict.fromkeys(("cifar10_root_files", "locate_cifar10"), "cifar10_layout"),
    **dict.fromkeys(("channel_stats", "load_dataset", "make_dataset", "save_dataset", "to_float"), "dataset"),
    "load_digits_split": "digits",
    **dict.fromkeys(
        (
            "default_resize_size",
            "imagenet_categories",
            "load_image",
            "read_image_folder",
            "read_imagenet_labels",
            "read_imagenet_val",
            "read_meta_mat",
        ),
        "images",
    ),
    **dict.fromkeys(("dataset_splits", "prepare_dataset"), "splits"),
}

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASET_NAMES",
    "channel_stats",
    "cifar10_root_files",
    "dataset_splits",
    "default_resize_size",
    "download_cifar10",
    "imagenet_categories",
    "load_dataset",
    "load_digits_split",
    "load_image",
    "locate_cifar10",
    "make_dataset",
    "prepare_dataset",
    "read_cifar10_batches",
    "read_cifar10_root",
    "read_image_folder",
    "read_imagenet_labels",
    "read_imagenet_val",
    "read_meta_mat",
    "save_dataset",
    "to_float",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
