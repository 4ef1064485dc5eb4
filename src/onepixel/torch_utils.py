"""Torch helpers shared by every stage: the device, eval mode, reproducible floating point, seeding."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from onepixel.errors import ConfigError


def resolve_device(device: str = "auto") -> torch.device:
    """Return the torch device for ``device`` ("auto", "cpu", "cuda", "cuda:1"...).

    "auto" picks CUDA when available, the CPU otherwise.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: {device!r} is not a device; use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available; use auto or cpu")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU when it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (float32 when it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy globally and return a CPU ``torch.Generator`` seeded with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` and all its submodules in eval mode for the block.

    Afterwards every submodule gets back its *own* training flag (``model.train(flag)``
    would set one flag for all, losing e.g. a frozen BatchNorm in a model that
    trains). Eval mode also keeps BatchNorm running statistics unchanged.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Ask torch for reproducible floating point for the block; restore its settings after.

    Disables TF32 in cuDNN convolutions and CUDA matrix products, cuDNN's
    benchmark-driven algorithm choice, and selects deterministic algorithms
    where torch has them (``torch.use_deterministic_algorithms(True,
    warn_only=True)``: operations without one warn instead of failing), without
    torch's filling of new memory (nothing here reads memory it has not written).
    On the CPU these settings change nothing: its kernels are deterministic for a
    given thread count. Sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (if unset), which
    cuBLAS reads when it is first used in the process.
    """
    from torch.utils import deterministic as _deterministic

    deterministic: Any = _deterministic  # the stubs do not declare its fill_uninitialized_memory flag

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (
        cudnn.deterministic,
        cudnn.benchmark,
        cudnn.allow_tf32,
        matmul.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        deterministic.fill_uninitialized_memory,
    )
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = False  # nothing reads memory before writing it: skip the fill
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        deterministic.fill_uninitialized_memory = saved[6]
