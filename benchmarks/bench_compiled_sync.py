"""Where the compiled sync pays: eager against compiled kernel, per tensor length, cold caches.

    python benchmarks/bench_compiled_sync.py [--rounds 15] [--megabytes 200] [--lengths N,N,...]
        [--chunk 8] [--output FILE]

For each tensor length (4 Ki to 4 Mi floats) a list of tensors of that length holding about
``--megabytes`` MB, interleaved over ``--rounds`` rounds, each run after writing a 256 MiB
buffer:

- the memory floor (twice one ``_foreach_copy_``, as ``torch-lookahead bench`` defines it);
- ``sync_`` as ``Lookahead`` runs it by default (the cache-blocked eager kernel);
- the compiled kernel of ``compiled_sync=True`` forced onto every tensor, whatever its length
  (``COMPILED_MIN_BYTES`` set to 0), so that the table shows where it starts to pay. The shipped
  threshold is printed under the table. ``--chunk`` sets the tensors per compiled call (the
  shipped ``COMPILED_CHUNK`` by default; another value compiles another kernel).

Medians of the per-round ratios to the floor. Timing is never asserted anywhere: this script only
reports.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from torch_lookahead import _compiled_sync, _sync, bench

LENGTHS = (4096, 16384, 65536, 131072, 262144, 1 << 20, 4 << 20)
EAGER = "eager sync_ / floor"
COMPILED = "compiled kernel / floor"


def measure(length: int, megabytes: int, rounds: int) -> dict[str, float]:
    """Median ms of the floor and median ratios of both kernels to it."""
    count = max(_compiled_sync.COMPILED_CHUNK, (megabytes << 20) // (4 * length))
    count -= count % _compiled_sync.COMPILED_CHUNK  # whole chunks: no tensor left to eager
    generator = torch.Generator().manual_seed(0)
    fast = [torch.randn(length, generator=generator) for _ in range(count)]
    slow = [f + 0.1 for f in fast]

    def eager() -> None:
        _sync.sync_(fast, slow, 0.5, foreach=True)

    def compiled() -> None:
        _sync.sync_(fast, slow, 0.5, foreach=True, compiled=True)

    def copy() -> None:
        torch._foreach_copy_(fast, slow)

    runs: dict[str, Callable[[], None]] = {"copy": copy, EAGER: eager, COMPILED: compiled}
    for run in runs.values():
        run()  # warm-up: first touch, compilation
    evict = torch.empty(bench.CACHE_EVICTION_BYTES // 4)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {EAGER: [], COMPILED: []}
    for round_index in range(rounds):
        for name in bench._rotated(list(runs), round_index):
            evict.fill_(float(round_index))
            seconds[name].append(bench._seconds(runs[name], torch.device("cpu")))
        for name in ratios:
            ratios[name].append(seconds[name][-1] / (2 * seconds["copy"][-1]))
    return {
        "tensors": float(count),
        "floor ms": 2e3 * statistics.median(seconds["copy"]),
        **{name: statistics.median(values) for name, values in ratios.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=bench.positive_int, default=15)
    parser.add_argument("--megabytes", type=bench.positive_int, default=200)
    parser.add_argument(
        "--lengths",
        type=lambda text: [bench.positive_int(part) for part in text.split(",")],
        default=list(LENGTHS),
        help="comma-separated tensor lengths in floats (default: 4 Ki to 4 Mi)",
    )
    parser.add_argument(
        "--chunk",
        type=bench.positive_int,
        default=_compiled_sync.COMPILED_CHUNK,
        help=f"tensors per compiled call (default {_compiled_sync.COMPILED_CHUNK}, as shipped)",
    )
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shipped_min_bytes = _compiled_sync.COMPILED_MIN_BYTES
    shipped_chunk = _compiled_sync.COMPILED_CHUNK
    _compiled_sync.COMPILED_MIN_BYTES = 0
    _compiled_sync.COMPILED_CHUNK = args.chunk
    gc.freeze()
    try:
        start = time.perf_counter()
        available = _compiled_sync.compiled_kernel(torch.float32) is not None
        compile_seconds = time.perf_counter() - start
        if not available:
            parser.exit(
                2, "no compiled sync kernel here (torch.compile unavailable or unfaithful)\n"
            )
        rows = {length: measure(length, args.megabytes, args.rounds) for length in args.lengths}
    finally:
        gc.unfreeze()
        _compiled_sync.COMPILED_MIN_BYTES = shipped_min_bytes
        _compiled_sync.COMPILED_CHUNK = shipped_chunk
        torch.set_num_threads(threads)
    lengths = ",".join(map(str, args.lengths))
    lines = [
        "## Compiled against eager sync, per tensor length",
        "",
        f"- Command: `python benchmarks/bench_compiled_sync.py --rounds {args.rounds} "
        f"--megabytes {args.megabytes} --lengths {lengths} --chunk {args.chunk}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"1 torch thread; load average (1 min) {load:.2f} at the start",
        f"- Every run starts with cold caches; medians over {args.rounds} interleaved rounds; the "
        f"compiled kernel takes {args.chunk} tensors per call; compiling and probing it took "
        f"{compile_seconds:.1f} s (inductor's on-disk cache can shorten that)",
        "",
        f"| floats per tensor | tensors | floor ms | {EAGER} | {COMPILED} |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {length:,} | {row['tensors']:,.0f} | {row['floor ms']:.2f} | {row[EAGER]:.2f} | "
            f"{row[COMPILED]:.2f} |"
            for length, row in rows.items()
        ),
        "",
        f"Shipped: `compiled_sync=True` compiles tensors of at least {shipped_min_bytes:,} bytes "
        f"({shipped_min_bytes // 4:,} floats); shorter ones take the eager kernel.",
    ]
    bench.emit_report(lines, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
