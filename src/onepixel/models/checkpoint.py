"""Saving and safely loading model checkpoints (``torch.load(weights_only=True)`` only)."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onepixel.errors import ConfigError, DataError
from onepixel.files import atomic_path, one_line

CHECKPOINT_FORMAT = "onepixel-checkpoint/1"
SHOWN_KEYS = 5  # how many offending keys an error message lists


def plain(value: Any) -> Any:
    """``value`` as plain Python types (dict/list/str/int/float/bool/None) for ``weights_only`` loading.

    Tuples become lists, numpy scalars and arrays Python numbers and lists, paths and
    ``str`` subclasses strings.
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool):
        return value
    for kind in (str, int, float):  # also turns subclasses (e.g. torch's TorchVersion) into the base type
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"checkpoint metadata must be plain data; got {type(value).__name__}: {value!r}")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    name: str,
    build_kwargs: dict[str, Any],
    extra: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> None:
    """Atomically save ``model`` as an onepixel checkpoint.

    The file holds ``{"format", "arch", "build_kwargs", "state_dict", "extra"}`` with
    plain types and CPU tensors only, so ``torch.load(weights_only=True)`` accepts it.
    ``build_kwargs`` are the keyword arguments of ``build_model`` besides the name.
    ``input_shape`` (``(C, H, W)`` of the images the model was trained on, recorded by the
    train stage) is stored as ``"input_shape"``; stages compare it with their test set.
    """
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "arch": name,
        "build_kwargs": plain(build_kwargs),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "extra": plain(extra or {}),
    }
    if input_shape is not None:
        shape = [int(s) for s in input_shape]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width); got {input_shape!r}")
        checkpoint["input_shape"] = shape
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def _torch_load(file: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with one-line DataErrors naming ``file``."""
    if not file.is_file():
        raise DataError(f"{file}: checkpoint file not found")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise DataError(
                f"{file}: refused, it contains {refused.group(1)}, which would need arbitrary code execution "
                "to load (weights_only=False); save a state_dict or an onepixel checkpoint instead"
            ) from exc
        if not _looks_like_torch_save(file):
            raise DataError(
                f"{file}: not a readable PyTorch checkpoint (neither torch.save's zip format nor a "
                "pickle: corrupt or another kind of file)"
            ) from exc
        if "weights only" in text.lower() or "WeightsUnpickler" in text:
            reason = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)", text, re.DOTALL)
            why = f" ({one_line(reason.group(1))})" if reason else ""
            raise DataError(
                f"{file}: refused by weights_only loading{why}: a pickle that is not a plain checkpoint of tensors "
                "(loading it would need weights_only=False, which can run arbitrary code); "
                "save a state_dict or an onepixel checkpoint instead"
            ) from exc
        raise DataError(f"{file}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)") from exc
    except Exception as exc:  # zip/EOF/runtime errors of a truncated or foreign file
        raise DataError(
            f"{file}: not a readable PyTorch checkpoint, truncated or corrupt? "
            f"({one_line(f'{exc.__class__.__name__}: {exc}', limit=200)})"
        ) from exc


def _looks_like_torch_save(file: Path) -> bool:
    """Whether ``file`` starts like a ``torch.save`` file: a zip archive, or a pickle (protocol >= 2, legacy format)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _split_checkpoint(
    file: Path, obj: Any, name: str | None, build_kwargs: dict[str, Any] | None
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(arch, build_kwargs, state_dict, extra)`` of an onepixel checkpoint or a bare state_dict."""
    if isinstance(obj, dict) and "format" in obj:
        if obj["format"] != CHECKPOINT_FORMAT or not _is_state_dict(obj.get("state_dict")):
            raise DataError(f"{file}: unsupported checkpoint format {obj['format']!r}; expected {CHECKPOINT_FORMAT}")
        arch = obj.get("arch")
        if not isinstance(arch, str):
            raise DataError(f"{file}: checkpoint names no architecture (its 'arch' is {arch!r})")
        kwargs = dict(obj.get("build_kwargs", {}))
        if name is not None and arch != name:
            problems = _fit_problems(_requested_model(name, kwargs), obj["state_dict"])
            listing = "; " + "; ".join(problems) if problems else ""
            raise DataError(f"{file}: checkpoint holds a {arch!r} model, not the requested {name!r}{listing}")
        return arch, kwargs, obj["state_dict"], dict(obj.get("extra", {}))
    if _is_state_dict(obj):
        if name is None or build_kwargs is None:
            raise DataError(f"{file}: is a bare state_dict; give the architecture name and build_kwargs to load it")
        return name, dict(build_kwargs), obj, {}
    kind = f"dict with keys {sorted(map(str, obj))[:SHOWN_KEYS]}" if isinstance(obj, dict) else type(obj).__name__
    raise DataError(f"{file}: neither an onepixel checkpoint nor a state_dict of tensors (got a {kind})")


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _requested_model(name: str, kwargs: dict[str, Any]) -> nn.Module | None:
    """The requested architecture built with a checkpoint's build kwargs, to list how the weights differ (None if
    it cannot be built with them)."""
    from onepixel.models import build_model

    try:
        return build_model(name, **kwargs)
    except (ConfigError, TypeError, ValueError):
        return None


def _fit_problems(model: nn.Module | None, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches between ``model`` and ``state_dict``, each listed."""
    if model is None:
        return []
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    return [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches (file vs model)", shapes),
        )
        if keys
    ]


def _check_fit(file: Path, arch: str, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise a DataError listing missing/unexpected keys and shape mismatches between model and ``state_dict``."""
    problems = _fit_problems(model, state_dict)
    if problems:
        raise DataError(f"{file}: state_dict does not fit a {arch!r} model; " + "; ".join(problems))


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    name: str | None = None,
    build_kwargs: dict[str, Any] | None = None,
    *,
    allow_code: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load an onepixel checkpoint or a bare state_dict, always with ``weights_only=True``.

    A registry architecture is built by ``build_model``. A model from ``model_sources``
    (arch ``torchvision:NAME``, ``program:FILE``, ``factory:pkg.mod:fn``) is rebuilt by
    :func:`onepixel.models.sources.rebuild_source_model`: torchvision's from its name, a
    program from the archive bytes the checkpoint holds (checked as a ``.pt2`` file is;
    no pickled code runs), a factory's only with ``allow_code=True``.

    Args:
        path: the ``.pt`` file.
        map_location: passed to ``torch.load``; when it names a device (str or
            ``torch.device``) the model is moved there.
        name: expected architecture; required for a bare state_dict, checked against a checkpoint.
        build_kwargs: ``build_model`` keyword arguments; required for a bare state_dict
            (an onepixel checkpoint carries its own).
        allow_code: run the user's code that builds a ``factory:...`` model (else such a
            checkpoint is refused in one line).

    Returns:
        ``(model, meta)``: the model in eval mode and ``{"arch", "build_kwargs", "extra", "input_shape"}``
        (``extra`` holds the training metrics of checkpoints written by the train stage;
        ``input_shape`` is the recorded ``[C, H, W]`` of its images, or None when not recorded).
    """
    from onepixel.models import build_model

    file = Path(path)
    obj = _torch_load(file, map_location)
    arch, kwargs, state_dict, extra = _split_checkpoint(file, obj, name, build_kwargs)
    input_shape = _input_shape(file, obj)
    model: nn.Module
    if ":" in arch:  # a model of model_sources: torchvision:NAME, program:FILE, factory:pkg.mod:fn
        from onepixel.models.sources import rebuild_source_model

        model = rebuild_source_model(file, arch, kwargs, state_dict, allow_code=allow_code)
    else:
        try:
            model = build_model(arch, **kwargs)
        except (ConfigError, TypeError) as exc:
            raise DataError(f"{file}: cannot build its model {arch!r} with {kwargs} ({exc})") from exc
        _check_fit(file, arch, model, state_dict)
        model.load_state_dict(state_dict)
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    return model.eval(), {"arch": arch, "build_kwargs": kwargs, "extra": extra, "input_shape": input_shape}


def _input_shape(file: Path, obj: Any) -> list[int] | None:
    """The ``[C, H, W]`` an onepixel checkpoint records (None for a bare state_dict or when not recorded)."""
    shape = obj.get("input_shape") if isinstance(obj, dict) and "format" in obj else None
    if shape is None:
        return None
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise DataError(f"{file}: input_shape must be [channels, height, width]; got {shape!r}")
    return [int(s) for s in shape]
