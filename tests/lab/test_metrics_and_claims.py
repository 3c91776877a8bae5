"""Summaries over seeds and the claims generated from them, on hand-made results."""

from __future__ import annotations

import math

import pytest

from torch_lookahead_lab.claims import (
    combined_verdict,
    convergence_claim,
    final_quality_claim,
    fmt,
    k_alpha_claim,
    lr_robustness_claim,
    nqm_claim,
    pair_by_inner,
    seed_variance_claim,
    tuned_pairs,
)
from torch_lookahead_lab.experiments import LabResults
from torch_lookahead_lab.metrics import (
    area_under_curve,
    final_value,
    mean_and_std,
    seed_band,
    summarize,
    value_at,
)
from torch_lookahead_lab.nqm import NQMPoint
from torch_lookahead_lab.report import build_claims, summary_rows
from torch_lookahead_lab.runner import RunConfig, RunResult


def result(
    seed: int,
    train: list[float | None],
    *,
    inner: str = "sgd",
    lr: float = 0.1,
    k: int | None = None,
    alpha: float | None = None,
    val: list[float | None] | None = None,
    accuracy: float = 0.9,
    diverged_at: int | None = None,
) -> RunResult:
    steps = [10 * i for i in range(len(train))]
    config = RunConfig("digits", inner, lr, seed, steps[-1], 10, 8, k, alpha)
    history = {
        "train_loss": train,
        "val_loss": val if val is not None else train,
        "val_accuracy": [0.1] + [accuracy] * (len(train) - 1),
    }
    return RunResult(config, steps, history, diverged_at)


def test_mean_and_std_measure_no_spread_from_one_seed() -> None:
    assert mean_and_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    mean, std = mean_and_std([4.0])
    assert mean == 4.0 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_and_std([1.0, None]))


def test_run_values_count_a_diverged_run_as_untrained() -> None:
    run = result(0, [2.0, 1.0, 0.5, 0.25])
    assert final_value(run, "train_loss") == 0.25
    assert value_at(run, "train_loss", 15) == 0.5
    # trapezoids: (2+1)/2 + (1+0.5)/2 + (0.5+0.25)/2 = 2.625 over 30 steps of 10
    assert area_under_curve(run) == pytest.approx(2.625 * 10 / 30)
    diverged = result(0, [2.0, 1.0, None], diverged_at=20)
    diverged.config = RunConfig("digits", "sgd", 0.1, 0, 40, 10, 8)
    assert final_value(diverged, "train_loss") == 2.0
    assert value_at(diverged, "train_loss", 30) == 2.0
    # steps 0, 10, 20, 40 with values 2, 1, 2 (diverged), 2 (extended to the budget)
    assert area_under_curve(diverged) == pytest.approx((1.5 * 10 + 1.5 * 10 + 2.0 * 20) / 40)


def test_summaries_group_seeds_and_print_no_spread_for_one_seed() -> None:
    runs = [result(1, [2.0, 0.3]), result(0, [2.0, 0.1]), result(0, [2.0, 0.2], k=5, alpha=0.5)]
    plain, lookahead = summarize(runs)
    assert plain.seeds == (0, 1) and lookahead.seeds == (0,)
    assert plain.final["train_loss"] == pytest.approx((0.2, math.sqrt(0.02)))
    assert lookahead.method == "lookahead(sgd)"
    _, rows = summary_rows([plain, lookahead], "val_accuracy")
    assert "±" in rows[0][5] and "±" not in "".join(rows[1])


def test_seed_band_spans_the_seeds_and_stops_at_a_divergence() -> None:
    runs = [result(0, [3.0, 1.0, 0.5]), result(1, [3.0, 2.0, None])]
    band = seed_band(runs, "train_loss")
    assert band.steps == (0, 10)
    assert band.mean == (3.0, 1.5)
    assert band.low == (3.0, 1.0) and band.high == (3.0, 2.0)


def paired(plain: list[float], lookahead: list[float], **kwargs: object) -> list[RunResult]:
    """Runs whose final training and validation loss are the given values, one per seed."""
    return [result(i, [2.0, v], **kwargs) for i, v in enumerate(plain)] + [  # type: ignore[arg-type]
        result(i, [2.0, v], k=5, alpha=0.5, **kwargs)  # type: ignore[arg-type]
        for i, v in enumerate(lookahead)
    ]


def claim_of(runs: list[RunResult]):  # type: ignore[no-untyped-def]
    pairs = pair_by_inner(summarize(runs))
    return final_quality_claim(pairs, "val_loss", False, protocol="default: test", key="k")


def test_final_quality_verdicts_follow_the_interval() -> None:
    better = claim_of(paired([0.30, 0.40, 0.35], [0.20, 0.31, 0.24]))
    assert better.verdict == "holds"
    assert "95% CI" in better.measured[0] and "paired t-interval, 3 seeds" in better.measured[0]
    worse = claim_of(paired([0.20, 0.31, 0.24], [0.30, 0.40, 0.35]))
    assert worse.verdict == "does not hold"
    noisy = claim_of(paired([0.30, 0.20, 0.35], [0.20, 0.31, 0.30]))
    assert noisy.verdict == "inconclusive at 3 seeds"
    assert "seeds would decide it at this spread" in noisy.measured[0]


def test_one_seed_gives_no_interval_and_no_verdict() -> None:
    lab = LabResults(
        "t", "c", "digits", "val_accuracy", True,
        compare=paired([0.3], [0.2]), lr_sweep=paired([0.3], [0.2]) + paired([0.2], [0.1], lr=1.0),
    )  # fmt: skip
    claims = build_claims(lab)
    assert {c.key for c in claims} >= {"final_default", "final_tuned", "seed_variance"}
    for claim in claims:
        assert claim.verdict == "inconclusive at 1 seed", claim
        assert all("± 0" not in sentence for sentence in claim.measured)


def test_convergence_reads_the_area_under_the_training_loss() -> None:
    fast = [result(s, [2.0, 0.5 + s / 10, 0.1]) for s in range(3)]
    slow = [result(s, [2.0, 1.5 + s / 20, 0.1], k=5, alpha=0.5) for s in range(3)]
    claim = convergence_claim(pair_by_inner(summarize(fast + slow)), protocol="p", key="c")
    assert claim.verdict == "does not hold"  # same final loss, slower on the way
    assert "training loss, Lookahead minus plain, at step 6" in claim.notes[0]


def test_seed_variance_needs_three_pairs_and_reads_the_ratio() -> None:
    few = seed_variance_claim(
        pair_by_inner(summarize(paired([0.1, 0.3], [0.2, 0.21]))), protocol="p"
    )
    assert few.verdict == "inconclusive at 2 seeds"
    plain = [0.1, 0.5, 0.2, 0.6, 0.3, 0.45, 0.15, 0.55]
    quiet = [0.3 + (v - 0.35) / 20 for v in plain]
    claim = seed_variance_claim(pair_by_inner(summarize(paired(plain, quiet))), protocol="p")
    assert claim.verdict == "holds"
    assert "Pitman-Morgan" in claim.measured[0]


def test_lr_robustness_averages_over_the_grid_per_seed() -> None:
    runs = []
    for lr, plain_acc, lookahead_acc in [(0.01, 0.9, 0.92), (0.1, 0.97, 0.96), (1.0, 0.1, 0.8)]:
        for seed, shift in enumerate((0.0, 0.01, -0.01)):
            runs.append(result(seed, [2.0, 1.0], lr=lr, accuracy=plain_acc + shift))
            runs.append(result(seed, [2.0, 1.0], lr=lr, k=5, alpha=0.5, accuracy=lookahead_acc))
    claim = lr_robustness_claim(summarize(runs), "val_accuracy", True, protocol="p")
    assert claim.verdict == "holds"
    assert "averaged over 3 learning rates from 0.01 to 1" in claim.measured[0]
    flipped = lr_robustness_claim(summarize(runs), "val_accuracy", False, protocol="p")
    assert flipped.verdict == "does not hold"
    tuned = tuned_pairs(summarize(runs), "val_accuracy", True)
    assert [(p.setting.lr, la.setting.lr) for p, la in tuned] == [(0.1, 0.1)]


def test_k_alpha_spread_is_compared_with_the_learning_rate_spread() -> None:
    sweep, grid = [], []
    for seed in range(3):
        for lr, accuracy in [(0.01, 0.5), (0.1, 0.97), (1.0, 0.2)]:
            sweep.append(result(seed, [2.0, 1.0], lr=lr, accuracy=accuracy + seed / 100))
        grid.append(result(seed, [2.0, 1.0], accuracy=0.97))
        for k, accuracy in [(5, 0.96), (10, 0.965), (20, 0.95 + seed / 100)]:
            grid.append(result(seed, [2.0, 1.0], k=k, alpha=0.5, accuracy=accuracy))
    claim = k_alpha_claim(summarize(grid), summarize(sweep), "val_accuracy", protocol="p")
    assert claim.verdict == "holds"
    assert "over 3 (k, alpha) settings" in claim.measured[0]
    assert "seed noise for scale" in claim.measured[1]
    alone = k_alpha_claim(summarize(grid), [], "val_accuracy", protocol="p")
    assert alone.verdict == "not measured" and "no learning-rate sweep" in alone.notes[0]


def test_nqm_claim_reads_the_interval_over_chains() -> None:
    good = NQMPoint(0.5, 2.0, 2.02, 1.5, 1.49, 1.0, 100, -0.6, -0.46)
    unclear = NQMPoint(0.6, 2.0, 2.0, 1.9, 1.99, 1.0, 100, -0.05, 0.03)
    assert nqm_claim([good], 5, 0.5).verdict == "holds"
    claim = nqm_claim([good, unclear], 5, 0.5)
    assert claim.verdict == "holds for lr 0.5; inconclusive at 100 chains for lr 0.6"
    assert "largest relative error of the excess loss over the noise floor 10%" in claim.notes[0]


def test_combined_verdicts_and_numbers() -> None:
    assert combined_verdict([]) == "not measured"
    assert fmt(None) == "n/a" and fmt(math.nan) == "n/a" and fmt(0.123456) == "0.1235"
