"""One optimizer step of NovoGrad and AdaBound: torch-lookahead against pytorch_optimizer and
torch-optimizer, on the same parameters and gradients, side by side.

For each (algorithm, problem) the contenders are built on identical copies of the parameters and
are timed interleaved: each repetition restores every contender's gradients (the other libraries
modify ``p.grad`` in place) and then times one ``step()`` of each, in an order rotated from one
repetition to the next. The table reports median milliseconds per step and the speed-up of
torch-lookahead over the fastest other implementation (pytorch_optimizer with and without its
foreach path, torch-optimizer). Timing is never asserted anywhere: this script only reports.

    .venv/bin/python benchmarks/bench_optimizers.py

writes benchmarks/results/optimizers.md.

Needs the ``bench`` extra (pytorch_optimizer==4.1.0, torch-optimizer==0.3.0).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as _version
from pathlib import Path

import pytorch_optimizer
import torch
import torch_optimizer

from torch_lookahead.optim import AdaBound, NovoGrad

PROBLEMS: list[tuple[int, int]] = [(200, 100_000), (2_000, 1_000)]  # (tensors, floats each)
OURS = "torch-lookahead"
FLOOR = "(reference) memory floor"
COMPILED = f"{OURS} (torch.compile of the step)"


@dataclass
class Contender:
    name: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]


class MemoryFloor(torch.optim.Optimizer):
    """Not an optimizer: the least memory traffic any implementation of the step needs (read the
    gradient, read and write the parameter and every full-size state tensor once), done with
    one plain in-place op per tensor. A reference row, not a contender."""

    def __init__(self, params: list[torch.nn.Parameter], state_tensors: int) -> None:
        super().__init__(params, {})
        self.buffers = [[torch.zeros_like(p) for _ in range(state_tensors)] for p in params]

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for p, buffers in zip(self.param_groups[0]["params"], self.buffers, strict=True):
            for buffer in buffers:
                buffer.add_(p.grad)
            p.add_(buffers[0])


def contenders(algorithm: str) -> list[Contender]:
    """Each library's optimizer with the same hyper-parameters (coupled weight decay 0)."""
    if algorithm == "NovoGrad":
        betas = (0.95, 0.98)
        return [
            Contender(OURS, lambda p: NovoGrad(p, lr=1e-3, betas=betas)),
            Contender(
                f"{OURS} (for-loop)", lambda p: NovoGrad(p, lr=1e-3, betas=betas, foreach=False)
            ),
            Contender(
                "pytorch_optimizer (foreach)",
                lambda p: pytorch_optimizer.NovoGrad(p, lr=1e-3, betas=betas, foreach=True),
            ),
            Contender(
                "pytorch_optimizer (for-loop)",
                lambda p: pytorch_optimizer.NovoGrad(p, lr=1e-3, betas=betas, foreach=False),
            ),
            Contender(
                "torch-optimizer", lambda p: torch_optimizer.NovoGrad(p, lr=1e-3, betas=betas)
            ),
            Contender(FLOOR, lambda p: MemoryFloor(p, state_tensors=1)),
        ]
    if algorithm == "AdaBound":
        return [
            Contender(OURS, lambda p: AdaBound(p, lr=1e-3, final_lr=0.1)),
            Contender(
                f"{OURS} (for-loop)", lambda p: AdaBound(p, lr=1e-3, final_lr=0.1, foreach=False)
            ),
            Contender(
                "pytorch_optimizer (foreach)",
                lambda p: pytorch_optimizer.AdaBound(
                    p, lr=1e-3, final_lr=0.1, weight_decouple=False, foreach=True
                ),
            ),
            Contender(
                "pytorch_optimizer (for-loop)",
                lambda p: pytorch_optimizer.AdaBound(
                    p, lr=1e-3, final_lr=0.1, weight_decouple=False, foreach=False
                ),
            ),
            Contender(
                "torch-optimizer", lambda p: torch_optimizer.AdaBound(p, lr=1e-3, final_lr=0.1)
            ),
            Contender(FLOOR, lambda p: MemoryFloor(p, state_tensors=2)),
        ]
    raise ValueError(f"unknown algorithm {algorithm!r}")


def compiled_contender(algorithm: str) -> Contender:
    """torch-lookahead's step compiled whole by ``torch.compile`` (inductor): the single-tensor
    update traced for every parameter, fused as far as the compiler fuses it. Compiling happens
    in the first warm-up step and takes minutes on the CPU."""
    ours = contenders(algorithm)[0]

    def build(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        optimizer = ours.build(params)
        optimizer.step = torch.compile(optimizer.step)  # type: ignore[method-assign]
        return optimizer

    return Contender(COMPILED, build)


def time_problem(
    algorithm: str, n_tensors: int, numel: int, repeats: int, warmup: int, compiled: bool = False
) -> dict[str, list[float]]:
    """Milliseconds of each contender's step, interleaved over ``repeats`` repetitions."""
    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(numel, generator=generator) for _ in range(n_tensors)]
    gradients = [torch.randn(numel, generator=generator) for _ in range(n_tensors)]
    runs = []
    every = contenders(algorithm) + ([compiled_contender(algorithm)] if compiled else [])
    for contender in every:
        params = [torch.nn.Parameter(t.clone()) for t in initial]
        for p, g in zip(params, gradients, strict=True):
            p.grad = g.clone()
        runs.append((contender.name, params, contender.build(params)))

    def one_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> float:
        for p, g in zip(params, gradients, strict=True):
            p.grad.copy_(g)  # type: ignore[union-attr]
        start = time.perf_counter()
        optimizer.step()
        return (time.perf_counter() - start) * 1e3

    timings: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for repetition in range(warmup + repeats):
        shift = repetition % len(runs)
        for name, params, optimizer in runs[shift:] + runs[:shift]:
            elapsed = one_step(params, optimizer)
            if repetition >= warmup:
                timings[name].append(elapsed)
    del runs
    gc.collect()
    return timings


def render(
    results: list[tuple[str, int, int, dict[str, list[float]]]], args: argparse.Namespace
) -> str:
    """The full Markdown report, its summary table of speed-ups last."""
    lines = [
        "# One optimizer step on CPU: torch-lookahead vs pytorch_optimizer and torch-optimizer",
        "",
        f"Produced by `benchmarks/bench_optimizers.py {args.flags}` on {datetime.date.today().isoformat()}: torch {torch.__version__}, "
        f"pytorch_optimizer {_version('pytorch_optimizer')}, torch-optimizer "
        f"{_version('torch-optimizer')}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()} with {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch thread(s), 1-minute load average "
        f"{args.load_average:.1f} when it started.",
        "",
        "float32 parameters and gradients; every contender steps identical copies with the same "
        "gradients, timed interleaved (rotated order), median of "
        f"{args.repeats} repetitions after {args.warmup} warm-up steps. Speed-up = median of the "
        "fastest other implementation / median of torch-lookahead (default, i.e. foreach=None).",
        "",
        "| optimizer | problem | contender | median ms/step | speed-up of torch-lookahead |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    summary = []
    for algorithm, n_tensors, numel, timings in results:
        medians = {name: statistics.median(values) for name, values in timings.items()}
        ours = medians[OURS]
        others = {n: m for n, m in medians.items() if not n.startswith(OURS) and n != FLOOR}
        fastest_other = min(others, key=others.__getitem__)
        problem = f"{n_tensors:,} x {numel:,}"
        for name, median in medians.items():
            ratio = "" if name.startswith(OURS) or name == FLOOR else f"{median / ours:.2f}x"
            lines.append(f"| {algorithm} | {problem} | {name} | {median:.2f} | {ratio} |")
        summary.append(
            f"| {algorithm} | {problem} | {fastest_other} | {others[fastest_other] / ours:.2f}x |"
        )
    summary_table = [
        "| optimizer | problem | fastest other | speed-up of torch-lookahead |",
        "| --- | --- | --- | ---: |",
        *summary,
    ]
    lines += [
        "",
        "Summary: speed-up over the fastest other implementation.",
        "",
        *summary_table,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).parent / "results" / "optimizers.md",
        help="Markdown file to write ('-' for stdout only)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time torch-lookahead's step compiled by torch.compile (minutes of compiling)",
    )
    parser.add_argument(
        "--problem",
        action="append",
        choices=[f"{n}x{numel}" for n, numel in PROBLEMS],
        help="only this problem (tensors x floats; repeatable; default: all)",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --warmup >= 0")
    args.flags = " ".join(
        [f"--repeats {args.repeats}", f"--threads {args.threads}"]
        + (["--compiled"] if args.compiled else [])
        + [f"--problem {problem}" for problem in args.problem or []]
    )
    problems = [
        (n, numel) for n, numel in PROBLEMS if not args.problem or f"{n}x{numel}" in args.problem
    ]
    torch.set_num_threads(args.threads)
    args.load_average = os.getloadavg()[0]  # other processes share the CPU: say how busy it was
    results = []
    for algorithm in ("NovoGrad", "AdaBound"):
        for n_tensors, numel in problems:
            timings = time_problem(
                algorithm, n_tensors, numel, args.repeats, args.warmup, args.compiled
            )
            results.append((algorithm, n_tensors, numel, timings))
            print(
                f"{algorithm} {n_tensors} x {numel}: "
                + ", ".join(f"{n} {statistics.median(v):.2f} ms" for n, v in timings.items()),
                flush=True,
            )
    text = render(results, args)
    print(text)
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
