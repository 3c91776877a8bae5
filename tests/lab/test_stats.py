"""Exact tests, intervals, Holm and the four verdicts, against plainly written references
(every sign pattern enumerated by hand, Student's t quantiles, the correlation test)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from torch_lookahead_lab.stats import (
    NO_VERDICT,
    Estimate,
    holm,
    paired_difference,
    pairs_needed,
    smallest_p,
    t_difference,
    variance_ratio,
    verdict_kind,
    verdict_of,
)


def reference_sign_flip_p(deltas: list[float]) -> float:
    """Two-sided: the share of the 2^n sign patterns whose |mean| reaches the observed one."""
    observed = abs(sum(deltas)) / len(deltas)
    patterns = list(itertools.product((1, -1), repeat=len(deltas)))
    extreme = sum(
        abs(sum(s * d for s, d in zip(signs, deltas, strict=True))) / len(deltas)
        >= observed * (1 - 1e-12)
        for signs in patterns
    )
    return extreme / len(patterns)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-5, 5).map(lambda v: v / 4), min_size=2, max_size=9))
def test_the_p_value_is_the_exact_sign_flip_one(deltas: list[float]) -> None:
    estimate = paired_difference([0.0] * len(deltas), deltas)
    assert estimate.p_value == pytest.approx(reference_sign_flip_p(deltas))
    assert estimate.p_value >= smallest_p(len(deltas)) * (1 - 1e-12)


def test_zero_spread_gives_no_decisive_verdict_at_two_seeds() -> None:
    """The issue's example: two identical differences used to make a point interval that
    'held'. The exact test gives p = 0.5 and no bounded interval: no data of 2 pairs decide."""
    estimate = paired_difference([0.0, 0.0], [0.5, 0.5])
    assert estimate.p_value == 0.5
    assert (estimate.low, estimate.high) == (-math.inf, math.inf)
    assert verdict_of(estimate, "above") == "inconclusive: cannot decide at 2 seeds"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_below_six_pairs_no_difference_is_decided_whatever_the_data(n: int) -> None:
    estimate = paired_difference([0.0] * n, [1.0 + i for i in range(n)])
    assert estimate.p_value > 0.05
    assert verdict_kind(verdict_of(estimate, "above")) == "inconclusive"
    assert verdict_of(estimate, "above") == f"inconclusive: cannot decide at {estimate.samples}"


def test_a_case_the_plan_leaves_untested_is_a_kind_of_its_own() -> None:
    """Not "inconclusive": no test ran, so the report groups it apart ("No verdict, by the
    plan's rule"), by this kind alone."""
    assert verdict_kind(NO_VERDICT) == NO_VERDICT
    assert verdict_kind("inconclusive: cannot decide at 2 seeds") == "inconclusive"
    assert verdict_kind("equivalent within +-0.01") == "equivalent"


def test_six_pairs_on_one_side_decide_and_the_interval_excludes_zero() -> None:
    estimate = paired_difference([0.0] * 6, [0.3, 0.5, 0.2, 0.6, 0.4, 0.1])
    assert estimate.p_value == pytest.approx(2 / 64)
    assert 0 < estimate.low <= estimate.effect <= estimate.high
    assert verdict_of(estimate, "above") == "supports"
    assert verdict_of(estimate, "below") == "contradicts"


def test_one_seed_against_makes_six_pairs_inconclusive() -> None:
    """The stability pilot: five differences of 0.523 and one of 0 (exact p = 0.0625)."""
    estimate = paired_difference([0.0] * 6, [0.523] * 5 + [0.0])
    assert estimate.p_value == pytest.approx(0.0625)
    assert estimate.low <= 0 <= estimate.high
    assert verdict_of(estimate, "above") == "inconclusive at 6 seeds"


def test_the_interval_bounds_are_where_the_test_starts_to_reject() -> None:
    deltas = [0.5, 0.4, 0.6, 0.3, 0.5, 0.45, 0.2, -0.1, 0.3, 0.4]
    estimate = paired_difference([0.0] * 10, deltas)
    step = 1e-6
    for bound, outward in ((estimate.low, -step), (estimate.high, step)):
        assert reference_sign_flip_p([d - bound + outward for d in deltas]) <= 0.05 or (
            reference_sign_flip_p([d - (bound + outward) for d in deltas]) <= 0.05
        )
        assert reference_sign_flip_p([d - (bound - outward) for d in deltas]) > 0.05


def test_equivalence_when_the_differences_are_tight_around_zero() -> None:
    """All six differences exactly 0 (the no-warm-up case of the stability pilot) are
    'equivalent', not lumped with 'too few seeds'."""
    estimate = paired_difference([1.0] * 6, [1.0] * 6, sesoi=0.1)
    assert estimate.p_value == 1.0
    assert estimate.p_equivalence == pytest.approx(1 / 64)
    assert verdict_of(estimate, "above") == "equivalent within ±0.1"
    without_margin = paired_difference([1.0] * 6, [1.0] * 6)
    assert verdict_of(without_margin, "above") == "inconclusive at 6 seeds"


def test_a_detectable_but_trivial_difference_is_equivalent() -> None:
    deltas = [0.01, 0.012, 0.009, 0.011, 0.01, 0.013, 0.008, 0.01]
    estimate = paired_difference([0.0] * 8, deltas, sesoi=0.05)
    assert estimate.p_value <= 0.05 and estimate.p_equivalence <= 0.05
    assert verdict_of(estimate, "above") == "equivalent within ±0.05"
    assert verdict_of(paired_difference([0.0] * 8, deltas, sesoi=0.005), "above") == "supports"


def test_the_four_verdicts() -> None:
    base = [0.0] * 8
    assert verdict_of(paired_difference(base, [1.0 + i / 10 for i in range(8)]), "above") == (
        "supports"
    )
    assert verdict_of(paired_difference(base, [-1.0 - i / 10 for i in range(8)]), "above") == (
        "contradicts"
    )
    assert verdict_kind(verdict_of(paired_difference(base, [0.0] * 8, sesoi=1.0), "above")) == (
        "equivalent"
    )
    mixed = paired_difference(base, [1.0, -1.0, 2.0, -2.0, 0.5, -0.4, 0.3, -0.3], sesoi=0.01)
    assert verdict_of(mixed, "above") == "inconclusive at 8 seeds"


def test_holm_against_its_definition() -> None:
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted: 0.01*4, 0.03*3, 0.04*2, 0.2*1, then made non-decreasing
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="p-values"):
        holm([1.5])


def test_holm_family_raises_the_seeds_an_exact_test_needs() -> None:
    assert pairs_needed() == 6
    assert pairs_needed(family=2) == 7
    assert pairs_needed(family=4) == 8
    assert pairs_needed(family=7) == 9
    assert pairs_needed(family=1, sided=1) == 5


def test_an_adjusted_p_value_and_the_family_decide_the_verdict() -> None:
    estimate = paired_difference([0.0] * 6, [0.3, 0.5, 0.2, 0.6, 0.4, 0.1])
    assert verdict_of(estimate, "above") == "supports"
    adjusted = holm([estimate.p_value, 0.5])[0]
    # two primary endpoints: 6 pairs can no longer reach p <= 0.05 after Holm
    assert verdict_of(estimate, "above", p_value=adjusted, family=2) == (
        "inconclusive: cannot decide at 6 seeds"
    )


def test_the_t_interval_of_many_chains_is_students() -> None:
    rng = np.random.default_rng(0)
    deltas = rng.normal(0.2, 1.0, size=400)
    estimate = t_difference(np.zeros(400), deltas)
    half = stats.t.ppf(0.975, 399) * deltas.std(ddof=1) / math.sqrt(400)
    assert (estimate.low, estimate.high) == pytest.approx(
        (deltas.mean() - half, deltas.mean() + half)
    )
    assert estimate.p_value == pytest.approx(stats.ttest_1samp(deltas, 0.0).pvalue)
    flat = t_difference([0.0] * 5, [1.0] * 5)  # no spread: no interval, no verdict
    assert not flat.estimated
    assert verdict_kind(verdict_of(flat, "above")) == "inconclusive"


def test_pitman_morgan_bounds_are_where_the_correlation_test_rejects_at_5_percent() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    candidate = 0.5 * base + rng.normal(scale=0.3, size=8)
    estimate = variance_ratio(base, candidate)
    assert estimate.effect == pytest.approx(candidate.var(ddof=1) / base.var(ddof=1))
    assert estimate.low < estimate.effect < estimate.high
    for theta in (estimate.low, estimate.high):
        u = candidate + math.sqrt(theta) * base
        v = candidate - math.sqrt(theta) * base
        assert stats.pearsonr(u, v).pvalue == pytest.approx(0.05, rel=1e-6)


def test_variance_ratio_verdicts() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=30)
    quieter = variance_ratio(base, 0.2 * base + rng.normal(scale=0.05, size=30), sesoi=2.0)
    assert quieter.high < 1 and verdict_of(quieter, "below") == "supports"
    same = variance_ratio(base, base + rng.normal(scale=0.01, size=30), sesoi=2.0)
    assert verdict_of(same, "below") == "equivalent within x/2"
    assert verdict_kind(verdict_of(variance_ratio([1.0, 2.0], [2.0, 1.0]), "below")) == (
        "inconclusive"
    )
    flat = variance_ratio([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])  # no spread in one sample
    assert verdict_of(flat, "below") == "inconclusive: cannot decide at 3 seeds"


def test_verdicts_count_chains_for_a_simulation() -> None:
    estimate = Estimate(0.1, -0.2, 0.4, 500, "paired t-interval", p_value=0.4, unit="chain")
    assert verdict_of(estimate, "below") == "inconclusive at 500 chains"


def test_bad_samples_are_rejected() -> None:
    with pytest.raises(ValueError, match="finite numbers"):
        paired_difference([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal sizes"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="sesoi"):
        paired_difference([1.0], [1.0], sesoi=0.0)
    with pytest.raises(ValueError, match="sesoi"):
        variance_ratio([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], sesoi=0.5)


def test_differences_of_accuracies_that_tie_exactly_count_as_ties() -> None:
    """Accuracies in images of 360: subtracted as decimals, differences of equal image counts
    differ in their last bits, and sign patterns that tie with the observed mean were missed
    (p 0.828125 instead of the exact 0.90625)."""
    base = [331, 346, 336, 336, 346, 349, 352, 335]
    cand = [334, 349, 334, 332, 348, 352, 352, 332]
    images = [c - b for b, c in zip(base, cand, strict=True)]
    estimate = paired_difference([b / 360 for b in base], [c / 360 for c in cand])
    assert estimate.p_value == reference_sign_flip_p([float(k) for k in images]) == 0.90625


def test_below_six_pairs_not_even_equivalence_is_decided() -> None:
    """All-zero differences at 5 pairs used to be "equivalent" with an unbounded interval."""
    estimate = paired_difference([0.9] * 5, [0.9] * 5, sesoi=0.01)
    assert (estimate.low, estimate.high) == (-math.inf, math.inf)
    assert verdict_of(estimate, "above") == "inconclusive: cannot decide at 5 seeds"
    six = paired_difference([0.9] * 6, [0.9] * 6, sesoi=0.01)
    assert verdict_of(six, "above") == "equivalent within ±0.01"


def test_difference_and_equivalence_p_values_are_one_holm_family() -> None:
    from torch_lookahead_lab.claims import Case, _adjust

    close = paired_difference([0.0] * 10, [0.001 * (-1) ** i for i in range(10)], sesoi=0.01)
    apart = paired_difference([0.0] * 10, [0.3 + 0.01 * i for i in range(10)], sesoi=0.01)
    cases = [Case("a", "", close, "x"), Case("b", "", apart, "x")]
    pooled = holm([close.p_value, apart.p_value, close.p_equivalence, apart.p_equivalence])
    adjusted = _adjust(cases)
    assert [c.adjusted for c in adjusted] == [(pooled[0], pooled[2]), (pooled[1], pooled[3])]
    assert [c.family for c in adjusted] == [4, 4]


def test_the_reading_says_the_k_alpha_claim_is_holm_adjusted() -> None:
    from torch_lookahead_lab.report import reading

    text = reading()
    assert "tested at the unadjusted 5% and" not in text
    assert "except the (k, alpha) claim, whose settings are Holm-adjusted" in text
