"""Network in Network (Lin et al. 2014), CIFAR-10 variant of the one-pixel zoo (about 0.97M parameters)."""

from __future__ import annotations

import torch
from torch import nn

from onepixel.models.normalize import Normalize, conv_bn_relu


class NiN(nn.Module):
    """Three mlpconv blocks (conv5-1x1-1x1, conv5-1x1-1x1, conv3-1x1-1x1) with pooling between, then GAP.

    Pools are 3x3, stride 2, padding 1 (``s -> ceil(s / 2)``), so no map collapses
    for inputs from 8x8 up. Batch normalisation follows every hidden convolution.
    """

    def __init__(self, normalize: Normalize, num_classes: int, in_channels: int, dropout: float = 0.5):
        super().__init__()
        self.normalize = normalize
        self.mlpconv1 = nn.Sequential(
            conv_bn_relu(in_channels, 192, 5), conv_bn_relu(192, 160, 1), conv_bn_relu(160, 96, 1)
        )
        self.pool1 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(dropout))
        self.mlpconv2 = nn.Sequential(conv_bn_relu(96, 192, 5), conv_bn_relu(192, 192, 1), conv_bn_relu(192, 192, 1))
        self.pool2 = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.Dropout(dropout))
        self.mlpconv3 = nn.Sequential(
            conv_bn_relu(192, 192, 3), conv_bn_relu(192, 192, 1), nn.Conv2d(192, num_classes, 1)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_layers = [f"mlpconv{b}.{i}" for b in range(1, 4) for i in range(3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        x = self.pool1(self.mlpconv1(self.normalize(x)))
        x = self.pool2(self.mlpconv2(x))
        return self.pool(self.mlpconv3(x)).flatten(1)
