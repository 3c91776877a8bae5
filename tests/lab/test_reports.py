"""Committed reports cannot go stale: today's code reproduces them by the rule of
``reproduce`` (bit for bit on the machine that wrote them, within its tolerance on any other),
or the report says it came from an older version; and the check fails when a result changes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import torch_lookahead
from torch_lookahead_lab.experiments import LabResults
from torch_lookahead_lab.plans import load_plan
from torch_lookahead_lab.provenance import machine
from torch_lookahead_lab.report import differences_from, rerender, write_report
from torch_lookahead_lab.reproduce import (
    HORIZON_STEPS,
    RELATIVE_TOLERANCE,
    compare_payloads,
    disagreements,
    is_reference,
    marked_reference,
    same_machine,
)
from torch_lookahead_lab.runner import RunConfig, RunResult, make_config, run
from torch_lookahead_lab.tasks import TaskSettings

REPO = Path(__file__).resolve().parents[2]
# The lab's reports (reports/distributed-digits/ comes from examples/, in another format).
LAB_REPORTS = sorted(
    path.parent
    for path in (REPO / "reports").glob("*/results.json")
    if "provenance" in json.loads(path.read_text())
)


def _reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The cheapest run the report marks as a reference run (``marked_reference``)."""
    stable = [r for r in runs if marked_reference(r)]
    assert stable, "the report has no reference run to check"
    return min(stable, key=lambda r: (r["config"]["task"] != "digits", r["config"]["steps"]))


# A reference run that took longer than this (CPU seconds, as recorded) is checked in the slow
# suite: a charlm run takes a minute; a digits run and the confirmatory stability study's
# 300-step Transformer run take seconds and are checked in every run of the suite.
SLOW_REFERENCE_CPU_SECONDS = 10.0


def _params() -> list[Any]:
    params = []
    for folder in LAB_REPORTS:
        runs = json.loads((folder / "results.json").read_text())["runs"]
        slow = _reference(runs)["cpu_seconds"] > SLOW_REFERENCE_CPU_SECONDS
        params.append(
            pytest.param(folder, id=folder.name, marks=[pytest.mark.slow] if slow else [])
        )
    return params


def _rerun(recorded: dict[str, Any], **change: Any) -> RunResult:
    """The recorded run again, with as many torch threads as it had, ``change`` applied."""
    previous = torch.get_num_threads()
    torch.set_num_threads(recorded["threads"])
    try:
        return run(RunConfig(**{**recorded["config"], **change}))
    finally:
        torch.set_num_threads(previous)


def test_the_demo_report_is_among_the_checked_ones() -> None:
    assert REPO / "reports" / "demo" in LAB_REPORTS


def test_the_confirmatory_stability_report_is_checked_in_the_fast_suite() -> None:
    """Its reference run is rerun in every run of the suite, never skipped as slow, and it is
    the one run the report marks stable (Adam at the grid's smallest learning rate)."""
    folder = REPO / "reports" / "stability-confirmatory"
    assert folder in LAB_REPORTS
    (param,) = [p for p in _params() if p.id == folder.name]
    assert not param.marks
    results = json.loads((folder / "results.json").read_text())
    assert [r for r in results["runs"] if marked_reference(r)] == [_reference(results["runs"])]
    assert results["plan"]["status_of_report"] == "confirmatory"


@pytest.mark.parametrize("folder", _params())
def test_a_committed_report_is_reproduced_by_this_code(folder: Path) -> None:
    results = json.loads((folder / "results.json").read_text())
    provenance = results["provenance"]
    if provenance["version"] != torch_lookahead.__version__:
        report = (folder / "report.md").read_text()
        assert f"with torch-lookahead {provenance['version']} " in report
        return  # an older version's report, and it says so
    assert provenance["torch"] == torch.__version__, "reports are checked with the pinned torch"
    recorded = _reference(results["runs"])
    fresh = _rerun(recorded)
    exact = same_machine(provenance, machine())
    broken = disagreements(recorded, fresh.to_json(), bit_for_bit=exact)
    assert not broken, (
        f"{folder.name}: today's code does not reproduce its run {recorded['config']} "
        f"({'bit for bit' if exact else f'within {RELATIVE_TOLERANCE:g}'}): "
        f"{broken[0].describe()}; regenerate the report with the command it states"
    )


def test_the_check_fails_when_a_hyper_parameter_changes() -> None:
    """The tolerance is far tighter than the effect of a change of code: the demo's reference
    run with its learning rate 1% larger no longer reproduces, on any machine."""
    results = json.loads((REPO / "reports" / "demo" / "results.json").read_text())
    recorded = _reference(results["runs"])
    changed = _rerun(recorded, lr=recorded["config"]["lr"] * 1.01)
    broken = disagreements(recorded, changed.to_json(), bit_for_bit=False)
    assert broken and max(d.relative for d in broken) > 10 * RELATIVE_TOLERANCE


def payload() -> dict[str, Any]:
    return {
        "provenance": {"version": "0.1.0", "source_digest": "a", "torch": "2"},
        "runs": [
            {
                "config": {
                    "task": "digits",
                    "inner": "sgd",
                    "k": None,
                    "alpha": None,
                    "lr": 0.05 * (1 + s),
                    "seed": 0,
                },
                "steps": [0, 10],
                "history": {"val_loss": [2.0, 0.5 + s]},
                "diverged_at": None,
            }
            for s in range(3)
        ],
        "claims": [
            {"key": "final_default", "cases": [{"label": "sgd", "verdict": "holds"}]},
        ],
        "nqm": {"points": [{"sgd_simulated": 1.0, "lookahead_simulated": 0.5}]},
    }


def test_the_comparison_finds_every_kind_of_change() -> None:
    committed = payload()
    same = compare_payloads(committed, copy.deepcopy(committed))
    assert same.reproduced and same.largest is None
    assert differences_from(committed, copy.deepcopy(committed)).startswith(
        "Reproduced: all 1 verdicts unchanged; every value of the 3 runs the same"
    )
    # A run off the reference setting (lr 0.1: not the task's) may differ; the line shows
    # the value that differs most, both numbers in full.
    fresh = copy.deepcopy(committed)
    fresh["runs"][1]["history"]["val_loss"][-1] = 1.25
    line = differences_from(committed, fresh)
    assert line.startswith("Reproduced: all 1 verdicts unchanged; 1 of 3 runs differ")
    assert "sgd lr 0.1 seed 0: val_loss at step 10 1.5 committed, 1.25 now" in line
    # The stable run (seed 0 at the task's learning rate) must stay within the tolerance.
    fresh["runs"][0]["history"]["val_loss"][-1] = 0.5 * (1 + 10 * RELATIVE_TOLERANCE)
    line = differences_from(committed, fresh)
    assert line.startswith("NOT reproduced:") and "values of the 1 reference runs outside" in line
    fresh["runs"][0]["history"]["val_loss"][-1] = 0.5 * (1 + RELATIVE_TOLERANCE / 10)
    assert compare_payloads(committed, fresh).reproduced
    # Past the first HORIZON_STEPS steps a stable run's difference is reported, not a failure:
    # training amplifies rounding differences between CPUs there (reproduce.py's measurement).
    committed_late, late = copy.deepcopy(committed), copy.deepcopy(fresh)
    for each in (committed_late, late):
        each["runs"][0]["steps"] = [0, 10, HORIZON_STEPS + 1]
        each["runs"][0]["history"]["val_loss"] = [2.0, 1.0, 0.5]
    late["runs"][0]["history"]["val_loss"][-1] = 0.6
    late_comparison = compare_payloads(committed_late, late)
    assert late_comparison.reproduced and late_comparison.largest is not None
    assert late_comparison.largest.step == HORIZON_STEPS + 1
    # ... and so is the first evaluation after step 0, however late, and per-step losses.
    late["runs"][0]["steps"] = committed_late["runs"][0]["steps"] = [0, HORIZON_STEPS + 1]
    late["runs"][0]["history"]["val_loss"] = [2.0, 0.6]
    committed_late["runs"][0]["history"]["val_loss"] = [2.0, 0.5]
    assert not compare_payloads(committed_late, late).reproduced
    late["runs"][0]["history"]["val_loss"][-1] = 0.5
    committed_late["runs"][0]["step_losses"] = [2.0] * HORIZON_STEPS
    late["runs"][0]["step_losses"] = [2.0] * (HORIZON_STEPS - 1) + [2.1]
    assert not compare_payloads(committed_late, late).reproduced
    del committed_late["runs"][0]["step_losses"]  # a run recorded before per-step losses
    assert compare_payloads(committed_late, late).reproduced
    # ... bit for bit on the same machine.
    same_cpu = {"cpu_model": "x", "cpu_capability": "AVX2", "torch": "2"}
    committed["provenance"] |= same_cpu
    fresh["provenance"] |= same_cpu
    assert same_machine(committed["provenance"], fresh["provenance"])
    assert not compare_payloads(committed, fresh).reproduced
    # A changed verdict fails, whatever the numbers.
    changed = copy.deepcopy(committed)
    changed["claims"][0]["cases"][0]["verdict"] = "inconclusive at 3 seeds"
    line = differences_from(committed, changed)
    assert line.startswith(
        "NOT reproduced: 1 of 1 verdicts changed (final_default/sgd: 'holds' committed, "
        "'inconclusive at 3 seeds' now)"
    )
    # A run only one side has fails too.
    missing = copy.deepcopy(committed)
    missing["runs"].pop()
    assert "1 committed runs not here" in differences_from(committed, missing)


def test_a_report_without_a_cpu_model_is_another_machine() -> None:
    here = machine()
    assert same_machine(here, dict(here))
    assert not same_machine({k: v for k, v in here.items() if k != "cpu_model"}, here)


def test_rerender_writes_todays_verdicts_from_the_recorded_runs(tmp_path: Path) -> None:
    """A compare report re-rendered: the same runs, today's claims, and it says so."""
    runs = []
    for seed in range(3):
        for k, final in ((None, 0.30 + seed / 100), (5, 0.20 + seed / 100)):
            config = RunConfig("digits", "sgd", 0.05, seed, 10, 10, 8, k, 0.5 if k else None)
            history = {"train_loss": [2.0, final], "val_loss": [2.0, final],
                       "val_accuracy": [0.1, 0.9]}  # fmt: skip
            runs.append({"part": "compare", **RunResult(config, [0, 10], history).to_json()})
    old = {"version": "0.0.1", "source_digest": "0123", "torch": "2", "python": "3",
           "cpu_capability": "AVX2", "wall_seconds": 5.0}  # fmt: skip
    payload = {
        "title": "torch-lookahead compare: digits", "command": "torch-lookahead compare",
        "provenance": old, "headline_metric": "val_accuracy", "higher_is_better": True,
        "claims": [], "runs": runs,
    }  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(payload))
    report = rerender(tmp_path).read_text()
    assert "Re-rendered by `torch-lookahead rerender" in report
    assert "with torch-lookahead 0.0.1 (sources 0123)" in report  # what computed the runs
    assert "(6 jobs; how many it read back from its cache is not recorded)" in report
    fresh = json.loads((tmp_path / "results.json").read_text())
    assert fresh["provenance"] == old and fresh["rerendered_with"]["version"]
    assert [r["history"] for r in fresh["runs"]] == [r["history"] for r in runs]
    assert fresh["claims"][0]["cases"][0]["verdict"] == "inconclusive: cannot decide at 3 seeds"
    with pytest.raises(ValueError, match="only stability pilots, demo, sweep and compare"):
        (tmp_path / "results.json").write_text(json.dumps({**payload, "title": "demo"}))
        rerender(tmp_path)


def test_reference_runs_are_the_first_seeds_and_older_marks_still_count() -> None:
    """A report on fresh seeds has reference runs too: those of its first seed."""
    config = {"task": "charlm", "inner": "adamw", "lr": 0.003, "k": 5, "alpha": 0.5}
    assert is_reference({**config, "seed": 0}, None)
    assert not is_reference({**config, "seed": 3000}, None)
    assert is_reference({**config, "seed": 3000}, None, first_seed=3000)
    assert not is_reference({**config, "seed": 3000}, 12, first_seed=3000)  # diverged
    assert not is_reference({**config, "seed": 3000, "lr": 0.001}, None, first_seed=3000)
    run = {"config": {**config, "seed": 3000}, "diverged_at": None}
    assert not marked_reference(run)  # no mark: the rule of seed 0
    assert marked_reference({**run, "reference": True})
    assert marked_reference({**run, "stable": True})  # written before the rename
    assert not marked_reference({**run, "reference": False, "stable": True})


def test_a_charlm_comparison_is_reported_on_its_test_split(tmp_path: Path) -> None:
    """Runs that measured the test split: the claims and the scope are on it, the first seed's
    runs at the task's learning rate are marked reference, and the command's start and end
    times are recorded."""
    runs = []
    for seed in (3000, 3001, 3002):
        for k, final in ((None, 2.40 + seed % 7 / 100), (5, 2.70 + seed % 7 / 100)):
            config = make_config(
                "charlm", "adamw", seed=seed, settings=TaskSettings(4, 2, 2), k=k,
                alpha=0.5 if k else None, evaluate_test=True,
            )  # fmt: skip
            history: dict[str, list[float | None]] = {
                "train_loss": [5.5, 2.0, 1.9], "val_loss": [5.5, 1.8, 1.7],
                "val_bpc": [8.0, 2.6, 2.5], "test_loss": [5.5, None, 1.8],
                "test_bpc": [8.0, None, final],
            }  # fmt: skip
            runs.append(RunResult(config, [0, 2, 4], history))
    lab = LabResults(
        "torch-lookahead compare: charlm", "torch-lookahead compare", task="charlm",
        headline_metric="val_bpc", compare=runs, seconds=1.0, jobs=6, cached_jobs=2,
        started_at="2026-12-06T12:00:00+00:00", finished_at="2026-12-06T12:00:01+00:00",
        plan=load_plan("compare-charlm"),
    )  # fmt: skip
    report = write_report(tmp_path, lab).read_text()
    assert "comparisons over 3 seeds on the held-out test split" in report
    assert "final test bpc, default protocol" in report
    assert "| diverged | test bpc |" in report  # the final-metrics table shows it too
    assert "the committed `lab/src/torch_lookahead_lab/plans/compare-charlm.json`" in report
    assert "marks `reference` (seed 3000 at the task's learning rate" in report
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["claims"][0]["cases"][0]["estimate"]["effect"] == pytest.approx(0.30)
    marked = [r["config"]["seed"] for r in results["runs"] if r["reference"]]
    assert marked == [3000, 3000]
    assert results["provenance"]["started_at"] == "2026-12-06T12:00:00+00:00"
    assert results["provenance"]["finished_at"] == "2026-12-06T12:00:01+00:00"
    # Re-rendered, it keeps its committed plan, so it stays confirmatory.
    rerendered = rerender(tmp_path).read_text()
    assert "the committed `lab/src/torch_lookahead_lab/plans/compare-charlm.json`" in rerendered
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["plan"]["status_of_report"] == "confirmatory"
    assert again["claims"] == results["claims"]
    assert "which read 2 of its 6 jobs back from its cache" in rerendered
