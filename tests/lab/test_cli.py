"""The `torch-lookahead` command end to end: a quick demo, the cache, help and error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import torch_lookahead
from torch_lookahead import cli
from torch_lookahead.lab import runner
from torch_lookahead.lab.report import DETAILS_MARKER, EMBED_END, EMBED_START, embedded_section

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
        "final_default", "final_tuned", "convergence_default", "convergence_tuned",
        "seed_variance", "lr_robustness", "k_alpha_robustness", "nqm_variance",
    ]  # fmt: skip
    assert {s["method"] for s in results["compare"]} == {
        "sgd", "lookahead(sgd)", "adamw", "lookahead(adamw)"
    }  # fmt: skip
    assert results["provenance"]["version"] == torch_lookahead.__version__
    assert len(results["runs"]) == len({json.dumps(r["config"]) for r in results["runs"]})
    report = (out / "report.md").read_text()
    for claim in results["claims"]:
        assert claim["paper"] in report and claim["verdict"] in report
        assert claim["protocol"] in report
    printed = capsys.readouterr().out
    # Printed to a pipe: whole Markdown rows, whatever the width, and one line per verdict.
    assert "| lookahead(adamw) | 0.002 | 5 | 0.5 | 2 |" in printed and "…" not in printed
    assert "   Verdict: inconclusive at 2 seeds\n" in printed

    def must_not_run(config: runner.RunConfig) -> runner.RunResult:
        raise AssertionError("a run in the output folder was recomputed")

    monkeypatch.setattr(runner, "run", must_not_run)
    monkeypatch.setattr(runner, "nqm_point", must_not_run)
    assert (
        cli.main(["demo", "--quick", "--out", str(out), "--workers", "1", "--against", str(out)])
        == 0
    )
    assert json.loads((out / "results.json").read_text())["claims"] == results["claims"]
    assert "Reproduced: all " in capsys.readouterr().out

    committed = tmp_path / "committed"
    committed.mkdir()
    results["runs"][0]["history"]["val_loss"][-1] += 1.0
    (committed / "results.json").write_text(json.dumps(results))
    assert (
        cli.main(
            ["demo", "--quick", "--out", str(out), "--workers", "1", "--against", str(committed)]
        )
        == 0
    )
    printed = " ".join(capsys.readouterr().out.split())
    count = len(results["runs"])
    verdicts = sum(len(claim["cases"]) for claim in results["claims"])
    assert f"NOT reproduced: all {verdicts} verdicts unchanged; 1 of {count} runs differ" in printed
    assert "(e.g. sgd lr 0.05 seed 0: val_loss at step" in printed


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
        (["compare", "--alpha", "2"], "alpha must be in [0, 1]"),
        (["compare", "--k", "0"], "k must be a positive int"),
        (["sweep", "--alpha", "0.5,-0.1"], "alpha must be in [0, 1]"),
        (["nqm", "--alpha", "1.5"], "alpha must be in [0, 1]"),
        (["compare", "--task", "cifar10"], "pass --data-dir"),
        (["sweep", "--lr", "1e-1:1e-4:3"], "0 < LOW < HIGH"),
        (["sweep", "--k", "5,ten"], "k must be a comma-separated list of integers"),
        (["nqm", "--lr", "0.5,2.5"], "lr must lie in (0, 2) for a steady state"),
    ],
)
def test_clear_errors(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*arguments, "--out", str(tmp_path)]) == 2
    printed = capsys.readouterr().out
    assert printed.startswith("Error: ") and printed.count("\n") == 1
    assert message in printed
    assert not list(tmp_path.iterdir())


def test_docs_embed_the_committed_demo_report() -> None:
    """docs/lab.md carries the summary of reports/demo/report.md verbatim: no number there is
    typed by hand."""
    doc = (REPO / "docs" / "lab.md").read_text()
    embedded = doc.split(EMBED_START, 1)[1].split(EMBED_END, 1)[0].strip()
    assert embedded == embedded_section(REPO / "reports" / "demo", "assets/lab").strip()
    assert "## Verdicts at a glance" in embedded
    for figure in re.findall(r"\(assets/lab/([\w.-]+\.png)\)", embedded):
        shown = REPO / "docs" / "assets" / "lab" / figure
        assert shown.read_bytes() == (REPO / "reports" / "demo" / figure).read_bytes()


def test_embed_report_replaces_the_marked_part_only(tmp_path: Path) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text(
        f"# Title\n\n## Summary\n\n![a](a.png)\n\n{DETAILS_MARKER}\n\n![b](b.png)\n"
    )
    (report / "a.png").write_bytes(b"a")
    (report / "b.png").write_bytes(b"b")
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    doc.write_text(f"before\n{EMBED_START}\nold\n{EMBED_END}\nafter\n")
    assert cli.main(["embed-report", str(report), str(doc), str(tmp_path / "docs" / "img")]) == 0
    assert doc.read_text() == (
        f"before\n{EMBED_START}\n## Title\n\n### Summary\n\n![a](img/a.png)\n{EMBED_END}\nafter\n"
    )
    assert [p.name for p in (tmp_path / "docs" / "img").iterdir()] == ["a.png"]
    doc.write_text("no markers")
    assert cli.main(["embed-report", str(report), str(doc), str(tmp_path)]) == 2


@pytest.mark.parametrize("command", [["nqm", "--quick"], ["compare", "--quick", "--seeds", "1"]])
def test_an_unwritable_out_fails_before_any_work(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(runner, "run_many", must_not_run)
    a_file = tmp_path / "some_file"
    a_file.write_text("")
    for out, message in [
        (a_file, "exists and is not a folder"),
        (a_file / "below", "is a file, not a folder"),
    ]:
        assert cli.main([*command, "--out", str(out)]) == 2
        printed = capsys.readouterr().out
        assert printed.startswith("Error: --out") and printed.count("\n") == 1
        assert message in printed
    (tmp_path / "report" / "runs").parent.mkdir()
    (tmp_path / "report" / "runs").write_text("")
    assert cli.main([*command, "--out", str(tmp_path / "report")]) == 2
    assert "runs' exists and is not a folder" in capsys.readouterr().out


def test_help_shows_the_defaults_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: (runs/<command>)]" in text
    assert "[default: (the CPU count); x>=1]" in text
    assert "--quick A smoke run" in text  # a flag: no value placeholder


def test_bench_is_not_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench"]) == 2
    assert "No such command 'bench'" in capsys.readouterr().err


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigint_to_the_parent_alone_ends_the_worker_pool(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch_lookahead.cli",
            "demo",
            "--out",
            str(tmp_path),
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 60
        # The spawn context starts a resource tracker too: wait for it and two workers.
        while len(workers) < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            workers = _children(process.pid)
        assert len(workers) >= 3, "the worker pool never started"
        os.kill(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "Interrupted." in output
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_cifar10_files_are_checked_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.lab.test_tasks import write_fake_cifar10

    write_fake_cifar10(tmp_path)
    out = tmp_path / "out"
    arguments = ["compare", "--task", "cifar10", "--data-dir", str(tmp_path), "--device", "cpu"]
    assert cli.main([*arguments, "--out", str(out)]) == 2
    printed = capsys.readouterr().out
    assert printed.startswith("Error: ") and "is not the official CIFAR-10" in printed
    received: list[runner.RunConfig] = []

    class Handed(Exception):
        pass

    def hand_over(jobs: list[runner.RunConfig], *args: object, **kwargs: object) -> None:
        received.extend(jobs)
        raise Handed  # the jobs reached the runner: nothing needs to train here

    monkeypatch.setattr(runner, "run_many", hand_over)
    with pytest.raises(Handed):
        cli.main([*arguments, "--out", str(out), "--quick", "--unsafe-skip-checksums"])
    assert received and all(job.unsafe_skip_checksums for job in received)
