"""Effect sizes with 95% confidence intervals over seeds, and the verdicts read from them.

Runs of the lab that share a seed share the model initialisation and the minibatch order, so a
plain run and a Lookahead run of the same seed form a pair:

* a difference of means is estimated from the per-seed differences with Student's t-interval;
  without pairs, with Welch's t-interval (Welch-Satterthwaite degrees of freedom); the quantiles
  are ``scipy.stats.t``'s;
* a ratio of variances of paired samples uses the Pitman-Morgan interval: the variances of
  ``x`` and ``y`` are in ratio ``theta`` exactly when ``x + sqrt(theta) y`` and
  ``x - sqrt(theta) y`` are uncorrelated, and inverting the t-test of that correlation gives
  ``F (K -+ sqrt(K^2 - 1))`` with ``F`` the ratio of sample variances, ``r`` the sample
  correlation and ``K = 1 + 2 (1 - r^2) t^2 / (n - 2)`` (``t`` the 97.5% quantile of Student's
  t with ``n - 2`` degrees of freedom).

A verdict is "holds" when the interval lies entirely on the side the claim predicts (beyond its
margin), "does not hold" when it lies entirely on the other side, and "inconclusive at n seeds"
otherwise; ``seeds_needed`` says how many seeds would decide it if the observed mean and spread
stayed as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

__all__ = [
    "CONFIDENCE",
    "Interval",
    "difference",
    "variance_ratio",
    "verdict_of",
]

CONFIDENCE = 0.95
_MAX_SEEDS = 10_000  # beyond this, "seeds needed" is reported as more than this

Favours = Literal["above", "below"]


@dataclass(frozen=True)
class Interval:
    """An effect estimated over ``n`` seeds, with its 95% confidence interval.

    ``low``/``high`` are NaN when ``n`` is too small to estimate the spread. ``seeds_needed`` is
    the number of seeds at which an interval of the observed spread around the observed effect
    would exclude the claim's margin (None: already decided, or no finite number would).
    """

    effect: float
    low: float
    high: float
    n: int
    method: str
    margin: float = 0.0
    seeds_needed: int | None = None
    unit: str = "seed"  # what the n samples are: seeds, or chains of a simulation

    @property
    def estimated(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def samples(self) -> str:
        """``5 seeds``, ``1 seed``."""
        return f"{self.n} {self.unit}{'s' if self.n != 1 else ''}"


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError(f"values must be a flat sequence of finite numbers, got {values!r}")
    return array


def _t_seeds_needed(effect: float, spread: float, margin: float, start: int) -> int | None:
    """Smallest n >= start with t_{0.975, n-1} * spread / sqrt(n) < |effect - margin|."""
    distance = abs(effect - margin)
    if distance == 0.0 or not math.isfinite(spread):
        return None
    if spread == 0.0:
        return start
    n = np.arange(max(start, 2), _MAX_SEEDS + 1)
    half_widths = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * spread / np.sqrt(n)
    below = np.nonzero(half_widths < distance)[0]
    return int(n[below[0]]) if below.size else _MAX_SEEDS + 1


def difference(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    paired: bool = True,
    margin: float = 0.0,
) -> Interval:
    """``mean(candidate) - mean(baseline)`` with its 95% t-interval.

    ``paired``: the i-th values of both come from the same seed (same initialisation and data
    order); the interval is then Student's over the per-seed differences, else Welch's.
    """
    base = _clean(baseline)
    cand = _clean(candidate)
    if paired:
        if base.size != cand.size:
            raise ValueError(f"paired samples need equal sizes, got {base.size} and {cand.size}")
        deltas = cand - base
        n = int(deltas.size)
        method = "paired t-interval"
        effect = float(deltas.mean()) if n else math.nan
        if n < 2:
            return Interval(effect, math.nan, math.nan, n, method, margin)
        spread = float(deltas.std(ddof=1))
        scale, dof = spread / math.sqrt(n), n - 1.0
    else:
        n = int(min(base.size, cand.size))
        method = "Welch t-interval"
        effect = float(cand.mean() - base.mean()) if n else math.nan
        if n < 2:
            return Interval(effect, math.nan, math.nan, n, method, margin)
        base_term = base.var(ddof=1) / base.size
        cand_term = cand.var(ddof=1) / cand.size
        spread = math.sqrt(base.var(ddof=1) + cand.var(ddof=1))
        scale = math.sqrt(base_term + cand_term)
        # Welch-Satterthwaite degrees of freedom
        dof = (base_term + cand_term) ** 2 / (
            base_term**2 / (base.size - 1) + cand_term**2 / (cand.size - 1)
        ) if scale > 0 else n - 1.0  # fmt: skip
    if scale == 0.0:
        low = high = effect
    else:
        low, high = stats.t.interval(CONFIDENCE, dof, loc=effect, scale=scale)
    interval = Interval(effect, float(low), float(high), n, method, margin)
    decided = interval.low > margin or interval.high < margin
    needed = None if decided else _t_seeds_needed(effect, spread, margin, n + 1)
    return Interval(effect, float(low), float(high), n, method, margin, needed)


def _pitman_morgan_factor(n: np.ndarray, correlation: float) -> np.ndarray:
    """``K + sqrt(K^2 - 1)`` for each sample size: the interval is ``[F / factor, F * factor]``."""
    t = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 2)
    k = 1.0 + 2.0 * (1.0 - correlation**2) * t**2 / (n - 2)
    return np.asarray(k + np.sqrt(k * k - 1.0))


def variance_ratio(baseline: Sequence[float], candidate: Sequence[float]) -> Interval:
    """``var(candidate) / var(baseline)`` of paired samples with the Pitman-Morgan 95% interval.

    The margin is 1 (equal variances); it needs at least 3 pairs.
    """
    base = _clean(baseline)
    cand = _clean(candidate)
    if base.size != cand.size:
        raise ValueError(f"paired samples need equal sizes, got {base.size} and {cand.size}")
    n = int(base.size)
    method = "Pitman-Morgan interval (paired)"
    if n < 2:
        return Interval(math.nan, math.nan, math.nan, n, method, 1.0)
    base_var = float(base.var(ddof=1))
    cand_var = float(cand.var(ddof=1))
    if base_var == 0.0 or cand_var == 0.0:
        ratio = math.inf if base_var == 0.0 and cand_var > 0.0 else math.nan
        return Interval(ratio, math.nan, math.nan, n, method, 1.0)
    ratio = cand_var / base_var
    if n < 3:
        return Interval(ratio, math.nan, math.nan, n, method, 1.0, seeds_needed=None)
    correlation = float(np.corrcoef(base, cand)[0, 1])
    factor = float(_pitman_morgan_factor(np.array([n]), correlation)[0])
    low, high = ratio / factor, ratio * factor
    needed = None
    if low <= 1.0 <= high and ratio != 1.0:
        # The smallest n whose interval at this ratio and correlation excludes 1.
        sizes = np.arange(n + 1, _MAX_SEEDS + 1)
        narrow = np.nonzero(_pitman_morgan_factor(sizes, correlation) < max(ratio, 1 / ratio))[0]
        needed = int(sizes[narrow[0]]) if narrow.size else _MAX_SEEDS + 1
    return Interval(ratio, low, high, n, method, 1.0, needed)


def verdict_of(interval: Interval, favours: Favours) -> str:
    """ "holds" when the interval lies beyond the margin on the ``favours`` side, "does not hold"
    when it lies on the other side, else "inconclusive at n seeds"."""
    if interval.estimated:
        above = interval.low > interval.margin
        below = interval.high < interval.margin
        if above or below:
            return "holds" if above == (favours == "above") else "does not hold"
    return f"inconclusive at {interval.samples}"
