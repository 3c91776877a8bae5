"""What Lookahead's own bookkeeping costs per step, for two versions of the package side by side.

The inner optimizer is one that does nothing, so what is timed is the wrapper alone: checking the
groups, finding the parameters without slow copies, calling the inner step, counting, and every
k-th step the sync. Each version runs in its own process (both are importable as
``torch_lookahead``), the processes take turns in shuffled order, and each turn reports the median
time per step over whole cycles; the table gives the median over turns and its ratio to the first
version. The same parameters (2,000 tensors of 2,500 floats by default: many small tensors, where
per-tensor bookkeeping shows most) are used in every turn.

    python benchmarks/bench_wrapper_overhead.py --version before=/path/to/old/src \\
        --version after=src --turns 12 --output benchmarks/results/wrapper-overhead.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from pathlib import Path

_WORKER = r"""
import json, statistics, sys, time
import torch
from torch_lookahead import Lookahead

tensors, numel, k, cycles = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(1)


class DoNothing(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(tensors)]
for p in params:
    p.grad = torch.zeros(numel)
opt = Lookahead(DoNothing(params), k=k, alpha=0.5)
for _ in range(2 * k):  # capture the slow copies, warm up
    opt.step()
per_cycle = []
for _ in range(cycles):
    start = time.perf_counter()
    for _ in range(k):
        opt.step()
    per_cycle.append((time.perf_counter() - start) / k)
print(json.dumps(statistics.median(per_cycle)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        action="append",
        required=True,
        help="NAME=PATH of a src folder holding torch_lookahead (two or more)",
    )
    parser.add_argument("--tensors", type=int, default=2000)
    parser.add_argument("--numel", type=int, default=2500)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=20, help="timed cycles per turn")
    parser.add_argument("--turns", type=int, default=12, help="turns per version")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    versions = dict(item.split("=", 1) for item in args.version)
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(args.turns):
        order = list(versions)
        random.shuffle(order)
        for name in order:
            env = {**os.environ, "PYTHONPATH": str(Path(versions[name]).resolve())}
            env["OMP_NUM_THREADS"] = "1"
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _WORKER,
                    *map(str, (args.tensors, args.numel, args.k, args.cycles)),
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            times[name].append(json.loads(out.stdout))
    first = statistics.median(times[next(iter(versions))])
    lines = [
        f"Wrapper bookkeeping per step (inner optimizer does nothing), {args.tensors:,} tensors of "
        f"{args.numel:,} floats, k={args.k}: median over {args.turns} turns of the median of "
        f"{args.cycles} cycles; {platform.machine()}, torch {_torch_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "Command: `python benchmarks/bench_wrapper_overhead.py "
        + " ".join(f"--version {n}={p}" for n, p in versions.items())
        + f" --tensors {args.tensors} --numel {args.numel} --k {args.k} --cycles {args.cycles}"
        f" --turns {args.turns}`",
        "",
        "| version | ms per step (median) | fastest turn | slowest turn | ratio to first |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median * 1e3:.3f} | {min(values) * 1e3:.3f} | {max(values) * 1e3:.3f} "
            f"| {median / first:.3f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
