"""The sweep's grid-extension rule: a method whose best learning rate is at an edge of the grid
gets more learning rates beyond it, a grid step apart, at most ``--extend-max``; where its
best, or a seed's learning-rate width, is still at the edge, the tuned comparison or the
robustness case gets no verdict and says why. On hand-made runs (no training)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.lab.test_tuning import _fake_runs
from tests.lab.test_tuning import _run as _made_run
from torch_lookahead_lab import cli
from torch_lookahead_lab.claims import NO_VERDICT, select_per_method, selection_edge
from torch_lookahead_lab.experiments import (
    Experiment,
    LabResults,
    parse_lr_range,
    run_experiment,
    sweep_experiment,
)
from torch_lookahead_lab.metrics import summarize
from torch_lookahead_lab.plans import plan_from_mapping
from torch_lookahead_lab.report import build_claims, summary_sentences, tuned_protocol
from torch_lookahead_lab.runner import RunConfig, RunResult
from torch_lookahead_lab.tasks import TaskSettings

TINY = TaskSettings(steps=4, eval_every=2, batch_size=8)
LRS = (0.01, 0.03, 0.09)  # a factor of 3 apart


def _sweep(**changes: Any) -> Experiment:
    """sgd plain and in Lookahead(k=5, alpha=0.5) at ``LRS`` over 2 seeds (and the (k, alpha)
    map's two runs per seed at the task's learning rate)."""
    changes = {"lrs": LRS, "ks": (5,), "alphas": (0.5,), **changes}
    return sweep_experiment("digits", ["sgd"], 2, TINY, **changes)


def _accuracy(plain: dict[float, float], lookahead: Callable[[float], float]) -> Any:
    """Final accuracy by learning rate; the (k, alpha) map's runs at the task's get 0.5."""

    def accuracy(config: RunConfig) -> float:
        if config.uses_lookahead:
            return lookahead(config.lr)
        return plain.get(round(config.lr, 6), 0.5)

    return accuracy


def _run(experiment: Experiment, tmp_path: Path) -> LabResults:
    lab = run_experiment(experiment, tmp_path, command="test")
    assert isinstance(lab, LabResults)
    return lab


def _lrs(lab: LabResults, lookahead: bool) -> list[float]:
    return sorted(
        {round(r.config.lr, 6) for r in lab.lr_sweep if r.config.uses_lookahead == lookahead}
    )


def _cases(lab: LabResults) -> dict[str, Any]:
    claims = {c.key: c for c in build_claims(lab)}
    return {key: claims[key].cases[0] for key in ("final_tuned", "lr_robustness")}


def test_an_optimum_at_an_edge_gets_grid_points_beyond_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lookahead's best is the largest learning rate: one more at 3x (the grid's step) with its
    k and alpha on the sweep's seeds, worse, so its optimum is interior. The plain optimizer's
    best is the smallest: one at 1/3x, worse. Both cases are then tested."""
    table = {0.09: 0.95, 0.27: 0.93}
    batches = _fake_runs(
        monkeypatch,
        _accuracy(
            {0.00333333: 0.92, 0.01: 0.95, 0.03: 0.93, 0.09: 0.90},
            lambda lr: table.get(round(lr, 6), 0.90),
        ),
    )
    lab = _run(_sweep(), tmp_path)
    (extension,) = batches[1:]
    assert {(round(c.lr, 8), c.k, c.alpha) for c in extension} == {
        (0.27, 5, 0.5),
        (0.00333333, None, None),
    }
    assert {c.seed for c in extension} == {0, 1}
    assert _lrs(lab, True) == [0.01, 0.03, 0.09, 0.27]
    assert _lrs(lab, False) == [0.003333, 0.01, 0.03, 0.09]
    cases = _cases(lab)
    assert cases["final_tuned"].estimate is not None
    assert cases["final_tuned"].verdict != NO_VERDICT
    assert cases["lr_robustness"].estimate is not None
    assert "sgd 4 (1 extension), lookahead(sgd) 4 (1 extension)" in tuned_protocol(lab)


def test_an_interior_optimum_gets_no_extension(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    batches = _fake_runs(
        monkeypatch,
        _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: 0.95 - abs(lr - 0.03)),
    )
    lab = _run(_sweep(), tmp_path)
    assert len(batches) == 1
    assert _lrs(lab, True) == _lrs(lab, False) == list(LRS)
    cases = _cases(lab)
    assert all(case.estimate is not None for case in cases.values())
    assert "sgd 3, lookahead(sgd) 3." in tuned_protocol(lab)


def test_an_optimum_still_at_the_edge_after_the_extensions_gets_no_verdict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lookahead's accuracy rises with the learning rate everywhere: two extensions (0.27,
    0.81), no more; its tuned case and its robustness (the width reaches the edge) get no
    verdict, and each says why."""
    batches = _fake_runs(
        monkeypatch,
        _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: 0.80 + 0.1 * lr),
    )
    lab = _run(_sweep(), tmp_path)
    assert [sorted({round(c.lr, 6) for c in batch}) for batch in batches[1:]] == [[0.27], [0.81]]
    cases = _cases(lab)
    tuned, robustness = cases["final_tuned"], cases["lr_robustness"]
    assert tuned.verdict == robustness.verdict == NO_VERDICT
    assert tuned.estimate is None and robustness.estimate is None
    assert tuned.caveat == (
        "lookahead(sgd)'s selected learning rate, 0.81, is the largest of its 5 trials after 2 "
        "extensions by 3x (the plan's most)"
    )
    assert robustness.caveat == (
        "lookahead(sgd)'s width reaches the largest of its 5 learning rates, 0.81, at seeds 0, 1 "
        "after 2 extensions by 3x (the plan's most): a width the grid cuts off is censored"
    )
    assert "sgd 3, lookahead(sgd) 5 (2 extensions)" in tuned_protocol(lab)


def test_a_quick_run_is_reported_by_the_rules_its_quick_part_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A plan whose quick part changes the extension's max and rule and the selection's rule:
    the quick run extended once (max 1), and its report states the quick part's rules and
    counts, not those of the plan's full part."""
    batches = _fake_runs(
        monkeypatch,
        _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: 0.80 + 0.1 * lr),
    )
    experiment = _sweep(max_extensions=1)
    assert experiment.plan is not None
    data = dict(experiment.plan.data)
    data["quick"] = {
        "tuning": {"extension": {"max": 1, "rule": "the quick part's extension rule"}},
        "selection": {"rule": "the quick part's selection rule"},
    }
    data["tuning"] = {"extension": {**data["tuning"]["extension"], "max": 2}}
    plan = plan_from_mapping("sweep", data)
    lab = _run(dataclasses.replace(experiment, plan=plan, quick=True), tmp_path)
    assert [sorted({round(c.lr, 6) for c in batch}) for batch in batches[1:]] == [[0.27]]
    protocol = tuned_protocol(lab)
    assert "by the rule: the quick part's selection rule;" in protocol
    assert "(factor 3, at most 1 per method): the quick part's extension rule." in protocol
    assert "sgd 3, lookahead(sgd) 4 (1 extension)" in protocol
    assert _cases(lab)["final_tuned"].caveat == (
        "lookahead(sgd)'s selected learning rate, 0.27, is the largest of its 4 trials after 1 "
        "extension by 3x (the plan's most)"
    )
    full = tuned_protocol(dataclasses.replace(lab, quick=False))
    assert "at most 2 per method): if a method's selected learning rate" in full


def test_a_width_cut_off_by_the_grid_is_censored_though_the_optimum_is_interior(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lookahead is best at 0.03 but within 0.01 of it at 0.09, the grid's largest: nothing is
    extended (its best is interior), the tuned case is tested, the robustness case is not."""
    table = {0.01: 0.90, 0.03: 0.96, 0.09: 0.955}
    _fake_runs(
        monkeypatch,
        _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: table.get(round(lr, 6), 0.5)),
    )
    cases = _cases(_run(_sweep(), tmp_path))
    assert cases["final_tuned"].estimate is not None
    assert cases["lr_robustness"].verdict == NO_VERDICT
    assert "reaches the largest of its 3 learning rates, 0.09, at seeds 0, 1" in (
        cases["lr_robustness"].caveat
    )


def test_the_plan_records_the_rule_and_its_factor_is_the_grids_spacing() -> None:
    default = sweep_experiment("digits", ["sgd", "adamw"], 3, TINY)  # the task's lr x 1/9 .. 9
    assert default.plan is not None
    extension = default.plan.data["tuning"]["extension"]
    assert (extension["factor"], extension["max"]) == (3.0, 2)
    assert "times (divided by) the factor, the grid's own spacing" in extension["rule"]
    assert default.plan.data["robustness_delta"] == 0.01
    assert (default.max_extensions, default.extension_factor) == (2, 3.0)
    assert default.later_jobs == 4 * 2 * 3  # 4 methods, 2 extensions each, 3 seeds
    wide = sweep_experiment("digits", ["adamw"], 3, TINY, lrs=parse_lr_range("1e-4:1e-1:7"))
    assert wide.plan is not None and wide.plan.data["tuning"]["extension"]["factor"] == 3.16228
    one = _sweep(max_extensions=1)
    assert one.plan is not None and one.plan.data["tuning"]["extension"]["max"] == 1
    # A grid not evenly spaced in log has no step to extend by: refused, unless extend-max is 0.
    with pytest.raises(ValueError, match="evenly spaced in log"):
        sweep_experiment("digits", ["sgd"], 2, TINY, lrs=(0.001, 0.01, 0.3))
    none = sweep_experiment("digits", ["sgd"], 2, TINY, lrs=(0.001, 0.01, 0.3), max_extensions=0)
    assert none.plan is not None
    assert none.plan.data["tuning"]["extension"]["max"] == none.max_extensions == 0


def test_the_command_writes_the_rule_into_plan_json_and_the_reason_into_the_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_runs(
        monkeypatch,
        _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: 0.80 + 0.1 * lr),
    )
    out = tmp_path / "sweep"
    flags = ["sweep", "--inner", "sgd", "--lr", "0.01:0.09:3", "--k", "5", "--alpha", "0.5",
             "--seeds", "2", "--workers", "1", "--out", str(out)]  # fmt: skip
    assert cli.main([*flags, "--extend-max", "1"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["tuning"]["extension"]["max"] == 1
    assert plan["tuning"]["extension"]["factor"] == 3.0
    report = " ".join((out / "report.md").read_text().split())
    assert "is the largest of its 4 trials after 1 extension by 3x (the plan's most)" in report
    assert "a width the grid cuts off is censored" in report
    assert "sgd 3, lookahead(sgd) 4 (1 extension)" in report
    # Its tuned comparison ran, on the seeds it compares on: the "cannot test" list says that.
    assert "no tuned protocol" not in report
    assert "selects each method's learning rate on the same seeds it compares on" in report
    capsys.readouterr()
    assert cli.main([*flags[:4], "0.001,0.01,0.3", *flags[5:]]) == 2
    assert "evenly spaced in log" in capsys.readouterr().out
    assert cli.main([*flags[:4], "0.01,0.01,0.03,0.09", *flags[5:]]) == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "0.01 more than once" in line


def test_a_width_that_reaches_an_edge_at_one_seed_is_censored_without_an_extension(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The plain optimizer is best at 0.03 in the mean, but at seed 1 alone 0.01, the grid's
    smallest, is within 0.01 of its best: nothing is extended (the rule follows the mean
    optimum), and the robustness case is censored, saying that no extension ran."""

    def accuracy(config: RunConfig) -> float:
        if config.uses_lookahead:
            return 0.95 - abs(config.lr - 0.03)
        smallest = 0.955 if config.seed == 1 else 0.90
        return {0.01: smallest, 0.03: 0.96, 0.09: 0.90}.get(round(config.lr, 6), 0.5)

    batches = _fake_runs(monkeypatch, accuracy)
    lab = _run(_sweep(), tmp_path)
    assert len(batches) == 1
    cases = _cases(lab)
    assert cases["final_tuned"].estimate is not None
    assert cases["lr_robustness"].verdict == NO_VERDICT
    assert cases["lr_robustness"].caveat == (
        "sgd's width reaches the smallest of its 3 learning rates, 0.01, at seed 1 after no "
        "extension (extensions follow the selected (mean) optimum only): a width the grid cuts "
        "off is censored"
    )


def test_with_extend_max_0_an_edge_optimum_gets_no_verdict_and_no_rule_it_cannot_apply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    batches = _fake_runs(
        monkeypatch,
        _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: 0.80 + 0.1 * lr),
    )
    experiment = _sweep(max_extensions=0)
    assert experiment.plan is not None
    assert experiment.plan.data["tuning"]["extension"]["rule"].startswith(
        "the plan extends no grid. "
    )
    lab = _run(experiment, tmp_path)
    assert len(batches) == 1
    claims = {c.key: c for c in build_claims(lab)}
    (tuned,) = claims["final_tuned"].cases
    assert tuned.verdict == NO_VERDICT and tuned.estimate is None
    assert tuned.caveat == (
        "lookahead(sgd)'s selected learning rate, 0.09, is the largest of its 3 trials (the plan "
        "extends no grid)"
    )
    assert claims["final_tuned"].notes == ()
    sentences = summary_sentences(list(claims.values()), "Scope.")
    assert "No verdict, by the plan's rule: final test accuracy, tuned protocol [sgd (" in (
        " ".join(sentences)
    )
    assert not any(s.startswith("Undecided") and "tuned protocol" in s for s in sentences)
    protocol = tuned_protocol(lab)
    assert "Grid extension: the plan extends no grid;" in protocol
    assert "times (divided by) the factor" not in protocol and "at most" not in protocol


def test_a_grid_of_one_learning_rate_records_no_extension_and_renders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_runs(monkeypatch, _accuracy({}, lambda lr: 0.9))
    out = tmp_path / "sweep"
    flags = ["sweep", "--inner", "sgd", "--lr", "0.03", "--k", "5", "--alpha", "0.5",
             "--seeds", "2", "--workers", "1", "--out", str(out)]  # fmt: skip
    assert cli.main(flags) == 0  # --extend-max 2, the default: nothing to extend
    extension = json.loads((out / "plan.json").read_text())["tuning"]["extension"]
    assert (extension["factor"], extension["max"]) == (None, 0)
    assert extension["rule"].startswith("the plan extends no grid. ")
    assert (out / "report.md").exists()


def _made(lr: float, seed: int, correct: int, val_loss: float) -> RunResult:
    """A run whose final validation accuracy is ``correct`` of 360 images."""
    config = RunConfig("digits", "sgd", lr, seed, 4, 2, 8, schedule="cosine")
    history: dict[str, list[float | None]] = {
        "train_loss": [2.3, val_loss], "val_loss": [2.3, val_loss],
        "val_accuracy": [0.1, correct / 360], "test_accuracy": [0.1, correct / 360],
    }  # fmt: skip
    return RunResult(config, [0, 4], history)


def test_equal_counts_of_correct_images_tie_exactly_whatever_the_float_sums() -> None:
    """0.03 and 0.09 get 934 images right over 3 seeds each (their float means differ in the
    last bit): a tie of 0.0 ties them, and the lower validation loss (0.03) is selected."""
    runs = [_made(0.01, seed, 200, 0.9) for seed in range(3)]
    runs += [_made(0.03, seed, c, 0.3) for seed, c in enumerate((309, 319, 306))]
    runs += [_made(0.09, seed, c, 0.5) for seed, c in enumerate((346, 304, 284))]
    ((chosen, group),) = select_per_method(summarize(runs), "val_accuracy", tie=0.0)
    assert chosen.setting.lr == 0.03 and selection_edge(chosen, group) is None


def test_an_exact_tie_of_means_and_losses_selects_the_smallest_learning_rate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lookahead's 0.03 and 0.09 tie in mean accuracy and loss: the plan's tie-break selects
    0.03, interior, so nothing is extended."""
    table = {0.01: 0.90, 0.03: 0.95, 0.09: 0.95}
    batches = _fake_runs(
        monkeypatch,
        _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: table.get(round(lr, 6), 0.5)),
    )
    lab = _run(_sweep(), tmp_path)
    assert len(batches) == 1
    assert "with Lookahead (lr 0.03, k=5, alpha=0.5)" in _cases(lab)["final_tuned"].what


def test_the_experiment_selects_and_extends_by_its_plan() -> None:
    """The tie, metric, max and factor the sweep runs with are the ones its plan states (a
    grid of one learning rate: max 0, no factor)."""
    for experiment in (_sweep(), _sweep(max_extensions=0), _sweep(lrs=(0.03,))):
        assert experiment.plan is not None
        selection = experiment.plan.data["selection"]
        extension = experiment.plan.data["tuning"]["extension"]
        assert experiment.selection_metric == selection["metric"]
        assert experiment.selection_tie == selection["tie"]
        assert experiment.max_extensions == extension["max"]
        if extension["factor"] is not None:
            assert experiment.extension_factor == extension["factor"]
    assert experiment.max_extensions == 0
    plan = _sweep().plan
    assert plan is not None
    assert (
        "Extensions follow the selected (mean) optimum only"
        in (plan.data["tuning"]["extension"]["rule"])
    )
    assert "means equal within 1e-9" in plan.data["selection"]["rule"]


@pytest.mark.parametrize("factor", [3.0, 1 / 3])
def test_the_extension_loop_ends_whatever_the_factor(factor: float) -> None:
    """Lookahead's accuracy rises with the learning rate. The rule never proposes a learning
    rate a method already has, so running its answers until it gives none ends after at most
    ``max_extensions`` rounds, even with a factor below 1 (0.09 / 3 is the grid's 0.03)."""
    experiment = dataclasses.replace(_sweep(), extension_factor=factor)
    accuracy = _accuracy({0.01: 0.90, 0.03: 0.96, 0.09: 0.94}, lambda lr: 0.80 + 0.1 * lr)
    trials = [_made_run(c, accuracy) for c in experiment.lr_sweep]
    rounds = 0
    while extension := experiment.extension_configs(trials):
        rounds += 1
        if rounds > experiment.max_extensions:
            pytest.fail(f"round {rounds} of extensions: {extension}")
        trials += [_made_run(c, accuracy) for c in extension]
    assert rounds == (experiment.max_extensions if factor > 1 else 0)
    lrs = [(r.config.uses_lookahead, round(r.config.lr, 6), r.config.seed) for r in trials]
    assert len(lrs) == len(set(lrs))


@pytest.mark.parametrize("lrs", [(0.01, 0.01, 0.03, 0.09), (0.01, 0.03, 0.0300000001)])
def test_a_learning_rate_twice_in_a_grid_is_refused(lrs: tuple[float, ...]) -> None:
    for most in (2, 0):
        with pytest.raises(ValueError, match="must be distinct"):
            sweep_experiment("digits", ["sgd"], 2, TINY, lrs=lrs, max_extensions=most)


def test_a_plain_optimum_still_at_the_edge_gets_no_verdict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The plain optimizer's accuracy falls with the learning rate everywhere: two extensions
    down (1/3x, 1/9x), its optimum still the smallest; Lookahead's is interior. The tuned case
    gets no verdict, on the plain optimizer's edge alone."""
    batches = _fake_runs(
        monkeypatch,
        _accuracy(
            {0.001111: 0.995, 0.003333: 0.99, 0.01: 0.98, 0.03: 0.96, 0.09: 0.94},
            lambda lr: 0.95 - abs(lr - 0.03),
        ),
    )
    lab = _run(_sweep(), tmp_path)
    assert len(batches) == 3
    tuned = _cases(lab)["final_tuned"]
    assert tuned.verdict == NO_VERDICT
    assert tuned.caveat == (
        "sgd's selected learning rate, 0.00111, is the smallest of its 5 trials after 2 "
        "extensions by 3x (the plan's most)"
    )


def test_a_grid_a_percent_off_even_in_log_is_refused() -> None:
    with pytest.raises(ValueError, match="evenly spaced in log"):
        sweep_experiment("digits", ["sgd"], 2, TINY, lrs=(0.01, 0.03, 0.0909))
