"""Summaries over seeds and the claims generated from them, on hand-made results."""

from __future__ import annotations

import math

import pytest

from torch_lookahead_lab.claims import (
    Claim,
    best_lr,
    convergence_claim,
    final_quality_claim,
    fmt,
    holm_primary,
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
    steps_to_target,
    summarize,
    value_at,
)
from torch_lookahead_lab.nqm import NQMPoint
from torch_lookahead_lab.plans import ClaimPlan
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
    blown_up = result(0, [2.0, 1.0, 7.5])  # finite but worse than the untrained model
    assert final_value(blown_up, "train_loss") == 2.0
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


PRIMARY = ClaimPlan("primary", "val_loss", 0.01)


def claim_of(runs: list[RunResult], plan: ClaimPlan = PRIMARY) -> Claim:
    pairs = pair_by_inner(summarize(runs))
    return final_quality_claim(
        pairs, "val_loss", protocol="default: test", key="k", title="t", plan=plan
    )


def verdicts(claim: Claim) -> list[str]:
    return [case.verdict for case in claim.cases]


def test_final_quality_verdicts_follow_the_exact_test() -> None:
    plain = [0.30, 0.40, 0.35, 0.33, 0.38, 0.31, 0.36]
    better = claim_of(paired(plain, [v - 0.1 - i / 100 for i, v in enumerate(plain)]))
    assert verdicts(better) == ["supports"]
    assert "exact sign-flip test (paired), 7 seeds" in better.measured[0]
    assert better.cases[0].favours_text == "< 0"  # a lower loss favours Lookahead
    worse = claim_of(paired(plain, [v + 0.1 + i / 100 for i, v in enumerate(plain)]))
    assert verdicts(worse) == ["contradicts"]
    same = claim_of(paired(plain, [v + 0.001 for v in plain]))
    assert verdicts(same) == ["equivalent within ±0.01"]
    few = claim_of(paired([0.30, 0.40, 0.35], [0.20, 0.31, 0.24]))
    assert verdicts(few) == ["inconclusive: cannot decide at 3 seeds"]


def test_holm_across_the_primary_endpoints() -> None:
    """Six pairs on one side decide one endpoint (p = 2/64) but not two after Holm."""
    plain = [0.30, 0.40, 0.35, 0.33, 0.38, 0.31]
    runs = paired(plain, [v - 0.1 for v in plain])
    runs += paired(plain, [v - 0.1 for v in plain], inner="adamw")
    claim = claim_of(runs, ClaimPlan("primary", "val_loss"))  # no SESOI: no equivalence test
    assert verdicts(claim) == ["supports", "supports"]
    (adjusted,) = holm_primary([claim])
    assert verdicts(adjusted) == ["inconclusive: cannot decide at 6 seeds"] * 2
    assert adjusted.cases[0].adjusted == pytest.approx((4 / 64, 1.0))
    assert "Holm-adjusted 0.062" in adjusted.measured[0]
    # with a SESOI the family holds 4 tests: 6 pairs cannot decide, equivalence neither
    (with_margin,) = holm_primary([claim_of(runs)])
    assert verdicts(with_margin) == ["inconclusive: cannot decide at 6 seeds"] * 2
    descriptive = claim_of(runs, ClaimPlan("descriptive", "val_loss", 0.01))
    assert verdicts(holm_primary([descriptive])[0]) == ["supports", "supports"]


def test_one_seed_gives_no_interval_and_no_verdict() -> None:
    lab = LabResults(
        "t", "c", "digits", "val_accuracy", True,
        compare=paired([0.3], [0.2]), lr_sweep=paired([0.3], [0.2]) + paired([0.2], [0.1], lr=1.0),
    )  # fmt: skip
    claims = build_claims(lab)
    assert {c.key for c in claims} >= {"final_default", "final_tuned", "seed_variance"}
    for claim in claims:
        for case in claim.cases:
            assert case.verdict == "inconclusive: cannot decide at 1 seed", claim
        assert all("± 0" not in sentence for sentence in claim.measured)


def test_convergence_counts_steps_to_the_target_with_censoring() -> None:
    fast = [result(s, [2.0, 0.5, 0.1, 0.1]) for s in range(6)]
    slow = [
        result(s, [2.0, 1.5, 0.4, 0.3] if s else [2.0, 1.5, 0.9, 0.6], k=5, alpha=0.5)
        for s in range(6)
    ]
    assert steps_to_target(fast[0], "val_loss", 0.5) == 10
    assert steps_to_target(slow[1], "val_loss", 0.5) == 20
    assert steps_to_target(slow[0], "val_loss", 0.5) == 40  # censored: never reached
    claim = convergence_claim(
        pair_by_inner(summarize(fast + slow)), metric="val_loss", target=0.5, protocol="p",
        plan=ClaimPlan("descriptive", "steps", 5.0),
    )  # fmt: skip
    assert verdicts(claim) == ["contradicts"]
    assert "1 of 12 runs never reached it" in claim.measured[0]


def test_seed_variance_needs_three_pairs_and_reads_the_ratio() -> None:
    plan = ClaimPlan("descriptive", "val_loss", 2.0)
    few = seed_variance_claim(
        pair_by_inner(summarize(paired([0.1, 0.3], [0.2, 0.21]))), metric="val_loss",
        protocol="p", plan=plan,
    )  # fmt: skip
    assert verdicts(few) == ["inconclusive: cannot decide at 2 seeds"]
    plain = [0.1, 0.5, 0.2, 0.6, 0.3, 0.45, 0.15, 0.55]
    quiet = [0.3 + (v - 0.35) / 20 for v in plain]
    claim = seed_variance_claim(
        pair_by_inner(summarize(paired(plain, quiet))), metric="val_loss", protocol="p", plan=plan
    )
    assert verdicts(claim) == ["supports"]
    assert "Pitman-Morgan" in claim.measured[0]


def test_lr_robustness_is_the_width_within_delta_of_each_methods_best() -> None:
    runs = []
    for lr, plain_acc, lookahead_acc in [(0.01, 0.9, 0.955), (0.1, 0.97, 0.96), (1.0, 0.1, 0.8)]:
        for seed, shift in enumerate((0.0, 0.001, -0.001, 0.002, 0.0, 0.001)):
            runs.append(result(seed, [2.0, 1.0], lr=lr, accuracy=plain_acc + shift))
            runs.append(result(seed, [2.0, 1.0], lr=lr, k=5, alpha=0.5, accuracy=lookahead_acc))
    plan = ClaimPlan("descriptive", "log10_lr_width", 0.5)
    claim = lr_robustness_claim(
        summarize(runs), "val_accuracy", delta=0.01, protocol="p", plan=plan
    )
    # plain: only lr 0.1 within 0.01 of its best (width 0); Lookahead: 0.01 and 0.1 (width 1)
    assert claim.cases[0].estimate is not None and claim.cases[0].estimate.effect == 1.0
    assert verdicts(claim) == ["supports"]


def test_the_tuned_choice_breaks_near_ties_by_a_declared_rule() -> None:
    runs = []
    for lr, accuracy, loss in [(0.01, 0.970, 0.2), (0.1, 0.9705, 0.3), (1.0, 0.5, 1.0)]:
        runs += [result(s, [2.0, loss], lr=lr, accuracy=accuracy) for s in range(3)]
    summaries = summarize(runs)
    assert best_lr(summaries, "val_accuracy").setting.lr == 0.1  # strictly the best
    # within the tie band, the lower validation loss wins: no rounding can flip it
    assert best_lr(summaries, "val_accuracy", tie=0.002).setting.lr == 0.01
    assert tuned_pairs([summaries[0], *summarize(paired([0.3], [0.2]))[1:]])


def test_k_alpha_settings_each_against_plain_with_holm() -> None:
    grid = []
    for seed in range(10):
        grid.append(result(seed, [2.0, 1.0], accuracy=0.97 + seed / 1000))
        for alpha, shift in [(0.3, -0.05), (0.5, 0.0005), (0.8, 0.002 * (seed % 3 - 1))]:
            grid.append(
                result(seed, [2.0, 1.0], k=5, alpha=alpha, accuracy=0.97 + seed / 1000 + shift)
            )
    plan = ClaimPlan("descriptive", "val_accuracy", 0.01)
    claim = k_alpha_claim(summarize(grid), "val_accuracy", protocol="p", plan=plan)
    assert [case.label for case in claim.cases] == [
        "sgd k=5 alpha=0.3", "sgd k=5 alpha=0.5", "sgd k=5 alpha=0.8",
    ]  # fmt: skip
    assert verdicts(claim) == ["contradicts", "equivalent within ±0.01", "equivalent within ±0.01"]
    assert all(case.family == 6 for case in claim.cases)  # 3 difference, 3 equivalence tests
    assert "2 of 3 settings are at least equivalent" in claim.notes[0]


def test_the_nqm_is_one_implementation_check() -> None:
    good = NQMPoint(0.5, 2.0, 2.02, 1.5, 1.49, 1.0, 100, -0.6, -0.46)
    unclear = NQMPoint(0.6, 2.0, 2.0, 1.9, 1.99, 1.0, 100, -0.05, 0.03)
    passed = nqm_claim([good], 5, 0.5, tolerance=0.05)
    assert passed.role == "check" and len(passed.cases) == 1
    assert verdicts(passed) == ["check passed"]
    assert verdicts(nqm_claim([good, unclear], 5, 0.5, tolerance=0.05)) == ["check FAILED"]
    assert verdicts(nqm_claim([good], 5, 0.5, tolerance=0.001)) == ["check FAILED"]


def test_numbers() -> None:
    assert fmt(None) == "n/a" and fmt(math.nan) == "n/a" and fmt(0.123456) == "0.1235"
    assert fmt(math.inf) == "inf"
