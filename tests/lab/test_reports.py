"""Committed reports cannot go stale: today's code reproduces their runs bit for bit, or the
report says it came from an older version; and ``differences_from`` finds what changed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import torch_lookahead
from torch_lookahead.lab.provenance import machine
from torch_lookahead.lab.report import differences_from
from torch_lookahead.lab.runner import RunConfig, run

REPO = Path(__file__).resolve().parents[2]
# The lab's reports (reports/distributed-digits/ comes from examples/, in another format).
LAB_REPORTS = sorted(
    path.parent
    for path in (REPO / "reports").glob("*/results.json")
    if "provenance" in json.loads(path.read_text())
)


def _cheapest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: (r["config"]["task"] != "digits", r["config"]["steps"]))


def _params() -> list[Any]:
    params = []
    for folder in LAB_REPORTS:
        runs = json.loads((folder / "results.json").read_text())["runs"]
        slow = _cheapest(runs)["config"]["task"] != "digits"  # a charlm run takes a minute
        params.append(
            pytest.param(folder, id=folder.name, marks=[pytest.mark.slow] if slow else [])
        )
    return params


def test_the_demo_report_is_among_the_checked_ones() -> None:
    assert REPO / "reports" / "demo" in LAB_REPORTS


@pytest.mark.parametrize("folder", _params())
def test_a_committed_report_is_reproduced_by_this_code(folder: Path) -> None:
    results = json.loads((folder / "results.json").read_text())
    provenance = results["provenance"]
    if provenance["version"] != torch_lookahead.__version__:
        report = (folder / "report.md").read_text()
        assert f"with torch-lookahead {provenance['version']} " in report
        return  # an older version's report, and it says so
    here = machine()
    for key in ("torch", "cpu_capability"):
        if provenance[key] != here[key]:
            pytest.skip(f"the report was computed with {key} {provenance[key]}, here {here[key]}")
    recorded = _cheapest(results["runs"])
    fresh = run(RunConfig(**recorded["config"]))
    assert fresh.steps == recorded["steps"]
    assert fresh.history == recorded["history"], (
        f"{folder.name}: today's code does not reproduce its run {recorded['config']}; "
        "regenerate the report with the command it states"
    )


def payload() -> dict[str, Any]:
    return {
        "provenance": {"version": "0.1.0", "source_digest": "a", "torch": "2"},
        "runs": [
            {
                "config": {"inner": "sgd", "k": None, "alpha": None, "lr": 0.05, "seed": s},
                "steps": [0, 10],
                "history": {"val_loss": [2.0, 0.5 + s]},
            }
            for s in range(3)
        ],
        "claims": [{"key": "final_default", "verdict": "holds"}],
        "nqm": {"points": [{"lr": 0.1}]},
    }


def test_differences_from_finds_every_kind_of_change() -> None:
    committed = payload()
    assert differences_from(committed, copy.deepcopy(committed)) == []
    fresh = copy.deepcopy(committed)
    fresh["runs"][1]["history"]["val_loss"][-1] = 1.25
    fresh["runs"].append({**fresh["runs"][0], "config": {**fresh["runs"][0]["config"], "seed": 9}})
    fresh["claims"][0]["verdict"] = "inconclusive at 3 seeds"
    fresh["nqm"]["points"][0]["lr"] = 0.2
    fresh["provenance"]["source_digest"] = "b"
    lines = differences_from(committed, fresh)
    assert lines[0] == (
        "1 of 3 runs differ from the committed report, e.g. sgd lr 0.05 seed 1: final val_loss "
        "1.5 committed, 1.25 now."
    )
    assert lines[1].startswith("1 runs here are not in the committed report, and 0 runs")
    assert lines[2] == "The noisy-quadratic-model points differ from the committed report's."
    assert lines[3] == (
        "Verdict of final_default: 'holds' committed, 'inconclusive at 3 seeds' now."
    )
    assert "(sources a, torch 2); this run by 0.1.0 (sources b" in lines[4]
