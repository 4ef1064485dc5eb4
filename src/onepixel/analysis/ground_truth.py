"""Ground truth for the attack: DE (Vargas & Su, arXiv 1902.02947) against the exhaustive sweep.

For one model and the same images, :func:`compare_with_sweep` crosses DE's
success with the sweep's (:class:`onepixel.attack.exhaustive.ExhaustiveAttack`):
images fooled by both, by DE only, by the sweep only, by neither; the share of
the sweep-attackable images DE finds; and the queries each spends per success.
Proportions come with 95 % Wilson score intervals.

"DE only" is possible when the sweep's colour set is a subset (``corners``: 2^C of
the 256^C colours DE searches) but impossible when the sweep is exact (``all`` on
a grayscale image, :attr:`SweepResult.exact`): every one-pixel adversarial image
is then among the sweep's candidates (up to float rounding of a near-tie between
two classes, which a separate evaluation may break the other way). With an exact
sweep, "sweep only" are DE's misses and ``de_found`` its recall.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from onepixel.attack.de import AttackResult
from onepixel.attack.exhaustive import SweepResult
from onepixel.errors import DataError

CI_LEVEL = 0.95


def wilson_interval(count: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of the proportion ``count / n`` (NaN, NaN when ``n == 0``).

    ``(p + z²/2n ± z sqrt(p(1 - p)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal
    quantile of ``(1 + level) / 2``: 8 of 10 gives (0.490, 0.943) at 95 %.
    """
    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf((1 + level) / 2))
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if count == 0 else max(0.0, centre - half)
    return low, 1.0 if count == n else min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """``count`` of ``n`` with its Wilson interval ``(low, high)``."""

    count: int
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, count: int, n: int) -> Proportion:
        return cls(int(count), int(n), *wilson_interval(int(count), int(n)))

    @property
    def rate(self) -> float:
        """``count / n`` (NaN when ``n == 0``)."""
        return self.count / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "n": self.n,
            "rate": _finite(self.rate),
            "ci": [_finite(self.low), _finite(self.high)],
        }


def _finite(value: float) -> float | None:
    """JSON-safe number: rounded to 6 digits, ``None`` for NaN or infinity (as summary.json)."""
    return round(float(value), 6) if math.isfinite(value) else None


@dataclass(frozen=True)
class GroundTruth:
    """DE against the sweep on the same ``n`` images of one model.

    Attributes:
        n: images compared.
        exact: the sweep's colour set holds every colour (then ``de_only`` must be 0).
        both, de_only, sweep_only, neither: the four cells, as shares of ``n``.
        de_success, sweep_success: each attack's success rate.
        de_found: of the images the sweep fools, those DE fools too (``both / (both + sweep_only)``).
        de_queries_per_success, sweep_queries_per_success: all queries spent over all
            images divided by the successes (the cost of one adversarial example;
            inf when none succeeded).
        de_mean_queries_success, sweep_mean_queries_success: mean queries of the
            successful images (NaN when none).
    """

    n: int
    exact: bool
    both: Proportion
    de_only: Proportion
    sweep_only: Proportion
    neither: Proportion
    de_success: Proportion
    sweep_success: Proportion
    de_found: Proportion
    de_queries_per_success: float
    sweep_queries_per_success: float
    de_mean_queries_success: float
    sweep_mean_queries_success: float

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for summary.json (NaN and infinity as ``None``)."""
        out: dict[str, Any] = {"n": self.n, "exact": self.exact}
        for key, value in self.__dict__.items():
            if isinstance(value, Proportion):
                out[key] = value.to_dict()
            elif isinstance(value, float):
                out[key] = _finite(value)
        return out


def _queries(success: np.ndarray, queries: np.ndarray) -> tuple[float, float]:
    """Queries per success (total / successes) and mean queries of the successful images."""
    hits = int(success.sum())
    per_success = float(queries.sum()) / hits if hits else math.inf
    return per_success, float(queries[success].mean()) if hits else math.nan


def compare_success(
    de_success: np.ndarray | torch.Tensor,
    de_queries: np.ndarray | torch.Tensor,
    sweep_success: np.ndarray | torch.Tensor,
    sweep_queries: np.ndarray | torch.Tensor,
    exact: bool = False,
) -> GroundTruth:
    """:class:`GroundTruth` from ``(N,)`` success vectors and ``(N,)`` queries of DE and the sweep (same rows)."""
    de, sw = np.asarray(de_success, bool).reshape(-1), np.asarray(sweep_success, bool).reshape(-1)
    dq, sq = np.asarray(de_queries, np.int64).reshape(-1), np.asarray(sweep_queries, np.int64).reshape(-1)
    n = de.size
    if not sw.size == dq.size == sq.size == n:
        raise DataError(f"ground truth: DE and sweep need the same rows; got {n}, {sw.size}, {dq.size}, {sq.size}")
    de_qps, de_mean = _queries(de, dq)
    sw_qps, sw_mean = _queries(sw, sq)
    return GroundTruth(
        n=n,
        exact=bool(exact),
        both=Proportion.of(int((de & sw).sum()), n),
        de_only=Proportion.of(int((de & ~sw).sum()), n),
        sweep_only=Proportion.of(int((~de & sw).sum()), n),
        neither=Proportion.of(int((~de & ~sw).sum()), n),
        de_success=Proportion.of(int(de.sum()), n),
        sweep_success=Proportion.of(int(sw.sum()), n),
        de_found=Proportion.of(int((de & sw).sum()), int(sw.sum())),
        de_queries_per_success=de_qps,
        sweep_queries_per_success=sw_qps,
        de_mean_queries_success=de_mean,
        sweep_mean_queries_success=sw_mean,
    )


def compare_with_sweep(de: AttackResult, sweep: SweepResult) -> GroundTruth:
    """DE's :class:`AttackResult` against the :class:`SweepResult` of the same images (same rows, same labels).

    Success is each one's re-evaluated ``success``; ``exact`` is :attr:`SweepResult.exact`.
    """
    if len(de) != len(sweep) or not torch.equal(de.true_class, sweep.result.true_class):
        raise DataError(f"ground truth: DE ({len(de)} rows) and the sweep ({len(sweep)}) are not the same images")
    res = sweep.result
    return compare_success(de.success, de.queries, res.success, res.queries, exact=sweep.exact)


def ground_truth_summary(pairs: Mapping[str, tuple[AttackResult, SweepResult]]) -> dict[str, dict[str, Any]]:
    """``{model: compare_with_sweep(de, sweep).to_dict()}`` for summary.json."""
    return {model: compare_with_sweep(de, sweep).to_dict() for model, (de, sweep) in pairs.items()}
