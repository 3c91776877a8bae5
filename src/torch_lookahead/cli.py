"""The ``torch-lookahead`` command: the lab (demo, compare, sweep, stability, nqm).

Thin by design: it parses the flags, hands the lab an experiment to run, and prints what came
back. Needs the ``lab`` extra (from a clone: ``pip install -c constraints.txt '.[lab]'``).
"""

from __future__ import annotations

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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise SystemExit(
        f"torch-lookahead's command line needs the 'lab' extra ({error.name} is missing): "
        "from a clone of the repository, pip install -c constraints.txt '.[lab]'"
    ) from error

__all__ = ["app", "main"]

app = typer.Typer(
    name="torch-lookahead",
    help="Lookahead for PyTorch: see what it does (demo, compare, sweep, stability, nqm).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich markup would swallow "[default: ...]"
)
console = Console()


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input (ValueError) becomes a one-line message and exit status 2."""
    try:
        yield
    except ValueError as error:
        console.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@contextmanager
def _progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A progress bar on a terminal, a line every tenth of the jobs in a log; yields the
    callback to call as each job completes."""
    if not console.is_terminal:
        done = 0
        started = time.perf_counter()

        def count(*_: object) -> None:
            nonlocal done
            done += 1
            if done == total or done * 10 // total > (done - 1) * 10 // total:
                _say(f"{description}: {done}/{total} ({time.perf_counter() - started:.0f} s)")

        yield count
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task_id = progress.add_task(description, total=total)
        yield lambda *_: progress.advance(task_id)


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


def _out_dir(out: Path | None, command: str) -> Path:
    """The report folder, checked before any work: a folder this process can write."""
    from torch_lookahead.lab.report import check_out_dir

    path = out if out is not None else Path("runs") / command
    check_out_dir(path)
    return path


def _device(device: str, task_name: str) -> str:
    import torch

    from torch_lookahead.lab.tasks import get_task

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
    from torch_lookahead.lab.experiments import RunOptions
    from torch_lookahead.lab.tasks import check_schedule, get_task

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
    options = RunOptions(data_dir, resolved, schedule, unsafe_skip_checksums)
    return task.quick if quick else task.full, options, workers


def _execute(
    experiment: Any, out_dir: Path, workers: int | None, against: Path | None = None
) -> None:
    """Run ``experiment``, write its report into ``out_dir`` and print what it measured (and,
    with ``against``, where its numbers differ from the report there)."""
    from torch_lookahead.lab.experiments import run_experiment
    from torch_lookahead.lab.report import write_report

    jobs = experiment.jobs()
    _say(f"{experiment.title}: {len(jobs)} jobs (runs already in {out_dir / 'runs'} are reused)")
    try:
        with _progress_bar("jobs", len(jobs)) as advance:
            lab = run_experiment(
                experiment,
                out_dir / "runs",
                command=_command_line(),
                workers=workers,
                on_result=advance,
            )
    except KeyboardInterrupt:
        # run_many has already terminated its workers on the way out.
        _say(f"Interrupted. Finished jobs are kept in {out_dir / 'runs'} and reused next time.")
        raise typer.Exit(130) from None
    report = write_report(out_dir, lab)
    _print_results(lab)
    if against is not None:
        _print_differences(against, out_dir)
    _say(f"Report: {report}  ({lab.seconds:.0f} s)")


def _say(text: str) -> None:
    """One line, never wrapped or cut in a log (a terminal wraps it itself)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal (cells fold rather than being cut); Markdown rows otherwise,
    so that a log or a pipe of any width keeps every number whole."""
    from torch_lookahead.lab.report import markdown_table

    if console.is_terminal:
        table = Table(title=title)
        for column in header:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    _say(title)
    for line in markdown_table(header, rows):
        _say(line)


def _print_results(lab: Any) -> None:
    from torch_lookahead.lab.metrics import summarize
    from torch_lookahead.lab.report import build_claims, nqm_rows, summary_rows

    for part, title in (
        (lab.compare, "final metrics, mean ± std over seeds"),
        (lab.lr_sweep, "learning-rate sweep, final metrics, mean ± std over seeds"),
        (lab.k_alpha, "(k, alpha) grid, final metrics, mean ± std over seeds"),
    ):
        if part:
            _print_table(
                f"{lab.task}: {title}", *summary_rows(summarize(part), lab.headline_metric)
            )
    if lab.nqm:
        _print_table("noisy quadratic model: steady-state expected loss", *nqm_rows(lab.nqm))
    for number, claim in enumerate(build_claims(lab), 1):
        _say("")
        _say(f"{number}. {claim.paper}")
        _say(f"   Protocol: {claim.protocol}")
        _say(f"   Verdict: {claim.verdict}")
        for sentence in claim.measured:
            _say(f"   - {sentence}")
    _say("")


def _print_differences(against: Path, out_dir: Path) -> None:
    import json

    from torch_lookahead.lab.report import differences_from

    committed = json.loads((against / "results.json").read_text())
    fresh = json.loads((out_dir / "results.json").read_text())
    _say(f"Against {against}: {differences_from(committed, fresh)}")


def _against(against: Path | None) -> Path | None:
    if against is not None and not (against / "results.json").is_file():
        raise ValueError(f"--against {str(against)!r}: no results.json there")
    return against


AgainstOption = Annotated[
    Path | None,
    typer.Option(
        "--against",
        help="A committed report folder (reports/demo): print where this run's numbers differ "
        "from it.",
    ),
]


# --------------------------------------------------------------------------------------- commands


@app.command()
def demo(
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
    against: AgainstOption = None,
) -> None:
    """The main job: the paper's claims put to the test on digits and the noisy quadratic model.

    Digits with SGD+momentum and AdamW, each plain and in Lookahead(k=5, alpha=0.5), at the
    task's learning rate and cosine schedule over 5 seeds (the paper's default protocol); a
    learning-rate sweep over 3 seeds (robustness, and each method at its best learning rate);
    a (k, alpha) grid for SGD; the noisy-quadratic check. Prints every claim with its interval
    and verdict and writes a report folder (report.md, results.json, CSV, PNG).
    """
    from torch_lookahead.lab.experiments import demo_experiment

    with _user_errors():
        out_dir = _out_dir(out, "demo")
        against = _against(against)
        experiment = demo_experiment(quick)
    _execute(experiment, out_dir, workers, against)


@app.command()
def compare(
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
) -> None:
    """Each inner optimizer plain and wrapped in Lookahead(k, alpha), over seeds.

    The paper's default protocol: the task's learning rate and schedule, compared at the end of
    training. Prints the final metrics (mean ± std over seeds) and the claims these runs can
    speak to, each with its interval and verdict.
    """
    from torch_lookahead.lab.experiments import compare_experiment, parse_name_list

    with _user_errors():
        out_dir = _out_dir(out, f"compare-{task}")
        inners = parse_name_list(inner, "inner")
        settings, options, workers = _prepare_task(
            task, data_dir, device, workers, quick, schedule, unsafe_skip_checksums
        )
        experiment = compare_experiment(
            task, inners, seeds, settings, k=k, alpha=alpha, options=options
        )
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
    ] = "0.5,0.8",
    seeds: SeedsOption = 3,
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
    schedule: ScheduleOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    unsafe_skip_checksums: UnsafeOption = False,
) -> None:
    """Learning-rate robustness, each method at its best learning rate, and a (k, alpha) map.

    The learning-rate sweep compares plain and Lookahead with the first k and alpha given (and
    gives the paper's tuned protocol: each method at its own best learning rate); the heat map
    covers every (k, alpha) at the task's learning rate.
    """
    from torch_lookahead.lab.experiments import (
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
            task, inners, seeds, settings, lrs=lrs, ks=ks, alphas=alphas, options=options
        )
    _execute(experiment, out_dir, workers)


@app.command()
def stability(
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
) -> None:
    """Learning stability: the range of learning rates, with and without warm-up, that train.

    A small causal Transformer on the charlm corpus (charlm-transformer, no gradient clipping)
    with Adam alone and in Lookahead(k=5, alpha=0.5), over learning rates from 0.003 to 1,
    without warm-up and with 50 steps of linear warm-up, over 6 seeds. Per seed, the largest
    learning rate that trains, compared in log10(lr) with a paired interval; and the final
    validation bits per character at each learning rate. Writes report.md, results.json and
    stability.png.
    """
    from torch_lookahead.lab.stability import (
        STABILITY,
        STABILITY_QUICK,
        headline_rows,
        run_stability,
        stability_configs,
        write_stability_report,
    )

    plan = STABILITY_QUICK if quick else STABILITY
    with _user_errors():
        out_dir = _out_dir(out, "stability")
        total = len(stability_configs(plan))
    _say(f"torch-lookahead stability: {total} runs (runs already in {out_dir / 'runs'} are reused)")
    try:
        with _progress_bar("runs", total) as advance:
            lab = run_stability(
                plan, out_dir / "runs", command=_command_line(), workers=workers,
                on_result=advance,
            )  # fmt: skip
    except KeyboardInterrupt:
        _say(f"Interrupted. Finished runs are kept in {out_dir / 'runs'} and reused next time.")
        raise typer.Exit(130) from None
    with _user_errors():
        report = write_stability_report(out_dir, lab)
    _print_table(
        "largest learning rate that trains, Lookahead minus alone, log10(lr)",
        ["warm-up", "effect [95% CI]", "verdict"],
        headline_rows(lab),
    )
    _say(f"Report: {report}  ({lab.seconds:.0f} s)")


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
    from torch_lookahead.lab.experiments import DEMO, DEMO_QUICK, nqm_experiment, parse_lr_range

    plan = DEMO_QUICK if quick else DEMO
    with _user_errors():
        out_dir = _out_dir(out, "nqm")
        experiment = nqm_experiment(
            parse_lr_range(lr), k=k, alpha=alpha, chains=plan.nqm_chains if quick else chains,
            burn_in_steps=plan.nqm_burn_in_steps, measured_steps=plan.nqm_measured_steps,
        )  # fmt: skip
    _execute(experiment, out_dir, workers)


@app.command("embed-report", hidden=True)
def embed_report_command(
    report_dir: Annotated[Path, typer.Argument(help="A report folder (reports/demo).")],
    doc: Annotated[Path, typer.Argument(help="The docs page with lab-report markers.")],
    assets: Annotated[Path, typer.Argument(help="Where the figures are copied.")],
) -> None:
    """Copy a report into a docs page between its lab-report markers (for docs/lab.md)."""
    from torch_lookahead.lab.report import embed_report

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
