"""Intervals and verdicts against plainly written references (numpy, Student's t quantiles)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from torch_lookahead_lab.stats import Interval, difference, variance_ratio, verdict_of


def reference_t_interval(deltas: list[float]) -> tuple[float, float]:
    n = len(deltas)
    mean = sum(deltas) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def test_paired_difference_is_students_interval_of_the_per_seed_differences() -> None:
    interval = difference([1.0, 2.0, 3.0], [1.5, 2.4, 3.6])
    assert interval.effect == pytest.approx(0.5)
    assert (interval.low, interval.high) == pytest.approx(reference_t_interval([0.5, 0.4, 0.6]))
    assert interval.n == 3 and interval.method == "paired t-interval"
    assert interval.seeds_needed is None  # decided: the interval excludes 0
    assert verdict_of(interval, "above") == "holds"
    assert verdict_of(interval, "below") == "does not hold"


def test_welch_interval_without_pairs() -> None:
    base, cand = np.array([1.0, 2.0, 4.0, 3.0]), np.array([2.0, 2.5, 6.0])
    interval = difference(base, cand, paired=False)
    v1, v2 = base.var(ddof=1) / 4, cand.var(ddof=1) / 3
    dof = (v1 + v2) ** 2 / (v1**2 / 3 + v2**2 / 2)
    half = stats.t.ppf(0.975, dof) * math.sqrt(v1 + v2)
    effect = cand.mean() - base.mean()
    assert (interval.low, interval.high) == pytest.approx((effect - half, effect + half))
    assert interval.method == "Welch t-interval"


def test_inconclusive_says_how_many_seeds_would_decide_at_this_spread() -> None:
    deltas = [0.3, -0.1, 0.4, 0.2]
    interval = difference([0.0] * 4, deltas)
    assert interval.low < 0 < interval.high
    assert verdict_of(interval, "above") == "inconclusive at 4 seeds"
    needed = interval.seeds_needed
    assert needed is not None and needed > 4
    mean, sd = np.mean(deltas), np.std(deltas, ddof=1)

    def half_width(n: int) -> float:
        return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))

    assert half_width(needed) < mean <= half_width(needed - 1)


@pytest.mark.parametrize("values", [[0.7], []])
def test_no_spread_no_interval_and_no_verdict(values: list[float]) -> None:
    interval = difference(values, [v + 1 for v in values])
    assert not interval.estimated and interval.seeds_needed is None
    assert verdict_of(interval, "above") == f"inconclusive at {len(values)} seed" + (
        "" if len(values) == 1 else "s"
    )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-10, 10), min_size=2, max_size=8),
    st.lists(st.floats(-10, 10), min_size=8, max_size=8),
)
def test_paired_interval_contains_its_estimate(base: list[float], noise: list[float]) -> None:
    candidate = [b + n for b, n in zip(base, noise, strict=False)]
    interval = difference(base, candidate)
    assert interval.low <= interval.effect <= interval.high


def test_pitman_morgan_bounds_are_where_the_correlation_test_rejects_at_5_percent() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    candidate = 0.5 * base + rng.normal(scale=0.3, size=8)
    interval = variance_ratio(base, candidate)
    assert interval.effect == pytest.approx(candidate.var(ddof=1) / base.var(ddof=1))
    assert interval.low < interval.effect < interval.high
    for theta in (interval.low, interval.high):
        # Variances in ratio theta <=> candidate +- sqrt(theta) base are uncorrelated.
        u = candidate + math.sqrt(theta) * base
        v = candidate - math.sqrt(theta) * base
        assert stats.pearsonr(u, v).pvalue == pytest.approx(0.05, rel=1e-6)


def test_variance_ratio_verdicts_and_seeds_needed() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=30)
    quieter = variance_ratio(base, 0.2 * base + rng.normal(scale=0.05, size=30))
    assert quieter.high < 1 and verdict_of(quieter, "below") == "holds"
    few = variance_ratio(base[:4], 0.8 * base[:4] + rng.normal(scale=0.1, size=4))
    assert verdict_of(few, "below") == "inconclusive at 4 seeds"
    assert few.seeds_needed is not None and few.seeds_needed > 4
    assert not variance_ratio([1.0, 2.0], [2.0, 1.0]).estimated  # needs 3 pairs


def test_verdicts_count_chains_for_a_simulation() -> None:
    interval = Interval(0.1, -0.2, 0.4, 500, "paired t-interval", unit="chain")
    assert verdict_of(interval, "below") == "inconclusive at 500 chains"


def test_bad_samples_are_rejected() -> None:
    with pytest.raises(ValueError, match="finite numbers"):
        difference([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal sizes"):
        difference([1.0, 2.0], [1.0])
