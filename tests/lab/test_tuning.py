"""The demo's tuned protocol (equal trials over each method's own space, the grid-extension
rule) and the schedule as a declared factor, on the committed plan and on hand-made runs."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from torch_lookahead_lab import experiments
from torch_lookahead_lab.claims import NO_VERDICT, final_quality_claim, pair_by_inner
from torch_lookahead_lab.experiments import Experiment, LabResults, demo_experiment
from torch_lookahead_lab.metrics import summarize
from torch_lookahead_lab.plans import ClaimPlan, load_plan, plan_from_mapping, plan_settings
from torch_lookahead_lab.report import build_claims
from torch_lookahead_lab.reproduce import is_reference
from torch_lookahead_lab.runner import RunConfig, RunResult


def _methods(configs: Sequence[RunConfig]) -> dict[tuple[str, bool], set[RunConfig]]:
    """Each (inner, Lookahead or not)'s distinct settings (configurations without the seed)."""
    settings: dict[tuple[str, bool], set[RunConfig]] = {}
    for config in configs:
        key = (config.inner, config.uses_lookahead)
        settings.setdefault(key, set()).add(dataclasses.replace(config, seed=-1))
    return settings


@pytest.mark.parametrize("quick", [False, True])
def test_each_method_gets_the_same_number_of_trials_over_its_own_space(quick: bool) -> None:
    """The plain inner optimizer tunes its learning rate, Lookahead (lr, k, alpha), with as many
    trials each, over the same learning rates and the same selection seeds."""
    experiment = demo_experiment(quick)
    factors = load_plan("demo").data["quick" if quick else "lr_factors"]
    count = len(factors["lr_factors"] if quick else factors)
    methods = _methods(experiment.tuning)
    assert set(methods) == {(i, la) for i in ("sgd", "adamw") for la in (False, True)}
    for inner in ("sgd", "adamw"):
        plain, wrapped = methods[(inner, False)], methods[(inner, True)]
        assert len(plain) == len(wrapped) == count
        assert {s.lr for s in plain} == {s.lr for s in wrapped}
        assert {(s.k, s.alpha) for s in wrapped} != {(5, 0.5)}  # k and alpha are tuned too
        assert all(s.k is None for s in plain)
    selection = {c.seed for c in experiment.lr_sweep}
    assert {c.seed for c in experiment.tuning} == selection
    assert not selection & {c.seed for c in experiment.compare}


def test_a_plan_with_unequal_trials_is_refused() -> None:
    tuning = dict(load_plan("demo").data["tuning"])
    tuning["lookahead"] = tuning["lookahead"][:-1]
    with pytest.raises(ValueError, match="as many trials as lr_factors"):
        experiments._tuning_trials(tuning, (1 / 9, 1 / 3, 1.0, 3.0, 9.0))


def test_lookaheads_trials_are_the_declared_draw() -> None:
    """The plan's (k, alpha) per learning rate is what its stated draw gives: nobody chose them
    after seeing a result."""
    plan = load_plan("demo")
    for part in (plan_settings(plan, quick=False), plan_settings(plan, quick=True)):
        trials = part["tuning"]["lookahead"]
        draw = part["tuning"]["draw"]
        rng = random.Random(draw["seed"])
        ks = rng.sample(draw["ks"] * 2, len(trials))
        alphas = rng.sample(draw["alphas"] * 2, len(trials))
        assert [(t["k"], t["alpha"]) for t in trials] == list(zip(ks, alphas, strict=True))
        assert [t["lr_factor"] for t in trials] == part["lr_factors"]


def _run(config: RunConfig, accuracy: Callable[[RunConfig], float]) -> RunResult:
    """A hand-made run whose final validation and test accuracy is ``accuracy(config)`` (a
    little noise by seed), its losses falling with it."""
    value = accuracy(config) + 0.0005 * (config.seed % 3)
    history: dict[str, list[float | None]] = {
        "train_loss": [2.3, 1.0 - value],
        "val_loss": [2.3, 1.0 - value],
        "val_accuracy": [0.1, value],
        "test_accuracy": [0.1, value],
    }
    return RunResult(config, [0, config.steps], history)


def _tiny_experiment(max_extensions: int) -> Experiment:
    """sgd plain at 3 learning rates, Lookahead at 3 points of (lr, k, alpha), 2 selection
    seeds, 6 comparison seeds."""

    def config(lr: float, seed: int, k: int | None = None, alpha: float | None = None) -> Any:
        return RunConfig("digits", "sgd", lr, seed, 10, 10, 8, k, alpha, schedule="cosine")

    lrs = (0.01, 0.03, 0.09)
    points = ((0.01, 10, 0.8), (0.03, 20, 0.3), (0.09, 5, 0.5))
    tuning = [config(lr, seed) for lr in lrs for seed in (100, 101)] + [
        config(lr, seed, k, alpha) for lr, k, alpha in points for seed in (100, 101)
    ]
    return Experiment(
        "tiny", "digits", lr_sweep=tuple(tuning), tuning=tuple(tuning),
        tuned_seeds=tuple(range(6)), selection_metric="val_accuracy", selection_tie=0.002,
        extension_factor=3.0, max_extensions=max_extensions,
    )  # fmt: skip


def _fake_runs(
    monkeypatch: pytest.MonkeyPatch, accuracy: Callable[[RunConfig], float]
) -> list[list[RunConfig]]:
    """Replace the computation of jobs by hand-made runs; returns the batches asked for."""
    batches: list[list[RunConfig]] = []

    def fake(jobs: Sequence[RunConfig], cache_dir: Any, **_: Any) -> tuple[list[Any], int]:
        batches.append(list(jobs))
        return [_run(job, accuracy) for job in jobs], 0

    monkeypatch.setattr(experiments, "run_many_counted", fake)
    return batches


def _lab(experiment: Experiment, tmp_path: Path) -> LabResults:
    lab = experiments.run_experiment(experiment, tmp_path, command="test")
    assert isinstance(lab, LabResults)
    return dataclasses.replace(lab, plan=None)


def test_a_selection_at_the_edge_is_extended_until_interior(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lookahead's best trial is its largest learning rate: it gets one more at 3x with the
    same k and alpha; that one is worse, so the optimum is interior and the case is tested.
    The plain optimizer's optimum is interior from the start and gets no extension."""

    def accuracy(config: RunConfig) -> float:
        if config.uses_lookahead:
            return {0.01: 0.90, 0.03: 0.92, 0.09: 0.95, 0.27: 0.93}[round(config.lr, 6)]
        return {0.01: 0.90, 0.03: 0.96, 0.09: 0.94}[round(config.lr, 6)]

    batches = _fake_runs(monkeypatch, accuracy)
    experiment = _tiny_experiment(max_extensions=2)
    lab = _lab(experiment, tmp_path)
    extension = batches[1]
    assert {(round(c.lr, 6), c.k, c.alpha) for c in extension} == {(0.27, 5, 0.5)}
    assert {c.seed for c in extension} == {100, 101}
    assert len(batches) == 3  # the first stage, one extension, the tuned runs
    assert experiment.extension_configs(lab.tuning) == []
    assert {(r.config.lr, r.config.k) for r in lab.tuned} == {(0.03, None), (0.09, 5)}
    (case,) = _tuned_claim(lab, "after 2 extensions").cases
    assert case.verdict != NO_VERDICT and case.estimate is not None


def test_an_optimum_still_at_the_edge_after_the_extensions_gets_no_verdict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lookahead's accuracy rises with the learning rate everywhere: two extensions (0.27,
    0.81), then no more, and the tuned case gets no verdict and says why."""

    def accuracy(config: RunConfig) -> float:
        if config.uses_lookahead:
            return 0.80 + 0.1 * config.lr
        return {0.01: 0.90, 0.03: 0.96, 0.09: 0.94}[round(config.lr, 6)]

    batches = _fake_runs(monkeypatch, accuracy)
    lab = _lab(_tiny_experiment(max_extensions=2), tmp_path)
    assert [sorted({round(c.lr, 6) for c in batch}) for batch in batches[1:3]] == [
        [0.27],
        [0.81],
    ]
    assert len(batches) == 4
    wrapped = [s for s in summarize(lab.tuning) if s.setting.uses_lookahead]
    assert len(wrapped) == 5  # 3 trials of the design and 2 extensions
    (case,) = _tuned_claim(lab, "after 2 extensions").cases
    assert case.verdict == NO_VERDICT and case.estimate is None
    assert case.caveat == (
        "lookahead(sgd)'s selected learning rate, 0.81, is the largest of its 5 trials after 2 "
        "extensions (lookahead(sgd))"
    )
    # Without the rule (a flag-made sweep) the case is tested and the edge only noted.
    noted = _tuned_claim(lab, "")
    assert noted.cases[0].estimate is not None and "a wider sweep" in noted.notes[0]


def test_without_extensions_an_edge_optimum_gets_no_verdict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """max 0: nothing is extended; the smallest-edge optimum of the plain optimizer."""

    def accuracy(config: RunConfig) -> float:
        return 0.95 - config.lr if not config.uses_lookahead else 0.9 + 0.3 * config.lr

    batches = _fake_runs(monkeypatch, accuracy)
    lab = _lab(_tiny_experiment(max_extensions=0), tmp_path)
    assert len(batches) == 2
    (case,) = _tuned_claim(lab, "after 0 extensions").cases
    assert case.verdict == NO_VERDICT and "the smallest of its 3 trials" in case.caveat


def _tuned_claim(lab: LabResults, words: str) -> Any:
    """The tuned claim, each method's edge words ``words`` and its name (none: no rule)."""
    methods = {s.method for s in summarize(lab.tuning)}
    edge_rule = {method: f"{words} ({method})" for method in methods} if words else {}
    return final_quality_claim(
        pair_by_inner(summarize(lab.tuned)) or _own_pairs(lab.tuned), "test_accuracy",
        protocol="tuned", key="final_tuned", title="tuned",
        plan=ClaimPlan("descriptive", "test_accuracy", 0.01), grid=summarize(lab.tuning),
        edge_rule=edge_rule,
    )  # fmt: skip


def _own_pairs(runs: Sequence[RunResult]) -> list[Any]:
    summaries = summarize(runs)
    plain = [s for s in summaries if not s.setting.uses_lookahead]
    wrapped = [s for s in summaries if s.setting.uses_lookahead]
    return list(zip(plain, wrapped, strict=True))


def test_the_schedule_is_a_declared_factor_of_the_default_protocol() -> None:
    """The default protocol runs under the task's schedule and under each other schedule of the
    plan, on the same seeds; every other part uses the task's; only the task's schedule gives
    reference runs."""
    experiment = demo_experiment()
    plan = load_plan("demo").data["schedules"]["factor"]
    assert plan == ["cosine", "constant"]
    assert {c.schedule for c in experiment.compare} == {"cosine"}
    assert {c.schedule for c in experiment.schedule_compare} == {"constant"}
    assert [dataclasses.replace(c, schedule="cosine") for c in experiment.schedule_compare] == (
        list(experiment.compare)
    )
    others = (*experiment.rescaled, *experiment.lr_sweep, *experiment.tuning, *experiment.k_alpha)
    assert {c.schedule for c in others} == {"cosine"}
    constant = next(c for c in experiment.schedule_compare if c.seed == experiment.compare[0].seed)
    first = experiment.compare[0].seed
    assert is_reference(dataclasses.asdict(constant), None, first) is False
    cosine = dataclasses.replace(constant, schedule="cosine")
    assert is_reference(dataclasses.asdict(cosine), None, first)


def test_the_schedule_claim_is_built_and_records_its_schedule() -> None:
    """A comparison under another schedule becomes its own claim, with its schedule, beside the
    default protocol's."""
    runs, constant = [], []
    for seed in range(6):
        for k in (None, 5):
            config = RunConfig("digits", "sgd", 0.05, seed, 10, 10, 8, k, 0.5 if k else None,
                               schedule="cosine")  # fmt: skip
            runs.append(
                _run(config, lambda c: 0.95 - (0.01 + 0.0007 * (c.seed % 2)) * (c.k is not None))
            )
            constant.append(_run(dataclasses.replace(config, schedule="constant"), lambda c: 0.93))
    # The plan without its bootstrap over test images: these hand-made runs record none.
    data = {k: v for k, v in load_plan("demo").data.items() if k != "example_bootstrap"}
    lab = LabResults("t", "t", "digits", "val_accuracy", True, compare=runs,
                     schedule_compare=constant, plan=plan_from_mapping("demo", data))  # fmt: skip
    claims = {c.key: c for c in build_claims(lab)}
    assert claims["final_default"].schedule == "cosine"
    assert claims["final_default_constant"].schedule == "constant"
    assert claims["final_default_constant"].role == "descriptive"
    assert "constant learning rate" in claims["final_default_constant"].protocol
    assert claims["final_default_constant"].cases[0].verdict.startswith("equivalent")
