"""One way to read a classifier: its output as logits, whether it returns logits or probabilities.

Every stage that evaluates a model (image selection, the attack, locality,
vulnerability) reads the model through this module, so a model that ends in a
softmax gives the same probabilities as its twin that returns logits:

* :func:`looks_like_probabilities` and :func:`output_as_logits` are the two rules
  (the DE attack engine uses them directly);
* :class:`Classifier` wraps a model with those rules for the stages: batched,
  in eval mode, under ``torch.inference_mode``, results on the CPU, with the
  attack's rule for non-finite outputs (a *rejected* row);
* :func:`as_classifier` accepts either a :class:`Classifier` or a bare model.

The probability of a class is always ``softmax(logits)`` in float32, where the
logits are the model's output (``output="logits"``) or ``log p``
(``output="probabilities"``). For a model returning logits this is exactly
``torch.softmax(model(x).float(), 1)``, bit for bit, as the stages computed it
before this module existed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from onepixel.errors import ConfigError, DataError
from onepixel.torch_utils import eval_mode, model_device

if TYPE_CHECKING:
    from onepixel.engine import PixelVariants

#: what a model returns: ``auto`` decides from the first images (see :func:`looks_like_probabilities`)
MODEL_OUTPUTS = ("auto", "logits", "probabilities")
#: probabilities are read as log-probabilities; 0 becomes log(smallest normal float32) ~ -87.3
TINY = torch.finfo(torch.float32).tiny


def looks_like_probabilities(out: torch.Tensor, tol: float = 1e-3) -> bool:
    """Whether model outputs ``(N, K)`` read as class probabilities: finite, in [0, 1], rows summing to 1 (± ``tol``).

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


#: images per forward pass of a :class:`Classifier` unless told otherwise
DEFAULT_BATCH_SIZE = 512


@dataclass(frozen=True)
class Scores:
    """What a classifier says about ``n`` images, all on the CPU.

    Attributes:
        true_prob: ``(n,)`` float64, the probability of each image's label
            (``softmax(logits).gather(label)`` in float32, then widened); NaN when rejected.
        pred: ``(n,)`` int64, the argmax of the probabilities (-1 when rejected).
        fooled: ``(n,)`` bool: ``pred != label`` where the target is negative (untargeted),
            ``pred == target`` otherwise; never True for a rejected row.
        rejected: ``(n,)`` bool: the model's output had a NaN or infinite value.
    """

    true_prob: torch.Tensor
    pred: torch.Tensor
    fooled: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return int(self.pred.shape[0])


class Classifier:
    """A model read as a classifier: logits, probabilities, predictions, whatever it returns.

    Args:
        model: maps float32 images ``(n, C, H, W)`` in [0, 1] to ``(n, K)`` logits or
            class probabilities.
        output: what ``model`` returns: ``"logits"``, ``"probabilities"`` (a softmax at
            its end) or ``"auto"``: decided on the first batch the classifier evaluates
            with :func:`looks_like_probabilities` (all finite, in [0, 1], rows summing to
            1), then fixed for the classifier's life; :attr:`output` is the resolved kind.
            A stage reading an attack file uses the kind the attack recorded
            (``model_output``).
        device: where the model runs (default: the device of its first parameter or
            buffer). The model is *not* moved; each batch of images is copied there.
        batch_size: images per forward pass (a count of images, not a byte budget;
            default :data:`DEFAULT_BATCH_SIZE`). :meth:`score_batch` evaluates what it
            is given in one pass, for callers that build their batches themselves.

    Shapes: ``images`` are ``(N, C, H, W)``, uint8 in [0, 255] (divided by 255 on the
    device) or floating point in [0, 1] (cast to float32); ``labels`` and ``targets``
    ``(N,)`` class indices. Results are CPU tensors: :meth:`logits`,
    :meth:`log_probs`, :meth:`probs` ``(N, K)`` float32; :meth:`predict` ``(N,)``
    int64; :meth:`true_prob` ``(N,)`` float64; :meth:`scores` a :class:`Scores` of N rows.
    :meth:`predict` is the argmax of the logits (as the attack's ``adv_class`` and the
    image selection), ``Scores.pred`` the argmax of the probabilities (as the locality
    and the vulnerability maps report it); the two differ only where float32 rounding
    makes two probabilities equal.

    Every call puts the model in eval mode for its duration (each submodule gets its
    own training flag back, :func:`onepixel.torch_utils.eval_mode`) and runs under
    ``torch.inference_mode``.

    Non-finite outputs, the attack's rule: a row whose logits hold a NaN or an
    infinity (for probabilities: a NaN or an infinity in ``p``; 0 is read as
    ``log`` of float32's smallest normal number, see :func:`output_as_logits`) is
    *rejected*: its probabilities and log-probabilities are NaN, its prediction is
    -1, it is never ``fooled``, and :attr:`rejected` (a running count of rejected
    rows over every call, which :meth:`reset_rejected` sets back to 0) grows by one.
    :meth:`logits` returns such rows as they are (NaN stays NaN, +inf stays +inf).
    """

    def __init__(
        self,
        model: nn.Module,
        output: str = "auto",
        device: torch.device | str | None = None,
        batch_size: int | None = None,
    ) -> None:
        if output not in MODEL_OUTPUTS:
            raise ConfigError(f"output: {output!r} is unknown; use one of {', '.join(MODEL_OUTPUTS)}")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: {batch_size!r} is not allowed; use an integer >= 1")
        self.model = model
        self.requested_output = output
        self._output: str | None = None if output == "auto" else output
        self.device = torch.device(device) if device is not None else model_device(model)
        self.batch_size = batch_size
        self.rejected = 0

    def __repr__(self) -> str:
        return (
            f"Classifier({type(self.model).__name__}, output={self.output or self.requested_output!r}, "
            f"device={str(self.device)!r}, batch_size={self.batch_size})"
        )

    @property
    def output(self) -> str | None:
        """The kind of output the model returns, ``"logits"`` or ``"probabilities"``; ``None`` while
        ``output="auto"`` has not seen a batch yet."""
        return self._output

    def reset_rejected(self) -> None:
        """Set the :attr:`rejected` count back to 0."""
        self.rejected = 0

    # ------------------------------------------------------------------
    def _input(self, images: torch.Tensor) -> torch.Tensor:
        """One batch as float32 in [0, 1] on the device."""
        x = torch.as_tensor(images).to(self.device)
        if x.dtype == torch.uint8:
            return x.float() / 255
        if not x.is_floating_point():
            raise DataError(f"images: expected uint8 in [0, 255] or floating point in [0, 1]; got {x.dtype}")
        return x.float()

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(n, K)`` float32 on the device of one batch (one forward pass), and its finite rows ``(n,)``.

        Call under eval mode and inference mode. Resolves ``output="auto"`` on the first batch.
        """
        return self._read(self.model(self._input(images)), images.shape[0])

    def _read(self, out: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's raw output ``(n, K)`` as logits and finite rows; resolves ``output="auto"``."""
        if out.dim() != 2 or out.shape[0] != n:
            raise DataError(f"model: expected outputs of shape (N, K); got {tuple(out.shape)} for N={n}")
        if self._output is None:
            self._output = "probabilities" if looks_like_probabilities(out) else "logits"
        logits = output_as_logits(out, self._output)
        finite = torch.isfinite(logits).all(1)
        self.rejected += int((~finite).sum())
        return logits, finite

    def _batched(self, images: torch.Tensor, step: Callable[[slice], None]) -> None:
        """Call ``step(rows)`` for every batch of ``batch_size`` rows, in eval and inference mode."""
        with eval_mode(self.model), torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                step(slice(start, min(start + self.batch_size, images.shape[0])))

    def _per_class(
        self, images: torch.Tensor, what: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``(N, K)`` float32 CPU: ``what(logits, finite)`` of every batch."""
        parts: list[torch.Tensor] = []

        def step(rows: slice) -> None:
            parts.append(what(*self._forward(images[rows])).cpu())

        self._batched(images, step)
        if not parts:
            return torch.zeros((0, 0), dtype=torch.float32)
        return torch.cat(parts).clone()  # a normal tensor, usable outside inference mode

    @staticmethod
    def _softmax(logits: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, 1).masked_fill_(~finite[:, None], float("nan"))

    # ------------------------------------------------------------------
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` float32 logits (``log p`` for a model returning probabilities), non-finite values kept."""
        return self._per_class(images, lambda logits, finite: logits)

    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` float32 ``log_softmax`` of the logits; NaN rows where rejected."""
        return self._per_class(
            images, lambda logits, finite: torch.log_softmax(logits, 1).masked_fill_(~finite[:, None], float("nan"))
        )

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` float32 ``softmax`` of the logits; NaN rows where rejected."""
        return self._per_class(images, self._softmax)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``(N,)`` int64 argmax of the logits (of the model's own output for a model returning logits,
        as the attack's ``adv_class``); -1 where rejected."""
        out = torch.full((images.shape[0],), -1, dtype=torch.long)

        def step(rows: slice) -> None:
            logits, finite = self._forward(images[rows])
            out[rows] = logits.argmax(1).masked_fill_(~finite, -1).cpu()

        self._batched(images, step)
        return out

    def true_prob(self, images: torch.Tensor, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(N,)`` float64 probability of each image's label; NaN where rejected."""
        return self.scores(images, labels).true_prob

    def scores(
        self, images: torch.Tensor, labels: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray | None = None
    ) -> Scores:
        """:meth:`score_batch` of every batch of ``batch_size`` images, joined."""
        n = images.shape[0]
        labels_t, targets_t = self._classes(labels, targets, n)
        out = Scores(
            torch.full((n,), float("nan"), dtype=torch.float64),
            torch.full((n,), -1, dtype=torch.long),
            torch.zeros(n, dtype=torch.bool),
            torch.zeros(n, dtype=torch.bool),
        )

        def step(rows: slice) -> None:
            got = self._score(images[rows], labels_t[rows], targets_t[rows])
            for mine, theirs in zip(
                (out.true_prob, out.pred, out.fooled, out.rejected),
                (got.true_prob, got.pred, got.fooled, got.rejected),
                strict=True,
            ):
                mine[rows] = theirs

        self._batched(images, step)
        return out

    def score_batch(
        self, images: torch.Tensor, labels: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray | None = None
    ) -> Scores:
        """:class:`Scores` of ``images`` in **one** forward pass (no splitting by ``batch_size``).

        ``targets``: ``None`` or negative entries mean untargeted. ``images``, ``labels``
        and ``targets`` may already be on the device (nothing is copied then).
        """
        labels_t, targets_t = self._classes(labels, targets, images.shape[0])
        with eval_mode(self.model), torch.inference_mode():
            got = self._score(images, labels_t, targets_t)
        return Scores(*(t.clone() for t in (got.true_prob, got.pred, got.fooled, got.rejected)))

    def variant_logits(
        self, variants: PixelVariants, rows: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, colors: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(B, K)`` float32 on the device of pixel variants (:class:`onepixel.engine.PixelVariants`:
        image ``rows[b]`` with pixels ``(ys[b], xs[b])`` set to ``colors[b]``), in one call; non-finite rows
        are counted in :attr:`rejected`."""
        with eval_mode(self.model), torch.inference_mode():
            logits, _finite = self._read(variants(rows, xs, ys, colors), rows.shape[0])
        return logits

    def score_variants(
        self,
        variants: PixelVariants,
        rows: torch.Tensor,
        xs: torch.Tensor,
        ys: torch.Tensor,
        colors: torch.Tensor,
        labels: torch.Tensor | np.ndarray,
        targets: torch.Tensor | np.ndarray | None = None,
    ) -> Scores:
        """:meth:`score_batch` of pixel variants (see :meth:`variant_logits`), evaluated by their engine."""
        labels_t, targets_t = self._classes(labels, targets, rows.shape[0])
        with eval_mode(self.model), torch.inference_mode():
            got = self._scores_of(*self._read(variants(rows, xs, ys, colors), rows.shape[0]), labels_t, targets_t)
        return Scores(*(t.clone() for t in (got.true_prob, got.pred, got.fooled, got.rejected)))

    def _classes(self, labels, targets, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels_t = torch.as_tensor(labels).long()
        targets_t = torch.full((n,), -1, dtype=torch.long) if targets is None else torch.as_tensor(targets).long()
        for key, t in (("labels", labels_t), ("targets", targets_t)):
            if t.shape != (n,):
                raise DataError(f"{key}: expected shape ({n},); got {tuple(t.shape)}")
        return labels_t, targets_t

    def _score(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> Scores:
        """One forward pass; call under eval mode and inference mode. Results on the CPU."""
        return self._scores_of(*self._forward(images), labels, targets)

    @staticmethod
    def _scores_of(logits: torch.Tensor, finite: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> Scores:
        probs = torch.softmax(logits, 1)
        labels, targets = labels.to(probs.device), targets.to(probs.device)
        num = probs.shape[1]
        if len(labels) and bool(((labels < 0) | (labels >= num)).any()):
            raise DataError(f"labels: values must be class indices in [0, {num - 1}] for this model")
        guess = probs.argmax(1)
        fooled = torch.where(targets >= 0, guess == targets, guess != labels) & finite
        true_prob = probs.gather(1, labels[:, None])[:, 0].double().masked_fill_(~finite, float("nan"))
        return Scores(true_prob.cpu(), guess.masked_fill_(~finite, -1).cpu(), fooled.cpu(), (~finite).cpu())


def as_classifier(
    model: nn.Module | Classifier,
    output: str = "auto",
    device: torch.device | str | None = None,
    batch_size: int | None = None,
) -> Classifier:
    """``model`` itself when it is a :class:`Classifier` (``output``, ``device`` and ``batch_size``
    are then ignored), else ``Classifier(model, output, device, batch_size)``."""
    if isinstance(model, Classifier):
        return model
    return Classifier(model, output=output, device=device, batch_size=batch_size)
