"""The sweep's grid-extension rule: a method whose best learning rate is at an edge of the grid
gets more learning rates beyond it, a grid step apart, at most ``--extend-max``; where its
best, or a seed's learning-rate width, is still at the edge, the tuned comparison or the
robustness case gets no verdict and says why. On hand-made runs (no training)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.lab.test_tuning import _fake_runs
from torch_lookahead_lab import cli
from torch_lookahead_lab.claims import NO_VERDICT
from torch_lookahead_lab.experiments import (
    Experiment,
    LabResults,
    parse_lr_range,
    run_experiment,
    sweep_experiment,
)
from torch_lookahead_lab.report import build_claims, tuned_protocol
from torch_lookahead_lab.runner import RunConfig
from torch_lookahead_lab.tasks import TaskSettings

TINY = TaskSettings(steps=4, eval_every=2, batch_size=8)
LRS = (0.01, 0.03, 0.09)  # a factor of 3 apart


def _sweep(**changes: Any) -> Experiment:
    """sgd plain and in Lookahead(k=5, alpha=0.5) at ``LRS`` over 2 seeds (and the (k, alpha)
    map's two runs per seed at the task's learning rate)."""
    return sweep_experiment("digits", ["sgd"], 2, TINY, lrs=LRS, ks=(5,), alphas=(0.5,), **changes)


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
        "lookahead(sgd)'s selected learning rate, 0.81, is the largest of its 5 trials after at "
        "most 2 extensions by 3x"
    )
    assert robustness.caveat == (
        "lookahead(sgd)'s width reaches the largest of its 5 learning rates, 0.81, at seeds 0, 1 "
        "after at most 2 extensions by 3x: a width the grid cuts off is censored"
    )
    assert "sgd 3, lookahead(sgd) 5 (2 extensions)" in tuned_protocol(lab)


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
    assert "is the largest of its 4 trials after at most 1 extension by 3x" in report
    assert "a width the grid cuts off is censored" in report
    assert "sgd 3, lookahead(sgd) 4 (1 extension)" in report
    # Its tuned comparison ran, on the seeds it compares on: the "cannot test" list says that.
    assert "no tuned protocol" not in report
    assert "selects each method's learning rate on the same seeds it compares on" in report
    capsys.readouterr()
    assert cli.main([*flags[:4], "0.001,0.01,0.3", *flags[5:]]) == 2
    assert "evenly spaced in log" in capsys.readouterr().out
