"""Vectorised one-pixel attack by differential evolution (DE).

Su, Vargas & Sakurai, *One pixel attack for fooling deep neural networks*
(IEEE TEC 2019, arXiv 1710.08864), as used by Vargas & Su, *Understanding the
One-Pixel Attack: Propagation Maps and Locality Analysis* (arXiv 1902.02947).

Design (see :class:`OnePixelAttack`):

* DE runs over *images x population* at once. All candidates of all images in
  flight are written into a preallocated float buffer by ``scatter_`` and
  evaluated in forward passes of at most ``batch_size`` candidate images.
* Continuous batching: up to ``max(1, batch_size // population)`` images are in
  flight (:class:`_Slots`); when one succeeds or exhausts its budget it leaves
  and the next pending image (:class:`_Queue`) takes its slot (its initial
  population is evaluated in the same forward pass as the other images' trial
  vectors), so the batches stay full.
* Random numbers come from the counter-based generator of
  :mod:`onepixel.attack.rng`, keyed by ``(seed, image id, generation, purpose,
  member, gene)``. An image's run therefore does not depend on which other
  images share its batches, on ``batch_size``, or on how the image set is
  sharded; and integer random streams are identical on every device.

Reading order for a change: :meth:`OnePixelAttack.run` -> :meth:`~OnePixelAttack._evolve`
-> :meth:`~OnePixelAttack._generation` (one DE step of all images in flight) ->
:func:`_initial_population` / the strategies in ``_TRIALS`` -> :meth:`~OnePixelAttack._evaluate`
-> :meth:`~OnePixelAttack._score`. ``tests/test_de_golden.py`` checks that a change
leaves every attack bit for bit as it was (or tells you it did not).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from onepixel.attack import rng
from onepixel.attack.base import Attack, like_input
from onepixel.data.dataset import apply_pixels
from onepixel.engine import EngineChoice, PixelVariants, check_engine, choose_engine
from onepixel.errors import ConfigError, DataError
from onepixel.scoring import looks_like_probabilities, output_as_logits
from onepixel.torch_utils import eval_mode

#: images of the probe forward pass that checks the classes and detects probabilities
_PROBE = 4


@dataclass(repr=False)
class AttackResult:
    """Outcome of :meth:`OnePixelAttack.run`, one row per attacked image (all CPU tensors).

    Attributes:
        success: ``(N,)`` bool, verdict of re-evaluating ``adversarial`` alone in float32.
        queries: ``(N,)`` int64, candidates evaluated for the image
            (``population * (1 + generations)``).
        generations: ``(N,)`` int64, DE generations run after the initial population
            (0 when a member of the initial population already succeeded).
        pixel_x: ``(N, k)`` int64 column of each perturbed pixel.
        pixel_y: ``(N, k)`` int64 row of each perturbed pixel.
        color: ``(N, k, C)`` uint8 new value of each perturbed pixel.
        true_class: ``(N,)`` int64 label.
        target_class: ``(N,)`` int64 target, -1 when untargeted.
        adv_class: ``(N,)`` int64 argmax of the model on ``adversarial``.
        prob_clean: ``(N, K)`` float32 softmax on the clean image.
        prob_adv: ``(N, K)`` float32 softmax on ``adversarial``.
        adversarial: ``(N, C, H, W)`` uint8 clean image with the k pixels replaced.
        rejected_candidates: ``(N,)`` int64, evaluated candidates whose model output
            had a NaN or infinite value: each counted as not adversarial with the worst
            fitness (they are included in ``queries``).

    ``repr`` is a one-line summary (counts and shapes), not the tensors.
    """

    success: torch.Tensor
    queries: torch.Tensor
    generations: torch.Tensor
    pixel_x: torch.Tensor
    pixel_y: torch.Tensor
    color: torch.Tensor
    true_class: torch.Tensor
    target_class: torch.Tensor
    adv_class: torch.Tensor
    prob_clean: torch.Tensor
    prob_adv: torch.Tensor
    adversarial: torch.Tensor
    rejected_candidates: torch.Tensor

    def __len__(self) -> int:
        return int(self.success.shape[0])

    def __repr__(self) -> str:
        n = len(self)
        hits = int(self.success.sum())
        rate = f" ({100 * hits / n:.1f} %)" if n else ""
        queries = f"{float(self.queries.double().mean()):.0f}" if n else "-"
        _, c, h, w = self.adversarial.shape
        return (
            f"AttackResult(n={n}, success={hits}/{n}{rate}, pixels={self.pixel_x.shape[1]}, channels={c}, "
            f"image={h}x{w}, mean queries={queries})"
        )

    def select(self, index: torch.Tensor | slice) -> AttackResult:
        """Rows ``index`` of every field, as a new result."""
        return AttackResult(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(results: list[AttackResult]) -> AttackResult:
        """Concatenate results row-wise (e.g. shards of one image set)."""
        if not results:
            raise ValueError("concat needs at least one AttackResult")
        return AttackResult(**{f.name: torch.cat([getattr(r, f.name) for r in results]) for f in fields(AttackResult)})


@dataclass(repr=False)
class FinishedRows:
    """DE's outcome for some rows of one :meth:`OnePixelAttack.run` (CPU tensors, ``m`` rows).

    What :meth:`OnePixelAttack.run` reports to its ``on_finished`` callback as the
    images retire, and takes back as ``finished`` to resume a run without running
    DE again for those rows: their result rows are rebuilt (re-evaluated) exactly
    as if DE had just found them.

    Attributes:
        rows: ``(m,)`` int64 rows of the run's inputs.
        genes: ``(m, D)`` float32 the returned candidate (``D = pixels * (2 + C)``).
        generations: ``(m,)`` int64 generations run.
        de_success: ``(m,)`` bool DE's own success verdict.
        rejected: ``(m,)`` int64 candidates with non-finite model output.
    """

    rows: torch.Tensor
    genes: torch.Tensor
    generations: torch.Tensor
    de_success: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @staticmethod
    def concat(parts: list[FinishedRows]) -> FinishedRows:
        """The rows of every part, in order (no part: an error)."""
        if not parts:
            raise ValueError("concat needs at least one FinishedRows")
        return FinishedRows(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(FinishedRows)})


# ---------------------------------------------------------------------------
# the state of one run: gene layout, images in flight, images waiting, outcome
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Genome:
    """How a candidate encodes k pixels, and the counters its random draws are keyed by.

    A candidate is ``D = k * (2 + C)`` float genes ``(x, y, c_1..c_C)`` per pixel,
    kept inside the box ``[lo, hi]`` and rounded only for evaluation. Every tensor
    here is fixed for the run, so it is built once instead of per generation.
    """

    pixels: int
    shape: tuple[int, int, int]  #: image (C, H, W)
    lo: torch.Tensor  #: (D,) lower bound of each gene (0)
    hi: torch.Tensor  #: (D,) upper bound: W - 1 for x, H - 1 for y, 255 for colours
    pos_cols: torch.Tensor  #: gene columns that hold x or y
    col_cols: torch.Tensor  #: gene columns that hold a colour
    pos_high: torch.Tensor  #: (1, 1, len(pos_cols)) exclusive bound of the initial x / y draws
    member: torch.Tensor  #: (P,) member counters
    elem: torch.Tensor  #: (P, D) counter of each gene of each member
    member_mixed: torch.Tensor  #: rng.mix_counter(member), their share of every draw
    elem_mixed: torch.Tensor  #: rng.mix_counter(elem)

    @classmethod
    def create(cls, pixels: int, population: int, shape: tuple[int, int, int], device: torch.device) -> _Genome:
        """The layout of ``pixels`` pixels on images ``shape`` (C, H, W) for a population of ``population``."""
        c, h, w = shape
        per_pixel = 2 + c
        genes = pixels * per_pixel
        kind = torch.arange(genes, device=device) % per_pixel  # gene kind within a pixel: 0 x, 1 y, 2.. colour
        pos_cols = (kind < 2).nonzero().squeeze(1)
        member = torch.arange(population, device=device)
        elem = member[:, None] * genes + torch.arange(genes, device=device)[None, :]
        return cls(
            pixels=pixels,
            shape=shape,
            lo=torch.zeros(genes, dtype=torch.float32, device=device),
            hi=torch.tensor([w - 1, h - 1] + [255] * c, dtype=torch.float32, device=device).repeat(pixels),
            pos_cols=pos_cols,
            col_cols=(kind >= 2).nonzero().squeeze(1),
            pos_high=torch.where(kind[pos_cols] == 0, w, h)[None, None, :],
            member=member,
            elem=elem,
            member_mixed=rng.mix_counter(member),
            elem_mixed=rng.mix_counter(elem),
        )

    @property
    def genes(self) -> int:
        """D, the genes of one candidate."""
        return int(self.lo.shape[0])


@dataclass
class _Queue:
    """The images of a run in row order; ``next`` is the first one not yet in a slot.

    ``pending`` (a resumed run): the rows still to attack, in order; ``None``: every row.
    """

    images: torch.Tensor  #: (N, C, H, W) uint8, anywhere (copied to the device on admission)
    cls: torch.Tensor  #: (N,) class whose log-probability is the fitness: the target, else the label
    key: torch.Tensor  #: (N,) stream key of each image (rng.image_keys)
    pending: torch.Tensor | None = None  #: (n,) int64 CPU rows to attack, or None for all N
    next: int = 0

    @property
    def size(self) -> int:
        """The images to attack (all N, or the pending rows)."""
        return self.images.shape[0] if self.pending is None else int(self.pending.numel())

    def take(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``(m',)`` and images of the next ``m' = min(m, pending)`` images, now taken out."""
        m = max(0, min(m, self.size - self.next))
        start, self.next = self.next, self.next + m
        if self.pending is None:
            return torch.arange(start, start + m, device=self.cls.device), self.images[start : start + m]
        rows = self.pending[start : start + m]
        return rows.to(self.cls.device), self.images[rows]


@dataclass
class _Outcome:
    """What DE found per image row, filled in as the images retire."""

    genes: torch.Tensor  #: (N, D) the returned candidate
    gens: torch.Tensor  #: (N,) generations run
    ok: torch.Tensor  #: (N,) DE's own success verdict
    rejected: torch.Tensor  #: (N,) candidates with non-finite model output

    @classmethod
    def empty(cls, n: int, genes: int, device: torch.device) -> _Outcome:
        """Room for ``n`` images of ``genes`` genes; every row is written when its image retires."""
        return cls(
            genes=torch.zeros(n, genes, dtype=torch.float32, device=device),
            gens=torch.zeros(n, dtype=torch.long, device=device),
            ok=torch.zeros(n, dtype=torch.bool, device=device),
            rejected=torch.zeros(n, dtype=torch.long, device=device),
        )


@dataclass
class _Slots:
    """The images in flight, one row per slot (``S`` slots of a population of ``P`` each)."""

    pop: torch.Tensor  #: (S, P, D) float genes
    fit: torch.Tensor  #: (S, P) fitness (minimised)
    img: torch.Tensor  #: (S,) row of the image in the slot, -1 when the slot is free
    gen: torch.Tensor  #: (S,) the generation evaluated next (0: the initial population)
    base: torch.Tensor  #: (S, C, H, W) the clean image as float in [0, 1]
    cls: torch.Tensor  #: (S,) class whose log-probability is the fitness
    key: torch.Tensor  #: (S,) stream key of the image (without the generation)
    rej: torch.Tensor  #: (S,) rejected (non-finite) candidates so far
    buf: torch.Tensor  #: (<= batch_size, C, H, W) where the candidate images are built

    @classmethod
    def empty(cls, slots: int, genome: _Genome, batch_size: int, device: torch.device) -> _Slots:
        """``slots`` free slots for populations of ``genome.member.numel()`` members."""
        P = genome.member.numel()
        c, h, w = genome.shape

        def zeros() -> torch.Tensor:
            return torch.zeros(slots, dtype=torch.long, device=device)

        return cls(
            pop=torch.zeros(slots, P, genome.genes, dtype=torch.float32, device=device),
            fit=torch.full((slots, P), math.inf, dtype=torch.float32, device=device),
            img=torch.full((slots,), -1, dtype=torch.long, device=device),
            gen=zeros(),
            base=torch.zeros(slots, c, h, w, dtype=torch.float32, device=device),
            cls=zeros(),
            key=zeros(),
            rej=zeros(),
            buf=torch.empty(min(batch_size, slots * P), c, h, w, dtype=torch.float32, device=device),
        )

    @property
    def size(self) -> int:
        """S, the number of slots (images in flight at most)."""
        return int(self.img.shape[0])

    def active(self) -> torch.Tensor:
        """Indices of the occupied slots, in slot order."""
        return (self.img >= 0).nonzero().squeeze(1)

    def admit(self, free: torch.Tensor, queue: _Queue) -> None:
        """Put the next pending images into the ``free`` slots (in slot order); copy them to the device."""
        rows, images = queue.take(free.numel())
        if rows.numel() == 0:
            return
        slots = free[: rows.numel()]
        self.img[slots] = rows
        self.gen[slots] = 0
        self.rej[slots] = 0
        self.base[slots] = images.to(self.base.device).float() / 255
        self.cls[slots] = queue.cls[rows]
        self.key[slots] = queue.key[rows]

    def retire(
        self, slots: torch.Tensor, genes: torch.Tensor, gens: torch.Tensor, ok: torch.Tensor, out: _Outcome
    ) -> torch.Tensor:
        """Record the finished images of ``slots`` (their chosen ``genes``, ``gens``, ``ok``) and free the slots;
        their rows."""
        rows = self.img[slots]
        out.genes[rows] = genes
        out.gens[rows] = gens
        out.ok[rows] = ok
        out.rejected[rows] = self.rej[slots]
        self.img[slots] = -1
        return rows

    def members(self, act: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Population and fitness of slots ``act`` (the slot tensors themselves when ``full``)."""
        return (self.pop, self.fit) if full else (self.pop[act], self.fit[act])

    def replace(self, act: torch.Tensor, full: bool, pop: torch.Tensor, fit: torch.Tensor) -> None:
        """New population and fitness of slots ``act``."""
        if full:
            self.pop, self.fit = pop, fit
        else:
            self.pop[act] = pop
            self.fit[act] = fit


# ---------------------------------------------------------------------------
# DE operators: initial population and trial vectors
# ---------------------------------------------------------------------------
def _initial_population(keys: torch.Tensor, genome: _Genome) -> torch.Tensor:
    """The paper's initialisation for B images (stream ``keys`` (B,)): ``(B, P, D)`` float genes.

    x, y are uniform integers over the image; colours ~ N(128, 127) (Box-Muller)
    rounded and clipped to [0, 255]. Each gene draws only the numbers it uses,
    keyed by its own counter, so adding genes does not shift the others' draws.
    """
    P, D = genome.elem.shape
    pk = rng.purpose_keys(keys, (rng.P_INIT_POS, rng.P_INIT_U1, rng.P_INIT_U2))[:, :, None, None]  # (B, 3, 1, 1)
    pos = rng.randint(pk[:, 0], None, genome.pos_high, genome.elem_mixed[:, genome.pos_cols]).float()
    mixed_col = genome.elem_mixed[:, genome.col_cols]
    u1 = rng.uniform(pk[:, 1], None, mixed_col)
    u2 = rng.uniform(pk[:, 2], None, mixed_col)
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    col = torch.round(128.0 + 127.0 * normal).clamp(0, 255).float()
    out = torch.empty(keys.shape[0], P, D, dtype=torch.float32, device=keys.device)
    out[..., genome.pos_cols] = pos
    out[..., genome.col_cols] = col
    return out


def _gather_members(pop: torch.Tensor, *indices: torch.Tensor) -> list[torch.Tensor]:
    """``pop[b, index[b, i]]`` ``(B, P, D)`` for populations ``(B, P, D)`` and each member index ``(B, P)``."""
    B, P, D = pop.shape
    rows = pop.reshape(B * P, D)
    offset = (torch.arange(B, device=pop.device) * P)[:, None]
    return [rows.index_select(0, (index + offset).view(-1)).view(B, P, D) for index in indices]


def _rand1(
    pop: torch.Tensor, fit: torch.Tensor, keys: torch.Tensor, genome: _Genome, F: float, crossover: float
) -> torch.Tensor:
    """The paper's DE/rand/1 without crossover: trial = a + F (b - c), a, b, c distinct members != target."""
    pk = rng.purpose_keys(keys, (rng.P_A, rng.P_B, rng.P_C))
    a, b, c = rng.distinct_members(keys, genome.member, 3, genome.member_mixed, pk)
    pa, pb, pc = _gather_members(pop, a, b, c)
    return pa + F * (pb - pc)


def _best1bin(
    pop: torch.Tensor, fit: torch.Tensor, keys: torch.Tensor, genome: _Genome, F: float, crossover: float
) -> torch.Tensor:
    """scipy's best/1/bin: mutant = best + F (a - b); binomial crossover (rate ``crossover``, one forced gene)."""
    B, P, D = pop.shape
    pk = rng.purpose_keys(keys, (rng.P_A, rng.P_B, rng.P_FORCED, rng.P_CROSS))
    draws = rng.member_draws(pk[:, :3], (P - 1, P - 2, D), genome.member_mixed)  # a, b, forced gene: one batch
    a, b = rng.skip_excluded(draws, genome.member, 2)
    forced = draws[:, 2]
    pa, pb = _gather_members(pop, a, b)
    pbest = pop[torch.arange(B, device=pop.device), fit.argmin(1)][:, None, :]
    mutant = pbest + F * (pa - pb)
    cross = rng.uniform(pk[:, 3, None, None], None, genome.elem_mixed) < crossover
    cross |= torch.arange(D, device=pop.device)[None, None, :] == forced[..., None]
    return torch.where(cross, mutant, pop)


#: a strategy maps (pop (B, P, D), fit (B, P), keys (B,), genome, F, crossover) to unclipped trials (B, P, D)
Strategy = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, _Genome, float, float], torch.Tensor]
#: the DE strategies by name; a new one needs its own rng purposes for new kinds of draws
_TRIALS: dict[str, Strategy] = {"rand1": _rand1, "best1bin": _best1bin}
STRATEGIES = tuple(_TRIALS)


def _decode(
    genes: torch.Tensor, pixels: int, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round/clip float genes ``(M, D)`` -> xs, ys ``(M, k)`` long, colours ``(M, k, C)`` float."""
    c, h, w = shape
    g = genes.view(-1, pixels, 2 + c)
    xs = torch.round(g[..., 0]).clamp(0, w - 1).long()
    ys = torch.round(g[..., 1]).clamp(0, h - 1).long()
    cols = torch.round(g[..., 2:]).clamp(0, 255)
    return xs, ys, cols


def _chosen_genes(
    cand: torch.Tensor,
    cand_fit: torch.Tensor,
    cand_ok: torch.Tensor,
    pop: torch.Tensor,
    fit: torch.Tensor,
    ok: torch.Tensor,
) -> torch.Tensor:
    """Genes ``(B, D)`` returned for B finished images: the best-fitness successful candidate
    (``ok``), else the best member of the population.

    ``cand``/``cand_fit``/``cand_ok`` are this generation's candidates, ``pop``/``fit``
    the population after selection. A successful candidate never has a non-finite
    fitness (non-finite outputs are no successes), so the argmin finds it.
    """
    rows = torch.arange(ok.shape[0], device=ok.device)
    succ_fit = torch.where(cand_ok, cand_fit, torch.full_like(cand_fit, math.inf))
    best_succ = cand[rows, succ_fit.argmin(1)]
    best_pop = pop[rows, fit.argmin(1)]
    return torch.where(ok[:, None], best_succ, best_pop)


def _as_uint8(images: object) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` as uint8: uint8 as given, float in [0, 1] as ``round(x * 255)``.

    Floats are rounded half to even in their own precision (float32 for 16-bit
    floats): images on the 8-bit grid (``k / 255``) come back exactly, others
    are moved to the nearest grid value. NaN or values outside [0, 1] are refused.
    """
    if (
        not isinstance(images, torch.Tensor)
        or images.dim() != 4
        or not (images.dtype == torch.uint8 or images.dtype.is_floating_point)
    ):
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(
            f"images: expected a uint8 tensor (N, C, H, W) in [0, 255] or a float one in [0, 1]; got {desc}"
        )
    if images.dtype == torch.uint8:
        return images
    x = images.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if x.numel() and (bool(torch.isnan(x).any()) or float(x.min()) < 0 or float(x.max()) > 1):
        low, high = float(x.min()), float(x.max())
        raise DataError(f"images: float images must lie in [0, 1] (or pass uint8); got values in [{low}, {high}]")
    return torch.round(x * 255).to(torch.uint8)


def _labels(key: str, values: object, n: int) -> torch.Tensor:
    """``values`` as a CPU int64 tensor of shape ``(n,)``, else a one-line :class:`DataError`."""
    t = torch.as_tensor(values).long().cpu()
    if t.shape != (n,):
        raise DataError(f"{key}: expected shape ({n},); got {tuple(t.shape)}")
    return t


# ---------------------------------------------------------------------------
class OnePixelAttack(Attack):
    r"""One-pixel (k-pixel) black-box attack by differential evolution.

    Su, Vargas & Sakurai, arXiv 1710.08864 (IEEE TEC 2019); used by Vargas & Su,
    arXiv 1902.02947. A candidate encodes k pixels as ``(x, y, c_1..c_C)`` each
    (``k * (2 + C)`` genes, kept as floats and rounded for evaluation); the
    pixel value is *replaced*. Untargeted: minimise the true class's softmax
    probability, success as soon as any evaluated candidate is not classified as
    the label. Targeted: maximise the target's probability, success as soon as
    a candidate is classified as the target. Each image stops at its first
    success (the paper's early-stopping rule) or after ``generations``.

    Initialisation follows the paper: x, y uniform integers over the image,
    colours ~ N(128, 127) rounded and clipped to [0, 255]. Strategies:
    ``rand1`` is the paper's DE/rand/1 without crossover (trial = a + F (b - c),
    a, b, c distinct members other than the target); ``best1bin`` is scipy's
    best/1 with binomial crossover (rate ``crossover``, one forced gene).
    A trial replaces its target when its fitness is ``<=``; genes stay inside
    the box x in [0, W-1], y in [0, H-1], colour in [0, 255].

    Args:
        model: maps float32 images ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)``
            (or to class probabilities, see ``output``). Any image size (the
            workflow's models take 8x8 to 224x224) and channel count.
        pixels: perturbed pixels k.
        population: DE population size per image (>= 4).
        generations: maximum DE generations after the initial population.
        F: mutation factor in (0, 2].
        crossover: crossover rate of ``best1bin`` in [0, 1] (``rand1`` has none).
        strategy: ``"rand1"`` or ``"best1bin"``.
        targeted: targeted attack (``run`` then needs ``targets``).
        seed: random seed; results depend only on (seed, image id, image, label, target).
        batch_size: candidate images per forward pass.
        device: where to run; default the model's device.
        output: what ``model`` returns: ``"logits"``, ``"probabilities"`` (e.g. a
            softmax layer at the end), or ``"auto"`` (default): probabilities when,
            on the first images (up to 4, clean), every output is in [0, 1] and each
            row sums to 1 within 1e-3; logits otherwise. Probabilities ``p`` are
            used as the logits ``log p`` (0 as log of float32's smallest normal
            number), so fitness, success and the stored softmax probabilities mean
            the same for both kinds. The resolved kind is ``model_output`` after ``run``.
        engine: how the candidates are evaluated (:mod:`onepixel.engine`): ``"dense"`` (default: the
            plain forward pass of the candidate images), ``"incremental"`` (only each candidate's changed
            region of every layer, from the clean image's cached activations; exact to float rounding)
            or ``"auto"`` (incremental for one pixel on the CPU where the cost model of :mod:`onepixel.engine`
            expects it to be faster at ``population`` candidates per image and call); ``engine_used`` is the
            one that ran. Results are reproducible for a seed and engine.

    Shapes: images ``(N, C, H, W)``, labels ``(N,)``, targets ``(N,)``. Images are
    uint8 in [0, 255] or float in [0, 1] (any float dtype; NaN or values outside
    [0, 1] raise :class:`DataError`). The attack searches 8-bit images: float
    images are converted with ``round(x * 255)`` (exact for images on the
    ``k / 255`` grid; others move to the nearest grid value). Calling the attack,
    ``attack(images, labels)``, returns the adversarial images like torchattacks:
    in the dtype and on the device of ``images`` (float: the uint8 result / 255).
    :meth:`run` returns an :class:`AttackResult` of N rows (uint8 images, on the CPU).

    Details:
        * Fitness (minimised) is ``log p(label)`` untargeted and ``-log p(target)``
          targeted: monotone in the paper's objective, so the same search, but with
          resolution near 0 and 1. A candidate whose model output has a NaN or
          infinite value is rejected: fitness +inf (never selected over a finite
          one), never a success; the run goes on and ``rejected_candidates``
          counts them per image.
        * Success is checked on *every* evaluated candidate, not only the best
          member. The returned perturbation is the best-fitness successful
          candidate, else the best member after the last generation.
        * ``generations`` counts DE generations after the initial population (0
          when the initial population already succeeds); ``queries`` =
          ``population * (1 + generations)``.
        * ``success`` is the verdict of re-evaluating the final adversarial images
          in a separate float32 pass (autocast disabled), not DE's own verdict.
        * Continuous batching keeps ``max(1, batch_size // population)`` images in
          flight; a population larger than ``batch_size`` is split over several
          forward passes. Random numbers are counter-based, keyed by ``(seed, id)``
          of each image, so the results do not depend on ``batch_size``, on the
          other images of the run, or on sharding (pass global ``ids`` to ``run``).
        * The model is moved to ``device`` and put in eval mode for the run (so
          BatchNorm statistics do not change); afterwards every submodule gets its
          own training flag back. Everything runs under ``torch.inference_mode``.
        * Memory: the images stay where they are given (e.g. CPU) and are copied to
          ``device`` as they enter the batch; the device holds the candidate buffer
          (``batch_size`` images), the populations of the images in flight and the
          final re-evaluation chunk, not the image set. The result (on the CPU)
          holds one adversarial image per input image.

    After ``run``, ``last_stats`` holds ``candidates`` (evaluated), ``seconds``,
    ``candidates_per_s``, ``de_success`` (DE's own count of successes) and
    ``rejected`` (candidates with non-finite model output).

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from onepixel.attack import OnePixelAttack
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        >>> images = torch.rand(4, 3, 8, 8)  # float in [0, 1]
        >>> labels = model(images).argmax(1)
        >>> attack = OnePixelAttack(model, population=20, generations=5, seed=0)
        >>> adv = attack(images, labels)  # torchattacks-style: adversarial images, same dtype
        >>> adv.dtype, tuple(adv.shape)
        (torch.float32, (4, 3, 8, 8))
        >>> changed = (adv != (images * 255).round() / 255).any(1)  # pixels that differ from the 8-bit input
        >>> bool((changed.flatten(1).sum(1) <= 1).all())
        True
        >>> result = attack.run(images, labels)  # everything about the run (uint8 images)
        >>> result  # doctest: +ELLIPSIS
        AttackResult(n=4, success=.../4 (... %), pixels=1, channels=3, image=8x8, mean queries=...)
        >>> torch.equal(result.adversarial.float() / 255, adv)
        True
    """

    options = ("pixels", "population", "generations", "F", "crossover", "strategy", "seed")

    def __init__(
        self,
        model: nn.Module,
        pixels: int = 1,
        population: int = 400,
        generations: int = 100,
        F: float = 0.5,
        crossover: float = 1.0,
        strategy: str = "rand1",
        targeted: bool = False,
        seed: int = 0,
        batch_size: int = 8192,
        device: str | torch.device | None = None,
        output: str = "auto",
        engine: str = "dense",
    ) -> None:
        self.engine = check_engine(engine)
        super().__init__(  # checks every option before storing any
            model,
            pixels=pixels,
            population=population,
            generations=generations,
            F=F,
            crossover=crossover,
            strategy=strategy,
            seed=seed,
            targeted=targeted,
            batch_size=batch_size,
            device=device,
            output=output,
        )
        self.pixels, self.population, self.generations = int(pixels), int(population), int(generations)
        self.F, self.crossover, self.strategy, self.seed = float(F), float(crossover), strategy, int(seed)
        self._num_classes = 0
        self.engine_used: EngineChoice | None = None
        self._variants: PixelVariants | None = None

    def choose_engine(self, image_shape: tuple[int, ...]) -> EngineChoice:
        """The engine :meth:`run` uses on images of ``image_shape`` ``(C, H, W)`` (``auto`` resolved: one image's
        population per call)."""
        return choose_engine(self.engine, self.model, image_shape, self.pixels, self.device, candidates=self.population)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """torchattacks-style: the adversarial images, in the dtype and on the device of ``images``."""
        return like_input(self.run(images, labels, targets).adversarial, images)

    # ------------------------------------------------------------------
    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        *,
        finished: FinishedRows | None = None,
        on_finished: Callable[[FinishedRows], object] | None = None,
    ) -> AttackResult:
        """Attack every image; see the class docstring.

        Args:
            images: ``(N, C, H, W)`` uint8, or float in [0, 1] (converted with ``round(x * 255)``).
            labels: ``(N,)`` true classes.
            targets: ``(N,)`` target classes; required iff ``targeted``.
            ids: ``(N,)`` non-negative int64 identifiers keying each image's random
                stream (default ``arange(N)``). Pass global ids (e.g. test-set
                indices) so that attacking a subset or a shard of the images
                reproduces exactly the rows of one run over all of them.
            finished: DE's outcome for some rows from an earlier run of the same
                attack on the same inputs (what ``on_finished`` reported): DE runs
                only for the other rows, and the result is the one a single
                uninterrupted run gives (the random streams are keyed by ``ids``).
            on_finished: called with the :class:`FinishedRows` of the images that
                finished DE, as they retire (several times per run, never for the
                rows of ``finished``); an exception it raises ends the run.
        """
        images, labels, targets, ids = self._check_inputs(images, labels, targets, ids)
        n = images.shape[0]
        dev = self.device
        start = time.perf_counter()
        with eval_mode(self.model):
            self.model.to(dev)
            with torch.inference_mode():
                lab = labels.to(dev)
                tgt = targets.to(dev) if targets is not None else None
                if n:
                    self._probe(images[:_PROBE].to(dev), lab, tgt)
                queue = _Queue(images, tgt if tgt is not None else lab, rng.image_keys(self.seed, ids.to(dev)))
                self.engine_used = self.choose_engine(tuple(images.shape[1:]))
                out = self._evolve(queue, finished, on_finished)
                result = self._finalise(images, lab, tgt, out)
        seconds = time.perf_counter() - start
        total = int(result.queries.sum())
        resumed = 0 if finished is None else len(finished)
        run_now = total - (int(result.queries[finished.rows].sum()) if resumed and finished is not None else 0)
        self.last_stats = {
            "candidates": total,
            "seconds": seconds,
            "candidates_per_s": run_now / seconds if seconds > 0 else float("nan"),
            "de_success": int(out.ok.sum()),
            "rejected": int(result.rejected_candidates.sum()),
            "attacked": n - resumed,
            "attacked_candidates": run_now,
        }
        return result

    def _check_inputs(
        self, images: object, labels: object, targets: object | None, ids: object | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The inputs of :meth:`run` as CPU tensors (images uint8), or a one-line error naming the bad one."""
        images = _as_uint8(images)
        n = images.shape[0]
        labels = _labels("labels", labels, n)
        if self.targeted and targets is None:
            raise ConfigError("targets: required when targeted is true")
        if not self.targeted and targets is not None:
            raise ConfigError("targets: given but targeted is false; pass targeted=True or drop targets")
        if targets is not None:
            targets = _labels("targets", targets, n)
            if n and bool((targets < 0).any()):
                raise DataError("targets: must be class indices >= 0")
            if n and bool((targets == labels).any()):
                row = int((targets == labels).nonzero()[0])
                raise DataError(f"targets: row {row} targets its own label {int(labels[row])}; use another class")
        ids = torch.arange(n, dtype=torch.long) if ids is None else _labels("ids", ids, n)
        if n and bool((ids < 0).any()):
            raise DataError("ids: must be >= 0")
        return images, labels, targets, ids

    def _probe(self, probe: torch.Tensor, lab: torch.Tensor, tgt: torch.Tensor | None) -> None:
        """One forward pass on the first images: the output's shape, its kind (``output="auto"``), and that
        labels/targets index the model's classes."""
        out = self.model(probe.float() / 255)
        if out.dim() != 2 or out.shape[0] != probe.shape[0]:
            raise DataError(f"model: expected outputs of shape (N, K); got {tuple(out.shape)} for N={probe.shape[0]}")
        if self.output == "auto":
            self.model_output = "probabilities" if looks_like_probabilities(out) else "logits"
        num = self._num_classes = out.shape[1]
        for key, t in (("labels", lab), ("targets", tgt)):
            if t is not None and bool(((t < 0) | (t >= num)).any()):
                raise DataError(f"{key}: values must be class indices in [0, {num - 1}] for this model")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` as float logits (log-probabilities for a model returning probabilities)."""
        return output_as_logits(self.model(x), self.model_output or "logits")

    # ------------------------------------------------------------------
    def _evolve(
        self,
        queue: _Queue,
        finished: FinishedRows | None = None,
        on_finished: Callable[[FinishedRows], object] | None = None,
    ) -> _Outcome:
        """Run DE for all images of ``queue`` with continuous batching: what it found per image.

        The images may live on another device than the attack (e.g. CPU): each is
        copied to the device when it enters a slot. The rows of ``finished`` are
        taken as they are (a resumed run) and the queue holds only the others.
        """
        n, c, h, w = queue.images.shape
        genome = _Genome.create(self.pixels, self.population, (c, h, w), self.device)
        out = _Outcome.empty(n, genome.genes, self.device)
        if finished is not None and len(finished):
            queue.pending = self._resume(finished, n, genome, out)
        todo = queue.size
        if todo == 0:
            return out
        S = max(1, min(self.batch_size // self.population, todo))  # slots (images in flight)
        self._variants = None
        if self.engine_used is not None and self.engine_used.engine == "incremental":
            self._variants = PixelVariants(self.model, queue.images, "incremental", self.device, cached_images=S + 1)
        slots = _Slots.empty(S, genome, self.batch_size, self.device)
        slots.admit(torch.arange(S, device=self.device), queue)
        while True:
            act = slots.active()
            if act.numel() == 0:
                return out
            self._generation(slots, act, queue, out, genome, on_finished)

    @staticmethod
    def _resume(finished: FinishedRows, n: int, genome: _Genome, out: _Outcome) -> torch.Tensor:
        """Write the ``finished`` rows into ``out``; the rows still to attack ``(n',)`` (CPU int64, in order)."""
        rows = torch.as_tensor(finished.rows).long().cpu().reshape(-1)
        m = rows.numel()
        if m and (int(rows.min()) < 0 or int(rows.max()) >= n or rows.unique().numel() != m):
            raise DataError(f"finished: rows must be distinct rows of the run's {n} inputs")
        if tuple(finished.genes.shape) != (m, genome.genes):
            raise DataError(f"finished: genes of shape {tuple(finished.genes.shape)}; expected ({m}, {genome.genes})")
        dev = out.genes.device
        out.genes[rows.to(dev)] = finished.genes.to(dev, torch.float32)
        out.gens[rows.to(dev)] = finished.generations.to(dev, torch.long)
        out.ok[rows.to(dev)] = finished.de_success.to(dev, torch.bool)
        out.rejected[rows.to(dev)] = finished.rejected.to(dev, torch.long)
        todo = torch.ones(n, dtype=torch.bool)
        todo[rows] = False
        return todo.nonzero().squeeze(1)

    def _generation(
        self,
        slots: _Slots,
        act: torch.Tensor,
        queue: _Queue,
        out: _Outcome,
        genome: _Genome,
        on_finished: Callable[[FinishedRows], object] | None = None,
    ) -> None:
        """One DE step of the images in slots ``act``: candidates, evaluation, selection, early stop.

        Slots at generation 0 evaluate their initial population (which they take as
        is); the others their trial vectors. Images that succeeded or used their last
        generation retire and the next pending images take their slots.
        """
        A, P = act.numel(), self.population
        full = act.numel() == slots.size  # every slot in flight (the usual case): use the slot tensors, no gathers
        gen = slots.gen.clone() if full else slots.gen[act]
        keys = rng.generation_keys(slots.key if full else slots.key[act], gen)  # (A,) key of (image, gen.)
        is_init = gen == 0
        pop, fit = slots.members(act, full)
        cand = self._candidates(pop, fit, keys, is_init, genome)
        cf, cs, cfin = self._evaluate(cand.view(A * P, genome.genes), act, slots, genome)
        cf = cf.view(A, P)
        cs = cs.view(A, P)
        slots.rej[act] += (~cfin).view(A, P).sum(1)
        take = (cf <= fit) | is_init[:, None]  # initial slots take the candidates as their population
        slots.replace(act, full, torch.where(take[..., None], cand, pop), torch.where(take, cf, fit))
        hit = cs.any(1)  # early stopping: any evaluated candidate that succeeded
        fin = hit | (gen >= self.generations)
        if bool(fin.any()):
            fi = fin.nonzero().squeeze(1)
            done = act[fi]
            genes = _chosen_genes(cand[fi], cf[fi], cs[fi], slots.pop[done], slots.fit[done], hit[fi])
            rows = slots.retire(done, genes, gen[fi], hit[fi], out)
            if self._variants is not None:
                self._variants.drop(rows)
            if on_finished is not None:
                on_finished(
                    FinishedRows(rows.cpu(), genes.cpu(), gen[fi].cpu(), hit[fi].cpu(), out.rejected[rows].cpu())
                )
            slots.admit(done, queue)
        slots.gen[act[~fin]] += 1  # every slot that was active and not finished moves on one generation

    def _candidates(
        self, pop: torch.Tensor, fit: torch.Tensor, keys: torch.Tensor, is_init: torch.Tensor, genome: _Genome
    ) -> torch.Tensor:
        """Candidates ``(A, P, D)``: the initial population where ``is_init``, else trial vectors."""
        n_init = int(is_init.sum())
        if n_init == 0:
            return self._trials(pop, fit, keys, genome)
        if n_init == is_init.numel():
            return _initial_population(keys, genome)
        cand = torch.empty_like(pop)
        ii = is_init.nonzero().squeeze(1)
        tt = (~is_init).nonzero().squeeze(1)
        cand[ii] = _initial_population(keys[ii], genome)
        cand[tt] = self._trials(pop[tt], fit[tt], keys[tt], genome)
        return cand

    def _trials(self, pop: torch.Tensor, fit: torch.Tensor, keys: torch.Tensor, genome: _Genome) -> torch.Tensor:
        """Trial vectors ``(B, P, D)`` of the strategy for B images from their populations and fitnesses,
        clipped to the box."""
        trial = _TRIALS[self.strategy](pop, fit, keys, genome, self.F, self.crossover)
        return torch.maximum(torch.minimum(trial, genome.hi), genome.lo)

    def _evaluate(
        self, genes: torch.Tensor, act: torch.Tensor, slots: _Slots, genome: _Genome
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fitness ``(M,)`` (minimised), success ``(M,)`` and finite output ``(M,)`` of candidates ``(M, D)``
        of slots ``act`` (P consecutive candidates per slot).

        Each candidate image is the slot's clean image with k pixels scattered in,
        built in the slot buffer; the model sees at most ``batch_size`` at a time.
        """
        M, k = genes.shape[0], genome.pixels
        c, h, w = genome.shape
        fitness = torch.empty(M, dtype=torch.float32, device=genes.device)
        success = torch.empty(M, dtype=torch.bool, device=genes.device)
        finite = torch.empty(M, dtype=torch.bool, device=genes.device)
        slot_of = act.repeat_interleave(self.population)
        xs, ys, cols = _decode(genes, k, genome.shape)
        if self._variants is not None:  # the incremental engine: candidates image by image, from cached activations
            out = output_as_logits(
                self._variants(slots.img[slot_of], xs, ys, cols / 255), self.model_output or "logits"
            )
            return self._score(out, slots.cls[slot_of])
        offsets = ys * w + xs  # (M, k)
        vals = (cols / 255).permute(0, 2, 1)  # (M, C, k), same floats as uint8 / 255
        cap = slots.buf.shape[0]
        for s in range(0, M, cap):
            e = min(M, s + cap)
            m = e - s
            x = slots.buf[:m]
            torch.index_select(slots.base, 0, slot_of[s:e], out=x)
            x.view(m, c, h * w).scatter_(2, offsets[s:e, None, :].expand(m, c, k), vals[s:e])
            fitness[s:e], success[s:e], finite[s:e] = self._score(self._logits(x), slots.cls[slot_of[s:e]])
        return fitness, success, finite

    def _score(self, logits: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fitness, success and finiteness ``(m,)`` from logits ``(m, K)`` for fitness class ``cls`` ``(m,)``.

        Fitness is log p(true) (untargeted) or -log p(target) (targeted): a
        monotone transform of the paper's probability objective that keeps its
        resolution near 0 and 1. A row with a non-finite logit is rejected:
        fitness +inf, no success, ``finite`` False.
        """
        logits = logits.float()
        # a row sum is finite only if every logit of the row is; the exact test runs only
        # when some sum is not (a non-finite logit, or finite logits whose sum overflows)
        finite = torch.isfinite(logits.sum(1))
        if not bool(finite.all()):
            finite = torch.isfinite(logits).all(1)
        z = logits.gather(1, cls[:, None]).squeeze(1)
        logp = z - torch.logsumexp(logits, 1)
        pred = logits.argmax(1)
        if self.targeted:
            fit = logp.neg_()
            ok = pred == cls
        else:
            fit = logp
            ok = pred != cls
        # with finite logits log p is never NaN (logsumexp >= every logit, its sum is in [1, K])
        fit.masked_fill_(~finite, math.inf)
        ok &= finite
        return fit, ok, finite

    # ------------------------------------------------------------------
    def _finalise(self, imgs: torch.Tensor, lab: torch.Tensor, tgt: torch.Tensor | None, out: _Outcome) -> AttackResult:
        """The result: adversarial images of the chosen genes, re-evaluated alone (:meth:`_reevaluate`)."""
        _, c, h, w = imgs.shape
        xs, ys, cols = _decode(out.genes, self.pixels, (c, h, w))
        cols_u8 = cols.to(torch.uint8)
        adv, prob_clean, prob_adv, adv_class, finite = self._reevaluate(imgs, xs, ys, cols_u8)
        if tgt is not None:
            success = (adv_class == tgt) & finite
            target_class = tgt
        else:
            success = (adv_class != lab) & finite
            target_class = torch.full_like(lab, -1)

        def cpu(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu")

        return AttackResult(
            success=cpu(success),
            queries=cpu(self.population * (1 + out.gens)).long(),
            generations=cpu(out.gens).long(),
            pixel_x=cpu(xs),
            pixel_y=cpu(ys),
            color=cpu(cols_u8),
            true_class=cpu(lab).long(),
            target_class=cpu(target_class).long(),
            adv_class=cpu(adv_class).long(),
            prob_clean=prob_clean.float(),
            prob_adv=prob_adv.float(),
            adversarial=adv,
            rejected_candidates=cpu(out.rejected).long(),
        )

    def _reevaluate(
        self, imgs: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, cols_u8: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Adversarial images (CPU uint8), softmax on clean and adversarial images (CPU), adversarial class
        and finite output (device), in chunks, in float32 with autocast off: the verdict a user would get.

        ``imgs`` may be on another device (e.g. CPU): each chunk is copied to the device
        and its adversarial images back. Every output is allocated once, before the
        loop: per-chunk pieces kept until a final cat would pin the heap between the
        chunks' large temporaries and grow the process with N.
        """
        n, c, h, w = imgs.shape
        dev = self.device
        num = self._num_classes if n else 0
        adv_out = torch.empty((n, c, h, w), dtype=torch.uint8)
        pc = torch.empty((n, num), dtype=torch.float32)
        pa = torch.empty((n, num), dtype=torch.float32)
        ac = torch.empty(n, dtype=torch.long, device=dev)
        fin = torch.empty(n, dtype=torch.bool, device=dev)
        step = max(1, min(self.batch_size, 1024))
        with torch.autocast(device_type=dev.type, enabled=False):
            for s in range(0, n, step):
                e = min(n, s + step)
                clean = imgs[s:e].to(dev)
                adv = apply_pixels(clean, xs[s:e], ys[s:e], cols_u8[s:e])
                pc[s:e] = torch.softmax(self._logits(clean.float() / 255), 1).cpu()
                del clean
                la = self._logits(adv.float() / 255)
                pa[s:e] = torch.softmax(la, 1).cpu()
                ac[s:e] = la.argmax(1)
                fin[s:e] = torch.isfinite(la).all(1)
                adv_out[s:e] = adv.cpu()
                del adv, la
        return adv_out, pc, pa, ac, fin
