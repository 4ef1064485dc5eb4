"""What every attack class of the library shares: the torchattacks-like interface and the checks of its options.

Each attack (:class:`~onepixel.attack.de.OnePixelAttack`,
:class:`~onepixel.attack.exhaustive.ExhaustiveAttack`, :class:`~onepixel.attack.gradient.FGSM`,
:class:`~onepixel.attack.gradient.PGD`) is built as ``Attack(model, **options, targeted=...,
batch_size=..., device=..., output=...)``; its options are checked against the config schema's
``attack`` section (their one source of types and ranges, so ``attack.population: 3`` in a config
and ``OnePixelAttack(model, population=3)`` give the same one-line error), ``run(images, labels,
targets)`` returns everything about the run and ``attack(images, labels)`` the adversarial images,
as torchattacks does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from onepixel.config import validate_section
from onepixel.errors import ConfigError
from onepixel.scoring import MODEL_OUTPUTS
from onepixel.torch_utils import model_device


def check_options(options: Mapping[str, Any], output: str) -> None:
    """One-line :class:`ConfigError` naming the first bad option (keys of the schema's ``attack`` section) or ``output``."""
    validate_section("attack", options, arguments=True)
    if output not in MODEL_OUTPUTS:
        raise ConfigError(f"output: {output!r} is unknown; use one of {', '.join(MODEL_OUTPUTS)}")


def like_input(adversarial: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``adversarial`` images in the form of ``images``: floats in [0, 1] for float input, on its device."""
    if isinstance(images, torch.Tensor) and images.dtype.is_floating_point:
        return (adversarial.to(images.dtype) / 255).to(images.device)
    return adversarial.to(images.device)


class Attack:
    """The common state of an attack: the model, ``targeted``, ``batch_size``, ``device``, ``output``.

    Subclasses name their own options in :attr:`options` (what ``repr`` shows, in order) and
    pass their values to ``__init__``, which checks them all before storing any.
    """

    #: the options of the class besides targeted, batch_size, device and output, in the order repr shows them
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        model: nn.Module,
        *,
        targeted: bool,
        batch_size: int,
        device: str | torch.device | None,
        output: str,
        **options: Any,
    ) -> None:
        check_options({**options, "targeted": targeted, "batch_size": batch_size}, output)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model: {type(model).__name__} is not a torch.nn.Module")
        self.model = model
        for key, value in options.items():
            setattr(self, key, value)
        self.targeted = targeted
        self.batch_size = int(batch_size)
        self.output = output
        #: what the model returned in the last run: "logits" or "probabilities" (None before a run)
        self.model_output: str | None = None if output == "auto" else output
        self.device = model_device(model) if device is None else torch.device(device)
        self.last_stats: dict[str, float] = {}

    def __repr__(self) -> str:
        shown = [f"{key}={getattr(self, key)!r}" for key in (*self.options, "targeted", "batch_size")]
        shown += [f"device={str(self.device)!r}", f"output={self.output!r}"]
        return f"{type(self).__name__}({', '.join(shown)})"
