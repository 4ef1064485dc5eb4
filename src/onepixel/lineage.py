"""Content digests that say which checkpoint, test set, selection and attack a file was made from, and the checks that refuse inputs that do not belong together."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from onepixel.errors import DataError
from onepixel.files import file_sha256, one_line, read_json
from onepixel.formats import FORMAT_KEY, LINEAGE, check_format

PathLike = str | os.PathLike[str]

#: the lineage a file made from an attack carries (capture's cubes and layers.json, propagation, locality,
#: vulnerability): the checkpoint's sha256, the test set's and the attack's digests
DOWNSTREAM_KEYS: tuple[str, ...] = ("model_sha256", "test_digest", "attack_digest")

#: hex digits of a digest shown in messages
SHOWN = 8

#: per lineage key: what it identifies, how a message names its value, and the phrase "made ... <file>"
_WHAT: dict[str, tuple[str, str]] = {
    "model_sha256": ("model sha256", "with the model of"),
    "test_digest": ("test digest", "on the test set of"),
    "selection_digest": ("selection digest", "from the selection of"),
    "attack_digest": ("attack digest", "from the attack of"),
}


def _update(digest: Any, name: str, values: Any, dtype: Any = None) -> None:
    """Feed ``name:<dtype.str>:<shape, comma-separated>;`` and then the C-order bytes of ``values`` to ``digest``."""
    array = np.ascontiguousarray(np.asarray(values) if dtype is None else np.asarray(values).astype(dtype))
    digest.update(f"{name}:{array.dtype.str}:{','.join(str(s) for s in array.shape)};".encode())
    digest.update(array.tobytes())


def dataset_digest(ds: Any) -> str:
    """Hex sha256 of a data set's content: its ``image`` and then its ``label`` array.

    Each array adds the ASCII header ``"<name>:<dtype.str>:<shape joined by ','>;"`` (e.g.
    ``"image:|u1:10,1,8,8;"``) followed by its bytes in C order. Only the arrays count, not the
    netCDF file's bytes, so preparing the same data again gives the same digest.
    """
    digest = hashlib.sha256()
    for name in ("image", "label"):
        _update(digest, name, ds[name].values)
    return digest.hexdigest()


def selection_digest(sample_ids: Any) -> str:
    """Hex sha256 of selected test-set indices, in their order: header ``"sample_id:<i8:<n>;"``, then int64 bytes."""
    digest = hashlib.sha256()
    _update(digest, "sample_id", np.asarray(sample_ids).reshape(-1), np.int64)
    return digest.hexdigest()


#: the variables of an attack's rows that :func:`attack_digest` covers, with the dtype each is hashed as
ATTACK_ROWS: tuple[tuple[str, Any], ...] = (
    ("sample_id", np.int64),
    ("target_class", np.int64),
    ("pixel_x", np.int64),
    ("pixel_y", np.int64),
    ("color", np.uint8),
    ("success", np.uint8),
)


def attack_digest(attack: Any) -> str:
    """Hex sha256 of an attack's rows: what was attacked and what was found.

    The variables of :data:`ATTACK_ROWS` in that order, each cast to its dtype there
    (``success`` as 0/1 uint8, so a loaded bool and a stored uint8 agree) and hashed
    as in :func:`dataset_digest` (header, then C-order bytes).
    """
    digest = hashlib.sha256()
    for name, dtype in ATTACK_ROWS:
        _update(digest, name, attack[name].values, dtype)
    return digest.hexdigest()


def attack_lineage(attack: Any) -> dict[str, str]:
    """``model_sha256``, ``test_digest`` (recorded by the attack) and ``attack_digest`` (computed) of an attack."""
    recorded = require(attack.attrs, ("model_sha256", "test_digest"), _source(attack, "attack file"), "attack")
    return {**recorded, "attack_digest": attack_digest(attack)}


def short(digest: object) -> str:
    """The first :data:`SHOWN` characters of a digest and an ellipsis, for messages."""
    return f"{str(digest)[:SHOWN]}…"


def _source(ds: Any, default: str) -> str:
    return str(getattr(ds, "encoding", {}).get("source", default))


def require(attrs: Mapping[str, Any], keys: Iterable[str], path: PathLike, writer: str) -> dict[str, str]:
    """The lineage values ``keys`` of a file's attributes (or JSON keys), as strings.

    Raises:
        DataError: one line naming the file and the missing keys, recorded by the ``writer`` stage.
    """
    keys = tuple(keys)
    missing = [key for key in keys if not isinstance(attrs.get(key), str) or not attrs.get(key)]
    if missing:
        raise DataError(
            f"{path}: records no {', '.join(missing)} (the {writer} stage records what a file was made from); "
            f"re-run {writer} with this onepixel"
        )
    return {key: str(attrs[key]) for key in keys}


def recorded_lineage(path: PathLike, kind: str) -> dict[str, str]:
    """The lineage a file of ``kind`` records (:data:`onepixel.formats.LINEAGE`), read without loading its arrays.

    Raises:
        DataError: the file is missing, unreadable, of another kind, or records no lineage.
    """
    file = os.fspath(path)
    if kind in ("metrics", "selection", "layers"):
        attrs: Mapping[str, Any] = read_json(path, kind=kind)
    else:
        import xarray as xr

        if not os.path.isfile(file):
            raise DataError(f"{file}: file not found")
        try:
            with xr.open_dataset(file, engine="netcdf4") as ds:
                attrs = dict(ds.attrs)
        except Exception as exc:  # netCDF4 raises OSError/ValueError/RuntimeError for corrupt files
            detail = one_line(f"{exc.__class__.__name__}: {exc}")
            raise DataError(f"{file}: not a readable netCDF file, truncated or corrupt? ({detail})") from exc
        check_format(attrs.get(FORMAT_KEY), kind, file)
    return require(attrs, LINEAGE[kind], file, _WRITER.get(kind, kind))


_WRITER = {"metrics": "train", "selection": "select-images", "cube": "capture", "layers": "capture"}


def check_same(
    stage: str, path: PathLike, lineage: Mapping[str, str], reference_path: PathLike, reference: Mapping[str, str]
) -> None:
    """Refuse ``path`` when a lineage value it shares with ``reference_path`` differs.

    Raises:
        DataError: e.g. ``figures: prop.nc was not made from the attack of attack.nc (attack digest 3f2a… != 91bc…);
            pass files of one run``.
    """
    for key, (label, made) in _WHAT.items():
        if key in lineage and key in reference and lineage[key] != reference[key]:
            raise DataError(
                f"{stage}: {path} was not made {made} {reference_path} "
                f"({label} {short(lineage[key])} != {short(reference[key])}); pass files of one run"
            )


def check_checkpoint(stage: str, checkpoint_path: PathLike, made_path: PathLike, recorded: str) -> str:
    """Refuse a checkpoint whose sha256 is not the ``model_sha256`` that ``made_path`` records; return the sha256.

    Raises:
        DataError: ``capture: checkpoint other.pt is not the model attack.nc was made with (model sha256 … != …);
            pass the checkpoint of the attack``.
    """
    sha = file_sha256(checkpoint_path)
    if sha != recorded:
        raise DataError(
            f"{stage}: checkpoint {checkpoint_path} is not the model {made_path} was made with "
            f"(model sha256 {short(sha)} != {short(recorded)}); pass the checkpoint of {made_path}"
        )
    return sha


def check_test_set(stage: str, test_path: PathLike, test: Any, made_path: PathLike, recorded: str) -> str:
    """Refuse a test set whose :func:`dataset_digest` is not the ``test_digest`` that ``made_path`` records.

    Returns:
        The digest.

    Raises:
        DataError: ``capture: train.nc is not the test set attack.nc was made on (test digest 3f2a… != 91bc…);
            pass the test set of attack.nc``.
    """
    digest = dataset_digest(test)
    if digest != recorded:
        raise DataError(
            f"{stage}: {test_path} is not the test set {made_path} was made on "
            f"(test digest {short(digest)} != {short(recorded)}); pass the test set of {made_path}"
        )
    return digest


def check_adversarial(stage: str, attack: Any, attack_path: PathLike, test: Any, test_path: PathLike) -> None:
    """Check that every adversarial image of ``attack`` is its test image with the recorded pixels replaced.

    The images are rebuilt with :func:`onepixel.data.dataset.apply_pixels` (as the attack
    made them) and compared in one vectorised pass. Where two of a row's pixels share a
    position, which colour was kept is unspecified, so that position is not compared.

    Raises:
        DataError: a recorded pixel outside the images, or an image that differs elsewhere (the
            attack file was altered, or the test set is not the attack's), naming the first such row.
    """
    from onepixel.data.dataset import apply_pixels

    ids = np.asarray(attack["sample_id"].values, dtype=np.int64)
    stored = np.asarray(attack["adversarial"].values)
    images = test["image"].values
    n, (channels, height, width) = len(ids), images.shape[1:]
    if stored.shape != (n, channels, height, width):
        raise DataError(
            f"{stage}: {attack_path} holds adversarial images of shape {stored.shape[1:]}, "
            f"{test_path} holds {channels}x{height}x{width}; pass the test set of the attack"
        )
    xs = np.asarray(attack["pixel_x"].values, dtype=np.int64)
    ys = np.asarray(attack["pixel_y"].values, dtype=np.int64)
    outside = ((xs < 0) | (xs >= width) | (ys < 0) | (ys >= height)).any(axis=1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{stage}: {attack_path}: row {row} records a pixel outside the {height}x{width} images of {test_path}"
        )
    if n == 0:
        return
    config = json.loads(attack.attrs.get("attack_config", "{}"))
    if config.get("method") in ("fgsm", "pgd"):
        _check_in_eps_ball(stage, attack_path, images[ids], stored, config["eps"], test_path)
        return
    rebuilt = apply_pixels(
        torch.from_numpy(np.ascontiguousarray(images[ids])),
        torch.from_numpy(xs),
        torch.from_numpy(ys),
        torch.from_numpy(np.asarray(attack["color"].values, dtype=np.uint8)),
    ).numpy()
    differs = (rebuilt != stored).any(axis=1).reshape(n, -1)  # (n, H * W)
    flat = ys * width + xs  # (n, k)
    repeated = (flat[:, :, None] == flat[:, None, :]).sum(axis=2) > 1  # (n, k): a position given twice
    if repeated.any():
        rows, cols = np.nonzero(repeated)
        differs[rows, flat[rows, cols]] = False
    counts = differs.sum(axis=1)
    bad = np.flatnonzero(counts)
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{stage}: {attack_path}: the adversarial image of row {row} (sample_id {ids[row]}) is not image "
            f"{ids[row]} of {test_path} with its recorded pixel(s): {int(counts[row])} of its {height * width} "
            f"pixels differ ({bad.size} of {n} rows differ); the attack file was altered or belongs to another test set"
        )


def _check_in_eps_ball(
    stage: str, attack_path: PathLike, clean: np.ndarray, stored: np.ndarray, eps: float, test_path: PathLike
) -> None:
    """An L-inf attack's images must lie within ``eps`` (in 8-bit levels) of their test images."""
    from onepixel.attack.gradient import eps_levels

    levels = eps_levels(eps)
    change = np.abs(stored.astype(np.int16) - clean.astype(np.int16)).reshape(len(clean), -1).max(axis=1)
    bad = np.flatnonzero(change > levels)
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{stage}: {attack_path}: the adversarial image of row {row} differs from its image of {test_path} by "
            f"{int(change[row])} levels, more than the attack's eps ({levels}); the attack file was altered or "
            "belongs to another test set"
        )


def _shape(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def check_model_input(
    stage: str,
    model: nn.Module,
    meta: Mapping[str, Any],
    checkpoint_path: PathLike,
    test: Any,
    test_path: PathLike,
    device: torch.device | str | None = None,
) -> None:
    """Refuse a test set whose images (or classes) the model does not take, before its first batch.

    The checkpoint's recorded ``input_shape`` (``meta["input_shape"]``, written by the train
    stage) and ``build_kwargs["num_classes"]`` are compared with the test set. Without a recorded
    shape, the channels of the model's ``normalize`` module (onepixel models) are compared, and
    one zero image of the test set's shape is run through the model.

    Raises:
        DataError: one line, e.g. ``attack: checkpoint lenet.pt expects 1x8x8 images, cifar10 test.nc holds 3x32x32``.
    """
    have = tuple(int(s) for s in test["image"].shape[1:])
    name = test.attrs.get("dataset")
    holds = f"{name} {test_path}" if name else str(test_path)
    classes = int(test["class_name"].size) if "class_name" in test.coords else None
    expected = meta.get("input_shape")
    predicts = (meta.get("build_kwargs") or {}).get("num_classes")
    if expected is not None:
        if tuple(int(s) for s in expected) != have:
            raise DataError(
                f"{stage}: checkpoint {checkpoint_path} expects {_shape(expected)} images, {holds} holds {_shape(have)}"
            )
    else:
        mean = getattr(getattr(model, "normalize", None), "mean", None)
        if isinstance(mean, torch.Tensor) and mean.dim() == 4 and int(mean.shape[1]) != have[0]:
            raise DataError(
                f"{stage}: checkpoint {checkpoint_path} expects {int(mean.shape[1])}-channel images, "
                f"{holds} holds {_shape(have)}"
            )
        from onepixel.torch_utils import eval_mode, model_device

        dev = model_device(model) if device is None else torch.device(device)
        try:
            with eval_mode(model), torch.inference_mode():
                out = model(torch.zeros((1, *have), device=dev))
        except Exception as exc:  # any error of the model's forward pass
            raise DataError(
                f"{stage}: checkpoint {checkpoint_path} cannot take the {_shape(have)} images of {holds} "
                f"({one_line(f'{exc.__class__.__name__}: {exc}', limit=160)})"
            ) from exc
        predicts = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    if classes is not None and predicts is not None and int(predicts) != classes:
        raise DataError(
            f"{stage}: checkpoint {checkpoint_path} predicts {int(predicts)} classes, {holds} has {classes}"
        )
