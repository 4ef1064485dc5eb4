"""Saving and safely loading model checkpoints (``torch.load(weights_only=True)`` only)."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onepixel.errors import ConfigError, DataError
from onepixel.utils import atomic_path

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
) -> None:
    """Atomically save ``model`` as an onepixel checkpoint.

    The file holds ``{"format", "arch", "build_kwargs", "state_dict", "extra"}`` with
    plain types and CPU tensors only, so ``torch.load(weights_only=True)`` accepts it.
    ``build_kwargs`` are the keyword arguments of ``build_model`` besides the name.
    """
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "arch": name,
        "build_kwargs": plain(build_kwargs),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "extra": plain(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def _torch_load(file: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with one-line DataErrors naming ``file``."""
    if not file.is_file():
        raise DataError(f"{file}: checkpoint file not found")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            raise DataError(
                f"{file}: refused, it contains {refused.group(1)}, which would need arbitrary code execution "
                "to load (weights_only=False); save a state_dict or an onepixel checkpoint instead"
            ) from exc
        raise DataError(f"{file}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)") from exc
    except Exception as exc:  # zip/EOF/runtime errors of a truncated or foreign file
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{file}: not a readable PyTorch checkpoint ({exc.__class__.__name__}: {first_line})") from exc


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
        if name is not None and arch != name:
            raise DataError(f"{file}: checkpoint holds a {arch!r} model, not the requested {name!r}")
        return arch, dict(obj.get("build_kwargs", {})), obj["state_dict"], dict(obj.get("extra", {}))
    if _is_state_dict(obj):
        if name is None or build_kwargs is None:
            raise DataError(f"{file}: is a bare state_dict; give the architecture name and build_kwargs to load it")
        return name, dict(build_kwargs), obj, {}
    kind = f"dict with keys {sorted(map(str, obj))[:SHOWN_KEYS]}" if isinstance(obj, dict) else type(obj).__name__
    raise DataError(f"{file}: neither an onepixel checkpoint nor a state_dict of tensors (got a {kind})")


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _check_fit(file: Path, arch: str, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise a DataError listing missing/unexpected keys and shape mismatches between model and ``state_dict``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches (file vs model)", shapes))
        if keys
    ]
    if problems:
        raise DataError(f"{file}: state_dict does not fit a {arch!r} model; " + "; ".join(problems))


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    name: str | None = None,
    build_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load an onepixel checkpoint or a bare state_dict, always with ``weights_only=True``.

    Args:
        path: the ``.pt`` file.
        map_location: passed to ``torch.load``; when it names a device (str or
            ``torch.device``) the model is moved there.
        name: expected architecture; required for a bare state_dict, checked against a checkpoint.
        build_kwargs: ``build_model`` keyword arguments; required for a bare state_dict
            (an onepixel checkpoint carries its own).

    Returns:
        ``(model, meta)``: the model in eval mode and ``{"arch", "build_kwargs", "extra"}``
        (``extra`` holds the training metrics of checkpoints written by the train stage).
    """
    from onepixel.models import build_model

    file = Path(path)
    arch, kwargs, state_dict, extra = _split_checkpoint(file, _torch_load(file, map_location), name, build_kwargs)
    try:
        model = build_model(arch, **kwargs)
    except (ConfigError, TypeError) as exc:
        raise DataError(f"{file}: cannot build its model {arch!r} with {kwargs} ({exc})") from exc
    _check_fit(file, arch, model, state_dict)
    model.load_state_dict(state_dict)
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    return model.eval(), {"arch": arch, "build_kwargs": kwargs, "extra": extra}
