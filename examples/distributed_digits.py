"""Lookahead across workers on the lab's digits task: DDP against DistributedLookahead.

Each rank trains on its own shard of the training set. DDP all-reduces the gradients at every
step; DistributedLookahead lets each rank take k AdamW steps alone and then averages the weights in
one all-reduce (the slow weights step towards the average). The script counts the bytes each rank
all-reduces and the validation accuracy of the model the run would ship (DDP's weights, the slow
weights of DistributedLookahead).

One run::

    torchrun --nproc_per_node=2 examples/distributed_digits.py --method lookahead --k 20

The committed comparison (reports/distributed-digits/)::

    torchrun --nproc_per_node=2 examples/distributed_digits.py --compare --out reports/distributed-digits

Needs the ``lab`` extra (scikit-learn for the data, matplotlib for the plot). CPU and gloo by
default; with CUDA, pass ``--backend nccl`` and each rank uses its own GPU.
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from torch_lookahead.distributed import DistributedLookahead
from torch_lookahead.lab.tasks import DigitsTask, TaskData


@dataclasses.dataclass(frozen=True)
class Method:
    """How the ranks communicate: ``ddp`` every step, or ``lookahead`` every k steps."""

    name: str
    k: int | None = None
    alpha: float | None = None
    outer_momentum: float = 0.0
    nesterov: bool = False

    @property
    def label(self) -> str:
        if self.name == "ddp":
            return "DDP (all-reduce every step)"
        label = f"DistributedLookahead k={self.k} alpha={self.alpha}"
        if self.outer_momentum:
            kind = "Nesterov" if self.nesterov else "heavy-ball"
            label += f" {kind} mu={self.outer_momentum}"
        return label


COMPARISON = (
    Method("ddp"),
    *(Method("lookahead", k=k, alpha=0.5) for k in (5, 20, 50)),
    *(Method("lookahead", k=k, alpha=1.0) for k in (5, 20, 50)),
    Method("lookahead", k=20, alpha=0.7, outer_momentum=0.9, nesterov=True),
)


TARGET_ACCURACY = 0.95


class ByteCounter:
    """A DDP communication hook state: all-reduce as DDP does, counting the payload bytes."""

    def __init__(self, process_group: dist.ProcessGroup) -> None:
        self.process_group = process_group
        self.bytes_all_reduced = 0


# No ``from __future__ import annotations`` in this file: DDP checks this hook's annotations.
def counting_allreduce_hook(
    state: ByteCounter,
    bucket: dist.GradBucket,  # type: ignore[name-defined]
) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    state.bytes_all_reduced += buffer.numel() * buffer.element_size()
    return allreduce_hook(state.process_group, bucket)


def shard_of(data: TaskData, rank: int, world_size: int) -> TaskData:
    """This rank's disjoint share of the training rows (validation data stays whole)."""
    return dataclasses.replace(
        data,
        train_inputs=data.train_inputs[rank::world_size],
        train_targets=data.train_targets[rank::world_size],
    )


def train(
    method: Method,
    task: DigitsTask,
    data: TaskData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    seed: int,
) -> list[dict[str, float]]:
    """Train one run; rank 0 returns the curve (step, bytes, validation metrics), others []."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)
    model = task.build_model().to(data.train_inputs.device)
    shard = shard_of(data, rank, world_size)
    generator = torch.Generator().manual_seed(10_000 * seed + rank)
    optimizer: torch.optim.Optimizer
    trained: nn.Module
    count_bytes: Callable[[], int]
    if method.name == "ddp":
        trained = DistributedDataParallel(model)
        counter = ByteCounter(dist.group.WORLD)  # type: ignore[arg-type]
        trained.register_comm_hook(counter, counting_allreduce_hook)
        optimizer = torch.optim.AdamW(trained.parameters(), lr=lr)
        count_bytes = lambda: counter.bytes_all_reduced  # noqa: E731
    else:
        assert method.k is not None and method.alpha is not None
        trained = model
        lookahead = DistributedLookahead(
            torch.optim.AdamW(model.parameters(), lr=lr),
            k=method.k,
            alpha=method.alpha,
            outer_momentum=method.outer_momentum,
            nesterov=method.nesterov,
        )
        optimizer = lookahead
        count_bytes = lambda: lookahead.bytes_all_reduced  # noqa: E731

    curve: list[dict[str, float]] = []
    for step in range(1, steps + 1):
        task.loss(trained, task.sample_batch(shard, generator, batch_size)).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rank == 0 and (step % eval_every == 0 or step == steps):
            model.eval()
            with torch.no_grad():
                if isinstance(optimizer, DistributedLookahead):
                    with optimizer.slow_weights():  # the same on every rank
                        metrics = task.evaluate(model, data)
                else:
                    metrics = task.evaluate(model, data)
            model.train()
            curve.append({"step": step, "bytes_all_reduced": count_bytes(), **metrics})
    return curve


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(method: Method, curves: list[list[dict[str, float]]]) -> dict[str, Any]:
    finals = [curve[-1] for curve in curves]
    accuracy, accuracy_std = _mean_std([f["val_accuracy"] for f in finals])
    loss, loss_std = _mean_std([f["val_loss"] for f in finals])
    return {
        "method": dataclasses.asdict(method),
        "label": method.label,
        "bytes_all_reduced_per_rank": finals[0]["bytes_all_reduced"],
        "final_val_accuracy_mean": accuracy,
        "final_val_accuracy_std": accuracy_std,
        "final_val_loss_mean": loss,
        "final_val_loss_std": loss_std,
        "megabytes_to_reach_target": megabytes_to_reach(curves, TARGET_ACCURACY),
        "curves": curves,
    }


def mean_curve(curves: list[list[dict[str, float]]]) -> tuple[list[float], list[int], list[float]]:
    """(MB all-reduced, step, validation accuracy averaged over the seeds) at each evaluation."""
    points = range(len(curves[0]))
    megabytes = [curves[0][i]["bytes_all_reduced"] / 1e6 for i in points]
    steps = [int(curves[0][i]["step"]) for i in points]
    accuracy = [statistics.fmean(c[i]["val_accuracy"] for c in curves) for i in points]
    return megabytes, steps, accuracy


def megabytes_to_reach(curves: list[list[dict[str, float]]], accuracy: float) -> float | None:
    """MB all-reduced when the seed-averaged validation accuracy first reaches ``accuracy``."""
    for megabytes, _, value in zip(*mean_curve(curves), strict=True):
        if value >= accuracy:
            return megabytes
    return None


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_bytes, by_step) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {None: "black", 5: "tab:orange", 20: "tab:green", 50: "tab:purple"}
    for summary in summaries:
        method = summary["method"]
        megabytes, steps, accuracy = mean_curve(summary["curves"])
        if method["outer_momentum"]:
            color, style = "tab:gray", ":"
        else:
            color = colors.get(method["k"], "tab:red")
            style = "-" if method["name"] == "ddp" or method["alpha"] == 1.0 else "--"
        style_kwargs = {"color": color, "linestyle": style, "marker": "."}
        by_bytes.plot(megabytes, accuracy, label=summary["label"], **style_kwargs)
        by_step.plot(steps, accuracy, **style_kwargs)
    by_bytes.set_xscale("log")
    by_bytes.set_xlabel("MB all-reduced per rank (cumulative)")
    by_step.set_xlabel("step (each rank)")
    for axes in (by_bytes, by_step):
        axes.set_ylabel("validation accuracy (mean over seeds)")
        axes.set_ylim(0.5, 1.0)
        axes.grid(alpha=0.3)
    by_bytes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _megabytes_cell(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}"


def write_report(out: Path, summaries: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"settings": settings, "runs": summaries}, indent=1) + "\n"
    )
    plot(summaries, out / "bytes_vs_accuracy.png")
    ddp_bytes = next(s for s in summaries if s["method"]["name"] == "ddp")[
        "bytes_all_reduced_per_rank"
    ]
    rows = [
        "| method | k | alpha | outer momentum | MB all-reduced per rank | share of DDP's | "
        f"MB until val accuracy >= {TARGET_ACCURACY} | final val accuracy | final val loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        method = s["method"]
        momentum = (
            f"{method['outer_momentum']} ({'Nesterov' if method['nesterov'] else 'heavy ball'})"
            if method["outer_momentum"]
            else "-"
        )
        rows.append(
            f"| {'DDP' if method['name'] == 'ddp' else 'DistributedLookahead'} "
            f"| {method['k'] or 1} | {method['alpha'] if method['alpha'] is not None else '-'} "
            f"| {momentum} | {s['bytes_all_reduced_per_rank'] / 1e6:.2f} "
            f"| {s['bytes_all_reduced_per_rank'] / ddp_bytes:.3f} "
            f"| {_megabytes_cell(s['megabytes_to_reach_target'])} "
            f"| {s['final_val_accuracy_mean']:.4f} ± {s['final_val_accuracy_std']:.4f} "
            f"| {s['final_val_loss_mean']:.4f} ± {s['final_val_loss_std']:.4f} |"
        )
    text = f"""# DDP against DistributedLookahead on the digits task

Produced by

```
{settings["command"]}
```

in {settings["wall_seconds"]:.0f} s on {settings["machine"]} (torch {settings["torch"]}, backend
{settings["backend"]}, {settings["world_size"]} ranks).

Task: the lab's `digits` task (scikit-learn's 8x8 digits, 1,437 training and 360 validation
images, `DigitsCNN`, {settings["parameters"]:,} parameters). Each rank trains on its own disjoint
half of the training set, {settings["steps"]} steps of AdamW (lr {settings["lr"]}) on batches of
{settings["batch_size"]} per rank, seeds {settings["seeds"]}. DDP averages the gradients at every
step; DistributedLookahead averages the weights every k steps and moves the slow weights by
alpha towards the average (alpha = 1 is periodic model averaging, "local SGD"; the last row adds
DiLoCo-style Nesterov outer momentum). Accuracy is measured on the weights the run would ship:
DDP's weights, the slow weights of DistributedLookahead.

Bytes are the payload each rank hands to all-reduce, counted in the run (a DDP communication
hook; `DistributedLookahead.bytes_all_reduced`, which includes its 4-byte-per-tensor agreement
check). A ring all-reduce sends about 2(W-1)/W times the payload per rank for both. The initial
broadcast of rank 0's weights (done by both) is not counted.

{chr(10).join(rows)}

Final = after step {settings["steps"]}; mean ± standard deviation over the seeds. "MB until val
accuracy >= {TARGET_ACCURACY}": bytes all-reduced per rank up to the first evaluation (every
{settings["eval_every"]} steps) at which the seed-averaged validation accuracy reached it.

![validation accuracy against bytes all-reduced, and against steps](bytes_vs_accuracy.png)

Raw curves: `results.json`.
"""
    (out / "report.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("ddp", "lookahead"), default="lookahead")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--outer-momentum", type=float, default=0.0)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--compare", action="store_true", help="run the whole comparison grid")
    parser.add_argument("--out", type=Path, default=Path("reports/distributed-digits"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", default="gloo")
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group(args.backend)
    device = "cpu"
    if args.backend == "nccl":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    task = DigitsTask()
    data = task.load(None, device)
    methods = (
        COMPARISON
        if args.compare
        else (Method(args.method, args.k, args.alpha, args.outer_momentum, args.nesterov),)
    )
    started = time.perf_counter()
    summaries = []
    for method in methods:
        curves = [
            train(
                method,
                task,
                data,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                eval_every=args.eval_every,
                seed=seed,
            )
            for seed in args.seeds
        ]
        if dist.get_rank() == 0:
            summary = summarise(method, curves)
            summaries.append(summary)
            print(
                f"{method.label:<62} {summary['bytes_all_reduced_per_rank'] / 1e6:8.2f} MB  "
                f"val accuracy {summary['final_val_accuracy_mean']:.4f} "
                f"± {summary['final_val_accuracy_std']:.4f}",
                flush=True,
            )
    if args.compare and dist.get_rank() == 0:
        settings = {
            "command": f"OMP_NUM_THREADS=1 torchrun --nproc_per_node={dist.get_world_size()} "
            + " ".join(["examples/distributed_digits.py", *sys.argv[1:]]),
            "wall_seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()} CPU"
            if device == "cpu"
            else torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "backend": args.backend,
            "world_size": dist.get_world_size(),
            "parameters": sum(p.numel() for p in task.build_model().parameters()),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "eval_every": args.eval_every,
            "seeds": args.seeds,
        }
        write_report(args.out, summaries, settings)
        print(f"report: {args.out / 'report.md'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
