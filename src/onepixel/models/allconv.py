"""All-convolutional net (Springenberg et al. 2015, All-CNN-C; the "Pure CNN" of the one-pixel zoo).

Batch normalisation after each convolution is added (as in the common Keras/PyTorch
ports) so SGD trains it quickly; about 1.37M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from onepixel.models.normalize import Normalize, conv_bn_relu


class AllConv(nn.Module):
    """conv3(96) x2 - conv3/2(96) - conv3(192) x2 - conv3/2(192) - conv3(192) - conv1(192) - conv1(classes) - GAP.

    All 3x3 convolutions are padded, so any input from 8x8 up keeps a non-empty map.
    """

    def __init__(self, normalize: Normalize, num_classes: int, in_channels: int, dropout: float = 0.5):
        super().__init__()
        self.normalize = normalize
        self.conv1 = conv_bn_relu(in_channels, 96)
        self.conv2 = conv_bn_relu(96, 96)
        self.conv3 = conv_bn_relu(96, 96, stride=2)
        self.drop1 = nn.Dropout(dropout)
        self.conv4 = conv_bn_relu(96, 192)
        self.conv5 = conv_bn_relu(192, 192)
        self.conv6 = conv_bn_relu(192, 192, stride=2)
        self.drop2 = nn.Dropout(dropout)
        self.conv7 = conv_bn_relu(192, 192)
        self.conv8 = conv_bn_relu(192, 192, kernel_size=1)
        self.class_conv = nn.Conv2d(192, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_layers = [f"conv{i}" for i in range(1, 9)] + ["class_conv"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        x = self.conv3(self.conv2(self.conv1(self.normalize(x))))
        x = self.conv6(self.conv5(self.conv4(self.drop1(x))))
        x = self.class_conv(self.conv8(self.conv7(self.drop2(x))))
        return self.pool(x).flatten(1)
