"""Counter-based random numbers for the DE engine, identical on every device and for any batching.

Every random number of an attack is a pure function of ``(key, counter)``: the
key encodes ``(seed, image id, generation, purpose)`` (:func:`image_keys`,
:func:`generation_keys`, :func:`purpose_keys`) and the counter the member or
gene it is drawn for. No generator state is carried from one draw to the next,
so an image's run does not depend on which other images share its batches, on
the batch size or on sharding. Only integer arithmetic on int64 tensors holding
32-bit values is used (floats only at the very end of :func:`uniform`), so the
integer streams are the same on the CPU and on any accelerator.

Changing any function here changes every attack: ``tests/test_de_golden.py``
checks the streams bit for bit.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
#: odd constant 2**32 / golden ratio: spreads consecutive counters over the 32-bit range
GOLDEN = 0x9E3779B9

# purposes of the streams: each kind of draw gets its own key, so no two kinds share numbers
P_INIT_POS = 0  #: initial x / y positions
P_INIT_U1 = 1  #: first uniform of the Box-Muller colours
P_INIT_U2 = 2  #: second uniform of the Box-Muller colours
P_A = 3  #: first mutation member
P_B = 4  #: second mutation member
P_C = 5  #: third mutation member (rand1)
P_CROSS = 6  #: binomial crossover uniforms (best1bin)
P_FORCED = 7  #: the gene that always crosses over (best1bin)

#: per device type: whether int64 products wrap (see :func:`int64_mul_wraps`)
_WRAPS: dict[str, bool] = {}


def int64_mul_wraps(device: torch.device) -> bool:
    """Whether int64 products on ``device`` keep their low 64 bits on overflow (two's complement).

    Checked once per device type against Python integers; every known backend wraps,
    and where one does not, :func:`mul32` uses its overflow-free form.
    """
    kind = device.type
    if kind not in _WRAPS:
        values = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x9E3779B9, 0xDEADBEEF]
        consts = (0x7FEB352D, 0x846CA68B, 0x9E3779B9)
        x = torch.tensor(values, dtype=torch.int64, device=device)
        got = [((x * c) & MASK32).tolist() for c in consts]
        _WRAPS[kind] = got == [[(v * c) & MASK32 for v in values] for c in consts]
    return _WRAPS[kind]


def mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) and ``c`` < 2**32 (``x`` is not modified).

    The low 32 bits of the wrapped 64-bit product where int64 products wrap (checked
    by :func:`int64_mul_wraps`), else a form whose products stay below 2**48.
    """
    if int64_mul_wraps(x.device):
        return (x * c).bitwise_and_(MASK32)
    hi = x * (c >> 16)
    hi &= 0xFFFF
    hi <<= 16
    hi += x * (c & 0xFFFF)
    return hi.bitwise_and_(MASK32)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer mixer ("lowbias32", C. Wellons) on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x ^= x >> 15
    x = mul32(x, 0x846CA68B)
    x ^= x >> 16
    return x


def split32(value: int) -> tuple[int, int]:
    """Low and high 32 bits of ``value`` taken modulo 2**64."""
    value &= (1 << 64) - 1
    return value & MASK32, value >> 32


def image_keys(seed: int, ids: torch.Tensor) -> torch.Tensor:
    """Stream key ``(N,)`` of each image id ``(N,)`` (int64 >= 0) under ``seed``: all 64 bits of both count."""
    seed_lo, seed_hi = split32(seed)
    key = hash32(torch.full_like(ids, seed_lo) ^ 0x5BD1E995)
    key = hash32(key ^ seed_hi)
    key = hash32(key ^ (ids & MASK32))
    return hash32(key ^ (ids >> 32))


def generation_keys(image_key: torch.Tensor, generation: torch.Tensor) -> torch.Tensor:
    """Key of each image's draws in ``generation`` (both ``(B,)``), from its :func:`image_keys` key."""
    return hash32(image_key ^ (generation & MASK32))


def mix_counter(counter: torch.Tensor) -> torch.Tensor:
    """The counter's share of :func:`bits`; precompute it for counters that are used again."""
    return mul32(counter, GOLDEN)


def bits(key: torch.Tensor, counter: torch.Tensor | None, mixed: torch.Tensor | None = None) -> torch.Tensor:
    """32 random bits for each ``(key, counter)`` (broadcast), as int64 in [0, 2**32).

    ``mixed``: ``mix_counter(counter)`` when already computed (``counter`` is then unused).
    """
    if mixed is None:
        assert counter is not None, "bits needs a counter or its mix_counter"
        mixed = mix_counter(counter)
    h = key + mixed
    h = hash32(h.bitwise_and_(MASK32))
    h ^= key
    return hash32(h)


def uniform(key: torch.Tensor, counter: torch.Tensor | None, mixed: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 uniform in (0, 1) for each ``(key, counter)``."""
    return (bits(key, counter, mixed).double() + 0.5) * (1.0 / 2**32)


def randint(
    key: torch.Tensor, counter: torch.Tensor | None, high: int | torch.Tensor, mixed: torch.Tensor | None = None
) -> torch.Tensor:
    """Uniform integers in ``[0, high)`` (Lemire's multiply-shift; ``high`` < 2**31)."""
    r = bits(key, counter, mixed)
    r *= high
    r >>= 32
    return r


def purpose_keys(keys: torch.Tensor, purposes: tuple[int, ...]) -> torch.Tensor:
    """``hash32(key ^ purpose)`` for every key ``(B,)`` and purpose: ``(B, len(purposes))``, one pass."""
    return hash32(keys[:, None] ^ torch.tensor(purposes, dtype=keys.dtype, device=keys.device))


def member_draws(pkeys: torch.Tensor, highs: tuple[int, ...], mixed: torch.Tensor) -> torch.Tensor:
    """``randint(pkeys[:, j], member, highs[j])`` for every stream j and member: ``(B, n, P)``.

    ``pkeys`` ``(B, n)`` are purpose keys, ``mixed`` ``(P,)`` is ``mix_counter(member)``;
    the n draws run as one batch of integer operations.
    """
    r = bits(pkeys[:, :, None], None, mixed[None, None, :])
    r *= torch.tensor(highs, dtype=r.dtype, device=r.device)[None, :, None]
    r >>= 32
    return r


def skip_excluded(draws: torch.Tensor, member: torch.Tensor, count: int) -> list[torch.Tensor]:
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


def distinct_members(
    keys: torch.Tensor,
    member: torch.Tensor,
    count: int,
    mixed: torch.Tensor | None = None,
    pkeys: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """For B images (stream ``keys`` (B,)) and each member i of ``member`` (P,): ``count``
    (<= 3) mutually distinct random members, all != i, each ``(B, P)`` int64.

    Draw r_j uniform in [0, P - 1 - j) and skip the already excluded indices in
    increasing order (:func:`skip_excluded`). ``mixed`` (``mix_counter(member)``)
    and ``pkeys`` (``purpose_keys(keys, (P_A, P_B, P_C)[:count])``) may be passed
    when already computed.
    """
    P = member.numel()
    if mixed is None:
        mixed = mix_counter(member)
    if pkeys is None:
        pkeys = purpose_keys(keys, (P_A, P_B, P_C)[:count])
    draws = member_draws(pkeys[:, :count], tuple(P - 1 - j for j in range(count)), mixed)
    return skip_excluded(draws, member, count)
