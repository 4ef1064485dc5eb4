"""scikit-learn's bundled 8x8 handwritten digits (no network needed)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from onepixel.data.dataset import make_dataset
from onepixel.errors import ConfigError

DIGITS_MAX = 16  # load_digits pixel values lie in 0..16


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as ``(1797, 1, 8, 8)`` uint8 images (``round(v * 255 / 16)``) and int64 labels."""
    bunch = load_digits()
    images = np.round(bunch.images * 255.0 / DIGITS_MAX).astype(np.uint8)[:, None, :, :]
    return images, bunch.target.astype(np.int64)


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """Stratified train/test split of the digits (``sklearn.model_selection.train_test_split``).

    Returns:
        ``(train, test)`` data sets named "digits" with class names "0".."9";
        images ``(N, 1, 8, 8)`` uint8.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction: {test_fraction!r} must lie strictly between 0 and 1")
    images, labels = digits_uint8()
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as exc:
        raise ConfigError(f"dataset.test_fraction: {test_fraction!r} cannot split the digits ({exc})") from exc
    names = [str(d) for d in range(10)]
    return (
        make_dataset(images[train_idx], labels[train_idx], names, "digits", "train"),
        make_dataset(images[test_idx], labels[test_idx], names, "digits", "test"),
    )
