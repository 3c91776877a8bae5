"""What a whole ``Lookahead.sync()`` costs beyond its kernel, measured apart, with cold caches.

    python benchmarks/bench_sync_overheads.py [--shape 1] [--rounds 100] [--output FILE]

On one parameter list of ``torch-lookahead bench`` (default: 2,000 tensors of 2,500 floats, where
per-tensor costs show), interleaved over ``--rounds`` rounds, each run after writing a 256 MiB
buffer:

- the memory floor (twice one ``_foreach_copy_``, as ``torch-lookahead bench`` defines it) on
  slow copies allocated in one go right after the parameters, as the benchmark's kernel columns
  use, and on the slow copies ``Lookahead`` allocated at its first step: the same operation on
  differently placed memory;
- ``Lookahead.sync()`` as shipped, with the kernels below the autograd layer;
- ``Lookahead.sync()`` with that guard replaced by a no-op (the autograd layer of every in-place
  op then reads each parameter's autograd metadata);
- the kernel alone on the parameters and the same slow copies (no Lookahead bookkeeping), and
  on detached aliases of the parameters (no autograd metadata at all).

Medians in ms, and the median per-round ratio to the floor on Lookahead's own slow copies. Timing
is never asserted anywhere: this script only reports.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from torch_lookahead import Lookahead, _sync, bench

OWN_FLOOR = "floor, Lookahead's slow copies"
GROUPED_FLOOR = "floor, slow copies allocated in one go"


def measure(shape: bench.ParameterList, rounds: int) -> dict[str, tuple[float, float]]:
    """Median ms and median ratio to ``OWN_FLOOR`` of every run, interleaved over ``rounds``."""
    params = bench.make_parameters(shape.shapes)
    detached = [p.detach() for p in params]
    grouped_slow = [p.detach() + 0.1 for p in params]  # allocated in one go, like the benchmark's
    optimizer = Lookahead(torch.optim.SGD(params, lr=0.0), k=1 << 30, alpha=0.5)
    optimizer.step()  # allocates Lookahead's slow copies
    own_slow = bench.own_slow_copies(optimizer, params)
    assert own_slow is not None
    shipped_guard = _sync._below_autograd

    def copy_from(slow: list[torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            torch._foreach_copy_(detached, slow)

        return run

    def sync_with(guard: Callable[[], contextlib.AbstractContextManager[object]]) -> None:
        _sync._below_autograd = guard
        try:
            optimizer.sync()
        finally:
            _sync._below_autograd = shipped_guard

    def kernel_on(fast: list[torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            _sync.sync_(fast, own_slow, 0.5, foreach=True)

        return run

    runs: dict[str, Callable[[], object]] = {
        GROUPED_FLOOR: copy_from(grouped_slow),
        OWN_FLOOR: copy_from(own_slow),
        "Lookahead.sync(), as shipped": optimizer.sync,
        "Lookahead.sync(), autograd layer not skipped": lambda: sync_with(contextlib.nullcontext),
        "sync_ on the parameters (no Lookahead bookkeeping)": kernel_on(params),
        "sync_ on detached parameters": kernel_on(detached),
    }
    for run in runs.values():
        run()
    evict = torch.empty(bench.CACHE_EVICTION_BYTES // 4)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(rounds):
        for name in bench._rotated(list(runs), round_index):
            evict.fill_(float(round_index))
            elapsed = bench._seconds(runs[name], torch.device("cpu"))
            # A floor is twice one copy (read both, write both), as in torch-lookahead bench.
            seconds[name].append(2.0 * elapsed if name in (GROUPED_FLOOR, OWN_FLOOR) else elapsed)
        for name in runs:
            ratios[name].append(seconds[name][-1] / seconds[OWN_FLOOR][-1])
    return {
        name: (statistics.median(seconds[name]) * 1e3, statistics.median(ratios[name]))
        for name in runs
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes = bench.FULL_SHAPES
    parser.add_argument(
        "--shape",
        type=int,
        choices=range(len(shapes)),
        default=1,
        help="; ".join(f"{i}={s.name}" for i, s in enumerate(shapes)) + " (default 1)",
    )
    parser.add_argument("--rounds", type=bench.positive_int, default=100)
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    shape = shapes[args.shape]
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.freeze()  # as torch-lookahead bench does: what exists now is never garbage
    try:
        results = measure(shape, args.rounds)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
    lines = [
        "## Lookahead.sync() beyond its kernel",
        "",
        f"- Command: `python benchmarks/bench_sync_overheads.py --shape {args.shape} "
        f"--rounds {args.rounds}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"1 torch thread; load average (1 min) {load:.2f} at the start",
        f"- Parameters: {shape.name}; every run starts with cold caches; medians over "
        f"{args.rounds} interleaved rounds",
        "",
        f"| run | ms | / {OWN_FLOOR} |",
        "|---|---:|---:|",
        *(f"| {name} | {ms:.3f} | {ratio:.3f} |" for name, (ms, ratio) in results.items()),
    ]
    bench.emit_report(lines, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
