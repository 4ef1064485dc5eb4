"""VGG-16 with batch normalisation, CIFAR variant (kuangliu/pytorch-cifar; about 14.7M parameters)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from onepixel.models.normalize import Normalize, conv_bn_relu

# Output channels per convolution, grouped into the five stages separated by a 2x2 max-pool.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(nn.Module):
    """Stages of conv3-BN-ReLU blocks named ``features.conv{stage}_{i}``, each followed by ``pool{stage}``.

    Pools use ``ceil_mode=True`` so a 1x1 map stays 1x1 (an 8x8 input reaches 1x1
    after three pools); an adaptive average pool feeds the linear classifier, so
    inputs larger than 32x32 work too.
    """

    def __init__(
        self,
        normalize: Normalize,
        num_classes: int,
        in_channels: int,
        stages: tuple[tuple[int, ...], ...] = VGG16_STAGES,
    ):
        super().__init__()
        self.normalize = normalize
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for s, widths in enumerate(stages, start=1):
            for i, width in enumerate(widths, start=1):
                layers[f"conv{s}_{i}"] = conv_bn_relu(channels, width)
                channels = width
            layers[f"pool{s}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.feature_layers = [f"features.{name}" for name in layers if name.startswith("conv")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        return self.classifier(self.pool(self.features(self.normalize(x))).flatten(1))
