"""Lookahead on CUDA: foreach against compiled sync, bf16 parameters with fp32 slow copies.

The same measurements as ``torch-lookahead bench`` (``torch_lookahead.bench``), on a GPU:

* the sync against the memory floor for bf16 parameters and fp32 slow copies: the shipped
  foreach ``sync_`` and ``torch.compile(sync_)``, with the compile time;
* the step time of fused AdamW alone against Lookahead with fp32 slow copies, Lookahead with slow
  copies in the parameters' dtype, and every installed peer (whose slow copies are bf16);
* memory from the CUDA caching allocator: peak above the inner optimizer's, bytes allocated per
  step between syncs and by a sync step.

    python benchmarks/gpu_bench.py                    # on a CUDA machine
    python benchmarks/gpu_bench.py --output benchmarks/results/gpu.md
    python benchmarks/gpu_bench.py --cpu --quick      # the same code path on the CPU (no GPU numbers)

Without CUDA and without ``--cpu`` it prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.optim import Optimizer

from torch_lookahead import Lookahead
from torch_lookahead.bench import (
    FULL_SHAPES,
    INNER_OPTIMIZERS,
    QUICK_SHAPES,
    Contender,
    MemoryResult,
    ParameterList,
    StepResult,
    SyncResult,
    describe_conditions,
    emit_report,
    find_contenders,
    format_steps,
    format_sync,
    load_average,
    make_parameters,
    measure_steps,
    measure_sync,
    positive_int,
    unit_interval,
)

INNER = "AdamW (fused)"
PARAM_DTYPE = torch.bfloat16
SLOW_DTYPE = torch.float32


def _contenders() -> list[Contender]:
    """Lookahead with bf16 slow copies, then with fp32 ones, then the installed peers."""
    ours, *peers = find_contenders()

    def wrap_fp32(inner: Optimizer, k: int, alpha: float) -> Optimizer:
        return Lookahead(inner, k=k, alpha=alpha, slow_dtype=SLOW_DTYPE)

    fp32 = Contender(f"{ours.name} (fp32 slow)", ours.version, wrap_fp32)
    same = Contender(f"{ours.name} (bf16 slow)", ours.version, ours.wrap)
    return [same, fp32, *peers]  # bf16 slow copies first: the same work as the peers do


def measure_cuda_memory(
    params: list[torch.Tensor], contender: Contender | None, *, k: int, alpha: float
) -> MemoryResult:
    """Peak allocated bytes and bytes allocated per step, from the CUDA caching allocator."""
    device = params[0].device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    inner = INNER_OPTIMIZERS[INNER](params)
    optimizer = (
        inner if contender is None or contender.wrap is None else contender.wrap(inner, k, alpha)
    )
    allocated_per_step = []
    for _ in range(2 * k + 1):
        before = torch.cuda.memory_stats(device)["allocated_bytes.all.allocated"]
        optimizer.step()
        torch.cuda.synchronize(device)
        after = torch.cuda.memory_stats(device)["allocated_bytes.all.allocated"]
        allocated_per_step.append(after - before)
    peak = torch.cuda.max_memory_allocated(device) - base
    del optimizer, inner
    second_cycle = allocated_per_step[k + 1 : 2 * k + 1]
    return MemoryResult(
        peak_bytes=peak,
        between_syncs_bytes=int(statistics.median(second_cycle)),
        sync_step_bytes=max(second_cycle),
    )


def _format_cuda_memory(
    rows: list[tuple[ParameterList, dict[str, MemoryResult]]], names: list[str]
) -> list[str]:
    lines = [
        f"### Memory (CUDA caching allocator), {INNER}, bf16 parameters",
        "",
        "Each cell: peak above the inner optimizer's in MiB / bytes allocated between syncs / by a "
        "sync step, minus the inner optimizer's.",
        "",
        "| parameters | inner peak MiB | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for shape, by_name in rows:
        inner = by_name["inner optimizer"]
        cells = []
        for name in names:
            result = by_name[name]
            extra = (result.peak_bytes - inner.peak_bytes) / 2**20
            between = result.between_syncs_bytes - inner.between_syncs_bytes
            at_sync = result.sync_step_bytes - inner.sync_step_bytes
            cells.append(f"{extra:.0f} / {between:+d} B / {at_sync:+d} B")
        lines.append(
            f"| {shape.name} | {inner.peak_bytes / 2**20:.0f} | " + " | ".join(cells) + " |"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_bench.py",
        description="Lookahead on CUDA: foreach vs compiled sync (bf16 parameters, fp32 slow "
        "copies), and fused AdamW step ratios against every installed peer.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds")
    parser.add_argument(
        "--cpu", action="store_true", help="run the same code on the CPU (checks the script only)"
    )
    parser.add_argument("--k", type=positive_int, default=5, help="sync every k steps (5)")
    parser.add_argument("--alpha", type=unit_interval, default=0.5, help="slow step size (0.5)")
    parser.add_argument("--rounds", type=positive_int, help="interleaved rounds (sync 20, step 5)")
    parser.add_argument("--cycles", type=positive_int, help="timed cycles of k steps per round (4)")
    parser.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time torch.compile(sync_) as well (default: on)",
    )
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print(
            "gpu_bench.py: CUDA is not available here (torch "
            f"{torch.__version__}, torch.cuda.is_available() is False), so nothing was measured. "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --cpu to "
            "run the same code path on the CPU as a check of the script (those numbers are not "
            "GPU numbers).",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    load_before = load_average()
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    sync_rounds = args.rounds or (2 if args.quick else 20)
    step_rounds = args.rounds or (2 if args.quick else 5)
    cycles = args.cycles or (1 if args.quick else 4)
    k, alpha = args.k, args.alpha
    contenders = _contenders()

    sync_results: list[SyncResult] = []
    step_results: list[StepResult] = []
    memory_rows: list[tuple[ParameterList, dict[str, MemoryResult]]] = []
    for shape in shapes:
        print(f"[gpu_bench] {shape.name}", file=sys.stderr, flush=True)
        sync_results.append(
            measure_sync(
                shape,
                rounds=sync_rounds,
                alpha=alpha,
                device=device,
                fast_dtype=PARAM_DTYPE,
                slow_dtype=SLOW_DTYPE,
                compiled=args.compiled,
            )
        )
        params = make_parameters(shape.shapes, device=device, dtype=PARAM_DTYPE)
        step_results.append(
            measure_steps(
                shape,
                INNER,
                contenders,
                rounds=step_rounds,
                cycles=cycles,
                k=k,
                alpha=alpha,
                device=device,
                params=params,
            )
        )
        if device.type == "cuda":
            by_name = {"inner optimizer": measure_cuda_memory(params, None, k=k, alpha=alpha)}
            for contender in contenders:
                if contender.wrap is not None:
                    by_name[contender.name] = measure_cuda_memory(
                        params, contender, k=k, alpha=alpha
                    )
            memory_rows.append((shape, by_name))
        del params

    command = " ".join(["python benchmarks/gpu_bench.py", *argv])
    lines = [
        "## Lookahead on CUDA" if device.type == "cuda" else "## gpu_bench.py, CPU check run",
        "",
        *describe_conditions(command, load_before, device),
        f"- Parameters {PARAM_DTYPE}, slow copies {SLOW_DTYPE} unless named otherwise",
        "",
        *format_sync(sync_results, target=1.15),
        "",
        *format_steps(step_results, contenders, k, own=2),
    ]
    if memory_rows:
        names = [c.name for c in contenders if c.wrap is not None]
        lines += ["", *_format_cuda_memory(memory_rows, names)]
    emit_report(lines, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
