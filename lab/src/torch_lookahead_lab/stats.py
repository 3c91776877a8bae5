"""Effects, exact tests and the four verdicts of the lab.

Runs of the lab that share a seed share the model initialisation and the minibatch order, so a
plain run and a Lookahead run of the same seed form a pair. The outcomes are few (3 to 10 seeds)
and often discrete (an accuracy moves in steps of one image), so the lab does not lean on
normal approximations:

* a difference of paired values is tested with the **exact paired sign-flip (permutation)
  test** of the mean per-seed difference: each of the ``2^n`` sign patterns of the differences
  is equally likely when the methods do not differ; they are enumerated up to 16 pairs (ties
  within rounding count as ties) and sampled beyond (``scipy.stats.permutation_test`` with
  ``permutation_type="samples"``). Its 95% interval is the set of shifts ``d``
  the two-sided test of ``mean(delta - d) = 0`` does not reject (found by bisection). With ``n``
  pairs the smallest attainable two-sided p-value is ``2^(1-n)``: below 6 pairs no difference
  can reach p < 0.05, whatever the data, and a sample with zero spread gets no shortcut (two
  identical differences give p = 0.5 and an unbounded interval);
* a ratio of the variances of paired samples uses the Pitman-Morgan test: the variances of ``x``
  and ``y`` are in ratio ``theta`` exactly when ``y + sqrt(theta) x`` and ``y - sqrt(theta) x``
  are uncorrelated (``scipy.stats.pearsonr``), and inverting it gives the interval
  ``F (K -+ sqrt(K^2 - 1))`` (``F`` the ratio of sample variances, ``r`` the sample correlation,
  ``K = 1 + 2 (1 - r^2) t^2 / (n - 2)``, ``t`` the 97.5% quantile of Student's t with ``n - 2``
  degrees of freedom);
* a paired t-interval, for the simulated chains of the noisy quadratic model (hundreds of
  continuous samples);
* Holm's step-down adjustment across a report's primary endpoints;
* the **two-way paired bootstrap** (``two_way_bootstrap``) of a mean difference measured per
  seed *and* per test example (a run's correctness on each test image): the seeds and,
  independently, the test examples are resampled with replacement, the same examples for both
  methods (both are evaluated on the same images), and the mean difference is recomputed per
  resample. The seed-level test treats the test examples as fixed: it speaks of other seeds on
  these images; the two-way bootstrap adds the sampling error of the images. Its 95% interval
  is the percentile one; its p-values are the shares of resamples on the far side of the
  hypothesised value (two-sided: twice the smaller tail), with one added to both counts. For
  crossed designs the two-way bootstrap overstates the variance by about the interaction's
  share (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat. 1(2)): it errs on the
  conservative side. A fixed generator seed makes it deterministic.

Every claim declares a smallest effect of interest (SESOI): ``+-sesoi`` around no effect for a
difference, a factor ``[1/sesoi, sesoi]`` around 1 for a ratio. Equivalence is the two one-sided
tests (TOST) against those bounds. The verdict of a case is one of four:

* **supports**: the test of no effect rejects at the level and the effect lies on the side the
  paper predicts;
* **contradicts**: it rejects, and the effect lies on the other side;
* **equivalent within +-SESOI**: both one-sided tests reject (checked first: a difference that
  is detectable but smaller than the SESOI is a trivial one);
* **inconclusive**: neither.

"cannot decide at n seeds" comes before all of them when no data of this size could reach the
level with the two-sided test (its smallest attainable p-value, times the Holm family, is above
it): below 6 pairs no verdict is given, not even equivalence.

A case a plan's rule leaves untested (a selected learning rate still at the edge of its
trials) has the verdict ``NO_VERDICT``, a kind of its own.

No observed-power "seeds needed" figure is given: the number of seeds is a plan's decision,
made before the data (``pairs_needed``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

__all__ = [
    "CONFIDENCE",
    "LEVEL",
    "NO_VERDICT",
    "Estimate",
    "Favours",
    "bootstrap_draws",
    "holm",
    "monte_carlo_se",
    "paired_difference",
    "pairs_needed",
    "smallest_p",
    "t_difference",
    "two_way_bootstrap",
    "two_way_means",
    "variance_ratio",
    "verdict_kind",
    "verdict_of",
]

LEVEL = 0.05
# The verdict of a case that is not tested (the tuned protocol's grid-extension rule).
NO_VERDICT = "no verdict"
CONFIDENCE = 1 - LEVEL
# Beyond this many pairs the sign-flip distribution is sampled (fixed generator) not enumerated.
_EXACT_PAIRS = 16
_SAMPLED_FLIPS = 20_000

Favours = Literal["above", "below"]


@dataclass(frozen=True)
class Estimate:
    """An effect over ``n`` pairs with its 95% interval and the p-values of its tests.

    ``null`` is "no effect" (0 for a difference, 1 for a ratio). ``p_value``: the two-sided
    test of ``effect == null``; ``p_equivalence``: the larger p-value of the two one-sided tests
    against ``null -+ sesoi`` (a difference) or ``1/sesoi`` and ``sesoi`` (a ratio), NaN
    without a SESOI. ``low``/``high`` are infinite when no data of size ``n`` could exclude a
    value, NaN when nothing could be estimated. ``smallest_p``: the smallest two-sided p-value
    the test can give at this ``n`` (0 when it is not discrete). ``p_value_se`` and
    ``p_equivalence_se``: the Monte Carlo standard errors of the p-values where resampling
    estimates them (``monte_carlo_se``), NaN where a test computes them.
    """

    effect: float
    low: float
    high: float
    n: int
    method: str
    null: float = 0.0
    sesoi: float | None = None
    p_value: float = math.nan
    p_equivalence: float = math.nan
    smallest_p: float = 0.0
    unit: str = "seed"  # what the n samples are: seeds, or chains of a simulation
    p_value_se: float = math.nan
    p_equivalence_se: float = math.nan

    @property
    def estimated(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def samples(self) -> str:
        """``5 seeds``, ``1 seed``."""
        return f"{self.n} {self.unit}{'s' if self.n != 1 else ''}"

    def equivalence_text(self) -> str:
        """``+-0.01`` for a difference, ``x/2`` for a ratio."""
        if self.sesoi is None:
            return ""
        return f"x/{self.sesoi:g}" if self.null == 1.0 else f"±{self.sesoi:g}"


def _clean(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a flat sequence of finite numbers, got {values!r}")
    return array


def _pairs(baseline: Sequence[float], candidate: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    base = _clean(baseline, "baseline")
    cand = _clean(candidate, "candidate")
    if base.size != cand.size:
        raise ValueError(f"paired samples need equal sizes, got {base.size} and {cand.size}")
    return base, cand


def smallest_p(n: int, sided: int = 2) -> float:
    """The smallest p-value the exact sign-flip test can give with ``n`` pairs: ``2^(1-n)``
    two-sided, ``2^-n`` one-sided (every difference on one side)."""
    if sided not in (1, 2):
        raise ValueError(f"sided must be 1 or 2, got {sided}")
    return min(1.0, sided * 0.5**n) if n > 0 else 1.0


def pairs_needed(level: float = LEVEL, family: int = 1, sided: int = 2) -> int:
    """The fewest pairs at which the exact sign-flip test can reject at ``level`` after Holm
    over ``family`` endpoints (the first step tests at ``level / family``)."""
    if not 0 < level < 1 or family < 1:
        raise ValueError(f"need 0 < level < 1 and family >= 1, got {level} and {family}")
    n = 1
    while smallest_p(n, sided) > level / family:
        n += 1
    return n


def _sign_flip_p(deltas: np.ndarray, alternative: str) -> float:
    """The exact sign-flip p-value of ``mean(deltas) == 0`` (sampled beyond 16 pairs; 1 for
    fewer than 2 pairs, which scipy does not test: no decision is possible there anyway).

    Enumerated, a pattern's sum ties with the observed one within ``1e-12`` of ``sum |deltas|``:
    differences of decimals (accuracies in steps of 1/360) carry rounding errors far above
    scipy's tie tolerance, so a pattern that ties exactly in the data would otherwise not count
    and the p-value would be too small."""
    if deltas.size < 2:
        return 1.0
    if deltas.size <= _EXACT_PAIRS:
        signs = 1 - 2 * ((np.arange(2**deltas.size)[:, None] >> np.arange(deltas.size)) & 1)
        sums = signs @ deltas
        observed = float(deltas.sum())
        tie = 1e-12 * float(np.abs(deltas).sum())
        greater = float(np.mean(sums >= observed - tie))
        less = float(np.mean(sums <= observed + tie))
        if alternative == "greater":
            return greater
        if alternative == "less":
            return less
        return min(1.0, 2.0 * min(greater, less))
    result = stats.permutation_test(
        (deltas,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=_SAMPLED_FLIPS,
        alternative=alternative,
        rng=np.random.default_rng(0),
    )
    return float(result.pvalue)


def _boundary(rejects: Callable[[float], bool], inside: float, outside: float) -> float:
    """Bisect between a value the test keeps (``inside``) and one it rejects (``outside``)."""
    for _ in range(60):
        middle = 0.5 * (inside + outside)
        if middle in (inside, outside):
            break
        if rejects(middle):
            outside = middle
        else:
            inside = middle
    return inside


def paired_difference(
    baseline: Sequence[float], candidate: Sequence[float], *, sesoi: float | None = None
) -> Estimate:
    """``mean(candidate - baseline)`` over pairs, with the exact sign-flip test, its 95%
    interval and, with a ``sesoi``, the equivalence test against ``+-sesoi``."""
    if sesoi is not None and not (math.isfinite(sesoi) and sesoi > 0):
        raise ValueError(f"sesoi must be a positive finite number or None, got {sesoi}")
    base, cand = _pairs(baseline, candidate)
    deltas = cand - base
    n = int(deltas.size)
    method = "exact sign-flip test (paired)"
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, method, sesoi=sesoi, smallest_p=1.0)
    effect = float(deltas.mean())
    p_value = _sign_flip_p(deltas, "two-sided")
    p_equivalence = math.nan
    if sesoi is not None:
        p_equivalence = max(
            _sign_flip_p(deltas + sesoi, "greater"), _sign_flip_p(deltas - sesoi, "less")
        )
    floor = smallest_p(n) if n <= _EXACT_PAIRS else 0.0
    if floor > LEVEL:
        low, high = -math.inf, math.inf
    else:
        scale = float(np.ptp(deltas)) + abs(effect) + 1.0

        def rejects(shift: float) -> bool:
            return _sign_flip_p(deltas - shift, "two-sided") <= LEVEL

        # Bisection stops within rounding of the boundary: snap it to 10 digits of the scale.
        low = round(_boundary(rejects, effect, float(deltas.min()) - scale) / scale, 10) * scale
        high = round(_boundary(rejects, effect, float(deltas.max()) + scale) / scale, 10) * scale
    return Estimate(
        effect, low, high, n, method, 0.0, sesoi, p_value, p_equivalence, floor
    )  # fmt: skip


def t_difference(baseline: Sequence[float], candidate: Sequence[float]) -> Estimate:
    """``mean(candidate - baseline)`` over many paired samples with Student's t-interval
    (for the noisy quadratic model's chains: hundreds of continuous samples)."""
    base, cand = _pairs(baseline, candidate)
    deltas = cand - base
    n = int(deltas.size)
    method = "paired t-interval"
    if n < 2:
        effect = float(deltas.mean()) if n else math.nan
        return Estimate(effect, math.nan, math.nan, n, method)
    effect = float(deltas.mean())
    scale = float(deltas.std(ddof=1)) / math.sqrt(n)
    if scale == 0.0:  # no spread: no interval, and no verdict from it
        return Estimate(effect, math.nan, math.nan, n, method)
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=effect, scale=scale)
    p_value = float(2 * stats.t.sf(abs(effect) / scale, n - 1))
    return Estimate(effect, float(low), float(high), n, method, p_value=p_value)


def _pitman_morgan_factor(n: int, correlation: float) -> float:
    """``K + sqrt(K^2 - 1)``: the interval of the ratio is ``[F / factor, F * factor]``."""
    t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 2))
    k = 1.0 + 2.0 * (1.0 - correlation**2) * t**2 / (n - 2)
    return k + math.sqrt(k * k - 1.0)


def _pitman_morgan_p(base: np.ndarray, cand: np.ndarray, theta: float, alternative: str) -> float:
    """The Pitman-Morgan test of ``var(cand) / var(base) == theta``: ``alternative`` "less"
    (ratio below theta), "greater" or "two-sided"."""
    root = math.sqrt(theta)
    return float(stats.pearsonr(cand + root * base, cand - root * base, alternative=alternative)[1])


def variance_ratio(
    baseline: Sequence[float], candidate: Sequence[float], *, sesoi: float | None = None
) -> Estimate:
    """``var(candidate) / var(baseline)`` of paired samples with the Pitman-Morgan test and
    95% interval; with a ``sesoi`` (a factor above 1), equivalence within ``[1/sesoi, sesoi]``.
    It needs at least 3 pairs and a spread in both samples."""
    if sesoi is not None and not (math.isfinite(sesoi) and sesoi > 1):
        raise ValueError(f"sesoi of a ratio must be a finite factor above 1 or None, got {sesoi}")
    base, cand = _pairs(baseline, candidate)
    n = int(base.size)
    method = "Pitman-Morgan test (paired)"
    nothing = Estimate(math.nan, math.nan, math.nan, n, method, 1.0, sesoi, smallest_p=1.0)
    if n < 3:
        return nothing
    base_var, cand_var = float(base.var(ddof=1)), float(cand.var(ddof=1))
    if base_var == 0.0 or cand_var == 0.0:
        return nothing
    ratio = cand_var / base_var
    correlation = float(np.corrcoef(base, cand)[0, 1])
    if not math.isfinite(correlation) or abs(correlation) >= 1.0:
        return nothing
    factor = _pitman_morgan_factor(n, correlation)
    p_value = _pitman_morgan_p(base, cand, 1.0, "two-sided")
    p_equivalence = math.nan
    if sesoi is not None:
        p_equivalence = max(
            _pitman_morgan_p(base, cand, sesoi, "less"),
            _pitman_morgan_p(base, cand, 1.0 / sesoi, "greater"),
        )
    return Estimate(
        ratio, ratio / factor, ratio * factor, n, method, 1.0, sesoi, p_value, p_equivalence
    )


# Resamples are drawn this many at a time (the generator's stream depends on it: keep it) and
# summed this many at a time (memory: a sum chunk x test examples of float64).
_BOOTSTRAP_CHUNK = 500
_SUM_CHUNK = 5000


def bootstrap_draws(
    seeds: int, examples: int, resamples: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The resampled indices of ``two_way_means``, in chunks of at most 500 resamples: per
    chunk, the seed indices (chunk x ``seeds``) then the example indices (chunk x
    ``examples``), each uniform with replacement, from ``numpy.random.default_rng(seed)``."""
    for name, value in (("seeds", seeds), ("examples", examples), ("resamples", resamples)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, resamples - start)
        yield rng.integers(0, seeds, (size, seeds)), rng.integers(0, examples, (size, examples))


def _counts(indices: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` values occurs in each row of ``indices``."""
    rows = indices.shape[0]
    flat = (indices + size * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * size).reshape(rows, size)


@functools.lru_cache(maxsize=2)
def _draw_counts(seeds: int, examples: int, resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """Per resample of ``bootstrap_draws``: how often it drew each seed (resamples x seeds,
    float64) and each example (resamples x examples, the smallest unsigned integer type that
    holds ``examples``), read-only. Every case of a report with the same shape, resamples and
    generator seed draws the same indices, so they are drawn and counted once."""
    seed_counts = np.empty((resamples, seeds), dtype=np.float64)
    example_counts = np.empty((resamples, examples), dtype=np.min_scalar_type(examples))
    start = 0
    for seed_indices, example_indices in bootstrap_draws(seeds, examples, resamples, seed):
        stop = start + seed_indices.shape[0]
        seed_counts[start:stop] = _counts(seed_indices, seeds)
        example_counts[start:stop] = _counts(example_indices, examples)
        start = stop
    seed_counts.flags.writeable = False
    example_counts.flags.writeable = False
    return seed_counts, example_counts


def _score_matrix(values: np.ndarray | Sequence[Sequence[float]], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(
            f"{name} must be a non-empty seeds x examples array of finite numbers, "
            f"got shape {array.shape}"
        )
    return array


def two_way_means(differences: np.ndarray, *, resamples: int, seed: int) -> np.ndarray:
    """The bootstrap distribution of ``differences.mean()`` for a seeds x examples array of
    paired differences, seeds and examples resampled independently (``bootstrap_draws``).

    With seed counts ``w`` and example counts ``v`` of one resample, its mean is
    ``w @ differences @ v / (seeds * examples)``. For integer-valued differences (of
    correctness) with ``max |difference| * seeds * examples`` below ``2^53``, every product and
    partial sum of it is an integer below ``2^53`` in magnitude, so float64 arithmetic (BLAS) computes it exactly, in any order: the result is the same bit
    for bit on every machine. Other differences are summed in floats.

    Conservative: the resampled variance counts the seed-by-example residual about three
    times (Owen 2007, "The pigeonhole bootstrap"), so its 95% intervals cover more than 95%.
    Examples are resampled as independent: clusters of them (digits' writers) are not."""
    matrix = _score_matrix(differences, "differences")
    n, m = matrix.shape
    seed_counts, example_counts = _draw_counts(n, m, resamples, seed)
    sums = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _SUM_CHUNK):
        stop = min(start + _SUM_CHUNK, resamples)
        by_seed = seed_counts[start:stop] @ matrix  # chunk x examples
        weights = example_counts[start:stop].astype(np.float64)
        sums[start:stop] = np.einsum("ij,ij->i", by_seed, weights)
    sums /= n * m
    return sums


def monte_carlo_se(p_value: float, resamples: int, *, tails: int = 1) -> float:
    """The Monte Carlo standard error of a bootstrap p-value estimated from ``resamples``
    resamples: ``sqrt(p (1 - p) / B)`` for a share of resamples (``tails=1``), and
    ``2 sqrt(t (1 - t) / B)`` with ``t = p / 2`` for a two-sided p-value, twice a share
    (``tails=2``). At ``B`` = 100,000 a p-value of 0.05 has a standard error of 0.00069
    (one share) or 0.00099 (two-sided)."""
    if tails not in (1, 2):
        raise ValueError(f"tails must be 1 or 2, got {tails}")
    if not (isinstance(resamples, int) and resamples >= 1):
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if math.isnan(p_value):
        return math.nan
    share = min(1.0, p_value / tails)
    return tails * math.sqrt(share * (1.0 - share) / resamples)


def _tail_p(count: int, resamples: int) -> float:
    return min(1.0, (count + 1) / (resamples + 1))


def two_way_bootstrap(
    baseline: np.ndarray | Sequence[Sequence[float]],
    candidate: np.ndarray | Sequence[Sequence[float]],
    *,
    resamples: int,
    seed: int,
    sesoi: float | None = None,
) -> Estimate:
    """``mean(candidate - baseline)`` over seeds (rows) and test examples (columns), both
    methods scored on the same examples, with the two-way paired bootstrap (``two_way_means``):
    its 95% percentile interval, the two-sided p-value of no difference (twice the smaller
    share of resamples at or beyond 0) and, with a ``sesoi``, the equivalence p-value (the
    larger share of resamples at or beyond ``-sesoi`` and ``+sesoi``, on their far sides),
    each with its Monte Carlo standard error (``monte_carlo_se``)."""
    if sesoi is not None and not (math.isfinite(sesoi) and sesoi > 0):
        raise ValueError(f"sesoi must be a positive finite number or None, got {sesoi}")
    base = _score_matrix(baseline, "baseline")
    cand = _score_matrix(candidate, "candidate")
    if base.shape != cand.shape:
        raise ValueError(f"paired scores need equal shapes, got {base.shape} and {cand.shape}")
    differences = cand - base
    n, m = differences.shape
    means = two_way_means(differences, resamples=resamples, seed=seed)
    tie = 1e-12 * max(1.0, float(np.abs(differences).max()))
    at_or_below = int(np.count_nonzero(means <= tie))
    at_or_above = int(np.count_nonzero(means >= -tie))
    p_value = min(1.0, 2 * min(_tail_p(at_or_below, resamples), _tail_p(at_or_above, resamples)))
    p_equivalence = math.nan
    if sesoi is not None:
        p_equivalence = max(
            _tail_p(int(np.count_nonzero(means <= -sesoi + tie)), resamples),
            _tail_p(int(np.count_nonzero(means >= sesoi - tie)), resamples),
        )
    low, high = (float(q) for q in np.quantile(means, [LEVEL / 2, 1 - LEVEL / 2]))
    method = f"two-way paired bootstrap over seeds and {m} test examples, {resamples:,} resamples"
    return Estimate(
        float(differences.mean()), low, high, n, method, 0.0, sesoi, p_value, p_equivalence,
        smallest_p=min(1.0, 2 / (resamples + 1)),
        p_value_se=monte_carlo_se(p_value, resamples, tails=2),
        p_equivalence_se=monte_carlo_se(p_equivalence, resamples),
    )  # fmt: skip


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p-value times
    ``m - i + 1``, made non-decreasing, at most 1. Reject an endpoint when its adjusted p-value
    is at most the level; the family-wise error rate is then at most the level."""
    values = [float(p) for p in p_values]
    if any(not 0.0 <= p <= 1.0 for p in values):
        raise ValueError(f"p-values must lie in [0, 1], got {values}")
    m = len(values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=values.__getitem__)):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


def verdict_kind(verdict: str) -> str:
    """``supports``, ``contradicts``, ``equivalent``, ``NO_VERDICT`` (a case not tested) or
    ``inconclusive`` (for "cannot decide at n seeds" too)."""
    for kind in ("supports", "contradicts", "equivalent", NO_VERDICT):
        if verdict.startswith(kind):
            return kind
    return "inconclusive"


def verdict_of(
    estimate: Estimate,
    favours: Favours,
    *,
    p_value: float | None = None,
    p_equivalence: float | None = None,
    family: int = 1,
    level: float = LEVEL,
) -> str:
    """The verdict of one case (see the module's docstring). ``p_value``/``p_equivalence``:
    the Holm-adjusted p-values when the case is one of ``family`` primary endpoints (default:
    the estimate's own)."""
    p = estimate.p_value if p_value is None else p_value
    p_equal = estimate.p_equivalence if p_equivalence is None else p_equivalence
    if not math.isfinite(estimate.effect) or family * estimate.smallest_p > level:
        return f"inconclusive: cannot decide at {estimate.samples}"
    if estimate.sesoi is not None and math.isfinite(p_equal) and p_equal <= level:
        return f"equivalent within {estimate.equivalence_text()}"
    if math.isfinite(p) and p <= level and estimate.effect != estimate.null:
        above = estimate.effect > estimate.null
        return "supports" if above == (favours == "above") else "contradicts"
    return f"inconclusive at {estimate.samples}"
