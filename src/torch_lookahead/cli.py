"""The ``torch-lookahead`` command: the lab (demo, compare, sweep, nqm) and the benchmarks.

Needs the ``lab`` extra: ``pip install 'torch-lookahead[lab]'``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

try:
    import typer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise SystemExit(
        f"torch-lookahead's command line needs the 'lab' extra ({error.name} is missing): "
        "pip install 'torch-lookahead[lab]'"
    ) from error

__all__ = ["app", "main"]

app = typer.Typer(
    name="torch-lookahead",
    help="Lookahead for PyTorch: see what it does (demo, compare, sweep, nqm) and time it (bench).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
T = TypeVar("T")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input (ValueError) becomes a one-line message and exit status 2."""
    try:
        yield
    except ValueError as error:
        console.print(f"[bold red]Error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None


@contextmanager
def _progress_bars() -> Iterator[Callable[[str, int], Callable[..., None]]]:
    """Yields ``bar(description, total)``, which adds a progress bar and returns its advance
    callback (safe to call from another thread)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:

        def bar(description: str, total: int) -> Callable[..., None]:
            task_id = progress.add_task(description, total=total)
            return lambda *_: progress.advance(task_id)

        yield bar


def _command_line() -> str:
    return "torch-lookahead " + shlex.join(sys.argv[1:])


# ---------------------------------------------------------------------------------------- options

OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Report folder; runs already in it are reused. [default: runs/<command>]"
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers", help="Parallel runs, one torch thread each. [default: CPU count]", min=1
    ),
]
QuickOption = Annotated[bool, typer.Option("--quick", help="A smoke run: few steps, few seeds.")]
DataDirOption = Annotated[
    str | None,
    typer.Option("--data-dir", help="Folder with the CIFAR-10 python batches (cifar10 only)."),
]
DeviceOption = Annotated[
    str,
    typer.Option("--device", help="cpu, cuda, cuda:1, ...; auto: cuda for cifar10 when present."),
]
TaskOption = Annotated[str, typer.Option("--task", help="digits, charlm or cifar10.")]
SeedsOption = Annotated[int, typer.Option("--seeds", help="Seeds per setting (0, 1, ...).", min=1)]
KOption = Annotated[int, typer.Option("--k", help="Lookahead's synchronisation period.", min=1)]
AlphaOption = Annotated[float, typer.Option("--alpha", help="Lookahead's slow step size.")]


def _out_dir(out: Path | None, command: str) -> Path:
    return out if out is not None else Path("runs") / command


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


def _prepare_task(task_name: str, data_dir: str | None, device: str, workers: int | None) -> Any:
    """Validate the task and its data; pick the device and the worker count."""
    from torch_lookahead.lab.tasks import get_task

    task = get_task(task_name)
    task.check_data(data_dir)
    resolved = _device(device, task_name)
    if resolved.startswith("cuda"):
        workers = 1  # one process owns the GPU
    elif task.prefers_gpu:
        console.print(
            f"[yellow]{task_name} is meant for a GPU; on the CPU a full run takes days "
            "(--quick for a smoke run).[/]"
        )
    return task, resolved, workers


def _run(configs: Sequence[Any], out_dir: Path, workers: int | None, label: str) -> list[Any]:
    from torch_lookahead.lab.runner import run_many

    with _progress_bars() as bar:
        advance = bar(label, len(set(configs)))
        return run_many(configs, out_dir / "runs", workers=workers, on_result=advance)


def _nqm_points(
    lrs: Sequence[float], k: int, alpha: float, plan: Any, advance: Callable[..., None]
) -> list[Any]:
    """The NQM grid with the plan's simulation sizes."""
    from torch_lookahead.lab.nqm import NQMProblem, nqm_grid

    return nqm_grid(
        NQMProblem.default(),
        lrs,
        k=k,
        alpha=alpha,
        chains=plan.nqm_chains,
        burn_in_steps=plan.nqm_burn_in_steps,
        measured_steps=plan.nqm_measured_steps,
        on_point=advance,
    )


def _task_results(spec: Any, title: str, **parts: Any) -> Any:
    """``LabResults`` of a training task, with its metric conventions."""
    from torch_lookahead.lab.report import LabResults

    return LabResults(
        title=title,
        command=_command_line(),
        task=spec.name,
        headline_metric=spec.headline_metric,
        higher_is_better=spec.higher_is_better,
        target_loss=spec.target_train_loss,
        **parts,
    )


def _finish(lab: Any, out_dir: Path, started: float) -> None:
    from torch_lookahead.lab.metrics import summarize
    from torch_lookahead.lab.report import build_claims, summary_rows, write_report

    report = write_report(out_dir, lab)
    if lab.compare:
        header, rows = summary_rows(summarize(lab.compare, lab.target_loss), lab.headline_metric)
        table = Table(*header, title=f"{lab.task}: final metrics, mean ± std over seeds")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for claim in build_claims(lab):
        console.print(f"[bold]{claim.paper}[/] [italic]{claim.verdict}[/]", highlight=False)
        for sentence in claim.measured:
            console.print(f"  {sentence}", highlight=False)
    console.print(f"Report: {report}  ({time.perf_counter() - started:.0f} s)")


# --------------------------------------------------------------------------------------- commands


@app.command()
def demo(out: OutOption = None, workers: WorkersOption = None, quick: QuickOption = False) -> None:
    """The main job: what Lookahead does on the digits task and the noisy quadratic model.

    Digits with SGD+momentum, AdamW and RAdam, each plain and in Lookahead(k=5, alpha=0.5), over
    3 seeds; a learning-rate sweep; a (k, alpha) grid; the noisy-quadratic check. Prints the
    results and writes a report folder (report.md, results.json, CSV, PNG).
    """
    import torch

    from torch_lookahead.lab.experiments import (
        DEMO,
        DEMO_QUICK,
        compare_configs,
        k_alpha_configs,
        lr_sweep_configs,
    )
    from torch_lookahead.lab.runner import run_many
    from torch_lookahead.lab.tasks import get_task

    started = time.perf_counter()
    plan = DEMO_QUICK if quick else DEMO
    out_dir = _out_dir(out, "demo")
    task = get_task(plan.task)
    settings = task.quick if quick else task.full
    compare = compare_configs(
        plan.task, plan.inners, plan.seeds, settings, k=plan.k, alpha=plan.alpha
    )
    lr_grid = {
        inner: [task.learning_rate(inner) * factor for factor in plan.lr_factors]
        for inner in plan.inners
    }
    sweep = lr_sweep_configs(
        plan.task, lr_grid, plan.sweep_seeds, settings, k=plan.k, alpha=plan.alpha
    )
    grid = k_alpha_configs(
        plan.task, plan.grid_inner, plan.grid_ks, plan.grid_alphas, plan.sweep_seeds, settings
    )
    configs = compare + sweep + grid
    with _progress_bars() as bar, ThreadPoolExecutor(max_workers=1) as background:
        # The training runs go to the process pool while this process simulates the NQM.
        advance_runs = bar(f"{plan.task} runs", len(set(configs)))
        advance_nqm = bar("noisy quadratic model", len(plan.nqm_lrs))
        pending = background.submit(
            run_many, configs, out_dir / "runs", workers=workers, on_result=advance_runs
        )
        torch.set_num_threads(1)  # the pool's workers use the other cores
        nqm = _nqm_points(plan.nqm_lrs, plan.k, plan.alpha, plan, advance_nqm)
        results = pending.result()
    by_config = dict(zip(configs, results, strict=True))
    lab = _task_results(
        task,
        "torch-lookahead demo" + (" (quick)" if quick else ""),
        compare=[by_config[c] for c in compare],
        lr_sweep=[by_config[c] for c in sweep],
        k_alpha=[by_config[c] for c in grid],
        nqm=nqm,
        nqm_k=plan.k,
        nqm_alpha=plan.alpha,
    )
    _finish(lab, out_dir, started)


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
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Each inner optimizer plain and wrapped in Lookahead(k, alpha), over seeds.

    Prints the final metrics (mean ± std over seeds) and the claims these runs can speak to.
    """
    from torch_lookahead.lab.experiments import compare_configs, parse_name_list

    started = time.perf_counter()
    with _user_errors():
        inners = parse_name_list(inner, "inner")
        spec, resolved, workers = _prepare_task(task, data_dir, device, workers)
        settings = spec.quick if quick else spec.full
        configs = compare_configs(
            task, inners, seeds, settings, k=k, alpha=alpha, data_dir=data_dir, device=resolved
        )
    out_dir = _out_dir(out, f"compare-{task}")
    results = _run(configs, out_dir, workers, f"{task} runs")
    lab = _task_results(spec, f"torch-lookahead compare: {task}", compare=results)
    _finish(lab, out_dir, started)


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
            help="LOW:HIGH:COUNT (log-spaced) or a comma-separated list. "
            "[default: the task's learning rate times 1/9, 1/3, 1, 3, 9]",
        ),
    ] = None,
    k: Annotated[
        str, typer.Option("--k", help="Comma-separated k values of the heat map.")
    ] = "5,10,20",
    alpha: Annotated[
        str, typer.Option("--alpha", help="Comma-separated alpha values of the heat map.")
    ] = "0.5,0.8",
    seeds: SeedsOption = 2,
    out: OutOption = None,
    workers: WorkersOption = None,
    quick: QuickOption = False,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Learning-rate robustness curves and a (k, alpha) heat map.

    The learning-rate sweep compares plain and Lookahead with the first k and alpha given; the
    heat map covers every (k, alpha) at the task's default learning rate.
    """
    from torch_lookahead.lab.experiments import (
        DEMO,
        k_alpha_configs,
        lr_sweep_configs,
        parse_float_list,
        parse_int_list,
        parse_lr_range,
        parse_name_list,
    )

    started = time.perf_counter()
    with _user_errors():
        inners = parse_name_list(inner, "inner")
        ks = parse_int_list(k, "k")
        alphas = parse_float_list(alpha, "alpha")
        spec, resolved, workers = _prepare_task(task, data_dir, device, workers)
        settings = spec.quick if quick else spec.full
        if lr is None:
            lr_grid = {i: [spec.learning_rate(i) * f for f in DEMO.lr_factors] for i in inners}
        else:
            lrs = parse_lr_range(lr)
            lr_grid = {i: lrs for i in inners}
        lr_configs = lr_sweep_configs(
            task, lr_grid, seeds, settings, k=ks[0], alpha=alphas[0], data_dir=data_dir,
            device=resolved,
        )  # fmt: skip
        grid_configs = [
            config
            for i in inners
            for config in k_alpha_configs(
                task, i, ks, alphas, seeds, settings, data_dir=data_dir, device=resolved
            )
        ]
    out_dir = _out_dir(out, f"sweep-{task}")
    results = _run(lr_configs + grid_configs, out_dir, workers, f"{task} runs")
    by_config = dict(zip(lr_configs + grid_configs, results, strict=True))
    lab = _task_results(
        spec,
        f"torch-lookahead sweep: {task}",
        lr_sweep=[by_config[c] for c in lr_configs],
        k_alpha=[by_config[c] for c in grid_configs],
    )
    _finish(lab, out_dir, started)


@app.command()
def nqm(
    lr: Annotated[
        str, typer.Option("--lr", help="Learning rates: LOW:HIGH:COUNT or a comma-separated list.")
    ] = "0.1,0.2,0.4,0.8,1.2,1.6,1.9",
    k: KOption = 5,
    alpha: AlphaOption = 0.5,
    chains: Annotated[int, typer.Option("--chains", help="Independent chains.", min=10)] = 1000,
    out: OutOption = None,
    quick: QuickOption = False,
) -> None:
    """The noisy quadratic model: simulation against the closed form.

    Steady-state expected loss of SGD and Lookahead(SGD), simulated with the real optimizers,
    against the closed forms of the paper's Proposition 2, over a grid of learning rates.
    """
    from torch_lookahead.lab.experiments import DEMO, DEMO_QUICK, parse_lr_range
    from torch_lookahead.lab.report import LabResults

    started = time.perf_counter()
    plan = DEMO_QUICK if quick else DEMO
    with _user_errors():
        lrs = parse_lr_range(lr)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
        from torch_lookahead.lab.nqm import NQMProblem

        limit = NQMProblem.default().max_stable_lr()
        if max(lrs) >= limit:
            raise ValueError(f"lr values must lie in (0, {limit:g}) for a steady state, got {lr!r}")
        if not quick:
            plan = dataclasses.replace(plan, nqm_chains=chains)
        with _progress_bars() as bar:
            points = _nqm_points(lrs, k, alpha, plan, bar("noisy quadratic model", len(lrs)))
    out_dir = _out_dir(out, "nqm")
    lab = LabResults(
        title="torch-lookahead nqm", command=_command_line(), nqm=points, nqm_k=k, nqm_alpha=alpha
    )
    _finish(lab, out_dir, started)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Speed benchmarks (forwards every argument to torch_lookahead.bench; try `bench --help`)."""
    if importlib.util.find_spec("torch_lookahead.bench") is None:
        console.print(
            "[bold red]Error:[/] the benchmarks module torch_lookahead.bench is not installed in "
            "this version of torch-lookahead."
        )
        raise typer.Exit(2)
    module = importlib.import_module("torch_lookahead.bench")
    raise typer.Exit(int(module.main(list(ctx.args))))


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
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        # Outside standalone mode click returns the exit code of typer.Exit instead of raising.
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as done:
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
