"""LeNet-5 as in the CIFAR-10 zoo of the one-pixel attack (62K parameters at 32x32x3)."""

from __future__ import annotations

import torch
from torch import nn

from onepixel.models.normalize import Normalize

KERNEL = 5
CLASSIC_GRID = 5  # the classic 16 x 5 x 5 flattened features at 32x32


def _feature_grid(image_size: int, padding: int) -> int:
    """Side of the map after conv5-pool2-conv5-pool2 on an ``image_size`` input."""
    side = image_size
    for _ in range(2):
        side = (side + 2 * padding - KERNEL + 1) // 2
    return side


class LeNet(nn.Module):
    """conv5(6) - maxpool2 - conv5(16) - maxpool2 - fc120 - fc84 - fc(num_classes).

    Inputs of ``image_size >= 16`` use unpadded convolutions (the classic shapes:
    32 -> 28 -> 14 -> 10 -> 5); smaller inputs (e.g. 8x8 digits) use padding 2 so
    no map collapses. An adaptive average pool brings the last map to at most 5x5,
    so inputs larger than ``image_size`` work too.
    """

    def __init__(self, normalize: Normalize, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        padding = 0 if image_size >= 16 else 2
        grid = min(CLASSIC_GRID, _feature_grid(image_size, padding))
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, 6, KERNEL, padding=padding)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, KERNEL, padding=padding)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.grid_pool = nn.AdaptiveAvgPool2d(grid)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * grid * grid, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
        self.feature_layers = ["relu1", "relu2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        x = self.pool1(self.relu1(self.conv1(self.normalize(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.classifier(self.grid_pool(x))
