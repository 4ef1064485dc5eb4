"""Vectorised one-pixel attack by differential evolution (DE).

Su, Vargas & Sakurai, *One pixel attack for fooling deep neural networks*
(IEEE TEC 2019, arXiv 1710.08864), as used by Vargas & Su, *Understanding the
One-Pixel Attack: Propagation Maps and Locality Analysis* (arXiv 1902.02947).

Design (see :class:`OnePixelAttack`):

* DE runs over *images x population* at once. All candidates of all images in
  flight are written into a preallocated float buffer by ``scatter_`` and
  evaluated in forward passes of at most ``batch_size`` candidate images.
* Continuous batching: up to ``max(1, batch_size // population)`` images are in
  flight; when one succeeds or exhausts its budget it leaves and the next
  pending image takes its slot (its initial population is evaluated in the same
  forward pass as the other images' trial vectors), so the batches stay full.
* Random numbers come from a counter-based generator keyed by
  ``(seed, image id, generation, purpose, member, gene)``. An image's run
  therefore does not depend on which other images share its batches, on
  ``batch_size``, or on how the image set is sharded; and integer random
  streams are identical on every device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch
from torch import nn

from onepixel.errors import ConfigError, DataError
from onepixel.scoring import MODEL_OUTPUTS, looks_like_probabilities, output_as_logits
from onepixel.torch_utils import eval_mode

STRATEGIES = ("rand1", "best1bin")
#: images of the probe forward pass that checks the classes and detects probabilities
_PROBE = 4

_MASK32 = 0xFFFFFFFF

# purposes of the counter-based random streams
_P_INIT_POS, _P_INIT_U1, _P_INIT_U2, _P_A, _P_B, _P_C, _P_CROSS, _P_FORCED = range(8)


@dataclass
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

    def select(self, index: torch.Tensor | slice) -> AttackResult:
        """Rows ``index`` of every field, as a new result."""
        return AttackResult(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(results: list[AttackResult]) -> AttackResult:
        """Concatenate results row-wise (e.g. shards of one image set)."""
        if not results:
            raise ValueError("concat needs at least one AttackResult")
        return AttackResult(**{f.name: torch.cat([getattr(r, f.name) for r in results]) for f in fields(AttackResult)})


# ---------------------------------------------------------------------------
# counter-based random numbers (integer arithmetic only: identical on every device)
# ---------------------------------------------------------------------------
_WRAPS: dict[str, bool] = {}


def _int64_mul_wraps(device: torch.device) -> bool:
    """Whether int64 products on ``device`` keep their low 64 bits on overflow (two's complement).

    Checked once per device type against Python integers; every known backend wraps,
    and where one does not, :func:`_mul32` uses its overflow-free form.
    """
    kind = device.type
    if kind not in _WRAPS:
        values = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x9E3779B9, 0xDEADBEEF]
        consts = (0x7FEB352D, 0x846CA68B, 0x9E3779B9)
        x = torch.tensor(values, dtype=torch.int64, device=device)
        got = [((x * c) & _MASK32).tolist() for c in consts]
        _WRAPS[kind] = got == [[(v * c) & _MASK32 for v in values] for c in consts]
    return _WRAPS[kind]


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) and ``c`` < 2**32 (``x`` is not modified).

    The low 32 bits of the wrapped 64-bit product where int64 products wrap (checked
    by :func:`_int64_mul_wraps`), else a form whose products stay below 2**48.
    """
    if _int64_mul_wraps(x.device):
        return (x * c).bitwise_and_(_MASK32)
    hi = x * (c >> 16)
    hi &= 0xFFFF
    hi <<= 16
    hi += x * (c & 0xFFFF)
    return hi.bitwise_and_(_MASK32)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer mixer ("lowbias32", C. Wellons) on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x ^= x >> 15
    x = _mul32(x, 0x846CA68B)
    x ^= x >> 16
    return x


def _split32(value: int) -> tuple[int, int]:
    value &= (1 << 64) - 1
    return value & _MASK32, value >> 32


_GOLDEN = 0x9E3779B9


def _mix_counter(counter: torch.Tensor) -> torch.Tensor:
    """The counter's share of :func:`_bits`; precompute it for counters that are used again."""
    return _mul32(counter, _GOLDEN)


def _bits(key: torch.Tensor, counter: torch.Tensor, mixed: torch.Tensor | None = None) -> torch.Tensor:
    """32 random bits for each ``(key, counter)`` (broadcast), as int64 in [0, 2**32).

    ``mixed``: ``_mix_counter(counter)`` when already computed (``counter`` is then unused).
    """
    h = key + (_mix_counter(counter) if mixed is None else mixed)
    h = _hash32(h.bitwise_and_(_MASK32))
    h ^= key
    return _hash32(h)


def _uniform(key: torch.Tensor, counter: torch.Tensor, mixed: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 uniform in (0, 1) for each ``(key, counter)``."""
    return (_bits(key, counter, mixed).double() + 0.5) * (1.0 / 2**32)


def _randint(key: torch.Tensor, counter: torch.Tensor, high: int | torch.Tensor,
             mixed: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform integers in ``[0, high)`` (Lemire's multiply-shift; ``high`` < 2**31)."""
    r = _bits(key, counter, mixed)
    r *= high
    r >>= 32
    return r


def _purpose_keys(keys: torch.Tensor, purposes: tuple[int, ...]) -> torch.Tensor:
    """``_hash32(key ^ purpose)`` for every key ``(B,)`` and purpose: ``(B, len(purposes))``, one pass."""
    return _hash32(keys[:, None] ^ torch.tensor(purposes, dtype=keys.dtype, device=keys.device))


def _member_draws(pkeys: torch.Tensor, highs: tuple[int, ...], mixed: torch.Tensor) -> torch.Tensor:
    """``_randint(pkeys[:, j], member, highs[j])`` for every stream j and member: ``(B, n, P)``.

    ``pkeys`` ``(B, n)`` are purpose keys, ``mixed`` ``(P,)`` is ``_mix_counter(member)``;
    the n draws run as one batch of integer operations.
    """
    bits = _bits(pkeys[:, :, None], None, mixed[None, None, :])
    bits *= torch.tensor(highs, dtype=bits.dtype, device=bits.device)[None, :, None]
    bits >>= 32
    return bits


def _skip_excluded(draws: torch.Tensor, member: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Turn draws ``r_j`` in [0, P - 1 - j) (``draws[:, j]``) into distinct members != i.

    r_j skips member i and the members already chosen, in increasing order, which
    makes every admissible choice equally likely. ``draws`` is modified.
    """
    i = member[None, :]
    out: list[torch.Tensor] = []
    for j in range(count):
        r = draws[:, j]
        if j == 0:
            ordered = [i]
        elif j == 1:
            ordered = [torch.minimum(i, out[0]), torch.maximum(i, out[0])]
        else:  # the three excluded values i, a, b are distinct: sort them with min/max
            a, b = out
            low = torch.minimum(torch.minimum(i, a), b)
            high = torch.maximum(torch.maximum(i, a), b)
            ordered = [low, a + b + i - low - high, high]
        for e in ordered:
            r += r >= e
        out.append(r)
    return out


def _distinct_members(keys: torch.Tensor, member: torch.Tensor, count: int,
                      mixed: torch.Tensor | None = None, pkeys: torch.Tensor | None = None) -> list[torch.Tensor]:
    """For B images (stream ``keys`` (B,)) and each member i of ``member`` (P,): ``count``
    (<= 3) mutually distinct random members, all != i, each ``(B, P)`` int64.

    Draw r_j uniform in [0, P - 1 - j) and skip the already excluded indices in
    increasing order, which makes every admissible choice equally likely.
    ``mixed`` (``_mix_counter(member)``) and ``pkeys`` (``_purpose_keys(keys,
    (_P_A, _P_B, _P_C)[:count])``) may be passed when already computed.
    """
    P = member.numel()
    if mixed is None:
        mixed = _mix_counter(member)
    if pkeys is None:
        pkeys = _purpose_keys(keys, (_P_A, _P_B, _P_C)[:count])
    draws = _member_draws(pkeys[:, :count], tuple(P - 1 - j for j in range(count)), mixed)
    out: list[torch.Tensor | None] = list(_skip_excluded(draws, member, count))
    return out + [None] * (3 - count)


# ---------------------------------------------------------------------------
class OnePixelAttack:
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

    Shapes (``run``): images ``(N, C, H, W)`` uint8 in [0, 255], labels ``(N,)``,
    targets ``(N,)``; returns an :class:`AttackResult` of N rows.

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
    """

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
    ) -> None:
        _check_int("pixels", pixels, 1)
        _check_int("population", population, 4)
        _check_int("generations", generations, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        if isinstance(F, bool) or not isinstance(F, (int, float)) or not (0 < F <= 2) or math.isnan(F):
            raise ConfigError(f"F: {F!r} is out of range; use a number with 0 < F <= 2")
        if isinstance(crossover, bool) or not isinstance(crossover, (int, float)) or not (0 <= crossover <= 1):
            raise ConfigError(f"crossover: {crossover!r} is out of range; use a number in [0, 1]")
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy: {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
        if not isinstance(targeted, bool):
            raise ConfigError(f"targeted: {targeted!r} is not a boolean; use true or false")
        if output not in MODEL_OUTPUTS:
            raise ConfigError(f"output: {output!r} is unknown; use one of {', '.join(MODEL_OUTPUTS)}")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model: {type(model).__name__} is not a torch.nn.Module")
        self.model = model
        self.pixels = int(pixels)
        self.population = int(population)
        self.generations = int(generations)
        self.F = float(F)
        self.crossover = float(crossover)
        self.strategy = strategy
        self.targeted = targeted
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.output = output
        #: what the model returned in the last run: "logits" or "probabilities" (None before a run)
        self.model_output: str | None = None if output == "auto" else output
        if device is None:
            param = next(iter(model.parameters()), None)
            buf = next(iter(model.buffers()), None)
            ref = param if param is not None else buf
            self.device = ref.device if ref is not None else torch.device("cpu")
        else:
            self.device = torch.device(device)
        self.last_stats: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"OnePixelAttack(pixels={self.pixels}, population={self.population}, generations={self.generations}, "
            f"F={self.F}, crossover={self.crossover}, strategy={self.strategy!r}, targeted={self.targeted}, "
            f"seed={self.seed}, batch_size={self.batch_size}, device={str(self.device)!r}, output={self.output!r})"
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """torchattacks-style: return the adversarial images (uint8)."""
        return self.run(images, labels, targets).adversarial

    # ------------------------------------------------------------------
    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack every image; see the class docstring.

        Args:
            images: ``(N, C, H, W)`` uint8.
            labels: ``(N,)`` true classes.
            targets: ``(N,)`` target classes; required iff ``targeted``.
            ids: ``(N,)`` non-negative int64 identifiers keying each image's random
                stream (default ``arange(N)``). Pass global ids (e.g. test-set
                indices) so that attacking a subset or a shard of the images
                reproduces exactly the rows of one run over all of them.
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
                genes, gens, done_ok, rejected = self._evolve(images, lab, tgt, ids.to(dev))
                result = self._finalise(images, lab, tgt, genes, gens, rejected)
        seconds = time.perf_counter() - start
        total = int(result.queries.sum())
        self.last_stats = {
            "candidates": total,
            "seconds": seconds,
            "candidates_per_s": total / seconds if seconds > 0 else float("nan"),
            "de_success": int(done_ok.sum()),
            "rejected": int(result.rejected_candidates.sum()),
        }
        return result

    def _check_inputs(self, images, labels, targets, ids):
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
            desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"images: expected a uint8 tensor (N, C, H, W) in [0, 255]; got {desc}")
        n = images.shape[0]
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (n,):
            raise DataError(f"labels: expected shape ({n},); got {tuple(labels.shape)}")
        if self.targeted and targets is None:
            raise ConfigError("targets: required when targeted is true")
        if not self.targeted and targets is not None:
            raise ConfigError("targets: given but targeted is false; pass targeted=True or drop targets")
        if targets is not None:
            targets = torch.as_tensor(targets).long().cpu()
            if targets.shape != (n,):
                raise DataError(f"targets: expected shape ({n},); got {tuple(targets.shape)}")
            if n and bool((targets < 0).any()):
                raise DataError("targets: must be class indices >= 0")
            if n and bool((targets == labels).any()):
                row = int((targets == labels).nonzero()[0])
                raise DataError(f"targets: row {row} targets its own label {int(labels[row])}; use another class")
        if ids is None:
            ids = torch.arange(n, dtype=torch.long)
        else:
            ids = torch.as_tensor(ids).long().cpu()
            if ids.shape != (n,):
                raise DataError(f"ids: expected shape ({n},); got {tuple(ids.shape)}")
            if n and bool((ids < 0).any()):
                raise DataError("ids: must be >= 0")
        return images, labels, targets, ids

    def _probe(self, probe, lab, tgt) -> None:
        """One forward pass on the first images: the output's shape, its kind (``output="auto"``), and that
        labels/targets index the model's classes."""
        out = self.model(probe.float() / 255)
        if out.dim() != 2 or out.shape[0] != probe.shape[0]:
            raise DataError(f"model: expected outputs of shape (N, K); got {tuple(out.shape)} "
                            f"for N={probe.shape[0]}")
        if self.output == "auto":
            self.model_output = "probabilities" if looks_like_probabilities(out) else "logits"
        num = self._num_classes = out.shape[1]
        for key, t in (("labels", lab), ("targets", tgt)):
            if t is not None and bool(((t < 0) | (t >= num)).any()):
                raise DataError(f"{key}: values must be class indices in [0, {num - 1}] for this model")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` as float logits (log-probabilities for a model returning probabilities)."""
        return output_as_logits(self.model(x), self.model_output)

    # ------------------------------------------------------------------
    def _evolve(self, imgs, lab, tgt, ids):
        """Run DE for all images with continuous batching.

        ``imgs`` may live on another device than the attack (e.g. CPU): each image is
        copied to the device when it enters a slot. Returns per image: chosen genes
        ``(N, D)`` (float), generations used ``(N,)``, DE's own success verdict ``(N,)``
        and the count of rejected (non-finite) candidates ``(N,)``.
        """
        dev = self.device
        n, c, h, w = imgs.shape
        P, k = self.population, self.pixels
        G = 2 + c
        D = k * G
        S = max(1, min(self.batch_size // P, n))  # slots (images in flight)
        out_genes = torch.zeros(n, D, dtype=torch.float32, device=dev)
        out_gens = torch.zeros(n, dtype=torch.long, device=dev)
        out_ok = torch.zeros(n, dtype=torch.bool, device=dev)
        out_rej = torch.zeros(n, dtype=torch.long, device=dev)
        if n == 0:
            return out_genes, out_gens, out_ok, out_rej

        # box bounds per gene
        lo = torch.zeros(D, dtype=torch.float32, device=dev)
        hi_one = torch.tensor([w - 1, h - 1] + [255] * c, dtype=torch.float32, device=dev)
        hi = hi_one.repeat(k)

        # slot state
        pop = torch.zeros(S, P, D, dtype=torch.float32, device=dev)
        fit = torch.full((S, P), math.inf, dtype=torch.float32, device=dev)
        slot_img = torch.full((S,), -1, dtype=torch.long, device=dev)
        slot_gen = torch.zeros(S, dtype=torch.long, device=dev)
        base = torch.zeros(S, c, h, w, dtype=torch.float32, device=dev)  # clean float image per slot
        slot_cls = torch.zeros(S, dtype=torch.long, device=dev)  # class whose log-prob is the fitness
        slot_key = torch.zeros(S, dtype=torch.long, device=dev)  # per-image stream key (without generation)
        slot_rej = torch.zeros(S, dtype=torch.long, device=dev)  # rejected (non-finite) candidates so far

        seed_lo, seed_hi = _split32(self.seed)
        member = torch.arange(P, device=dev)
        gene = torch.arange(D, device=dev)
        elem = member[:, None] * D + gene[None, :]  # (P, D) counters
        member_mixed, elem_mixed = _mix_counter(member), _mix_counter(elem)  # their share of every draw
        buf = torch.empty(min(self.batch_size, S * P), c, h, w, dtype=torch.float32, device=dev)

        next_img = 0
        # admit the first S images
        free = torch.arange(S, device=dev)
        next_img = self._admit(free, next_img, n, imgs, lab, tgt, ids, seed_lo, seed_hi,
                               slot_img, slot_gen, base, slot_cls, slot_key, slot_rej)
        while True:
            act = (slot_img >= 0).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            A = act.numel()
            full = A == S  # every slot in flight (the usual case): use the slot tensors, no gathers
            gen = slot_gen.clone() if full else slot_gen[act]
            keys = _hash32((slot_key if full else slot_key[act]) ^ (gen & _MASK32))  # (A,) key of (image, gen.)
            is_init = gen == 0
            p_act = pop if full else pop[act]
            f_act = fit if full else fit[act]
            n_init = int(is_init.sum())
            if n_init == 0:
                cand = self._trials(p_act, f_act, keys, elem, member, D, lo, hi, member_mixed, elem_mixed)
            elif n_init == A:
                cand = self._init_population(keys, elem, k, G, w, h, elem_mixed)
            else:
                cand = torch.empty(A, P, D, dtype=torch.float32, device=dev)
                ii = is_init.nonzero().squeeze(1)
                tt = (~is_init).nonzero().squeeze(1)
                cand[ii] = self._init_population(keys[ii], elem, k, G, w, h, elem_mixed)
                cand[tt] = self._trials(p_act[tt], f_act[tt], keys[tt], elem, member, D, lo, hi,
                                        member_mixed, elem_mixed)

            # evaluate all candidates of the active slots
            cf, cs, cfin = self._evaluate(cand.view(A * P, D), act, base, slot_cls, buf, k, c, h, w)
            cf = cf.view(A, P)
            cs = cs.view(A, P)
            slot_rej[act] += (~cfin).view(A, P).sum(1)

            # selection (initial slots take the candidates as their population)
            take = (cf <= f_act) | is_init[:, None]
            new_pop = torch.where(take[..., None], cand, p_act)
            new_fit = torch.where(take, cf, f_act)
            if full:
                pop, fit = new_pop, new_fit
            else:
                pop[act] = new_pop
                fit[act] = new_fit

            # early stopping: any evaluated candidate that succeeded
            hit = cs.any(1)
            exhausted = gen >= self.generations
            fin = hit | exhausted
            if bool(fin.any()):
                fi = fin.nonzero().squeeze(1)
                rows = slot_img[act[fi]]
                # successful: best-fitness successful candidate; else: best member of the population
                succ_fit = torch.where(cs[fi], cf[fi], torch.full_like(cf[fi], math.inf))
                # a successful candidate with non-finite fitness is impossible (NaN logits are not successes)
                best_succ = succ_fit.argmin(1)
                best_pop = fit[act[fi]].argmin(1)
                ok = hit[fi]
                g_succ = cand[fi, best_succ]
                g_pop = pop[act[fi], best_pop]
                out_genes[rows] = torch.where(ok[:, None], g_succ, g_pop)
                out_gens[rows] = gen[fi]
                out_ok[rows] = ok
                out_rej[rows] = slot_rej[act[fi]]
                freed = act[fi]
                slot_img[freed] = -1
                next_img = self._admit(freed, next_img, n, imgs, lab, tgt, ids, seed_lo, seed_hi,
                                       slot_img, slot_gen, base, slot_cls, slot_key, slot_rej)
            # every slot that was active and not finished moves on one generation
            cont = act[~fin]
            slot_gen[cont] += 1
        return out_genes, out_gens, out_ok, out_rej

    def _admit(self, free, next_img, n, imgs, lab, tgt, ids, seed_lo, seed_hi,
               slot_img, slot_gen, base, slot_cls, slot_key, slot_rej) -> int:
        """Put the next pending images into the free slots (in slot order); copy them to the device."""
        m = min(free.numel(), n - next_img)
        if m <= 0:
            return next_img
        slots = free[:m]
        rows = torch.arange(next_img, next_img + m, device=free.device)
        slot_img[slots] = rows
        slot_gen[slots] = 0
        slot_rej[slots] = 0
        base[slots] = imgs[next_img : next_img + m].to(base.device).float() / 255
        slot_cls[slots] = tgt[rows] if tgt is not None else lab[rows]
        i = ids[rows]
        key = _hash32(torch.full_like(i, seed_lo) ^ 0x5BD1E995)
        key = _hash32(key ^ seed_hi)
        key = _hash32(key ^ (i & _MASK32))
        key = _hash32(key ^ (i >> 32))
        slot_key[slots] = key
        return next_img + m

    def _init_population(self, keys, elem, k, G, w, h, elem_mixed=None):
        """Paper initialisation for B images: ``(B, P, D)`` float genes.

        ``elem_mixed``: ``_mix_counter(elem)`` when already computed. Each gene only
        draws the numbers it uses (positions: one integer; colours: two uniforms for
        Box-Muller), all keyed by its own counter in ``elem``.
        """
        P, D = elem.shape
        dev = elem.device
        if elem_mixed is None:
            elem_mixed = _mix_counter(elem)
        pk = _purpose_keys(keys, (_P_INIT_POS, _P_INIT_U1, _P_INIT_U2))[:, :, None, None]  # (B, 3, 1, 1)
        gi = torch.arange(D, device=dev) % G  # gene kind within a pixel
        pos_cols = (gi < 2).nonzero().squeeze(1)
        col_cols = (gi >= 2).nonzero().squeeze(1)
        high = torch.where(gi[pos_cols] == 0, w, h)[None, None, :]  # x in [0, w), y in [0, h)
        pos = _randint(pk[:, 0], None, high, elem_mixed[:, pos_cols]).float()
        mixed_col = elem_mixed[:, col_cols]
        u1 = _uniform(pk[:, 1], None, mixed_col)
        u2 = _uniform(pk[:, 2], None, mixed_col)
        normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        col = torch.round(128.0 + 127.0 * normal).clamp(0, 255).float()
        out = torch.empty(keys.shape[0], P, D, dtype=torch.float32, device=dev)
        out[..., pos_cols] = pos
        out[..., col_cols] = col
        return out

    def _trials(self, pop, fit, keys, elem, member, D, lo, hi, member_mixed=None, elem_mixed=None):
        """Trial vectors ``(B, P, D)`` for B images from their populations and fitnesses.

        ``member_mixed`` / ``elem_mixed``: ``_mix_counter`` of ``member`` / ``elem`` when already computed.
        """
        B, P, _ = pop.shape
        if member_mixed is None:
            member_mixed = _mix_counter(member)
        if self.strategy == "rand1":
            pk = _purpose_keys(keys, (_P_A, _P_B, _P_C))
            a, b, cc = _distinct_members(keys, member, 3, member_mixed, pk)
        else:  # a, b and the forced crossover gene are drawn in one batch
            pk = _purpose_keys(keys, (_P_A, _P_B, _P_FORCED, _P_CROSS))
            draws = _member_draws(pk[:, :3], (P - 1, P - 2, D), member_mixed)
            a, b = _skip_excluded(draws, member, 2)
            forced = draws[:, 2]
        rows = pop.reshape(B * P, D)
        offset = (torch.arange(B, device=pop.device) * P)[:, None]
        pick = lambda t: rows.index_select(0, (t + offset).view(-1)).view(B, P, D)
        pa = pick(a)
        pb = pick(b)
        if self.strategy == "rand1":
            pc = pick(cc)
            trial = pa + self.F * (pb - pc)
        else:  # best1bin
            if elem_mixed is None:
                elem_mixed = _mix_counter(elem)
            best = fit.argmin(1)
            pbest = pop[torch.arange(B, device=pop.device), best][:, None, :]
            mutant = pbest + self.F * (pa - pb)
            cross = _uniform(pk[:, 3, None, None], None, elem_mixed) < self.crossover
            cross |= torch.arange(D, device=pop.device)[None, None, :] == forced[..., None]
            trial = torch.where(cross, mutant, pop)
        return torch.maximum(torch.minimum(trial, hi), lo)

    def _decode(self, genes, k, c, h, w):
        """Round/clip float genes ``(M, D)`` -> xs, ys ``(M, k)`` long, colours ``(M, k, C)`` float."""
        g = genes.view(-1, k, 2 + c)
        xs = torch.round(g[..., 0]).clamp(0, w - 1).long()
        ys = torch.round(g[..., 1]).clamp(0, h - 1).long()
        cols = torch.round(g[..., 2:]).clamp(0, 255)
        return xs, ys, cols

    def _evaluate(self, genes, act, base, slot_cls, buf, k, c, h, w):
        """Fitness ``(M,)`` (minimised), success ``(M,)`` and finite output ``(M,)`` of candidates ``(M, D)``
        of slots ``act``."""
        M = genes.shape[0]
        P = self.population
        dev = genes.device
        fitness = torch.empty(M, dtype=torch.float32, device=dev)
        success = torch.empty(M, dtype=torch.bool, device=dev)
        finite = torch.empty(M, dtype=torch.bool, device=dev)
        slot_of = act.repeat_interleave(P)
        xs, ys, cols = self._decode(genes, k, c, h, w)
        offsets = (ys * w + xs)  # (M, k)
        vals = (cols / 255).permute(0, 2, 1)  # (M, C, k), same floats as uint8 / 255
        cap = buf.shape[0]
        for s in range(0, M, cap):
            e = min(M, s + cap)
            m = e - s
            x = buf[:m]
            torch.index_select(base, 0, slot_of[s:e], out=x)
            x.view(m, c, h * w).scatter_(2, offsets[s:e, None, :].expand(m, c, k), vals[s:e])
            f, ok, fin = self._score(self._logits(x), slot_cls[slot_of[s:e]])
            fitness[s:e] = f
            success[s:e] = ok
            finite[s:e] = fin
        return fitness, success, finite

    def _score(self, logits, cls):
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

    def _finalise(self, imgs, lab, tgt, genes, gens, rejected) -> AttackResult:
        """Build adversarial images and re-evaluate them (float32, no autocast), chunk by chunk.

        ``imgs`` may be on another device (e.g. CPU): each chunk is copied to the
        device and its adversarial images back into the CPU result.
        """
        from onepixel.data.dataset import apply_pixels

        n, c, h, w = imgs.shape
        k = self.pixels
        dev = self.device
        xs, ys, cols = self._decode(genes, k, c, h, w)
        cols_u8 = cols.to(torch.uint8)
        # every output is allocated once, before the loop: per-chunk pieces kept until a final cat
        # would pin the heap between the chunks' large temporaries and grow the process with N
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
        if tgt is not None:
            success = (ac == tgt) & fin
            target_class = tgt
        else:
            success = (ac != lab) & fin
            target_class = torch.full_like(lab, -1)
        cpu = lambda t: t.detach().to("cpu")
        return AttackResult(
            success=cpu(success),
            queries=cpu(self.population * (1 + gens)).long(),
            generations=cpu(gens).long(),
            pixel_x=cpu(xs),
            pixel_y=cpu(ys),
            color=cpu(cols_u8),
            true_class=cpu(lab).long(),
            target_class=cpu(target_class).long(),
            adv_class=cpu(ac).long(),
            prob_clean=pc.float(),
            prob_adv=pa.float(),
            adversarial=adv_out,
            rejected_candidates=cpu(rejected).long(),
        )


def _check_int(key: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: {value!r} is not allowed; use an integer >= {minimum}")
