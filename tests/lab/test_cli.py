"""The `torch-lookahead` command end to end: a quick demo, the cache, help and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torch_lookahead import cli
from torch_lookahead.lab import runner
from torch_lookahead.lab.report import EMBED_END, EMBED_START, embedded_section

REPO = Path(__file__).resolve().parents[2]


def test_quick_demo_writes_the_report_and_reuses_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--workers", "1"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "runs.csv", "curves.csv", "loss_curves.png",
            "lr_robustness.png", "k_alpha_sgd.png", "nqm.png", "runs"} <= names  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [c["key"] for c in results["claims"]] == [
        "nqm_variance", "lr_robustness", "k_alpha_robustness", "seed_variance", "convergence"
    ]  # fmt: skip
    assert {s["method"] for s in results["compare"]} == {
        "sgd", "lookahead(sgd)", "adamw", "lookahead(adamw)"
    }  # fmt: skip
    report = (out / "report.md").read_text()
    for claim in results["claims"]:
        assert claim["paper"] in report and claim["verdict"] in report
    assert "final metrics" in capsys.readouterr().out

    def must_not_run(config: runner.RunConfig) -> runner.RunResult:
        raise AssertionError("a run in the output folder was recomputed")

    monkeypatch.setattr(runner, "run", must_not_run)
    assert cli.main(["demo", "--quick", "--out", str(out), "--workers", "1"]) == 0
    assert json.loads((out / "results.json").read_text())["claims"] == results["claims"]


@pytest.mark.parametrize("command", [[], ["demo"], ["compare"], ["sweep"], ["nqm"]])
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["compare", "--task", "mnist"], "unknown task 'mnist'"),
        (["compare", "--task", "nqm"], "torch-lookahead nqm"),
        (["compare", "--inner", "adamw,lion"], "unknown inner optimizer 'lion'"),
        (["compare", "--alpha", "2"], "alpha must lie in (0, 1]"),
        (["compare", "--task", "cifar10"], "pass --data-dir"),
        (["sweep", "--lr", "1e-1:1e-4:3"], "0 < LOW < HIGH"),
        (["sweep", "--k", "5,ten"], "k must be a comma-separated list of integers"),
        (["nqm", "--lr", "0.5,2.5"], "lr values must lie in (0, 2)"),
    ],
)
def test_clear_errors(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*arguments, "--out", str(tmp_path)]) == 2
    assert message in " ".join(capsys.readouterr().out.split())
    assert not list(tmp_path.iterdir())


def test_bench_forwards_its_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    import sys
    import types

    received: list[list[str]] = []
    module = types.ModuleType("torch_lookahead.bench")
    module.main = lambda argv: received.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_lookahead.bench", module)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert cli.main(["bench", "--suite", "sync", "-n", "3"]) == 3
    assert received == [["--suite", "sync", "-n", "3"]]

    monkeypatch.delitem(sys.modules, "torch_lookahead.bench")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert cli.main(["bench"]) == 2
    assert "torch_lookahead.bench is not installed" in " ".join(capsys.readouterr().out.split())


def test_docs_embed_the_committed_demo_report() -> None:
    """docs/lab.md carries reports/demo/report.md verbatim: no number there is typed by hand."""
    doc = (REPO / "docs" / "lab.md").read_text()
    embedded = doc.split(EMBED_START, 1)[1].split(EMBED_END, 1)[0].strip()
    assert embedded == embedded_section(REPO / "reports" / "demo", "assets/lab").strip()
    for figure in (REPO / "reports" / "demo").glob("*.png"):
        assert (REPO / "docs" / "assets" / "lab" / figure.name).read_bytes() == figure.read_bytes()
