"""Exhaustive one-pixel sweep: every position x a colour set, the ground truth for the DE attack.

Vargas & Su (arXiv 1902.02947) attack with differential evolution (Su, Vargas &
Sakurai, arXiv 1710.08864), which samples a few thousand of the ``H * W * 256^C``
one-pixel perturbations. CornerSearch (Croce & Hein, *Sparse and Imperceivable
Adversarial Attacks*, ICCV 2019) starts from the sweep this module implements:
every pixel set to every *corner* of the colour cube (each channel 0 or 255),
which finds most one-pixel adversarial examples at a known, fixed cost. With all
256 values of a grayscale image (``colors="all"``) the sweep is exact: an image
it cannot fool has no one-pixel adversarial example at all.

Design (see :class:`ExhaustiveAttack`):

* Candidate ``j`` of an image is position ``j // S`` (flat ``y * W + x``, row by
  row) with colour ``j % S`` of the colour set (``S`` colours): position-major,
  the fixed order ``early_stop`` follows.
* Up to ``batch_size`` candidates (of one or several images) are built with
  :func:`onepixel.data.dataset.apply_pixels` and evaluated in one forward pass of a
  :class:`onepixel.scoring.Classifier`; every per-image reduction (minimum,
  first index among ties, counts, maps) is order-free, so the results do not
  depend on ``batch_size``.
* The returned pixel is re-evaluated alone in float32, as the DE attack's is:
  ``result.success`` is that verdict.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from onepixel.attack.base import Attack, like_input
from onepixel.attack.de import AttackResult, _as_uint8, _labels
from onepixel.data.dataset import apply_pixels
from onepixel.engine import INCREMENTAL_CHUNK, EngineChoice, PixelVariants, check_engine, choose_engine
from onepixel.errors import ConfigError, DataError
from onepixel.scoring import Classifier
from onepixel.torch_utils import eval_mode

COLOR_SETS = ("corners", "grid", "all")
#: with ``early_stop``, about this many images share a forward pass (each a chunk of its candidates)
_EARLY_STOP_IMAGES = 32


def grid_levels(levels: int) -> list[int]:
    """``levels`` evenly spaced values from 0 to 255, rounded half up (4 -> 0, 85, 170, 255)."""
    return [(2 * 255 * i + levels - 1) // (2 * (levels - 1)) for i in range(levels)]


def color_set(name: str, channels: int, levels: int = 4) -> torch.Tensor:
    """``(S, C)`` uint8 colours of set ``name`` for ``channels`` channels, first channel slowest.

    ``corners``: the ``2^C`` extreme colours (each channel 0 or 255); ``grid``:
    :func:`grid_levels` per channel (``levels^C`` colours); ``all``: the 256 values
    of a single channel (a one-line :class:`ConfigError` for more channels).
    """
    _check_color_options(name, levels)
    if name == "all" and channels != 1:
        raise ConfigError(
            f"colors: 'all' (256 values) needs one channel; these images have {channels} "
            f"(256^{channels} colours); use 'corners' or 'grid'"
        )
    values = {"corners": [0, 255], "grid": grid_levels(levels), "all": list(range(256))}[name]
    if name == "all":
        return torch.tensor(values, dtype=torch.uint8)[:, None]
    return torch.tensor(list(itertools.product(values, repeat=channels)), dtype=torch.uint8)


def _check_color_options(name: object, levels: object) -> None:
    if name not in COLOR_SETS:
        raise ConfigError(f"colors: {name!r} is not a colour set; allowed: {', '.join(COLOR_SETS)}")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
        raise ConfigError(f"levels: {levels!r} is not allowed; use an integer in [2, 256]")


@dataclass(repr=False)
class SweepResult:
    """Outcome of :meth:`ExhaustiveAttack.run`, one row per image (CPU tensors).

    Attributes:
        result: the DE-format :class:`~onepixel.attack.de.AttackResult` (``k = 1``,
            ``generations`` 0, ``queries`` the candidates evaluated), so later stages
            take it unchanged. Its pixel is the fooling candidate with the lowest
            true-class probability (targeted: the highest target probability), else
            the best candidate; ``success`` its float32 re-evaluation.
        n_fooling: ``(N,)`` int64 fooling (position, colour) pairs among the candidates evaluated.
        fooled_map: ``(N, H, W)`` bool, some colour of the set fools the model at ``(y, x)``.
        min_true_prob: ``(N, H, W)`` float32, the lowest true-class softmax probability
            over the colours at ``(y, x)`` (a full vulnerability map); NaN where no
            candidate was evaluated or every one had a non-finite output.
        colors: ``(S, C)`` uint8 the colour set, in candidate order.
        color_set: its name (``corners``, ``grid``, ``all``).
        early_stop: whether each image stopped at its first fooling candidate; the
            counts and maps then cover only the candidates up to it.
    """

    result: AttackResult
    n_fooling: torch.Tensor
    fooled_map: torch.Tensor
    min_true_prob: torch.Tensor
    colors: torch.Tensor
    color_set: str
    early_stop: bool = False

    def __len__(self) -> int:
        return len(self.result)

    def __repr__(self) -> str:
        n, hits = len(self), int(self.result.success.sum())
        attackable = int((self.n_fooling > 0).sum())
        return (
            f"SweepResult(n={n}, success={hits}/{n}, attackable={attackable}, colors={self.color_set!r} "
            f"({self.colors.shape[0]}), exact={self.exact}, early_stop={self.early_stop})"
        )

    @property
    def exact(self) -> bool:
        """Whether the colour set holds every colour (``256^C``) and nothing stopped early: then an image
        with ``n_fooling == 0`` has no one-pixel adversarial example."""
        return self.colors.shape[0] == 256 ** self.colors.shape[1] and not self.early_stop

    def select(self, index: torch.Tensor | slice) -> SweepResult:
        """Rows ``index`` of every per-image field, as a new result."""
        return SweepResult(
            self.result.select(index),
            self.n_fooling[index],
            self.fooled_map[index],
            self.min_true_prob[index],
            self.colors,
            self.color_set,
            self.early_stop,
        )

    @staticmethod
    def concat(parts: list[SweepResult]) -> SweepResult:
        """Concatenate sweeps of one colour set row-wise (e.g. shards of one image set)."""
        if not parts:
            raise ValueError("concat needs at least one SweepResult")
        first = parts[0]
        return SweepResult(
            AttackResult.concat([p.result for p in parts]),
            torch.cat([p.n_fooling for p in parts]),
            torch.cat([p.fooled_map for p in parts]),
            torch.cat([p.min_true_prob for p in parts]),
            first.colors,
            first.color_set,
            first.early_stop,
        )


@dataclass
class _State:
    """The running per-image reductions of one sweep (CPU tensors, ``N`` images of ``P`` positions)."""

    best_fit: torch.Tensor  #: (N,) lowest fitness so far (inf: none finite yet)
    best_idx: torch.Tensor  #: (N,) its first candidate index
    fool_fit: torch.Tensor  #: (N,) lowest fitness of a fooling candidate
    fool_idx: torch.Tensor  #: (N,) its first candidate index (-1: none)
    n_fool: torch.Tensor  #: (N,) fooling candidates
    queries: torch.Tensor  #: (N,) candidates counted as evaluated
    rejected: torch.Tensor  #: (N,) candidates with non-finite output
    fooled_map: torch.Tensor  #: (N * P,) bool
    min_prob: torch.Tensor  #: (N * P,) float32, +inf where nothing finite

    @classmethod
    def empty(cls, n: int, positions: int) -> _State:
        def zeros() -> torch.Tensor:
            return torch.zeros(n, dtype=torch.long)

        return cls(
            best_fit=torch.full((n,), math.inf),
            best_idx=zeros(),
            fool_fit=torch.full((n,), math.inf),
            fool_idx=torch.full((n,), -1, dtype=torch.long),
            n_fool=zeros(),
            queries=zeros(),
            rejected=zeros(),
            fooled_map=torch.zeros(n * positions, dtype=torch.bool),
            min_prob=torch.full((n * positions,), math.inf),
        )


def _segment_min(seg: torch.Tensor, key: torch.Tensor, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per segment ``0..n-1``: the minimum of ``key`` and the smallest ``idx`` reaching it (inf / max int
    where the segment has no entry)."""
    low = torch.full((n,), math.inf).scatter_reduce(0, seg, key, "amin")
    big = torch.iinfo(torch.long).max
    at = torch.where(key == low[seg], idx, torch.full_like(idx, big))
    return low, torch.full((n,), big, dtype=torch.long).scatter_reduce(0, seg, at, "amin")


def _cand_ranges(start: torch.Tensor, stop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot and candidate index of every candidate in ``[start[s], stop[s])`` for each slot ``s``."""
    counts = stop - start
    slot = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    offset = torch.cumsum(counts, 0) - counts
    return slot, torch.arange(int(counts.sum())) - offset[slot] + start[slot]


class ExhaustiveAttack(Attack):
    r"""One-pixel attack by exhaustive sweep: every position x every colour of a set, k = 1.

    The ground truth for the DE attack of Vargas & Su (arXiv 1902.02947; Su, Vargas &
    Sakurai, arXiv 1710.08864): which images *have* a one-pixel adversarial example
    (with a colour of the set), how many (position, colour) pairs fool the model, and
    where. CornerSearch (Croce & Hein, ICCV 2019) starts with the same sweep over the
    colour cube's corners. Same interface as :class:`~onepixel.attack.de.OnePixelAttack`:
    ``attack(images, labels)`` returns the adversarial images (torchattacks-like),
    :meth:`run` a :class:`SweepResult` whose ``result`` is an ordinary
    :class:`~onepixel.attack.de.AttackResult`.

    Args:
        model: maps float32 images ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)``
            (or probabilities, see ``output``).
        colors: the colour set: ``"corners"`` (default; the ``2^C`` colours with each
            channel 0 or 255: 8 for RGB, 2 for grayscale), ``"grid"`` (``levels`` values
            per channel, ``levels^C`` colours; 4 -> {0, 85, 170, 255}^C) or ``"all"`` (the
            256 values of a one-channel image: the exact oracle; more channels: a
            one-line :class:`ConfigError` at :meth:`run`).
        levels: values per channel of ``"grid"`` (2..256).
        batch_size: candidate images per forward pass.
        early_stop: stop each image at its first fooling candidate in the fixed order
            (position ``y * W + x`` row by row, then the colours in set order); its
            ``queries`` are then that candidate's index + 1 and the counts and maps
            cover only the candidates up to it.
        targeted: fooling means classified as the target (``run`` needs ``targets``).
        device: where to run; default the model's device.
        output: ``"logits"``, ``"probabilities"`` or ``"auto"`` (decided on the clean
            images), as for :class:`~onepixel.scoring.Classifier`.
        engine: how the candidates are evaluated (:mod:`onepixel.engine`): ``"dense"`` (default: the
            plain forward pass), ``"incremental"`` (only each candidate's changed region of every layer)
            or ``"auto"``; ``engine_used`` is the one that ran.

    Cost: ``H * W * S`` queries per image (``S`` colours): 8,192 at 32x32 RGB with
    ``corners``, 16,384 on 8x8 digits with ``all``, 64 * 64 = 4,096 at 8x8 RGB with
    ``grid`` of 4 levels. Without ``early_stop`` every candidate is evaluated.

    Details:
        * Per candidate: softmax of the float32 logits (the attack's rule), success =
          argmax of the logits != label (targeted: == target); an output with a NaN
          or an infinity is rejected (never fooling, left out of the maps, counted in
          ``rejected_candidates``). Candidates are ranked by ``log p(label)``
          (targeted ``-log p(target)``), DE's fitness; ties go to the first in order.
        * The returned pixel is the best fooling candidate, else the best one; the
          DE-format fields are those of its float32 re-evaluation (``success`` its
          verdict). ``queries`` = candidates evaluated, ``generations`` 0.
        * Deterministic; the results do not depend on ``batch_size`` (up to the
          model's own batch-size dependence in float arithmetic).
        * With ``early_stop`` about 32 images share a forward pass, each a chunk of
          its candidates, so that stopping saves forward passes; the results do not
          depend on this.

    After ``run``, ``last_stats`` holds ``candidates`` (counted queries), ``forward_images``
    (images actually evaluated: more with ``early_stop``), ``seconds``, ``candidates_per_s``.

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from onepixel.attack import ExhaustiveAttack
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        >>> images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> labels = model(images.float() / 255).argmax(1)
        >>> sweep = ExhaustiveAttack(model, colors="corners").run(images, labels)
        >>> sweep.result.queries.tolist()  # 8 x 8 positions x 8 corners
        [512, 512, 512, 512]
        >>> tuple(sweep.fooled_map.shape), tuple(sweep.min_true_prob.shape)
        ((4, 8, 8), (4, 8, 8))
        >>> bool(((sweep.n_fooling > 0) == sweep.result.success).all())
        True
        >>> adv = ExhaustiveAttack(model)(images, labels)  # torchattacks-style: adversarial images
        >>> torch.equal(adv, sweep.result.adversarial)
        True
    """

    options = ("colors", "levels", "early_stop")

    def __init__(
        self,
        model: nn.Module,
        colors: str = "corners",
        levels: int = 4,
        batch_size: int = 8192,
        early_stop: bool = False,
        targeted: bool = False,
        device: str | torch.device | None = None,
        output: str = "auto",
        engine: str = "dense",
    ) -> None:
        self.engine = check_engine(engine)
        super().__init__(
            model,
            colors=colors,
            levels=levels,
            early_stop=early_stop,
            targeted=targeted,
            batch_size=batch_size,
            device=device,
            output=output,
        )
        self.colors, self.levels, self.early_stop = colors, int(levels), bool(early_stop)
        self.engine_used: EngineChoice | None = None

    def choose_engine(self, image_shape: tuple[int, ...]) -> EngineChoice:
        """The engine :meth:`run` uses on images of ``image_shape`` ``(C, H, W)`` (``auto`` resolved: one image's
        candidates per call, at most :data:`~onepixel.engine.INCREMENTAL_CHUNK`)."""
        c, h, w = (int(v) for v in image_shape)
        per_image = h * w * color_set(self.colors, c, self.levels).shape[0]
        candidates = min(self._chunk(per_image), INCREMENTAL_CHUNK)
        return choose_engine(self.engine, self.model, image_shape, 1, self.device, candidates=candidates)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """torchattacks-style: the adversarial images, in the dtype and on the device of ``images``."""
        return like_input(self.run(images, labels, targets).result.adversarial, images)

    # ------------------------------------------------------------------
    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        on_finished: Callable[[int], object] | None = None,
    ) -> SweepResult:
        """Sweep every image; see the class docstring.

        Args:
            images: ``(N, C, H, W)`` uint8, or float in [0, 1] (converted with ``round(x * 255)``).
            labels: ``(N,)`` true classes.
            targets: ``(N,)`` target classes; required iff ``targeted``.
            on_finished: called with the number of images finished, as they finish (progress).
        """
        images, lab, tgt = self._check_inputs(images, labels, targets)
        palette = color_set(self.colors, images.shape[1], self.levels)
        start = time.perf_counter()
        clf = Classifier(self.model, output=self.output, device=self.device, batch_size=self.batch_size)
        with eval_mode(self.model):
            self.model.to(self.device)
            with torch.autocast(device_type=self.device.type, enabled=False):
                prob_clean = torch.softmax(clf.logits(images), 1)
                self.model_output = clf.output
                self._check_classes(prob_clean.shape[1], lab, tgt)
                self.engine_used = self.choose_engine(tuple(images.shape[1:]))
                state, forwards = self._sweep(clf, images, lab, tgt, palette, on_finished)
                sweep = self._finalise(clf, images, lab, tgt, palette, state, prob_clean)
        seconds = time.perf_counter() - start
        total = int(state.queries.sum())
        self.last_stats = {
            "candidates": total,
            "forward_images": forwards,
            "seconds": seconds,
            "candidates_per_s": total / seconds if seconds > 0 else float("nan"),
            "rejected": int(state.rejected.sum()),
        }
        return sweep

    def _check_inputs(
        self, images: object, labels: object, targets: object | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The inputs as CPU tensors (images uint8), or a one-line error naming the bad one."""
        images = _as_uint8(images)
        n = images.shape[0]
        lab = _labels("labels", labels, n)
        if self.targeted != (targets is not None):
            need = "required when targeted is true" if self.targeted else "given but targeted is false"
            raise ConfigError(f"targets: {need}")
        tgt = None if targets is None else _labels("targets", targets, n)
        if tgt is not None and n and bool(((tgt < 0) | (tgt == lab)).any()):
            raise DataError("targets: must be class indices >= 0, each different from its label")
        return images, lab, tgt

    @staticmethod
    def _check_classes(num: int, lab: torch.Tensor, tgt: torch.Tensor | None) -> None:
        for key, t in (("labels", lab), ("targets", tgt)):
            if t is not None and t.numel() and bool(((t < 0) | (t >= num)).any()):
                raise DataError(f"{key}: values must be class indices in [0, {num - 1}] for this model")

    def _chunk(self, per_image: int) -> int:
        """Candidates of one image per forward pass."""
        if not self.early_stop:
            return min(per_image, self.batch_size)
        return min(per_image, max(1, math.ceil(self.batch_size / _EARLY_STOP_IMAGES)))

    def _sweep(
        self,
        clf: Classifier,
        images: torch.Tensor,
        lab: torch.Tensor,
        tgt: torch.Tensor | None,
        palette: torch.Tensor,
        on_finished: Callable[[int], object] | None = None,
    ) -> tuple[_State, int]:
        """Every candidate of every image, ``chunk`` per image and pass: the reductions and the images evaluated
        (``on_finished(count)`` after each pass that finished images)."""
        n, _, h, w = images.shape
        per_image = h * w * palette.shape[0]
        state = _State.empty(n, h * w)
        chunk = self._chunk(per_image)
        slots = max(1, self.batch_size // chunk)
        engine = self.engine_used.engine if self.engine_used is not None else "dense"
        variants = PixelVariants(self.model, images, engine, self.device, cached_images=slots + 1)
        rows = torch.arange(min(slots, n))  # image row of each slot in flight
        done = torch.zeros(rows.numel(), dtype=torch.long)  # candidates of each slot's image already evaluated
        following, forwards = rows.numel(), 0
        while rows.numel():
            stop = torch.clamp(done + chunk, max=per_image)
            slot, cand = _cand_ranges(done, stop)
            finished = self._evaluate(clf, variants, lab, tgt, palette, rows, slot, cand, state) | (stop == per_image)
            forwards += cand.numel()
            done = stop
            free = finished.nonzero().squeeze(1)
            variants.drop(rows[free])
            if on_finished is not None and free.numel():
                on_finished(int(free.numel()))
            new = torch.arange(following, min(n, following + free.numel()))
            following += new.numel()
            rows[free[: new.numel()]] = new
            done[free[: new.numel()]] = 0
            keep = torch.ones(rows.numel(), dtype=torch.bool)
            keep[free[new.numel() :]] = False
            rows, done = rows[keep], done[keep]
        return state, forwards

    def _evaluate(
        self,
        clf: Classifier,
        variants: PixelVariants,
        lab: torch.Tensor,
        tgt: torch.Tensor | None,
        palette: torch.Tensor,
        rows: torch.Tensor,
        slot: torch.Tensor,
        cand: torch.Tensor,
        state: _State,
    ) -> torch.Tensor:
        """One forward pass of candidates ``cand`` of slots ``slot`` (slot ``s`` holds image ``rows[s]``);
        folds them into ``state``. Returns ``(slots,)`` bool: the image stopped early."""
        _, _, h, w = variants.images.shape
        S = palette.shape[0]
        pos, col = cand // S, cand % S
        row = rows[slot]
        logits = clf.variant_logits(variants, row, (pos % w)[:, None], (pos // w)[:, None], palette[col][:, None]).cpu()
        finite = torch.isfinite(logits).all(1)
        logp = torch.log_softmax(logits, 1)
        pred = logits.argmax(1)
        cls = lab[row] if tgt is None else tgt[row]
        fit = logp.gather(1, cls[:, None]).squeeze(1)
        fit = fit.neg() if tgt is not None else fit
        fit = torch.where(finite, fit, torch.full_like(fit, math.inf))
        fooled = ((pred != cls) if tgt is None else (pred == cls)) & finite
        stopped = torch.zeros(rows.numel(), dtype=torch.bool)
        if self.early_stop:
            big = torch.iinfo(torch.long).max
            first = torch.full((rows.numel(),), big).scatter_reduce(0, slot[fooled], cand[fooled], "amin")
            keep = cand <= first[slot]
            stopped = first < big
            slot, cand, row, pos, fit, fooled, finite = (t[keep] for t in (slot, cand, row, pos, fit, fooled, finite))
            logits = logits[keep]
        true_p = torch.softmax(logits, 1).gather(1, lab[row][:, None]).squeeze(1)
        self._fold(state, rows, slot, cand, row * (h * w) + pos, fit, fooled, finite, true_p)
        return stopped

    @staticmethod
    def _fold(
        state: _State,
        rows: torch.Tensor,
        slot: torch.Tensor,
        cand: torch.Tensor,
        flat: torch.Tensor,
        fit: torch.Tensor,
        fooled: torch.Tensor,
        finite: torch.Tensor,
        true_p: torch.Tensor,
    ) -> None:
        """Add one pass's candidates to the running counts, maps and best candidates of their images."""
        A, N = rows.numel(), state.queries.numel()
        state.queries += torch.bincount(rows[slot], minlength=N)
        state.rejected += torch.bincount(rows[slot[~finite]], minlength=N)
        state.n_fool += torch.bincount(rows[slot[fooled]], minlength=N)
        state.fooled_map[flat[fooled]] = True
        prob = torch.where(finite, true_p, torch.full_like(true_p, math.inf))
        state.min_prob.scatter_reduce_(0, flat, prob, "amin")
        for key, best_fit, best_idx in (
            (fit, state.best_fit, state.best_idx),
            (torch.where(fooled, fit, torch.full_like(fit, math.inf)), state.fool_fit, state.fool_idx),
        ):
            low, at = _segment_min(slot, key, cand, A)
            better = low < best_fit[rows]  # a later pass holds only later candidates: ties keep the earlier
            best_fit[rows[better]] = low[better]
            best_idx[rows[better]] = at[better]

    def _finalise(
        self,
        clf: Classifier,
        images: torch.Tensor,
        lab: torch.Tensor,
        tgt: torch.Tensor | None,
        palette: torch.Tensor,
        state: _State,
        prob_clean: torch.Tensor,
    ) -> SweepResult:
        """The chosen candidate of every image, re-evaluated alone in float32, and the maps."""
        n, _, h, w = images.shape
        S = palette.shape[0]
        chosen = torch.where(state.fool_idx >= 0, state.fool_idx, state.best_idx)
        pos, col = chosen // S, chosen % S
        xs, ys, cols = (pos % w)[:, None], (pos // w)[:, None], palette[col][:, None, :]
        adv = apply_pixels(images, xs, ys, cols)
        logits = clf.logits(adv)
        adv_class = logits.argmax(1) if n else torch.zeros(0, dtype=torch.long)
        finite = torch.isfinite(logits).all(1) if n else torch.zeros(0, dtype=torch.bool)
        success = ((adv_class != lab) if tgt is None else (adv_class == tgt)) & finite
        result = AttackResult(
            success=success,
            queries=state.queries.clone(),
            generations=torch.zeros(n, dtype=torch.long),
            pixel_x=xs,
            pixel_y=ys,
            color=cols,
            true_class=lab.clone(),
            target_class=torch.full_like(lab, -1) if tgt is None else tgt.clone(),
            adv_class=adv_class,
            prob_clean=prob_clean.float(),
            prob_adv=torch.softmax(logits, 1).float(),
            adversarial=adv,
            rejected_candidates=state.rejected.clone(),
        )
        min_prob = state.min_prob.masked_fill(torch.isinf(state.min_prob), math.nan).float()
        return SweepResult(
            result=result,
            n_fooling=state.n_fool.clone(),
            fooled_map=state.fooled_map.view(n, h, w).clone(),
            min_true_prob=min_prob.view(n, h, w),
            colors=palette,
            color_set=self.colors,
            early_stop=self.early_stop,
        )
