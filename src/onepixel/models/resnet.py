"""ResNet for CIFAR (He et al. 2016, section 4.2): ResNet-20 (0.27M) and ResNet-32 (0.46M), option-A shortcuts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onepixel.models.normalize import Normalize, conv_bn_relu

STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus shortcut, then ReLU (not in place).

    The shortcut is the identity, or, when the block halves the map and widens it,
    the input subsampled by 2 and zero-padded in channels (option A: no parameters).
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra_planes = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option-A shortcut: ``(N, C, H, W)`` -> ``(N, C + extra, ceil(H/s), ceil(W/s))``."""
        if self.stride == 1 and self.extra_planes == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_planes // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_planes - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` -> ``(N, planes, ceil(H/stride), ceil(W/stride))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3(16) then three stages of ``(depth - 2) / 6`` basic blocks (16, 32, 64 channels), GAP, linear.

    Feature layers: ``stem`` and every block ``layer{stage}.{i}``.
    """

    # the stages, set with setattr in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, normalize: Normalize, num_classes: int, in_channels: int, depth: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2; got {depth}")
        blocks = (depth - 2) // 6
        self.normalize = normalize
        self.stem = conv_bn_relu(in_channels, STAGE_WIDTHS[0])
        planes = STAGE_WIDTHS[0]
        for stage, width in enumerate(STAGE_WIDTHS, start=1):
            stride = 1 if stage == 1 else 2
            layer = [BasicBlock(planes if i == 0 else width, width, stride if i == 0 else 1) for i in range(blocks)]
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
            planes = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        self.feature_layers = ["stem"] + [
            f"layer{s}.{i}" for s in range(1, len(STAGE_WIDTHS) + 1) for i in range(blocks)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        x = self.stem(self.normalize(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))
