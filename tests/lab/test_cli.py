"""The `torch-lookahead` command end to end: a quick demo, the cache, help and error messages."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

import torch_lookahead
from torch_lookahead_lab import cli, runner
from torch_lookahead_lab.console import QUICK_NOTICE, QUICK_REPORT_NOTICE
from torch_lookahead_lab.plans import load_plan
from torch_lookahead_lab.report import (
    DETAILS_MARKER,
    EMBED_END,
    EMBED_START,
    ONE_SCHEDULE,
    TUNED_ALONE,
    embedded_section,
)

REPO = Path(__file__).resolve().parents[2]


def test_quick_demo_writes_the_report_and_reuses_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--workers", "1"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "plan.json", "runs.csv", "curves.csv",
            "loss_curves.png", "lr_robustness.png", "k_alpha_sgd.png", "nqm.png",
            "runs"} <= names  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [c["key"] for c in results["claims"]] == [
        "final_default", "rescaled_lr", "final_default_constant", "final_tuned", "convergence",
        "seed_variance", "lr_robustness", "k_alpha_robustness", "nqm_variance",
    ]  # fmt: skip
    # The schedule is a factor: the default protocol under both, recorded per part and claim.
    assert results["schedules"]["compare"] == ["cosine"]
    assert results["schedules"]["schedule_compare"] == ["constant"]
    schedules = {c["key"]: c["schedule"] for c in results["claims"]}
    assert schedules["final_default"] == "cosine"
    assert schedules["final_default_constant"] == "constant"
    assert [c["role"] for c in results["claims"]][:3] == ["primary", "primary", "descriptive"]
    plan = load_plan("demo")
    assert results["plan"]["digest"] == plan.digest and (out / "plan.json").read_text() == (
        plan.text
    )
    # The quick seeds (0-1, 1000) ran under earlier versions of the plan: its lineage says so.
    assert results["plan"]["status_of_report"] == "exploratory"
    assert (
        "reuse their seeds: seeds 0-1, 1000 of plan 9897ca5e098ef067"
        in (results["plan"]["why_exploratory"])
    )
    # the comparisons and the tuned protocol run on the plan's comparison seeds, the learning-rate
    # selection on others (fresh seeds); the alpha x lr arm is the plain optimizer at half its lr
    seeds = {part: {r["config"]["seed"] for r in results["runs"]
                    if part == r["part"] or part in r.get("also", ())}
             for part in ("compare", "rescaled", "lr_sweep", "tuning", "tuned")}  # fmt: skip
    assert seeds["compare"] == seeds["tuned"] == seeds["rescaled"] == {0, 1}
    assert seeds["lr_sweep"] == seeds["tuning"] == {1000}
    assert {(r["config"]["inner"], r["config"]["lr"]) for r in results["runs"]
            if r["part"] == "rescaled"} == {("sgd", 0.025), ("adamw", 0.001)}  # fmt: skip
    assert {s["method"] for s in results["compare"]} == {
        "sgd", "lookahead(sgd)", "adamw", "lookahead(adamw)"
    }  # fmt: skip
    assert results["provenance"]["version"] == torch_lookahead.__version__
    assert len(results["runs"]) == len({json.dumps(r["config"]) for r in results["runs"]})
    report = (out / "report.md").read_text()
    for claim in results["claims"]:
        assert claim["paper"] in report and claim["protocol"] in report
        assert all(case["verdict"] in report for case in claim["cases"])
    assert "## In short" in report and "## What this lab cannot test here" in report
    # It tuned Lookahead's (k, alpha) and ran both schedules: neither is listed as untested.
    assert ONE_SCHEDULE not in report and TUNED_ALONE not in report
    printed = capsys.readouterr().out
    # Printed to a pipe: whole Markdown rows, whatever the width; a quick run says what it is
    # (at the start and the end) and prints no verdict; the report opens with the same notice.
    assert "| lookahead(adamw) | 0.002 | 5 | 0.5 | 2 |" in printed and "…" not in printed
    assert printed.count(QUICK_NOTICE) == 2
    assert "verdict" not in printed.replace(QUICK_NOTICE, "").lower()
    assert len(printed.splitlines()) < 60
    assert report.splitlines()[2] == f"> {QUICK_REPORT_NOTICE}"
    assert results["quick"] is True

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
    assert (  # the report is written, and the exit status says the check failed
        cli.main(
            ["demo", "--quick", "--out", str(out), "--workers", "1", "--against", str(committed)]
        )
        == 1
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
        (["compare", "--plan", "compare-charlm", "--seeds", "3"], "--plan fixes --seeds"),
        (["compare", "--plan", "demo"], "not a plan of the compare command"),
        (["compare", "--plan", "nope"], "no committed plan called 'nope'"),
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
    assert "## In short" in embedded and "Scope:" in embedded
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
        f"before\n{EMBED_START}\n## Title\n\n### Summary\n\n![a](img/a.png)\n\n"
        f"### The report's figures\n\n![b](img/b.png)\n{EMBED_END}\nafter\n"
    )
    assert sorted(p.name for p in (tmp_path / "docs" / "img").iterdir()) == ["a.png", "b.png"]
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
            "torch_lookahead_lab.cli",
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
    # Whether a job finished before the signal depends on the machine's speed: either way the
    # line says what was kept.
    assert "Interrupted after " in output
    assert "reused next time" in output or "no job had finished, so none was kept" in output
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


def test_version_and_short_help(capsys: pytest.CaptureFixture[str]) -> None:
    import torch_lookahead_lab

    assert cli.main(["--version"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"torch-lookahead-lab {torch_lookahead_lab.__version__} ")
    assert f"torch-lookahead {torch_lookahead.__version__}" in printed
    assert cli.main(["-h"]) == 0
    assert "Usage" in capsys.readouterr().out
    assert cli.main(["demo", "-h"]) == 0
    assert "--quick" in capsys.readouterr().out


def test_nqm_refuses_alpha_zero_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("work started before alpha was checked")

    monkeypatch.setattr(runner, "run_many", must_not_run)
    assert cli.main(["nqm", "--alpha", "0", "--out", str(tmp_path / "nqm")]) == 2
    printed = capsys.readouterr().out
    assert printed.startswith("Error: alpha must be in (0, 1] for the noisy quadratic model")
    assert printed.count("\n") == 1


def test_a_folder_that_cannot_be_written_fails_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc passes every check of a path but takes no new folder; a read-only file system
    (simulated: this test may run as root, whom a read-only folder does not stop) fails the
    test file the command writes before any work."""

    def must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("work started before --out was written to")

    monkeypatch.setattr(runner, "run_many", must_not_run)
    assert cli.main(["nqm", "--quick", "--out", "/proc/torch-lookahead-report"]) == 2
    printed = capsys.readouterr().out
    assert printed.startswith("Error: --out '/proc/torch-lookahead-report': cannot write there")
    assert printed.count("\n") == 1

    def read_only(self: Path, data: bytes) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert cli.main(["nqm", "--quick", "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().out
    assert printed == f"Error: --out {str(tmp_path / 'out')!r}: cannot write there " + (
        "(Read-only file system)\n"
    )


def test_a_write_error_after_the_work_is_one_line_and_keeps_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch_lookahead_lab import report

    def disk_full(out_dir: Path, lab: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "report.md"))

    monkeypatch.setattr(report, "write_report", disk_full)
    out = tmp_path / "out"
    arguments = ["nqm", "--quick", "--lr", "0.5", "--out", str(out), "--workers", "1"]
    assert cli.main(arguments) == 2
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"Error: cannot write {str(out / 'report.md')!r}: No space left on device"
    assert len(list((out / "runs").glob("*.json"))) == 1  # the finished job is kept


def test_ctrl_c_says_what_was_kept_at_every_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch_lookahead_lab import report

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    out = tmp_path / "out"
    arguments = ["nqm", "--quick", "--lr", "0.5", "--out", str(out), "--workers", "1"]
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_many", interrupted)
        assert cli.main(arguments) == 130
    assert capsys.readouterr().out.splitlines()[-1] == (
        "Interrupted after 0 of 1 jobs: no job had finished, so none was kept."
    )
    with monkeypatch.context() as patch:
        patch.setattr(report, "write_report", interrupted)
        assert cli.main(arguments) == 130
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith(
            "Interrupted while writing the report: it is incomplete, but all 1 jobs are kept in"
        )
    )
    assert len(list((out / "runs").glob("*.json"))) == 1


def test_tables_fit_80_columns_without_folding_a_number() -> None:
    """The demo's widest table at 80 columns: columns go, numbers stay whole."""
    from torch_lookahead_lab.console import fit_columns, plain_table

    header = ["optimizer", "lr", "k", "alpha", "seeds", "train loss", "val loss",
              "val accuracy", "mean train loss", "diverged"]  # fmt: skip
    rows = [
        ["lookahead(adamw)", "0.000222", "5", "0.5", "3", "0.02308 ± 0.0031",
         "0.08123 ± 0.012", "0.9752 ± 0.0028", "0.3127 ± 0.021", "0/3"],
    ]  # fmt: skip
    numbers = {cell for row in rows for cell in row if cell[0].isdigit()}
    short_header, short_rows = fit_columns(header, rows, 80, cli._SUMMARY_DROPPABLE)
    lines = plain_table(short_header, short_rows)
    assert all(len(line) <= 80 for line in lines)
    kept = {cell for row in short_rows for cell in row}
    assert {"0.000222", "0.9752 ± 0.0028", "0.08123 ± 0.012"} <= kept
    assert all(cell in " ".join(lines) for cell in kept & numbers)
    assert fit_columns(header, rows, 200, cli._SUMMARY_DROPPABLE) == (header, rows)


def test_prose_wraps_at_word_boundaries() -> None:
    from torch_lookahead_lab.console import wrap

    text = "Lookahead's final val accuracy minus the inner optimizer's, per seed " * 3
    lines = wrap(text, 40)
    assert all(len(line) <= 40 for line in lines)
    assert " ".join(lines).split() == text.split()
