"""Summaries over seeds and the claims generated from them, on hand-made results."""

from __future__ import annotations

import math

import pytest

from torch_lookahead.lab.claims import (
    convergence_claim,
    fmt,
    k_alpha_claim,
    lr_robustness_claim,
    nqm_claim,
    seed_variance_claim,
    verdict,
)
from torch_lookahead.lab.metrics import mean_and_std, seed_band, steps_to_target, summarize
from torch_lookahead.lab.nqm import NQMPoint
from torch_lookahead.lab.runner import RunConfig, RunResult


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
) -> RunResult:
    steps = [10 * i for i in range(len(train))]
    config = RunConfig("digits", inner, lr, seed, steps[-1], 10, 8, k, alpha)
    history = {
        "train_loss": train,
        "val_loss": val if val is not None else train,
        "val_accuracy": [accuracy] * len(train),
    }
    return RunResult(config, steps, history)


def test_mean_and_std() -> None:
    assert mean_and_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    assert mean_and_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in mean_and_std([1.0, None]))
    assert all(math.isnan(v) for v in mean_and_std([1.0, math.inf]))


def test_steps_to_target_is_the_first_evaluation_at_or_below_it() -> None:
    run = result(0, [2.0, 0.5, 0.09, 0.2, 0.01])
    assert steps_to_target(run, 0.1) == 20
    assert steps_to_target(run, 0.5) == 10
    assert steps_to_target(run, 0.001) is None


def test_summaries_group_seeds_of_a_setting() -> None:
    runs = [result(1, [2.0, 0.3]), result(0, [2.0, 0.1]), result(0, [2.0, 0.2], k=5, alpha=0.5)]
    plain, lookahead = summarize(runs, target_loss=0.15)
    assert plain.seeds == (0, 1) and lookahead.seeds == (0,)
    assert plain.final["train_loss"] == pytest.approx((0.2, math.sqrt(0.02)))
    assert plain.steps_to_target == (10, None)
    assert plain.mean_steps_to_target() is None
    assert lookahead.method == "lookahead(sgd)"


def test_seed_band_spans_the_seeds_and_stops_at_a_divergence() -> None:
    runs = [result(0, [3.0, 1.0, 0.5]), result(1, [3.0, 2.0, None])]
    band = seed_band(runs, "train_loss")
    assert band.steps == (0, 10)
    assert band.mean == (3.0, 1.5)
    assert band.low == (3.0, 1.0) and band.high == (3.0, 2.0)


def test_verdicts() -> None:
    assert verdict([True, True]) == "holds"
    assert verdict([False]) == "does not hold"
    assert verdict([True, False, True]) == "holds in 2 of 3 cases"
    assert verdict([]) == "not measured"
    assert fmt(None) == "n/a" and fmt(math.nan) == "n/a" and fmt(0.123456) == "0.1235"


def pair(plain_finals: list[float], lookahead_finals: list[float]) -> list[RunResult]:
    return [result(i, [2.0, v]) for i, v in enumerate(plain_finals)] + [
        result(i, [2.0, v], k=5, alpha=0.5) for i, v in enumerate(lookahead_finals)
    ]


def test_seed_variance_claim_follows_the_measured_spread() -> None:
    holds = seed_variance_claim(summarize(pair([0.1, 0.3], [0.2, 0.21]), 0.15))
    assert holds.verdict == "holds"
    assert "0.141 plain, 0.00707 with Lookahead" in holds.measured[0]
    fails = seed_variance_claim(summarize(pair([0.2, 0.21], [0.1, 0.3]), 0.15))
    assert fails.verdict == "does not hold"
    one_seed = seed_variance_claim(summarize(pair([0.2], [0.1]), 0.15))
    assert one_seed.verdict == "not measured"
    assert one_seed.measured == ("sgd: needs at least 2 seeds; not measured.",)


def test_convergence_claim_compares_steps_to_the_target() -> None:
    faster = [result(0, [2.0, 1.0, 0.1]), result(0, [2.0, 0.1, 0.1], k=5, alpha=0.5)]
    assert convergence_claim(summarize(faster, 0.1)).verdict == "holds"
    slower = [result(0, [2.0, 0.1, 0.1]), result(0, [2.0, 1.0, 0.1], k=5, alpha=0.5)]
    claim = convergence_claim(summarize(slower, 0.1))
    assert claim.verdict == "does not hold"
    assert "10 plain, 20 with Lookahead" in claim.measured[0]
    never = [result(0, [2.0, 0.1]), result(0, [2.0, 1.0], k=5, alpha=0.5)]
    assert (
        "not reached by 1 of 1 seeds with Lookahead"
        in convergence_claim(summarize(never, 0.1)).measured[0]
    )


def test_lr_robustness_claim_averages_over_the_grid() -> None:
    runs = []
    for lr, plain_acc, lookahead_acc in [(0.01, 0.9, 0.92), (0.1, 0.97, 0.96), (1.0, 0.1, 0.8)]:
        runs.append(result(0, [2.0, 1.0], lr=lr, accuracy=plain_acc))
        runs.append(result(0, [2.0, 1.0], lr=lr, k=5, alpha=0.5, accuracy=lookahead_acc))
    claim = lr_robustness_claim(summarize(runs, 0.1), "val_accuracy", higher_is_better=True)
    assert claim.verdict == "holds"
    assert "as good or better at 2 of 3 learning rates" in claim.measured[0]
    assert "best learning rate gave 0.97 (lr 0.1) plain and 0.96 (lr 0.1) with" in claim.measured[0]
    flipped = lr_robustness_claim(summarize(runs, 0.1), "val_accuracy", higher_is_better=False)
    assert flipped.verdict == "does not hold"


def test_k_alpha_claim_allows_the_inner_optimizers_seed_noise() -> None:
    runs = [result(0, [2.0, 1.0], accuracy=0.95), result(1, [2.0, 1.0], accuracy=0.97)]
    runs += [result(0, [2.0, 1.0], k=k, alpha=0.5, accuracy=a) for k, a in [(5, 0.955), (10, 0.99)]]
    claim = k_alpha_claim(summarize(runs, 0.1), "val_accuracy", higher_is_better=True)
    assert claim.verdict == "holds"
    runs.append(result(0, [2.0, 1.0], k=20, alpha=0.5, accuracy=0.9))
    claim = k_alpha_claim(summarize(runs, 0.1), "val_accuracy", higher_is_better=True)
    assert claim.verdict == "does not hold"
    assert "2 of 3 (k, alpha) settings" in claim.measured[0]


def test_nqm_claim_reads_the_simulation() -> None:
    good = NQMPoint(0.5, 2.0, 2.02, 1.5, 1.49, floor=1.0)
    bad = NQMPoint(0.6, 2.0, 2.0, 1.9, 2.1, floor=1.0)
    assert nqm_claim([good], 5, 0.5).verdict == "holds"
    claim = nqm_claim([good, bad], 5, 0.5)
    assert claim.verdict == "holds in 1 of 2 cases"
    assert "largest relative error of the excess loss 22%" in claim.measured[1]
