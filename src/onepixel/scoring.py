"""One way to read a classifier: its output as logits, whether it returns logits or probabilities.

Every stage that evaluates a model (image selection, the attack, capture,
locality, vulnerability) reads the model through this module, so a model that
ends in a softmax gives the same probabilities as its twin that returns logits.
"""

from __future__ import annotations

import torch

#: what a model returns: ``auto`` decides from the first images (see :func:`looks_like_probabilities`)
MODEL_OUTPUTS = ("auto", "logits", "probabilities")
#: probabilities are read as log-probabilities; 0 becomes log(smallest normal float32) ~ -87.3
TINY = torch.finfo(torch.float32).tiny


def looks_like_probabilities(out: torch.Tensor, tol: float = 1e-3) -> bool:
    """Whether model outputs ``(N, K)`` read as class probabilities: all finite, in [0, 1], rows summing to 1 (± ``tol``).

    Logits pass this only by accident (K numbers that happen to be in [0, 1] and sum to 1).
    """
    out = out.detach().float()
    if out.numel() == 0 or not bool(torch.isfinite(out).all()):
        return False
    in_range = bool(((out >= 0) & (out <= 1)).all())
    return in_range and bool(((out.sum(1) - 1).abs() <= tol).all())


def output_as_logits(out: torch.Tensor, kind: str) -> torch.Tensor:
    """A model's raw output ``(N, K)`` as float32 logits.

    ``kind`` is ``"logits"`` (returned as float32) or ``"probabilities"`` (returned as
    ``log p``, with 0 read as log of float32's smallest normal number). NaN stays NaN
    and +inf stays +inf, so non-finite outputs stay detectable.
    """
    out = out.float()
    if kind == "probabilities":
        out = out.clamp_min(TINY).log_()
    return out
