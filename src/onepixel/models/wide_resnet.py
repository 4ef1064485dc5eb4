"""Wide ResNet (Zagoruyko & Komodakis 2016), WRN-16-4 for CIFAR (about 2.75M parameters)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onepixel.models.normalize import Normalize


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3(stride)-BN-ReLU-conv3 plus shortcut (1x1 conv when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.projection = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if stride != 1 or in_planes != planes else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` -> ``(N, planes, ceil(H/stride), ceil(W/stride))``."""
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.projection is None else self.projection(act))


class WideResNet(nn.Module):
    """conv3(16), three stages of ``(depth - 4) / 6`` wide blocks (16k, 32k, 64k channels), BN-ReLU, GAP, linear.

    Feature layers: ``conv1``, every block ``layer{stage}.{i}`` and ``final`` (the last BN-ReLU).
    """

    # the stages, set with setattr in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, normalize: Normalize, num_classes: int, in_channels: int, depth: int = 16, widen: int = 4):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4; got {depth}")
        blocks = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        planes = 16
        for stage, width in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            layer = [WideBlock(planes if i == 0 else width, width, stride if i == 0 else 1) for i in range(blocks)]
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
            planes = width
        self.final = nn.Sequential(nn.BatchNorm2d(planes), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        self.feature_layers = (
            ["conv1"] + [f"layer{s}.{i}" for s in range(1, len(widths) + 1) for i in range(blocks)] + ["final"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        x = self.conv1(self.normalize(x))
        x = self.final(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))
