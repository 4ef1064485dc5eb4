"""Building blocks shared by the architectures: input normalisation and conv-BN-ReLU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onepixel.errors import ConfigError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for inputs ``(N, C, H, W)`` in ``[0, 1]``.

    ``mean`` and ``std`` are buffers of shape ``(1, C, 1, 1)``, so they are saved in
    the state_dict. ``None`` means 0 (mean) or 1 (std) for every channel.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, in_channels: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        mean_values = [0.0] * in_channels if mean is None else [float(m) for m in mean]
        std_values = [1.0] * in_channels if std is None else [float(s) for s in std]
        if len(mean_values) != in_channels or len(std_values) != in_channels:
            raise ConfigError(
                f"model mean/std: need {in_channels} value(s) each (one per channel); "
                f"got {mean_values} and {std_values}"
            )
        if min(std_values) <= 0:
            raise ConfigError(f"model std: {std_values} must all be > 0")
        self.register_buffer("mean", torch.tensor(mean_values, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_values, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` ``(N, C, H, W)``; returns a new tensor of the same shape."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (``kernel_size // 2`` padding, no bias) -> BatchNorm -> ReLU (not in place).

    The ReLU is not in place, so a forward hook on the returned block sees its true output.
    Spatial size ``s`` becomes ``ceil(s / stride)`` for odd ``kernel_size``.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def he_init(model: nn.Module) -> None:
    """He (Kaiming) normal initialisation of every conv and linear weight, zero biases (He et al. 2015).

    PyTorch's default (uniform with a = sqrt(5)) trains the batch-norm-free LeNet too
    slowly on small data sets; batch-norm layers keep their default (1, 0).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
