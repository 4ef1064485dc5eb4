"""Small models and readers shared by several test modules (``from helpers import ...``)."""

from __future__ import annotations

import math
import struct

import torch
from torch import nn

P_FOOLED = 1 / (math.exp(5) + 2)  # BlockModel's true-class probability when the block is hit: logits (0, 5, 0)
P_CLEAN = math.exp(5) / (math.exp(5) + 2)  # logits (5, 0, 0)


class BlockModel(nn.Module):
    """3 classes; class 1 (logit 5) iff a pixel brighter than 0.9 lies in rows 3..5, columns 3..5; else class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = (x[:, 0, 3:6, 3:6] > 0.9).flatten(1).any(1).float()
        return torch.stack([5 * (1 - hit), 5 * hit, torch.zeros_like(hit)], dim=1) + self.dummy


def png_size(path) -> tuple[int, int]:
    """``(width, height)`` of a PNG file, from its header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])
