"""The stability experiment: the training rule, the largest learning rate that trains, warm-up,
the Transformer task, and ``torch-lookahead stability`` end to end on a tiny plan."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from torch_lookahead_lab import cli, experiments, stability
from torch_lookahead_lab.console import QUICK_NOTICE, QUICK_REPORT_NOTICE
from torch_lookahead_lab.models import CharTransformer
from torch_lookahead_lab.runner import RunConfig, RunResult, make_config
from torch_lookahead_lab.stability import (
    STABILITY,
    StabilityPlan,
    StabilityResults,
    largest_lr_that_trains,
    stability_claims,
    stability_configs,
    training_threshold,
    trains,
)
from torch_lookahead_lab.tasks import get_task, lr_multiplier

GRID = (0.01, 0.1, 1.0)


def _result(
    lr: float, final: float | None, *, seed: int = 0, k: int | None = None, warmup: int = 0,
    diverged_at: int | None = None,
) -> RunResult:  # fmt: skip
    config = RunConfig(
        task="charlm-transformer", inner="adam", lr=lr, seed=seed, steps=10, eval_every=10,
        batch_size=2, k=k, alpha=0.5 if k else None, warmup_steps=warmup,
    )  # fmt: skip
    return RunResult(config, [0, 10], {"val_bpc": [8.0, final]}, diverged_at)


def test_a_run_trains_below_the_threshold_and_without_a_non_finite_loss() -> None:
    assert trains(_result(0.1, 3.0), "val_bpc", 3.5)
    assert trains(_result(0.1, 3.5), "val_bpc", 3.5)
    assert not trains(_result(0.1, 3.6), "val_bpc", 3.5)
    assert not trains(_result(0.1, None), "val_bpc", 3.5)  # a non-finite final value
    # a run that diverged does not train, even if its last recorded value was low
    assert not trains(_result(0.1, 3.0, diverged_at=7), "val_bpc", 3.5)


def test_the_threshold_is_the_best_run_that_did_not_diverge_plus_the_margin() -> None:
    runs = [_result(0.01, 3.2), _result(0.1, 2.0, diverged_at=3), _result(1.0, None)]
    assert training_threshold(runs, "val_bpc", 0.5) == pytest.approx(3.7)
    with pytest.raises(ValueError, match="every run diverged"):
        training_threshold([_result(1.0, None)], "val_bpc", 0.5)


def test_the_largest_learning_rate_that_trains() -> None:
    # not the largest of a contiguous range: the largest of any that trains
    runs = [_result(0.01, 3.0), _result(0.1, 5.0), _result(1.0, 3.2)]
    assert largest_lr_that_trains(runs, "val_bpc", 3.5, GRID) == pytest.approx(0.0)
    runs = [_result(0.01, 3.0), _result(0.1, 3.4), _result(1.0, 9.0)]
    assert largest_lr_that_trains(runs, "val_bpc", 3.5, GRID) == pytest.approx(-1.0)
    # none trains: one grid step (a decade here) below the smallest learning rate
    runs = [_result(lr, 9.0) for lr in GRID]
    assert largest_lr_that_trains(runs, "val_bpc", 3.5, GRID) == pytest.approx(-3.0)
    assert largest_lr_that_trains([], "val_bpc", 3.5, (0.3,)) == pytest.approx(math.log10(0.03))


def _lab(shift: int, seeds: int = 3) -> StabilityResults:
    """Adam trains up to GRID[0], Lookahead up to GRID[shift], on every seed; noise per seed."""
    plan = dataclasses.replace(STABILITY, lrs=GRID, warmups=(0,), seeds=seeds)
    runs = []
    for seed in range(seeds):
        for index, lr in enumerate(GRID):
            good = 3.0 + 0.01 * seed
            runs.append(_result(lr, good if index == 0 else 9.0, seed=seed))
            runs.append(_result(lr, good if index <= shift else 9.0, seed=seed, k=5))
    return StabilityResults(plan, "torch-lookahead stability", runs)


def test_the_claim_is_supported_when_lookahead_trains_at_larger_learning_rates_on_6_seeds() -> None:
    edge, per_lr = stability_claims(_lab(shift=1, seeds=6))
    assert edge.key == "stability_lr_range"
    (case,) = edge.cases
    assert case.verdict == "supports"
    assert case.estimate is not None and case.estimate.effect == pytest.approx(1.0)
    assert per_lr.cases[1].verdict == "supports"  # lr 0.1: Lookahead trains, Adam does not
    assert per_lr.cases[0].verdict != "supports"  # lr 0.01: both train equally
    assert stability.PAPER_STABILITY in edge.paper


def test_zero_spread_at_3_seeds_decides_nothing_and_equal_edges_are_equivalent() -> None:
    """Every seed identical (the discrete outcome of a grid) gets no shortcut: 3 seeds cannot
    decide a difference; 6 identical seeds at the same edge are equivalent within the SESOI."""
    edge, _ = stability_claims(_lab(shift=1))
    assert edge.cases[0].verdict == "inconclusive: cannot decide at 3 seeds"
    edge, _ = stability_claims(_lab(shift=0, seeds=6))
    assert edge.cases[0].verdict == f"equivalent within ±{stability.EDGE_SESOI:g}"
    edge, _ = stability_claims(_lab(shift=1, seeds=1))
    assert edge.cases[0].verdict == "inconclusive: cannot decide at 1 seed"


def test_linear_warm_up_then_the_schedule() -> None:
    warm = lr_multiplier("constant", 100, warmup_steps=4)
    assert warm is not None
    assert [warm(s) for s in (0, 1, 3, 4, 99)] == pytest.approx([0.25, 0.5, 1.0, 1.0, 1.0])
    cosine_warm = lr_multiplier("cosine", 300, warmup_steps=10)
    cosine = lr_multiplier("cosine", 300)
    assert cosine_warm is not None and cosine is not None
    assert cosine_warm(4) == pytest.approx(0.5 * cosine(4))
    assert cosine_warm(150) == pytest.approx(cosine(150))
    assert lr_multiplier("cosine", 300, warmup_steps=0) is not None
    assert lr_multiplier("constant", 300, warmup_steps=0) is None
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_multiplier("constant", 10, warmup_steps=-1)
    settings = get_task("charlm-transformer").quick
    with pytest.raises(ValueError, match="warmup_steps must be between 0"):
        make_config("digits", "adam", seed=0, settings=settings, warmup_steps=settings.steps + 1)


def test_the_transformer_is_causal() -> None:
    torch.manual_seed(0)
    model = CharTransformer(d_model=16, heads=4, layers=2, context=8)
    tokens = torch.randint(0, 256, (2, 8))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 256
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert before.shape == (2, 8, 256)
    assert torch.equal(before[:, :5], after[:, :5])  # positions before 5 never see 5 on
    assert not torch.equal(before[:, 5:], after[:, 5:])


def test_the_preset_covers_the_grid_and_pairs_every_run() -> None:
    plan = STABILITY
    configs = stability_configs(plan)
    assert len(configs) == len(plan.lrs) * len(plan.warmups) * plan.seeds * 2
    assert {c.warmup_steps for c in configs} == set(plan.warmups)
    assert {c.k for c in configs} == {None, plan.k}
    assert all(c.task == "charlm-transformer" and c.schedule == plan.schedule for c in configs)
    assert all(c.steps == get_task(plan.task).full.steps for c in configs)


@pytest.mark.slow  # seconds of training: the suite keeps under 2 minutes on 2 cores
def test_stability_command_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = StabilityPlan(
        task="charlm-transformer", inner="adam", k=2, alpha=0.5, lrs=(3e-3, 1.0),
        warmups=(3,), seeds=1, margin=0.5, quick=True,
    )  # fmt: skip
    monkeypatch.setattr(experiments, "STABILITY_QUICK", tiny)
    out = tmp_path / "stability"
    assert cli.main(["stability", "--quick", "--out", str(out), "--workers", "1"]) == 0
    assert {"report.md", "results.json", "stability.png", "runs"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4
    assert {r["config"]["warmup_steps"] for r in results["runs"]} == {3}
    assert [c["key"] for c in results["claims"]] == ["stability_lr_range", "stability_final"]
    assert set(results["largest_log10_lr"]) == {"plain/warmup3", "lookahead/warmup3"}
    report = (out / "report.md").read_text()
    assert stability.PAPER_STABILITY in report
    assert "Produced by `torch-lookahead " in report
    for claim in results["claims"]:
        assert all(case["verdict"] in report for case in claim["cases"])
    printed = capsys.readouterr().out
    # A quick run says so and prints no verdict; its report opens with the same notice.
    assert QUICK_NOTICE in printed and "inconclusive" not in printed
    assert report.splitlines()[2] == f"> {QUICK_REPORT_NOTICE}"
    # a second run reuses every run
    assert cli.main(["stability", "--quick", "--out", str(out), "--workers", "1"]) == 0
    assert "4 runs, 4 from a cache" in (out / "report.md").read_text()


def test_stability_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stability", "--help"]) == 0
    printed = capsys.readouterr().out
    assert "Usage" in printed and "--quick" in printed and "warm-up" in printed
    assert cli.main(["--help"]) == 0
    assert "stability" in capsys.readouterr().out
