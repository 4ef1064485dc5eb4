"""The on-disk image data set: an ``xarray.Dataset`` of uint8 images and int64 labels.

Layout (see docs/architecture.md): ``image(sample, channel, y, x)`` uint8 in
``[0, 255]``, ``label(sample)`` int64, coordinate ``class_name(class)`` and the
attributes ``dataset`` (e.g. "digits") and ``split`` ("train" or "test").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from onepixel.errors import DataError
from onepixel.files import open_netcdf, write_netcdf

IMAGE_DIMS = ("sample", "channel", "y", "x")


def make_dataset(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], name: str, split: str
) -> xr.Dataset:
    """Wrap images and labels into the project's data set layout.

    Args:
        images: ``(N, C, H, W)`` uint8 pixel values in ``[0, 255]``.
        labels: ``(N,)`` integer class indices in ``[0, len(class_names))``.
        class_names: one name per class.
        name: data set name stored as attribute ``dataset`` (e.g. "digits", "cifar10").
        split: stored as attribute ``split`` (e.g. "train", "test").

    Returns:
        Dataset with ``image(sample, channel, y, x)`` uint8, ``label(sample)`` int64,
        coordinates ``sample = arange(N)`` and ``class_name(class)``.
    """
    where = f"{name}/{split}"
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"{where}: images must be uint8 (N, C, H, W); got {images.dtype} with shape {images.shape}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: labels must be integers of shape ({images.shape[0]},); got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(f"{where}: labels must lie in [0, {len(class_names)}); got [{labels.min()}, {labels.max()}]")
    image = xr.Variable(IMAGE_DIMS, images, attrs={"long_name": "image pixel value", "units": "1"})
    label = xr.Variable(("sample",), labels.astype(np.int64), attrs={"long_name": "true class index", "units": "1"})
    return xr.Dataset(
        {"image": image, "label": label},
        coords={
            "sample": ("sample", np.arange(images.shape[0]), {"long_name": "sample index"}),
            "class_name": ("class", np.array([str(c) for c in class_names]), {"long_name": "class name"}),
        },
        attrs={"dataset": name, "split": split},
    )


def save_dataset(ds: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """Write a data set to netCDF atomically, zlib-compressing the images."""
    write_netcdf(ds, path, kind="dataset", encoding={"image": {"zlib": True, "complevel": 4}})


def load_dataset(path: str | os.PathLike[str]) -> xr.Dataset:
    """Load a data set written by :func:`save_dataset` fully into memory.

    Raises:
        DataError: naming the file when it is missing, unreadable, lacks ``image``
            or ``label``, or its image is not 4-D uint8.
    """
    ds = open_netcdf(path, kind="dataset", required=("image", "label"))
    image = ds["image"]
    if image.dtype != np.uint8 or image.dims != IMAGE_DIMS:
        raise DataError(
            f"{path}: variable image must be uint8 with dims {IMAGE_DIMS}; got {image.dtype} with dims {image.dims}"
        )
    return ds


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert uint8 images ``(..., C, H, W)`` to a float32 tensor in ``[0, 1]`` (value / 255)."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {tensor.dtype}")
    return tensor.to(torch.float32) / 255.0


def channel_stats(ds: xr.Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``ds.image`` in ``[0, 1]`` units.

    Computed exactly from a 256-bin histogram per channel, without a float copy of the images.
    """
    images = ds["image"].values
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        weights = counts / counts.sum()
        mean = float(weights @ values)
        means.append(mean)
        stds.append(float(np.sqrt(weights @ (values - mean) ** 2)))
    return tuple(means), tuple(stds)


def apply_pixels(images: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Return copies of ``images`` with k pixels per image replaced by ``colors``.

    The perturbation *replaces* the pixel value (Su et al., 2019); it is not added.

    Args:
        images: ``(N, C, H, W)`` images, any dtype (uint8 in [0, 255] or float in [0, 1]).
        xs: ``(N, k)`` integer column of each perturbed pixel, in ``[0, W)``.
        ys: ``(N, k)`` integer row of each perturbed pixel, in ``[0, H)``.
        colors: ``(N, k, C)`` new values, same scale and dtype as ``images``.

    Returns:
        ``(N, C, H, W)`` tensor; ``images`` itself is not modified. When two of an
        image's k pixels coincide, which colour is kept is unspecified
        (``scatter_`` semantics).
    """
    n, c, h, w = images.shape
    if xs.shape != ys.shape or xs.dim() != 2 or xs.shape[0] != n:
        raise ValueError(f"xs and ys must both be (N, k) with N={n}; got {tuple(xs.shape)} and {tuple(ys.shape)}")
    if colors.shape != (*xs.shape, c):
        raise ValueError(f"colors must be (N, k, C)={(*xs.shape, c)}; got {tuple(colors.shape)}")
    out = images.clone()
    flat = out.view(n, c, h * w)
    offsets = (ys.long() * w + xs.long()).unsqueeze(1).expand(n, c, xs.shape[1])
    flat.scatter_(2, offsets, colors.to(images.dtype).permute(0, 2, 1))
    return out
