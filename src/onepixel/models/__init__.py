"""The CIFAR-10 model zoo of the one-pixel attack papers, for any input size from 8x8 and 1 or 3 channels.

Every model takes float32 images ``(N, C, H, W)`` in ``[0, 1]``, normalises them
itself (``Normalize`` is its first module) and returns logits ``(N, num_classes)``.
Each has ``model.arch`` (its registry name) and ``model.feature_layers``: the names,
in ``model.named_modules()``, of the modules whose 4-D outputs are captured for
propagation maps, in depth order.

Models from outside the registry (``model_sources``: torchvision models, ``torch.export``
programs, a user's factory) are :class:`SourceModel` s from :func:`build_source_model`
(:mod:`onepixel.models.sources`); ``load_checkpoint`` rebuilds them too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from onepixel.errors import ConfigError
from onepixel.models.allconv import AllConv
from onepixel.models.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    save_checkpoint,
)
from onepixel.models.densenet import DenseNet
from onepixel.models.layers import default_feature_layers
from onepixel.models.lenet import LeNet
from onepixel.models.nin import NiN
from onepixel.models.normalize import Normalize, he_init
from onepixel.models.resnet import CifarResNet
from onepixel.models.sources import SourceModel, build_source_model
from onepixel.models.vgg import VGG
from onepixel.models.wide_resnet import WideResNet

MIN_IMAGE_SIZE = 8

# name -> builder(normalize, num_classes, in_channels, image_size)
_BUILDERS: dict[str, Callable[[Normalize, int, int, int], nn.Module]] = {
    "lenet": lambda norm, classes, channels, size: LeNet(norm, classes, channels, size),
    "allconv": lambda norm, classes, channels, size: AllConv(norm, classes, channels),
    "nin": lambda norm, classes, channels, size: NiN(norm, classes, channels),
    "vgg16": lambda norm, classes, channels, size: VGG(norm, classes, channels),
    "resnet20": lambda norm, classes, channels, size: CifarResNet(norm, classes, channels, depth=20),
    "resnet32": lambda norm, classes, channels, size: CifarResNet(norm, classes, channels, depth=32),
    "densenet": lambda norm, classes, channels, size: DenseNet(norm, classes, channels, depth=100, growth=12),
    "wrn16_4": lambda norm, classes, channels, size: WideResNet(norm, classes, channels, depth=16, widen=4),
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_NAMES",
    "Normalize",
    "SourceModel",
    "build_model",
    "build_source_model",
    "count_parameters",
    "default_feature_layers",
    "load_checkpoint",
    "save_checkpoint",
]


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build architecture ``name`` (one of ``MODEL_NAMES``) with fresh weights.

    Args:
        num_classes: number of logits.
        in_channels: image channels (1 or 3).
        image_size: side of the training images (only LeNet uses it, to pad small inputs).
        mean, std: per-channel normalisation in [0, 1] units (default 0 and 1).

    Returns:
        The model (train mode, He-initialised) with attributes ``arch`` and ``feature_layers``.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"model: unknown architecture {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    for key, value, low in (
        ("num_classes", num_classes, 2),
        ("in_channels", in_channels, 1),
        ("image_size", image_size, MIN_IMAGE_SIZE),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"model {key}: {value!r} must be an integer >= {low}")
    model = _BUILDERS[name](Normalize(in_channels, mean, std), num_classes, in_channels, image_size)
    he_init(model)
    model.arch = name  # type: ignore[assignment]  # a plain attribute (nn.Module's __setattr__ is typed for tensors and modules)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as the normalisation are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
