"""Forward batches sized to a memory budget (``batch_memory_mb``).

Every stage that evaluates many images (the attack's candidates, the locality
rings, the vulnerability maps, the capture) takes a batch size in images. At
32x32 the defaults fit anywhere; at 224x224 one ResNet-18 image needs about
10 MiB of activations, so 8,192 candidates per forward pass would need about
80 GiB. :func:`forward_bytes_per_image` measures what one image costs on a
probe forward pass and :func:`capped_batch` shrinks the batch to the budget.
The stages' results do not depend on their batch sizes, so capping changes only
memory and speed.

The estimate of one image's working memory is its float32 input plus three
times the largest tensor any operation of the forward pass produces (the
operation's output, its input, and a residual branch held alongside; in
inference mode earlier activations are freed as soon as they are used), plus
``extra`` bytes the caller keeps per image (e.g. captured feature maps).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from onepixel.errors import ConfigError
from onepixel.progress import announce

log = logging.getLogger(__name__)

MIB = 2**20
#: tensors alive at the peak of a forward pass, in units of its largest activation
LIVE_ACTIVATIONS = 3


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any dispatched operation returns (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return out


def forward_bytes_per_image(
    model: nn.Module, image_shape: Sequence[int], device: torch.device | str | None = None
) -> int:
    """Estimated working memory (bytes) of one ``(C, H, W)`` image in a batched forward pass of ``model``.

    One probe forward pass of a zero image in inference mode (the model's own
    training flag is kept); see the module docstring for the estimate.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = torch.zeros(1, *(int(s) for s in image_shape), device=device)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _LargestOutput() as sizes:
            model(probe)
    finally:
        model.train(training)
    return probe.numel() * probe.element_size() + LIVE_ACTIVATIONS * sizes.largest


def check_budget(budget_mb: int) -> int:
    """``budget_mb`` if it is an integer >= 0 (0: no cap); ConfigError naming ``batch_memory_mb`` otherwise."""
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, int) or budget_mb < 0:
        raise ConfigError(f"batch_memory_mb: {budget_mb!r} is not allowed; use an integer >= 0 (0: no cap)")
    return budget_mb


def capped_batch(requested: int, per_image: int, budget_mb: int, what: str) -> int:
    """The largest batch ``<= requested`` whose ``per_image`` bytes fit ``budget_mb`` MiB (at least 1).

    ``budget_mb`` 0 means no cap. When the batch is made smaller, one line says so,
    naming ``what`` (the config key whose value is capped, e.g. ``attack.batch_size``).
    """
    check_budget(budget_mb)
    if budget_mb == 0 or per_image <= 0:
        return requested
    fits = max(1, budget_mb * MIB // per_image)
    if fits >= requested:
        return requested
    announce(
        f"{what} {requested} -> {fits} images per forward pass: about {per_image / MIB:.3g} MiB per image "
        f"and batch_memory_mb is {budget_mb}"
    )
    return int(fits)


def budgeted_batch(
    model: nn.Module,
    image_shape: Sequence[int],
    requested: int,
    budget_mb: int,
    what: str,
    device: torch.device | str | None = None,
    extra_per_image: int = 0,
) -> int:
    """:func:`capped_batch` of ``requested`` with the measured :func:`forward_bytes_per_image` (+ ``extra_per_image``)."""
    if check_budget(budget_mb) == 0:
        return requested
    per_image = forward_bytes_per_image(model, image_shape, device) + extra_per_image
    log.debug("%s: about %.2f MiB per image of %s", what, per_image / MIB, "x".join(map(str, image_shape)))
    return capped_batch(requested, per_image, budget_mb, what)
