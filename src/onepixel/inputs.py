"""The inputs shared by the stages that re-run a model on attacked images (capture, locality, vulnerability)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from onepixel.errors import DataError
from onepixel.utils import resolve_device


class AttackedModel(NamedTuple):
    """A model in eval mode on its device, its test set and an attack result made with it."""

    model: nn.Module
    meta: dict[str, Any]
    test: Any
    attack: Any
    device: torch.device


def load_attacked_model(
    checkpoint_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    attack_path: str | os.PathLike[str],
    device: str = "auto",
) -> AttackedModel:
    """Load a checkpoint (``weights_only``), its test set and an attack file, and check they fit together.

    Raises:
        DataError: naming the file: unreadable, of another kind, or an attack whose
            ``sample_id`` points beyond the test set.
    """
    from onepixel.attack import load_attack
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    dev = resolve_device(device)
    attack = load_attack(attack_path)
    test = load_dataset(test_path)
    ids = np.asarray(attack["sample_id"].values, dtype=np.int64)
    if ids.size and (ids.max() >= test.sizes["sample"] or ids.min() < 0):
        raise DataError(f"{attack_path}: sample_id {int(ids.max())} is outside the {test.sizes['sample']} images of {test_path}")
    model, meta = load_checkpoint(checkpoint_path, map_location=dev)
    model.eval()
    return AttackedModel(model, meta, test, attack, dev)
