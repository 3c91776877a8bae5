"""The ``torch-lookahead`` command: the lab (demo, compare, sweep, stability, nqm).

Thin by design: it parses the flags, hands the lab an experiment to run, has the report written
and prints its short form: the final metrics and the verdicts (none for a ``--quick`` run), in
tables that fit the terminal, Markdown rows when piped. Every error a user can cause is one line
``Error: ...`` and exit status 2, before any work where it can be known.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

try:
    import typer
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
except ImportError as error:  # pragma: no cover - exercised only without the dependencies
    raise SystemExit(
        f"torch-lookahead needs {error.name}, a dependency of torch-lookahead-lab: "
        "pip install -c constraints.txt ./lab (from the repository root)"
    ) from error

from torch_lookahead_lab.console import QUICK_NOTICE, eta_text, fit_columns, plain_table, wrap

__all__ = ["app", "main"]

app = typer.Typer(
    name="torch-lookahead",
    help="Lookahead for PyTorch: see what it does (demo, compare, sweep, stability, nqm).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich markup would swallow "[default: ...]"
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()


def _version(show: bool) -> None:
    if show:
        import torch

        import torch_lookahead
        import torch_lookahead_lab

        _say(
            f"torch-lookahead-lab {torch_lookahead_lab.__version__} (torch-lookahead "
            f"{torch_lookahead.__version__}, torch {torch.__version__})"
        )
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the versions and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Lookahead for PyTorch: see what it does (demo, compare, sweep, stability, nqm)."""


def _error(message: str) -> typer.Exit:
    """Print ``Error: message`` on one line; the exit (status 2) for the caller to raise."""
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input (ValueError) and a folder or file that cannot be written (OSError) become a
    one-line message and exit status 2."""
    try:
        yield
    except ValueError as error:
        raise _error(str(error)) from None
    except OSError as error:
        where = f" {error.filename!r}" if error.filename else ""
        raise _error(f"cannot write{where}: {error.strerror or error}") from None


def _job_label(result: Any) -> str:
    from torch_lookahead_lab.nqm import NQMPoint
    from torch_lookahead_lab.reproduce import run_label

    if isinstance(result, NQMPoint):
        return f"noisy quadratic model lr {result.lr:g}"
    return f"{result.config.task} {run_label(dataclasses.asdict(result.config))}"


@contextmanager
def _progress_bar(total: int, finished: list[int]) -> Iterator[Callable[..., None]]:
    """A progress bar on a terminal (the job that finished last, the count, the elapsed time
    and an estimate of the time left); in a log, a line every tenth of the jobs with the time
    left. Yields the callback to call as each job completes; ``finished[0]`` counts them."""
    started = time.perf_counter()
    if not console.is_terminal:

        def count(result: Any, from_cache: bool) -> None:
            finished[0] += 1
            done = finished[0]
            if done == total or done * 10 // total > (done - 1) * 10 // total:
                elapsed = time.perf_counter() - started
                left = eta_text(done, total, elapsed)
                _say(f"jobs: {done}/{total} ({elapsed:.0f} s{', ' + left if left else ''})")

        yield count
        return
    columns = (
        TextColumn("{task.description}", style="dim"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task_id = progress.add_task("starting", total=total)

        def advance(result: Any, from_cache: bool) -> None:
            finished[0] += 1
            label = _job_label(result)[: max(10, console.width - 50)]
            progress.update(task_id, advance=1, description=label)

        yield advance
    _say(f"jobs: {finished[0]}/{total} in {time.perf_counter() - started:.0f} s")


def _command_line() -> str:
    return "torch-lookahead " + shlex.join(sys.argv[1:])


# ---------------------------------------------------------------------------------------- options

OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Report folder; runs already in it are reused.",
        show_default="runs/<command>",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Parallel jobs, one torch thread each.",
        min=1,
        show_default="the CPU count",
    ),
]
QuickOption = Annotated[
    bool,
    typer.Option(
        "--quick", help="A smoke run: few steps and seeds; it checks the pipeline, not the claims."
    ),
]
DataDirOption = Annotated[
    str | None,
    typer.Option("--data-dir", help="Folder with the CIFAR-10 python batches (cifar10 only)."),
]
DeviceOption = Annotated[
    str,
    typer.Option("--device", help="cpu, cuda, cuda:1, ...; auto: cuda for cifar10 when present."),
]
TaskOption = Annotated[
    str, typer.Option("--task", help="digits, charlm, charlm-transformer or cifar10.")
]
SeedsOption = Annotated[int, typer.Option("--seeds", help="Seeds per setting (0, 1, ...).", min=1)]
KOption = Annotated[int, typer.Option("--k", help="Lookahead's synchronisation period.")]
ScheduleOption = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        help="Learning-rate schedule: constant, cosine (to zero) or step (divided by 5 at 30%, "
        "60% and 80% of the run).",
        show_default="the task's: cosine, step for cifar10",
    ),
]
UnsafeOption = Annotated[
    bool,
    typer.Option(
        "--unsafe-skip-checksums",
        help="cifar10: read batches that are not the official release's (unsafe: unpickling a "
        "file runs its code; only for a copy of your own that you trust).",
    ),
]
AlphaOption = Annotated[float, typer.Option("--alpha", help="Lookahead's slow step size.")]
SeedOffsetOption = Annotated[
    int,
    typer.Option(
        "--seed-offset",
        help="Add this to every seed: a confirmatory rerun on fresh seeds.",
        min=0,
    ),
]


def _out_dir(out: Path | None, command: str) -> Path:
    """The report folder, checked (not yet made) with the other arguments."""
    from torch_lookahead_lab.report import check_out_dir

    path = out if out is not None else Path("runs") / command
    check_out_dir(path)
    return path


def _make_writable(path: Path) -> None:
    """Make the report folder and write a test file into it before any work: the check that
    holds on any file system (a read-only mount, /proc, a full disk)."""
    try:
        (path / "runs").mkdir(parents=True, exist_ok=True)
        probe = path / ".torch-lookahead-write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"--out {str(path)!r}: cannot write there ({error.strerror or error})"
        ) from None


def _device(device: str, task_name: str) -> str:
    import torch

    from torch_lookahead_lab.tasks import get_task

    if device == "auto":
        return "cuda" if get_task(task_name).prefers_gpu and torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device")
    return device


def _prepare_task(
    task_name: str,
    data_dir: str | None,
    device: str,
    workers: int | None,
    quick: bool,
    schedule: str | None,
    unsafe_skip_checksums: bool,
) -> tuple[Any, Any, int | None]:
    """Validate the task and its data; pick the settings, the run options and the worker
    count."""
    from torch_lookahead_lab.experiments import RunOptions
    from torch_lookahead_lab.tasks import check_schedule, get_task

    task = get_task(task_name)
    if schedule is not None:
        check_schedule(schedule)
    task.check_data(data_dir, verify=not unsafe_skip_checksums)
    resolved = _device(device, task_name)
    if resolved.startswith("cuda"):
        workers = 1  # one process owns the GPU
    elif task.prefers_gpu:
        console.print(
            f"[yellow]{task_name} is meant for a GPU; on the CPU a full run is impractically "
            "slow (--quick for a smoke run).[/]"
        )
    options = RunOptions(
        data_dir, resolved, schedule, unsafe_skip_checksums, evaluate_test=task.test_at_ends
    )
    return task.quick if quick else task.full, options, workers


def _execute(
    experiment: Any,
    out_dir: Path,
    workers: int | None,
    against: Path | None = None,
) -> None:
    """Run ``experiment``, write its report into ``out_dir`` and print its short form (and,
    with ``against``, whether it reproduced the report there). Ctrl-C at any stage says what
    was kept; a write error is one line and exit status 2."""
    import os

    from torch_lookahead_lab.experiments import run_experiment
    from torch_lookahead_lab.report import write_report

    with _user_errors():
        _make_writable(out_dir)
    jobs = experiment.jobs()
    later = getattr(experiment, "later_jobs", 0)
    cache = out_dir / "runs"
    quick = experiment.quick
    if quick:
        _say(QUICK_NOTICE)
    pool = min(workers or os.cpu_count() or 1, len(jobs))
    starting = f"; starting {pool} worker processes" if pool > 1 else ""
    later_what = getattr(experiment, "later_what", "for the tuned protocol")
    then = f", then up to {later} {later_what}" if later else ""
    _say(
        f"{experiment.title}: {len(jobs)} jobs{then} (finished ones in {cache} are reused)"
        f"{starting}"
    )
    finished = [0]
    try:
        with _user_errors(), _progress_bar(len(jobs) + later, finished) as advance:
            lab = run_experiment(
                experiment, cache, command=_command_line(), workers=workers, on_result=advance
            )
    except KeyboardInterrupt:
        # run_many has already terminated its workers on the way out.
        kept = (
            f"the {finished[0]} finished jobs are kept in {cache} and reused next time"
            if finished[0]
            else "no job had finished, so none was kept"
        )
        _say(f"Interrupted after {finished[0]} of {len(jobs) + later} jobs: {kept}.")
        raise typer.Exit(130) from None
    try:
        with _user_errors():
            report = write_report(out_dir, lab)
    except KeyboardInterrupt:
        _say(
            f"Interrupted while writing the report: it is incomplete, but all {len(jobs)} jobs "
            f"are kept in {cache}; run the command again to write it without recomputing them."
        )
        raise typer.Exit(130) from None
    _print_results(lab)
    reproduced = against is None or _print_differences(against, out_dir)
    if quick:
        _say(QUICK_NOTICE)
    _say(f"Report: {report}  ({lab.seconds:.0f} s)")
    if not reproduced:  # the report is written; the check it was asked for failed
        raise typer.Exit(1)


def _say(text: str) -> None:
    """One line in a log, never wrapped or cut; on a terminal, wrapped at spaces to its width
    (a word longer than the width, such as a path, stays whole)."""
    lines = (
        wrap(text, console.width) if console.is_terminal and len(text) > console.width else [text]
    )
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_table(
    title: str,
    header: list[str],
    rows: list[list[str]],
    *,
    droppable: tuple[int, ...] = (),
    shortenable: tuple[int, ...] = (),
) -> None:
    """On a terminal, aligned columns that fit its width: ``droppable`` columns go first, then
    ``shortenable`` text is cut, and no number is ever folded; otherwise (a pipe, a log) whole
    Markdown rows, whatever the width."""
    from torch_lookahead_lab.report import markdown_table

    if console.is_terminal:
        header, rows = fit_columns(header, rows, console.width, droppable, shortenable)
        lines = [*wrap(title, console.width), *plain_table(header, rows)]
    else:
        lines = [title, *markdown_table(header, rows)]
    for line in lines:
        _say(line)
    _say("")


# Columns of report.summary_rows, least needed first on a narrow terminal.
_SUMMARY_DROPPABLE = (8, 9, 5, 3, 2)


def _print_verdicts(claims: list[Any]) -> None:
    """The verdict table of the report: one row per case, the claim's title as a heading on a
    terminal (its full statement, protocol and numbers are in the report)."""
    from torch_lookahead_lab.report import verdict_rows

    header, rows = verdict_rows(claims)
    title = (
        "Verdicts (effect: Lookahead minus the baseline, 95% CI; the column 'if' says which "
        "side favours Lookahead; details in the report)"
    )
    if not console.is_terminal:
        _print_table(title, header, rows)
        return
    short_header, short_rows = fit_columns(
        ["case", "if", "effect [95% CI]", "verdict"],
        [row[3:] for row in rows],
        console.width - 4,
        shortenable=(0, 3),
    )
    table = plain_table(short_header, short_rows)
    for line in wrap(title, console.width):
        _say(line)
    _say("    " + table[0])
    _say("    " + table[1])
    previous = ""
    for row, line in zip(rows, table[2:], strict=True):
        if row[0] != previous:
            previous = row[0]
            for heading in wrap(f"{row[0]}. {row[1]} ({row[2]})", console.width, indent="   "):
                _say(heading)
        _say("    " + line)
    _say("")


def _print_results(lab: Any) -> None:
    from torch_lookahead_lab.confirmatory import ConfirmatoryResults, confirmatory_claims
    from torch_lookahead_lab.metrics import summarize
    from torch_lookahead_lab.report import build_claims, nqm_rows, summary_rows
    from torch_lookahead_lab.stability import StabilityResults, stability_claims

    if isinstance(lab, StabilityResults):
        claims = stability_claims(lab)
    elif isinstance(lab, ConfirmatoryResults):
        claims = confirmatory_claims(lab)
    else:
        claims = build_claims(lab)
        part, name = (lab.compare, "final metrics") if lab.compare else (lab.lr_sweep, "sweep")
        if part:
            _print_table(
                f"{lab.task}: {name}, mean ± std over seeds (every table is in the report)",
                *summary_rows(summarize(part), lab.headline_metric),
                droppable=_SUMMARY_DROPPABLE,
            )
        if lab.nqm:
            _print_table(
                "noisy quadratic model: steady-state expected loss",
                *nqm_rows(lab.nqm),
                droppable=(6, 1, 3),
            )
    if not lab.quick:
        _print_verdicts(claims)
        if not isinstance(lab, StabilityResults | ConfirmatoryResults):
            from torch_lookahead_lab.report import _scope, summary_sentences

            for sentence in summary_sentences(claims, _scope(lab)):
                _say(sentence)
            _say("")


def _print_differences(against: Path, out_dir: Path) -> bool:
    """Print whether the report in ``out_dir`` reproduces the one in ``against``; return it."""
    import json

    from torch_lookahead_lab.reproduce import compare_payloads

    committed = json.loads((against / "results.json").read_text())
    comparison = compare_payloads(committed, json.loads((out_dir / "results.json").read_text()))
    _say(f"Against {against}: {comparison.line()}")
    return comparison.reproduced


def _against(against: Path | None) -> Path | None:
    if against is not None and not (against / "results.json").is_file():
        raise ValueError(f"--against {str(against)!r}: no results.json there")
    return against


AgainstOption = Annotated[
    Path | None,
    typer.Option(
        "--against",
        help="A committed report folder (reports/demo): print whether this run reproduces it "
        "and where its numbers differ; exit status 1 if it does not reproduce it.",
    ),
]


# --------------------------------------------------------------------------------------- commands


@app.command()
def demo(
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
    against: AgainstOption = None,
    seed_offset: SeedOffsetOption = 0,
) -> None:
    """The main job: the paper's claims put to the test on digits and the noisy quadratic model.

    Run by its committed plan (plans/demo.json). Two primary claims on digits' held-out test
    split over 10 seeds, Holm-adjusted: SGD+momentum and AdamW, each plain and in
    Lookahead(k=5, alpha=0.5) at the task's learning rate (the paper's default protocol), and
    Lookahead against its inner optimizer at alpha x lr (the effective-learning-rate control).
    Descriptive: the default protocol with a constant learning rate (the schedule as a factor),
    the tuned protocol (each method's best of equally many trials over its own space, Lookahead's
    including k and alpha, selected on the validation split over 3 other seeds, a grid extended
    where an optimum is at its edge), convergence, the variance over seeds, learning-rate
    robustness, every (k, alpha) of a 3x3 grid against plain SGD; and the noisy-quadratic
    implementation check.
    Prints every claim with its verdict and writes a report folder (report.md, results.json,
    plan.json, CSV, PNG).
    """
    from torch_lookahead_lab.experiments import demo_experiment

    with _user_errors():
        out_dir = _out_dir(out, "demo")
        against = _against(against)
        experiment = demo_experiment(quick, seed_offset)
    _execute(experiment, out_dir, workers, against)


@app.command()
def compare(
    ctx: typer.Context,
    task: TaskOption = "digits",
    inner: Annotated[
        str, typer.Option("--inner", help="Comma-separated inner optimizers, e.g. adamw,sgd.")
    ] = "sgd,adamw,radam",
    seeds: SeedsOption = 3,
    k: KOption = 5,
    alpha: AlphaOption = 0.5,
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
    schedule: ScheduleOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    unsafe_skip_checksums: UnsafeOption = False,
    seed_offset: SeedOffsetOption = 0,
    plan: Annotated[
        str | None,
        typer.Option(
            "--plan",
            help="A committed plan (plans/NAME.json, e.g. compare-charlm) that fixes the task, "
            "inner optimizers, seeds, k, alpha and schedule: a confirmatory comparison.",
        ),
    ] = None,
) -> None:
    """Each inner optimizer plain and wrapped in Lookahead(k, alpha), over seeds.

    The paper's default protocol: the task's learning rate and schedule, compared at the end of
    training, on the task's held-out test split where it has one. Prints the final metrics
    (mean ± std over seeds) and the claims these runs can speak to, each with its interval and
    verdict. Without --plan the flags make an exploratory plan; with it, the committed plan
    decides (--seed-offset moves its seeds).
    """
    from torch_lookahead_lab.experiments import (
        compare_experiment,
        parse_name_list,
        planned_compare_experiment,
    )
    from torch_lookahead_lab.plans import load_plan

    with _user_errors():
        if plan is not None:
            fixed = ("task", "inner", "seeds", "k", "alpha", "schedule")
            given = [
                f"--{name}"
                for name in fixed
                if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
            ]
            if given:
                raise ValueError(f"--plan fixes {', '.join(given)}: leave them out")
            task = load_plan(plan).data.get("task", task)
        out_dir = _out_dir(out, f"compare-{task}")
        settings, options, workers = _prepare_task(
            task, data_dir, device, workers, quick, schedule, unsafe_skip_checksums
        )
        if plan is not None:
            experiment = planned_compare_experiment(
                plan, options=options, quick=quick, seed_offset=seed_offset
            )
        else:
            experiment = compare_experiment(
                task, parse_name_list(inner, "inner"), seeds, settings, k=k, alpha=alpha,
                options=options, quick=quick, seed_offset=seed_offset,
            )  # fmt: skip
    _execute(experiment, out_dir, workers)


@app.command()
def sweep(
    task: TaskOption = "digits",
    inner: Annotated[
        str, typer.Option("--inner", help="Comma-separated inner optimizers.")
    ] = "adamw",
    lr: Annotated[
        str | None,
        typer.Option(
            "--lr",
            help="LOW:HIGH:COUNT (log-spaced) or a comma-separated list.",
            show_default="the task's learning rate times 1/9, 1/3, 1, 3, 9",
        ),
    ] = None,
    k: Annotated[
        str, typer.Option("--k", help="Comma-separated k values of the heat map.")
    ] = "5,10,20",
    alpha: Annotated[
        str, typer.Option("--alpha", help="Comma-separated alpha values of the heat map.")
    ] = "0.3,0.5,0.8",
    extend_max: Annotated[
        int,
        typer.Option(
            "--extend-max",
            help="A method whose best learning rate is the grid's largest (smallest) gets up to "
            "this many more beyond it, a grid step apart; still at the edge: no verdict on it. "
            "Above 0, a --lr list must be evenly spaced in log.",
            min=0,
        ),
    ] = 2,
    seeds: SeedsOption = 3,
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
    schedule: ScheduleOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    unsafe_skip_checksums: UnsafeOption = False,
    seed_offset: SeedOffsetOption = 0,
) -> None:
    """Learning-rate robustness, each method at its best learning rate, and a (k, alpha) map.

    The learning-rate sweep compares plain and Lookahead with the first k and alpha given (and
    gives the paper's tuned protocol: each method at its own best learning rate); the heat map
    covers every (k, alpha) at the task's learning rate. A method whose best learning rate is at
    an edge of the grid gets up to --extend-max more learning rates beyond it, by the grid's own
    factor; where its best, or a seed's width within 0.01 of it, is still at the edge, the tuned
    comparison or the learning-rate robustness of its inner optimizer gets no verdict (also with
    --extend-max 0, which extends nothing). A --lr list must be evenly spaced in log unless
    --extend-max is 0, and may not repeat a learning rate. The plan.json of the report records
    the rule.
    """
    from torch_lookahead_lab.experiments import (
        parse_float_list,
        parse_int_list,
        parse_lr_range,
        parse_name_list,
        sweep_experiment,
    )

    with _user_errors():
        out_dir = _out_dir(out, f"sweep-{task}")
        inners = parse_name_list(inner, "inner")
        ks = parse_int_list(k, "k")
        alphas = parse_float_list(alpha, "alpha")
        lrs = parse_lr_range(lr) if lr is not None else None
        settings, options, workers = _prepare_task(
            task, data_dir, device, workers, quick, schedule, unsafe_skip_checksums
        )
        experiment = sweep_experiment(
            task,
            inners,
            seeds,
            settings,
            lrs=lrs,
            ks=ks,
            alphas=alphas,
            max_extensions=extend_max,
            options=options,
            quick=quick,
            seed_offset=seed_offset,
        )
    _execute(experiment, out_dir, workers)


@app.command()
def stability(
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
    confirmatory: Annotated[
        bool,
        typer.Option(
            "--confirmatory",
            help="The confirmatory study of the committed plan (plans/stability.json), each "
            "seed's grid run from the top down to its edge: hundreds of runs.",
        ),
    ] = False,
    seed_offset: SeedOffsetOption = 0,
) -> None:
    """Learning stability: the range of learning rates, with and without warm-up, that train.

    The pilot (default): a small causal Transformer on the charlm corpus (charlm-transformer,
    no gradient clipping) with Adam alone and in Lookahead(k=5, alpha=0.5), over learning rates
    from 0.003 to 1, without warm-up and with 50 steps of linear warm-up, over 6 seeds; per
    seed, the largest learning rate that trains. Writes report.md, results.json and
    stability.png. --confirmatory: the study of the committed plan, on fresh seeds: pre-LN and
    post-LN Transformers, Adam, Lookahead(Adam) and Adam at alpha x lr over 11 learning rates,
    a run unstable by its per-step training loss; per seed, the largest stable learning rate,
    found from the top of the grid down (a run ends where it turns unstable).
    """
    from torch_lookahead_lab.experiments import confirmatory_experiment, stability_experiment

    with _user_errors():
        out_dir = _out_dir(out, "stability-confirmatory" if confirmatory else "stability")
        if confirmatory:
            experiment: Any = confirmatory_experiment(quick, seed_offset)
        elif seed_offset:
            raise ValueError("--seed-offset is for --confirmatory (the pilot is not rerun)")
        else:
            experiment = stability_experiment(quick)
    _execute(experiment, out_dir, workers)


@app.command()
def nqm(
    lr: Annotated[
        str, typer.Option("--lr", help="Learning rates: LOW:HIGH:COUNT or a comma-separated list.")
    ] = "0.1,0.2,0.4,0.8,1.2,1.6,1.9",
    k: KOption = 5,
    alpha: AlphaOption = 0.5,
    chains: Annotated[int, typer.Option("--chains", help="Independent chains.", min=10)] = 1000,
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
) -> None:
    """The noisy quadratic model: simulation against the closed form.

    Steady-state expected loss of SGD and Lookahead(SGD), simulated with the real optimizers,
    against the closed forms of the paper's Proposition 2, over a grid of learning rates.
    """
    from torch_lookahead_lab.experiments import demo_plan, nqm_experiment, parse_lr_range

    plan = demo_plan(quick)
    with _user_errors():
        out_dir = _out_dir(out, "nqm")
        experiment = nqm_experiment(
            parse_lr_range(lr), k=k, alpha=alpha, chains=plan.nqm_chains if quick else chains,
            burn_in_steps=plan.nqm_burn_in_steps, measured_steps=plan.nqm_measured_steps,
            quick=quick,
        )  # fmt: skip
    _execute(experiment, out_dir, workers)


@app.command("rerender", hidden=True)
def rerender_command(
    report_dir: Annotated[Path, typer.Argument(help="A committed report folder.")],
) -> None:
    """Write a stability pilot or compare report again from its recorded runs, with today's
    claims and verdicts (the runs are not recomputed)."""
    from torch_lookahead_lab.report import rerender

    with _user_errors():
        _say(f"Report: {rerender(report_dir)}")


@app.command("embed-report", hidden=True)
def embed_report_command(
    report_dir: Annotated[Path, typer.Argument(help="A report folder (reports/demo).")],
    doc: Annotated[Path, typer.Argument(help="The docs page with lab-report markers.")],
    assets: Annotated[Path, typer.Argument(help="Where the figures are copied.")],
) -> None:
    """Copy a report into a docs page between its lab-report markers (for docs/lab.md)."""
    from torch_lookahead_lab.report import embed_report

    with _user_errors():
        embed_report(report_dir, doc, assets)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-lookahead`` console script."""
    try:
        # Outside standalone mode click returns the exit code of typer.Exit instead of raising.
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as done:  # also Ctrl-C, which typer turns into Exit(130)
        return int(done.exit_code)
    except Exception as error:  # click's usage errors carry their own message and exit code
        show = getattr(error, "show", None)
        if callable(show):
            show()
            return int(getattr(error, "exit_code", 2))
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
