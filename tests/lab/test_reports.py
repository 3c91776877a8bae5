"""Committed reports cannot go stale: today's code reproduces them by the rule of
``reproduce`` (bit for bit on the machine that wrote them, within its tolerance on any other),
or the report says it came from an older version; and the check fails when a result changes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torch_lookahead
from torch_lookahead import Lookahead
from torch_lookahead_lab.experiments import LabResults
from torch_lookahead_lab.plans import load_plan
from torch_lookahead_lab.provenance import machine, record
from torch_lookahead_lab.report import DETAILS_MARKER, differences_from, rerender, write_report
from torch_lookahead_lab.reproduce import (
    EARLY_TOLERANCE,
    HORIZON_STEPS,
    LATE_TOLERANCE,
    compare_payloads,
    disagreements,
    is_reference,
    marked_reference,
    run_label,
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


def _references(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs the report marks as reference runs (``marked_reference``)."""
    marked = [r for r in runs if marked_reference(r)]
    assert marked, "the report has no reference run to check"
    return marked


# A report whose reference runs took more than this together (CPU seconds, as recorded) is
# checked in the slow suite: a charlm run takes a minute; the digits runs and the confirmatory
# stability study's 300-step Transformer run take seconds and are checked in every run.
SLOW_REFERENCE_CPU_SECONDS = 15.0


def _params() -> list[Any]:
    """One case per reference run of each committed report: ``demo:lookahead(sgd) lr ...``."""
    params = []
    for folder in LAB_REPORTS:
        references = _references(json.loads((folder / "results.json").read_text())["runs"])
        slow = sum(r["cpu_seconds"] for r in references) > SLOW_REFERENCE_CPU_SECONDS
        for recorded in references:
            label = f"{folder.name}:{run_label(recorded['config'])}"
            marks = [pytest.mark.slow] if slow else []
            params.append(pytest.param(folder, recorded, id=label, marks=marks))
    return params


def _rerun(recorded: dict[str, Any], **change: Any) -> RunResult:
    """The recorded run again, with as many torch threads as it had, ``change`` applied."""
    previous = torch.get_num_threads()
    torch.set_num_threads(recorded["threads"])
    try:
        return run(RunConfig(**{**recorded["config"], **change}))
    finally:
        torch.set_num_threads(previous)


def _demo_references() -> list[dict[str, Any]]:
    return _references(json.loads((REPO / "reports" / "demo" / "results.json").read_text())["runs"])


def test_the_demo_report_is_among_the_checked_ones() -> None:
    """All four of its reference runs, Lookahead's among them, are rerun in every run of the
    suite (a bug in Lookahead shows in a Lookahead run, not in a plain one)."""
    assert REPO / "reports" / "demo" in LAB_REPORTS
    fast = [p.values[1] for p in _params() if p.values[0].name == "demo" and not p.marks]
    assert len(fast) == 4 and {r["config"]["k"] for r in fast} == {None, 5}


def test_the_confirmatory_stability_report_is_checked_in_the_fast_suite() -> None:
    """Its reference run is rerun in every run of the suite, never skipped as slow, and it is
    the one run the report marks (Adam at the grid's smallest learning rate)."""
    folder = REPO / "reports" / "stability-confirmatory"
    assert folder in LAB_REPORTS
    (param,) = [p for p in _params() if p.values[0] == folder]
    assert not param.marks
    results = json.loads((folder / "results.json").read_text())
    assert len(_references(results["runs"])) == 1
    assert results["plan"]["status_of_report"] == "confirmatory"


def _release(version: str) -> str:
    return version.split("+")[0]  # 2.13.0+cpu and PyPI's CUDA build 2.13.0 are one release


@pytest.mark.parametrize(("folder", "recorded"), _params())
def test_a_committed_report_is_reproduced_by_this_code(
    folder: Path, recorded: dict[str, Any]
) -> None:
    provenance = json.loads((folder / "results.json").read_text())["provenance"]
    if provenance["version"] != torch_lookahead.__version__:
        report = (folder / "report.md").read_text()
        assert f"with torch-lookahead {provenance['version']} " in report
        pytest.skip(f"{folder.name} comes from torch-lookahead {provenance['version']} and says so")
    assert _release(provenance["torch"]) == _release(torch.__version__), (
        "reports are checked with the pinned torch"
    )
    fresh = _rerun(recorded)
    exact = same_machine(provenance, machine())
    broken = disagreements(recorded, fresh.to_json(), bit_for_bit=exact)
    assert not broken, (
        f"{folder.name}: today's code does not reproduce its run {recorded['config']} "
        f"({'bit for bit' if exact else 'by rule 2'}): "
        f"{broken[0].describe()}; regenerate the report with the command it states"
    )


@pytest.mark.parametrize("recorded", _demo_references(), ids=lambda r: run_label(r["config"]))
def test_the_check_fails_when_a_hyper_parameter_changes(recorded: dict[str, Any]) -> None:
    """The tolerance is far tighter than the effect of a change of code: each of the demo's
    reference runs with its learning rate 1% larger no longer reproduces, on any machine."""
    changed = _rerun(recorded, lr=recorded["config"]["lr"] * 1.01)
    broken = disagreements(recorded, changed.to_json(), bit_for_bit=False)
    assert broken and max(d.relative for d in broken) > 10 * EARLY_TOLERANCE


def test_the_check_fails_when_lookahead_changes_after_the_first_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug that acts only after step 50 (here: every sync after step 60 takes alpha = 1, so
    Lookahead(SGD) becomes SGD from there) breaks rule 2 through the later values."""
    (recorded,) = [
        r for r in _demo_references() if r["config"]["k"] == 5 and r["config"]["inner"] == "sgd"
    ]
    original, syncs = Lookahead.outer_step, [0]

    def late_bug(self: Lookahead, groups: list[dict[str, Any]], restart: Any = None) -> None:
        syncs[0] += 1
        if syncs[0] * recorded["config"]["k"] > 60:
            for group in groups:
                group["lookahead_alpha"] = 1.0
        original(self, groups, restart)

    monkeypatch.setattr(Lookahead, "outer_step", late_bug)
    broken = disagreements(recorded, _rerun(recorded).to_json(), bit_for_bit=False)
    assert broken and min(d.step for d in broken) > HORIZON_STEPS


def _rerenders() -> list[Any]:
    """The committed reports that re-render from their results.json (the demo's in every run
    of the suite: plots make a re-render take seconds)."""
    kinds = ("torch-lookahead demo", "torch-lookahead sweep", "torch-lookahead compare")
    params = []
    for folder in LAB_REPORTS:
        payload = json.loads((folder / "results.json").read_text())
        pilot = payload["title"] == "torch-lookahead stability"
        if payload["title"].startswith(kinds) or pilot:
            marks = [] if folder.name == "demo" else [pytest.mark.slow]
            params.append(pytest.param(folder, id=folder.name, marks=marks))
    return params


@pytest.mark.parametrize("folder", _rerenders())
def test_a_committed_report_gets_the_same_verdicts_from_this_code(
    folder: Path, tmp_path: Path
) -> None:
    """Rule 1: today's claims, tests and verdicts, computed from the report's recorded runs,
    are those it publishes."""
    copy_of = tmp_path / folder.name
    shutil.copytree(folder, copy_of, ignore=shutil.ignore_patterns("runs"))
    rerender(copy_of)
    committed = json.loads((folder / "results.json").read_text())
    comparison = compare_payloads(committed, json.loads((copy_of / "results.json").read_text()))
    assert comparison.verdicts_compared > 0
    assert not comparison.verdict_changes, comparison.verdict_changes


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
    # A reference run (seed 0 at the task's learning rate) must stay within the tolerance.
    fresh["runs"][0]["history"]["val_loss"][-1] = 0.5 * (1 + 10 * EARLY_TOLERANCE)
    line = differences_from(committed, fresh)
    assert line.startswith("NOT reproduced:") and "values of the 1 reference runs break" in line
    fresh["runs"][0]["history"]["val_loss"][-1] = 0.5 * (1 + EARLY_TOLERANCE / 10)
    assert compare_payloads(committed, fresh).reproduced
    # Past the first HORIZON_STEPS steps a reference run is held to the looser LATE_TOLERANCE:
    # training amplifies rounding differences between CPUs there (reproduce.py's measurement).
    committed_late, late = copy.deepcopy(committed), copy.deepcopy(fresh)
    for each in (committed_late, late):
        each["runs"][0]["steps"] = [0, 10, HORIZON_STEPS + 1]
        each["runs"][0]["history"]["val_loss"] = [2.0, 1.0, 0.5]
    late["runs"][0]["history"]["val_loss"][-1] = 0.5 * (1 + LATE_TOLERANCE / 2)
    late_comparison = compare_payloads(committed_late, late)
    assert late_comparison.reproduced and late_comparison.runs_differing == 2
    late["runs"][0]["history"]["val_loss"][-1] = 0.5 * (1 + 2 * LATE_TOLERANCE)
    assert not compare_payloads(committed_late, late).reproduced
    # ... and a value or an evaluation only one side has, or another divergence step, fails
    # wherever it is.
    late["runs"][0]["history"]["val_loss"][-1] = 0.5
    cut = copy.deepcopy(late)
    cut["runs"][0]["steps"] = [0, 10]
    cut["runs"][0]["history"]["val_loss"] = [2.0, 1.0]
    assert not compare_payloads(committed_late, cut).reproduced
    diverged = copy.deepcopy(late)
    diverged["runs"][0]["diverged_at"] = HORIZON_STEPS + 1
    line = differences_from(committed_late, diverged)
    assert line.startswith("NOT reproduced:") and "diverged_at at step 0 None committed" in line
    # The first evaluation after step 0, however late, is held to EARLY_TOLERANCE, and so are
    # per-step losses.
    late["runs"][0]["steps"] = committed_late["runs"][0]["steps"] = [0, HORIZON_STEPS + 1]
    late["runs"][0]["history"]["val_loss"] = [2.0, 0.5 * (1 + 10 * EARLY_TOLERANCE)]
    committed_late["runs"][0]["history"]["val_loss"] = [2.0, 0.5]
    assert not compare_payloads(committed_late, late).reproduced
    late["runs"][0]["history"]["val_loss"][-1] = 0.5
    committed_late["runs"][0]["step_losses"] = [2.0] * HORIZON_STEPS
    late["runs"][0]["step_losses"] = [2.0] * (HORIZON_STEPS - 1) + [
        2.0 * (1 + 10 * EARLY_TOLERANCE)
    ]
    assert not compare_payloads(committed_late, late).reproduced
    late["runs"][0]["step_losses"] = [2.0] * (HORIZON_STEPS - 1)  # one loss fewer
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


def test_a_report_records_numpy_whose_generator_draws_the_bootstrap() -> None:
    import numpy

    assert record(1.0)["numpy"] == numpy.__version__


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
    # The committed plan's own account, its pilot included, is in the report, after the summary.
    why = load_plan("compare-charlm").data["why"]
    assert f"## The plan's own account\n\n- Why: {why}\n" in rerendered.partition(DETAILS_MARKER)[2]


@pytest.mark.parametrize("folder", ["demo", "sweep-digits"])
def test_the_committed_report_is_what_todays_code_renders_from_its_runs(
    tmp_path: Path, folder: str
) -> None:
    """Rows come in the order of the settings, not of the runs, so a live run and a re-render of
    its results.json write the same report (only the provenance lines differ)."""
    source = Path(__file__).resolve().parents[2] / "reports" / folder
    payload = json.loads((source / "results.json").read_text())
    drawn_by = (payload.get("rerendered_with") or payload["provenance"]).get("numpy")
    if drawn_by != np.__version__:  # numpy may change its generator's stream between releases
        pytest.skip(
            f"the report's bootstrap was drawn by numpy {drawn_by}, this is {np.__version__}"
        )
    copy_dir = tmp_path / folder
    shutil.copytree(source, copy_dir, ignore=shutil.ignore_patterns("*.png", "runs"))
    rendered = rerender(copy_dir).read_text()

    def body(text: str) -> list[str]:
        skip = ("Produced by", "Re-rendered by")
        return [line for line in text.replace(str(copy_dir), f"reports/{folder}").splitlines()
                if line and not line.startswith(skip)]  # fmt: skip

    assert body(rendered) == body((source / "report.md").read_text())
