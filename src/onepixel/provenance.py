"""How a result was made: git commit, library versions, device, and the study config of a workflow run."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def config_digest(config: Any) -> str:
    """Short SHA-256 of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_commit() -> str:
    """The current git commit of the working directory, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


# What the running workflow stage was made from (set by run_context, read by provenance).
_RUN: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("onepixel_run", default=None)


def _device_name(device: torch.device | str) -> str:
    import torch  # here, not at the top: the workflow's main process imports this module without torch

    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """Flat string dict describing how a result was made (for netCDF/JSON attributes).

    Always: ``onepixel_version``, ``git_commit``, ``python_version``, ``torch_version``,
    ``numpy_version``, ``xarray_version``, ``platform`` and ``device`` (the GPU's name
    or "cpu"; ``device=None`` means the work ran on the CPU, unless the enclosing
    :func:`run_context` names a device). Inside :func:`run_context` also
    ``config_digest``, ``study_config`` (the whole config as JSON) and ``seed``.
    """
    import torch

    import onepixel

    run = _RUN.get() or {}
    info = {
        "onepixel_version": onepixel.__version__,
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "xarray_version": _version("xarray"),
        "platform": platform.platform(),
        "device": _device_name(device) if device is not None else run.get("device", "cpu"),
    }
    info.update({key: value for key, value in run.items() if key != "device"})
    return info


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def run_context(config: Any, seed: int | None = None, device: str | None = None) -> Iterator[None]:
    """Mark the block as one stage of a study run made from ``config``.

    Every :func:`provenance` made inside records ``config_digest``
    (:func:`config_digest` of ``config``), ``study_config`` (``config`` as JSON) and,
    when given, ``seed`` (the seed of the random stream that chose the stage's
    content) and the device (``device`` as in the config, e.g. "auto", resolved
    here). :func:`write_json` and :func:`write_netcdf` add the provenance to every
    file written inside the block that lacks it, so each result of a workflow
    run says how it was made.
    """
    info = {
        "config_digest": config_digest(config),
        "study_config": json.dumps(config, sort_keys=True, default=json_default),
    }
    if seed is not None:
        info["seed"] = str(int(seed))
    if device is not None:
        from onepixel.torch_utils import resolve_device

        info["device"] = _device_name(resolve_device(device))
    token = _RUN.set(info)
    try:
        yield
    finally:
        _RUN.reset(token)


def current_run() -> dict[str, str] | None:
    """What the enclosing :func:`run_context` records, or ``None`` outside one."""
    return _RUN.get()
