"""How the stages evaluate pixel variants of clean images: the dense forward or the incremental evaluator.

Every stage that evaluates many k-pixel variants of the same images (the DE
attack's candidates, the exhaustive sweep, the locality rings and the
vulnerability maps) reads them through :class:`PixelVariants`, with the
config's ``engine``:

* ``dense``: the plain forward pass of the built images, ``model(apply_pixels(...))``;
* ``incremental``: :class:`onepixel.incremental.IncrementalEvaluator`, which
  recomputes only each candidate's changed region of every layer from the clean
  image's cached activations (exact to float rounding; a model it cannot trace
  is evaluated densely, with one warning naming why);
* ``auto`` (the default): ``incremental`` where a cost model expects it to be
  faster, ``dense`` otherwise. The model counts, without timing anything (so the
  choice, and with it the results, are the same on every run of the same
  config): one changed pixel per candidate (``k = 1``), a CPU device, a model the
  evaluator traces, and an expected speed-up of at least
  :data:`AUTO_MIN_SPEEDUP` at the stage's ``candidates`` per image and call:

      speed-up = B * full / (B * incremental + steps * OVERHEAD_MACS_PER_STEP)

  with ``B`` the candidates of one image per call (DE: the population; the
  sweep, the vulnerability maps: up to :data:`INCREMENTAL_CHUNK`; locality: its
  rings' positions), ``full`` and ``incremental`` the convolution and linear
  multiply-accumulates of one candidate each way
  (:func:`onepixel.incremental.incremental_cost`) and ``steps`` the nodes the
  incremental path walks per call, each costing about what
  :data:`OVERHEAD_MACS_PER_STEP` multiply-accumulates cost (gathers, pastes
  and the framework's dispatch of small tensors; calibrated with
  ``benchmarks/engines.py`` on a 2-core CPU). So LeNet's DE at population 40
  (0.65 M MACs per image, 17 steps) stays dense while its sweep goes
  incremental, ResNet-20, AllConv and NiN at 32x32 go incremental for every
  stage, and the 8x8 digits stay dense (nearly every layer's change covers its
  whole map: ratio about 1.1). ``k > 1`` (a DE attack with several pixels at
  random positions) is dense: the changed region spans most of the image. On a
  GPU ``auto`` stays dense until the GPU measurements (``benchmarks/gpu.py``)
  say otherwise.

Results for a given seed and engine are reproducible run to run; the two
engines' outputs differ by float rounding (relative 1e-6 in float32), so a
search that compares nearly equal fitness values can take another path.
Every file the stages write records the engine that ran (``engine``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from onepixel.data.dataset import apply_pixels
from onepixel.errors import ConfigError
from onepixel.incremental import IncrementalCost, IncrementalEvaluator, incremental_cost

__all__ = [
    "AUTO_MIN_SPEEDUP",
    "ENGINES",
    "OVERHEAD_MACS_PER_STEP",
    "EngineChoice",
    "PixelVariants",
    "check_engine",
    "choose_engine",
    "expected_speedup",
]

log = logging.getLogger(__name__)

#: the values of the config key ``engine``
ENGINES = ("dense", "incremental", "auto")
#: ``auto`` picks the incremental evaluator where the cost model expects at least this speed-up
AUTO_MIN_SPEEDUP = 1.25
#: the fixed cost of one node of the incremental path per call, in multiply-accumulates of the plain forward
#: (about 135 us per node on a 2-core CPU running convolutions at 10-20 GMAC/s; benchmarks/engines.py)
OVERHEAD_MACS_PER_STEP = 2.0e6
#: candidates of one image per incremental call: a constant, so that results do not depend on batch sizes
INCREMENTAL_CHUNK = 1024


@dataclass(frozen=True)
class EngineChoice:
    """The engine that runs (``dense`` or ``incremental``) and why (for the logs and the files)."""

    engine: str
    reason: str


def check_engine(engine: object, key: str = "engine") -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a one-line :class:`ConfigError` naming ``key``."""
    if engine not in ENGINES:
        raise ConfigError(f"{key}: {engine!r} is unknown; use one of {', '.join(ENGINES)}")
    return str(engine)


def choose_engine(
    engine: str,
    model: nn.Module,
    image_shape: tuple[int, ...],
    pixels: int,
    device: torch.device | str,
    *,
    candidates: int = INCREMENTAL_CHUNK,
) -> EngineChoice:
    """The engine for ``model`` on images of ``image_shape`` ``(C, H, W)`` with ``pixels`` changed pixels,
    evaluated ``candidates`` of one image per call.

    ``dense`` and ``incremental`` are taken as asked; ``auto`` follows the cost model of the module
    docstring (:func:`expected_speedup`). Deterministic: no timing is involved.
    """
    check_engine(engine)
    if engine != "auto":
        return EngineChoice(engine, "asked for")
    if pixels != 1:
        return EngineChoice("dense", f"auto: {pixels} pixels per candidate (incremental only for k = 1)")
    if torch.device(device).type != "cpu":
        return EngineChoice("dense", f"auto: device {torch.device(device).type} (incremental only on the CPU)")
    cost = incremental_cost(model, tuple(int(v) for v in image_shape), positions=64)
    if cost.fallback_reason is not None:
        return EngineChoice("dense", f"auto: the incremental evaluator cannot run the model ({cost.fallback_reason})")
    speedup = expected_speedup(cost, candidates)
    verdict = "incremental" if speedup >= AUTO_MIN_SPEEDUP else "dense"
    return EngineChoice(
        verdict,
        f"auto: expected speed-up {speedup:.2f} at {candidates} candidates per image and call "
        f"(multiply-accumulate ratio {cost.ceiling:.2f}, {cost.steps} nodes; incremental from {AUTO_MIN_SPEEDUP})",
    )


def expected_speedup(cost: IncrementalCost, candidates: int) -> float:
    """The cost model's speed-up of the incremental path over the dense one at ``candidates`` per call."""
    batch = max(1, int(candidates))
    incremental = batch * cost.incremental_macs + cost.steps * OVERHEAD_MACS_PER_STEP
    return batch * cost.full_macs / incremental if incremental > 0 else math.inf


class PixelVariants:
    """The model's raw outputs on clean images with k pixels replaced, by the chosen engine.

    Args:
        model: maps float images ``(B, C, H, W)`` in [0, 1] to ``(B, K)`` outputs; called in whatever mode
            the caller set (the stages: eval mode, inference mode).
        images: ``(N, C, H, W)`` the clean images, uint8 (or float in [0, 1]), on any device.
        engine: ``dense`` or ``incremental`` (resolve ``auto`` with :func:`choose_engine` first).
        device: where the model runs.
        cached_images: how many images' clean activations the incremental engine keeps (least recently
            used ones are dropped): at least the images a caller has in flight at once.

    Calling it with ``rows`` ``(B,)`` (which clean image), ``xs``, ``ys`` ``(B, k)`` and ``colors``
    ``(B, k, C)`` (uint8, or float in [0, 1]) returns ``(B, K)`` on ``device``: exactly
    ``model(apply_pixels(images[rows], xs, ys, colors) / 255)`` for ``dense``, the same to float rounding for
    ``incremental`` (its candidates evaluated image by image, :data:`INCREMENTAL_CHUNK` at a time).

    Example:
        >>> variants = PixelVariants(model, images, "incremental", "cpu")  # doctest: +SKIP
        >>> out = variants(rows, xs, ys, colors)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        engine: str,
        device: torch.device | str,
        *,
        cached_images: int = 64,
    ) -> None:
        if engine not in ("dense", "incremental"):
            raise ValueError(f"engine must be 'dense' or 'incremental' (resolve 'auto' first); got {engine!r}")
        self.model, self.images, self.engine = model, images, engine
        self.device = torch.device(device)
        self.cached_images = max(1, int(cached_images))
        self._evaluators: OrderedDict[int, IncrementalEvaluator] = OrderedDict()
        self._template: IncrementalEvaluator | None = None

    @property
    def fallback_reason(self) -> str | None:
        """Why the incremental engine uses the plain forward pass (None: it does not, or it is dense)."""
        return None if self._template is None else self._template.fallback_reason

    def __call__(self, rows: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
        if self.engine == "dense":
            # images and colours each to [0, 1] first, so that uint8 and float ones mix (uint8 with uint8: the
            # same floats as dividing the built uint8 images by 255)
            clean = _as_float(self.images[rows.to(self.images.device)].to(self.device))
            return self.model(
                apply_pixels(clean, xs.to(self.device), ys.to(self.device), _as_float(colors.to(self.device), clean))
            )
        rows = rows.to("cpu").long()
        if rows.numel() == 0:
            return self.model(_as_float(self.images[:0].to(self.device)))
        order = torch.argsort(rows, stable=True)
        values, counts = torch.unique_consecutive(rows[order], return_counts=True)
        parts: list[torch.Tensor] = []
        start = 0
        for row, count in zip(values.tolist(), counts.tolist(), strict=True):
            evaluator = self._evaluator(row)
            index = order[start : start + count].to(self.device)
            start += count
            for part in torch.split(index, INCREMENTAL_CHUNK):
                parts.append(evaluator.logits(xs[part], ys[part], colors[part]))
        out = torch.cat(parts)
        result = torch.empty_like(out)
        result[order.to(out.device)] = out
        return result

    def _evaluator(self, row: int) -> IncrementalEvaluator:
        if row in self._evaluators:
            self._evaluators.move_to_end(row)
            return self._evaluators[row]
        image = self.images[row]
        if self._template is None:
            self._template = IncrementalEvaluator(self.model, image, device=self.device)
            evaluator = self._template
        else:
            evaluator = self._template.for_image(image)
        self._evaluators[row] = evaluator
        while len(self._evaluators) > self.cached_images:
            self._evaluators.popitem(last=False)
        return evaluator

    def drop(self, rows: torch.Tensor | list[int]) -> None:
        """Forget the clean activations of ``rows`` (images a caller is done with; the trace is kept)."""
        for row in torch.as_tensor(rows).reshape(-1).tolist():
            self._evaluators.pop(int(row), None)


def _as_float(images: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 values divided by 255 (in the dtype of ``like``, else float32); float values as they are."""
    if images.dtype != torch.uint8:
        return images
    return images.to(like.dtype if like is not None else torch.float32) / 255
