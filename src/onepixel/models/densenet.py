"""DenseNet-BC (Huang et al. 2017) for CIFAR: depth 100, growth rate 12, compression 0.5 (about 0.77M parameters)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onepixel.models.normalize import Normalize

DENSE_BLOCKS = 3


class Bottleneck(nn.Module):
    """BN-ReLU-conv1(4k)-BN-ReLU-conv3(k); output is the input with the k new channels prepended."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C + growth, H, W)``."""
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([out, x], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1 then 2x2 average pool (``ceil_mode``, so a 1x1 map stays 1x1)."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` -> ``(N, out_planes, ceil(H/2), ceil(W/2))``."""
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2, ceil_mode=True)


class DenseNet(nn.Module):
    """conv3(2k), dense1, trans1, dense2, trans2, dense3, BN-ReLU (``final``), GAP, linear.

    Feature layers: ``conv1``, each dense block, each transition and ``final``.
    """

    # the blocks, set with setattr in __init__
    dense1: nn.Sequential
    dense2: nn.Sequential
    dense3: nn.Sequential
    trans1: Transition
    trans2: Transition

    def __init__(
        self,
        normalize: Normalize,
        num_classes: int,
        in_channels: int,
        depth: int = 100,
        growth: int = 12,
        reduction: float = 0.5,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4; got {depth}")
        layers = (depth - 4) // 6
        self.normalize = normalize
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        names = ["conv1"]
        for block in range(1, DENSE_BLOCKS + 1):
            dense = nn.Sequential(*[Bottleneck(planes + i * growth, growth) for i in range(layers)])
            setattr(self, f"dense{block}", dense)
            planes += layers * growth
            names.append(f"dense{block}")
            if block < DENSE_BLOCKS:
                out_planes = int(planes * reduction)
                setattr(self, f"trans{block}", Transition(planes, out_planes))
                planes = out_planes
                names.append(f"trans{block}")
        self.final = nn.Sequential(nn.BatchNorm2d(planes), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        self.feature_layers = [*names, "final"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        x = self.conv1(self.normalize(x))
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        x = self.final(self.dense3(x))
        return self.fc(self.pool(x).flatten(1))
