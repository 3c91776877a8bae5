"""Lookahead across workers on the lab's digits (or charlm) task: DDP against DistributedLookahead.

Each rank trains on its own shard of the training set. DDP all-reduces the gradients at every
step; DistributedLookahead lets each rank take k AdamW steps alone and then averages the weights in
one all-reduce (the slow weights step towards the average). The script counts the bytes each rank
all-reduces and the validation accuracy (charlm: bits per character) of the model the run would
ship (DDP's weights, the slow weights of DistributedLookahead).

One run::

    torchrun --nproc_per_node=2 examples/distributed_digits.py --method lookahead --k 20

The committed comparison (reports/distributed-digits/)::

    torchrun --nproc_per_node=2 examples/distributed_digits.py --compare --out reports/distributed-digits

and the comparison of DistributedLookahead's options (streaming fragments, sync delay,
compressed communication) against DDP, with and without its ``bf16_compress_hook``, over a
simulated slow link (reports/distributed-digits/options.md)::

    torchrun --nproc_per_node=2 examples/distributed_digits.py --compare-options \
        --link-latency-ms 20 --link-mb-per-s 2 --out reports/distributed-digits

``--task charlm`` runs the lab's byte-level language model instead (each rank on its own
contiguous half of the training text; reports/distributed-charlm/ holds its options comparison).

Needs the ``lab`` extra (scikit-learn for the data, matplotlib for the plot). CPU and gloo by
default; with CUDA, pass ``--backend nccl`` and each rank uses its own GPU.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
    allreduce_hook,
    bf16_compress_hook,
)
from torch.nn.parallel import DistributedDataParallel

from torch_lookahead.distributed import DistributedLookahead, fragment_param_groups
from torch_lookahead_lab.tasks import CharLMTask, DigitsTask, Task, TaskData


@dataclasses.dataclass(frozen=True)
class Method:
    """How the ranks communicate: ``ddp`` every step, or ``lookahead`` every k steps.

    ``compression``: for ``lookahead``, the exchange's encoding of the pseudo-gradient
    (``"bfloat16"`` or ``"int8"``); for ``ddp``, ``"bfloat16"`` all-reduces the gradients through
    torch's ``bf16_compress_hook`` (cast to bfloat16, divided by W, summed, cast back).
    """

    name: str
    k: int | None = None
    alpha: float | None = None
    outer_momentum: float = 0.0
    nesterov: bool = False
    fragments: int = 1
    sync_delay: int = 0
    compression: str | None = None

    @property
    def label(self) -> str:
        if self.name == "ddp":
            if self.compression:
                return f"DDP {self.compression} compress hook (all-reduce every step)"
            return "DDP (all-reduce every step)"
        label = f"DistributedLookahead k={self.k} alpha={self.alpha}"
        if self.outer_momentum:
            kind = "Nesterov" if self.nesterov else "heavy-ball"
            label += f" {kind} mu={self.outer_momentum}"
        if self.fragments > 1:
            label += f" F={self.fragments}"
        if self.sync_delay:
            label += f" delay={self.sync_delay}"
        if self.compression:
            label += f" {self.compression}"
        return label


COMPARISON = (
    Method("ddp"),
    *(Method("lookahead", k=k, alpha=0.5) for k in (5, 20, 50)),
    *(Method("lookahead", k=k, alpha=1.0) for k in (5, 20, 50)),
    Method("lookahead", k=20, alpha=0.7, outer_momentum=0.9, nesterov=True),
)

OPTIONS_COMPARISON = (
    Method("ddp"),
    Method("ddp", compression="bfloat16"),
    Method("lookahead", k=20, alpha=1.0),
    Method("lookahead", k=20, alpha=1.0, fragments=2),
    Method("lookahead", k=20, alpha=1.0, fragments=4),
    Method("lookahead", k=20, alpha=1.0, sync_delay=5),
    Method("lookahead", k=20, alpha=1.0, compression="bfloat16"),
    Method("lookahead", k=20, alpha=1.0, compression="int8"),
    Method("lookahead", k=20, alpha=1.0, fragments=4, sync_delay=5, compression="int8"),
)


class SimulatedLink:
    """A slow network on loopback: each collective takes at least latency + wire bytes / bandwidth.

    The wire bytes are what one rank sends: 2(W-1)/W of the payload for a ring all-reduce,
    (W-1)/W of it for an all-to-all or an all-gather. A blocking collective returns that long
    after it started at the earliest; an asynchronous one runs at once and its ``wait()`` returns
    that long after the launch at the earliest, so that computation in between overlaps it.
    """

    def __init__(self, latency_s: float, bytes_per_s: float) -> None:
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.all_reduce = dist.all_reduce
        self.all_to_all_single = dist.all_to_all_single
        self.all_gather_into_tensor = dist.all_gather_into_tensor
        self.all_gather_single = getattr(dist, "all_gather_single", None)
        self.intercepted = 0  # collective calls routed through the link since installed()

    def seconds(self, payload_bytes: int, fraction_sent: float) -> float:
        return self.latency_s + payload_bytes * fraction_sent / self.bytes_per_s

    def _delayed(self, collective: Callable[..., Any], ring_factor: float) -> Callable[..., Any]:
        link = self

        def run(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            link.intercepted += 1
            world_size = dist.get_world_size(kwargs.get("group"))
            payload = tensor.numel() * tensor.element_size()
            ready_at = time.perf_counter() + link.seconds(
                payload, ring_factor * (world_size - 1) / world_size
            )
            work = collective(tensor, *args, **kwargs)
            if not kwargs.get("async_op"):
                _sleep_until(ready_at)
                return work
            return _DelayedWork(work, ready_at)

        return run

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route torch.distributed's all_reduce, all_to_all_single, all_gather_into_tensor and
        all_gather_single through it (it patches them by name: ``intercepted`` counts the calls it saw)."""
        self.intercepted = 0
        dist.all_reduce = self._delayed(self.all_reduce, 2.0)  # type: ignore[assignment]
        dist.all_to_all_single = self._delayed(self.all_to_all_single, 1.0)  # type: ignore[assignment]
        dist.all_gather_into_tensor = self._delayed(self.all_gather_into_tensor, 1.0)  # type: ignore[assignment]
        if self.all_gather_single is not None:  # torch >= 2.13
            dist.all_gather_single = self._delayed(self.all_gather_single, 1.0)
        try:
            yield
        finally:
            dist.all_reduce = self.all_reduce  # type: ignore[assignment]
            dist.all_to_all_single = self.all_to_all_single  # type: ignore[assignment]
            dist.all_gather_into_tensor = self.all_gather_into_tensor  # type: ignore[assignment]
            if self.all_gather_single is not None:
                dist.all_gather_single = self.all_gather_single


def _sleep_until(moment: float) -> None:
    remaining = moment - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)


class _DelayedWork:
    def __init__(self, work: Any, ready_at: float) -> None:
        self.work = work
        self.ready_at = ready_at

    def wait(self) -> bool:
        result = self.work.wait()
        _sleep_until(self.ready_at)
        return bool(result)


TARGET_ACCURACY = 0.95

# The quality metric of each task (digits: higher is better; charlm: lower is better).
METRICS = {"digits": "val_accuracy", "charlm": "val_bpc"}
METRIC_NAMES = {"val_accuracy": "val accuracy", "val_bpc": "val bits per character"}
# CharLSTM has three modules, so F = 4 has to cut between tensors rather than modules.
FRAGMENT_BY = {"digits": "module", "charlm": "size"}


def build_task(name: str) -> Task:
    """The lab's task ``name`` as this example uses it."""
    return {"digits": DigitsTask, "charlm": CharLMTask}[name]()


class ByteCounter:
    """A DDP communication hook state: all-reduce as DDP does, counting the payload bytes.

    ``compression="bfloat16"`` all-reduces through torch's ``bf16_compress_hook`` (2 bytes a
    value on the wire). DDP refuses that hook by name outside CUDA/NCCL or XPU/XCCL when it is
    registered itself, but gloo sums bfloat16 tensors on CPU, so it runs inside this wrapper.
    """

    def __init__(
        self,
        process_group: dist.ProcessGroup,
        link: SimulatedLink | None = None,
        compression: str | None = None,
    ) -> None:
        if compression not in (None, "bfloat16"):
            raise ValueError(f"compression must be None or 'bfloat16' for DDP, got {compression!r}")
        self.process_group = process_group
        self.bytes_all_reduced = 0
        self.link = link
        self.compression = compression


# No ``from __future__ import annotations`` in this file: DDP checks this hook's annotations.
def counting_allreduce_hook(
    state: ByteCounter,
    bucket: dist.GradBucket,  # type: ignore[name-defined]
) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    wire_dtype = torch.bfloat16 if state.compression == "bfloat16" else buffer.dtype
    payload = buffer.numel() * wire_dtype.itemsize
    state.bytes_all_reduced += payload
    if state.link is not None:  # the model fits one DDP bucket: nothing to overlap it with
        world_size = dist.get_world_size(state.process_group)
        time.sleep(state.link.seconds(payload, 2.0 * (world_size - 1) / world_size))
    if state.compression == "bfloat16":
        return bf16_compress_hook(state.process_group, bucket)
    return allreduce_hook(state.process_group, bucket)


def shard_of(data: TaskData, rank: int, world_size: int) -> TaskData:
    """This rank's disjoint share of the training rows (validation data stays whole).

    A text task (charlm: one long training text, no target rows) gets a contiguous slice of the
    text instead, so every window it draws lies in that slice and no two ranks share one.
    """
    if data.train_targets.numel() == 0 and data.train_inputs.dim() == 1:
        size = data.train_inputs.numel()
        start, end = rank * size // world_size, (rank + 1) * size // world_size
        return dataclasses.replace(data, train_inputs=data.train_inputs[start:end])
    return dataclasses.replace(
        data,
        train_inputs=data.train_inputs[rank::world_size],
        train_targets=data.train_targets[rank::world_size],
    )


def train(
    method: Method,
    task: Task,
    data: TaskData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    seed: int,
    link: SimulatedLink | None = None,
    fragment_by: str = "module",
    step_log: list[tuple[float, int]] | None = None,
) -> list[dict[str, float]]:
    """Train one run; rank 0 returns the curve (step, bytes, validation metrics), others [].

    Each point also carries ``train_seconds`` (the training steps' wall time so far, evaluation
    excluded) and ``peak_step_bytes`` (the most bytes one step has exchanged so far). Gradients
    are clipped to the task's ``max_grad_norm`` when it has one (DDP: the averaged gradient;
    DistributedLookahead: each rank's own). ``step_log``, if given, receives each step's wall
    seconds and bytes exchanged.
    """
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
        counter = ByteCounter(dist.group.WORLD, link, method.compression)  # type: ignore[arg-type]
        trained.register_comm_hook(counter, counting_allreduce_hook)
        optimizer = torch.optim.AdamW(trained.parameters(), lr=lr)
        count_bytes = lambda: counter.bytes_all_reduced  # noqa: E731
    else:
        assert method.k is not None and method.alpha is not None
        trained = model
        params: Any = model.parameters()
        if method.fragments > 1:
            params = fragment_param_groups(model, method.fragments, by=fragment_by)  # type: ignore[arg-type]
        lookahead = DistributedLookahead(
            torch.optim.AdamW(params, lr=lr),
            k=method.k,
            alpha=method.alpha,
            outer_momentum=method.outer_momentum,
            nesterov=method.nesterov,
            sync_delay=method.sync_delay,
            compression=method.compression,  # type: ignore[arg-type]
        )
        optimizer = lookahead
        count_bytes = lambda: lookahead.bytes_all_reduced  # noqa: E731

    curve: list[dict[str, float]] = []
    # DDP's hook delays its own all-reduces; DistributedLookahead's go through torch.distributed.
    on_link = link.installed() if link is not None and method.name != "ddp" else None
    train_seconds, peak_step_bytes = 0.0, 0
    dist.barrier()
    with on_link if on_link is not None else contextlib.nullcontext():
        for step in range(1, steps + 1):
            started, bytes_before = time.perf_counter(), count_bytes()
            task.loss(trained, task.sample_batch(shard, generator, batch_size)).backward()  # type: ignore[no-untyped-call]
            if task.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trained.parameters(), task.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == steps and isinstance(optimizer, DistributedLookahead):
                # End on a completed sync (collective, every rank), so that the slow weights hold
                # the run's last steps: a delayed sync in flight is applied, and the groups with
                # steps since their last sync take it. sync() is idempotent: at a cycle end
                # without fragments or a delay it exchanges nothing and changes nothing.
                optimizer.sync()
            seconds, step_bytes = time.perf_counter() - started, count_bytes() - bytes_before
            train_seconds += seconds
            peak_step_bytes = max(peak_step_bytes, step_bytes)
            if step_log is not None:
                step_log.append((seconds, step_bytes))
            if rank == 0 and (step % eval_every == 0 or step == steps):
                model.eval()
                with torch.no_grad():
                    shipped = (
                        optimizer.slow_weights()  # the same on every rank
                        if isinstance(optimizer, DistributedLookahead)
                        else contextlib.nullcontext()
                    )
                    with shipped:
                        metrics = task.evaluate(model, data)
                        if step == steps:  # the held-out split (charlm's test_bpc), once
                            metrics |= task.evaluate_test(model, data)
                model.train()
                curve.append(
                    {
                        "step": step,
                        "bytes_all_reduced": count_bytes(),
                        "train_seconds": train_seconds,
                        "peak_step_bytes": peak_step_bytes,
                        **metrics,
                    }
                )
    if on_link is not None:
        # The link patches collectives by name: a library calling another one would bypass it
        # silently. Each of the steps // k synchronisations exchanges at least once per fragment
        # group's turn, so at least this many calls must have gone through it.
        assert method.k is not None
        expected = max(1, steps // method.k // max(method.fragments, 1))
        assert link is not None and link.intercepted >= expected, (
            f"the simulated link intercepted {link.intercepted if link else 0} collective calls "
            f"of {method.name}, expected at least {expected}"
        )
    return curve


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def interval_95(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean of ``values`` (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5


def summarise(
    method: Method, curves: list[list[dict[str, float]]], metric: str = "val_accuracy"
) -> dict[str, Any]:
    """Bytes, peak burst, wall time and final ``metric`` and val loss (mean, std, 95%) over seeds."""
    finals = [curve[-1] for curve in curves]
    quality, quality_std = _mean_std([f[metric] for f in finals])
    loss, loss_std = _mean_std([f["val_loss"] for f in finals])
    seconds = [f.get("train_seconds", 0.0) for f in finals]
    return {
        f"final_{metric}_ci95": interval_95([f[metric] for f in finals]),
        "final_val_loss_ci95": interval_95([f["val_loss"] for f in finals]),
        "train_seconds_mean": statistics.fmean(seconds),
        "train_seconds_ci95": interval_95(seconds),
        "peak_step_bytes": max(f.get("peak_step_bytes", 0) for f in finals),
        "method": dataclasses.asdict(method),
        "label": method.label,
        "bytes_all_reduced_per_rank": finals[0]["bytes_all_reduced"],
        f"final_{metric}_mean": quality,
        f"final_{metric}_std": quality_std,
        "final_val_loss_mean": loss,
        "final_val_loss_std": loss_std,
        "megabytes_to_reach_target": megabytes_to_reach(curves, TARGET_ACCURACY)
        if metric == "val_accuracy"
        else None,
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
    reread = (  # the committed digits report's note on its last row, where it sits beside it
        "The last row (DiLoCo's outer step) is reread in [diloco_row.md](diloco_row.md).\n"
        if (out / "diloco_row.md").exists()
        else ""
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
hook; `DistributedLookahead.bytes_all_reduced`, which includes the int64 sums of its verdict,
8 bytes per tensor and 16 per group, sent with the data). A ring all-reduce sends about 2(W-1)/W times the payload per rank for both. The initial
broadcast of rank 0's weights (done by both) is not counted.

{chr(10).join(rows)}

Final = after step {settings["steps"]}; mean ± standard deviation over the seeds. "MB until val
accuracy >= {TARGET_ACCURACY}": bytes all-reduced per rank up to the first evaluation (every
{settings["eval_every"]} steps) at which the seed-averaged validation accuracy reached it.
{reread}
![validation accuracy against bytes all-reduced, and against steps](bytes_vs_accuracy.png)

Raw curves: `results.json`.
"""
    (out / "report.md").write_text(text)


def _option_cells(method: dict[str, Any]) -> str:
    if method["name"] == "ddp":
        if method["compression"]:
            return f"DDP | - | - | {method['compression']} (`bf16_compress_hook`)"
        return "DDP | - | - | float32"
    return (
        f"k={method['k']}, alpha={method['alpha']} | {method['fragments']} "
        f"| {method['sync_delay']} | {method['compression'] or 'float32 (exact)'}"
    )


def write_options_report(
    out: Path, summaries: list[dict[str, Any]], settings: dict[str, Any]
) -> None:
    """options.md and options.json: the options of DistributedLookahead side by side.

    ``settings["task"]`` (default ``"digits"``) picks the quality column and the task's paragraph.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "options.json").write_text(
        json.dumps({"settings": settings, "runs": summaries}, indent=1) + "\n"
    )
    task = settings.get("task", "digits")
    metric = METRICS[task]
    rows = []
    for s in summaries:
        rows.append(
            f"| {_option_cells(s['method'])} "
            f"| {s['bytes_all_reduced_per_rank'] / 1e6:.2f} | {s['peak_step_bytes'] / 1e3:.1f} "
            f"| {s['train_seconds_mean']:.1f} ± {s['train_seconds_ci95']:.1f} "
            f"| {s[f'final_{metric}_mean']:.4f} ± {s[f'final_{metric}_ci95']:.4f} "
            f"| {s['final_val_loss_mean']:.4f} ± {s['final_val_loss_ci95']:.4f} |"
        )
    link = settings["link"]
    if task == "digits":
        task_text = f"""Task and training as in [report.md](report.md): the lab's `digits` task, {settings["parameters"]:,}
parameters, each rank on its own half of the training set, {settings["steps"]} steps of AdamW
(lr {settings["lr"]}), batches of {settings["batch_size"]} per rank, seeds {settings["seeds"]}.
Every DistributedLookahead row uses k = 20, alpha = 1 (periodic averaging, the best alpha of
report.md) and changes one option: streaming fragments (`fragment_param_groups(model, F)`, by
module),"""
    else:
        task_text = f"""Task: the lab's `charlm` task (`CharLMTask`: a byte-level LSTM language model, `CharLSTM`,
{settings["parameters"]:,} parameters, on the first megabyte of the Python standard library's
top-level `*.py` files in sorted order; the first 90% trains, the last 10% validates in
non-overlapping 64-byte windows). Each rank trains on its own contiguous half of the training
text (random 64-byte windows inside it), {settings["steps"]} steps of AdamW at the task's learning
rate {settings["lr"]} (constant, no schedule), batches of {settings["batch_size"]} windows per rank,
gradient norm clipped at {settings.get("max_grad_norm")} as the task does (DDP: the averaged
gradient; DistributedLookahead: each rank's own), seeds {settings["seeds"]}. Quality is the
validation bits per character (val loss / ln 2, lower is better) of the weights the run would
ship: DDP's weights, the slow weights of DistributedLookahead. Every DistributedLookahead row
uses k = 20, alpha = 1 (periodic averaging, as on digits) and changes one option: streaming
fragments (`fragment_param_groups(model, F, by="size")`: `CharLSTM` has only three modules, so
the cut falls between tensors; the LSTM's hidden-to-hidden weight, about half the model, stays
whole),"""
    quality_column = f"final {METRIC_NAMES[metric]} (mean ± 95%)"
    text = f"""# DistributedLookahead's options on the {task} task, over a simulated slow link

Produced by

```
{settings["command"]}
```

in {settings["wall_seconds"]:.0f} s on {settings["machine"]} (torch {settings["torch"]}, backend
{settings["backend"]}, {settings["world_size"]} ranks on one machine, shared with other jobs while it
ran, so wall times are noisy).

{task_text} the sync delay d (the mean applied d inner steps after its launch), or the communication
(the pseudo-gradient in bfloat16, or in int8 with a float32 scale per block of 1,024 values of
one tensor); the last row combines them. The second DDP row is DDP with its own compression:
torch's `bf16_compress_hook` casts the gradients to bfloat16, divides them by the number of
ranks, all-reduces them in bfloat16 and casts the sum back (2 bytes a value on the wire).

The link: every collective takes at least {link["latency_ms"]} ms + wire bytes /
{link["mb_per_s"]} MB/s, simulated on loopback by `SimulatedLink` in the example (wire bytes per
rank: 2(W-1)/W of the payload for an all-reduce, (W-1)/W for each phase of the compressed
exchange). DDP's gradient all-reduce waits for the link in its communication hook (the model
fits one DDP bucket, so it cannot overlap the backward pass); DistributedLookahead's collectives,
including the small all-reduce of its verdict launched with the data, go through the wrapper,
and an asynchronous one
(sync delay) is only waited for when its result is applied.

| method | fragments F | sync delay d | communication | MB per rank | peak KB in one step | train wall s (mean ± 95%) | {quality_column} | final val loss (mean ± 95%) |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

"MB per rank": the payload bytes each rank exchanged over the run (DDP: gradients, 4 bytes a
value or 2 with the hook; compressed: the encoded bytes). "Peak KB in one step": the most bytes
one training step exchanged, i.e. the largest burst the link must carry. "Train wall s": rank
0's time in training steps (evaluation excluded) over the run, measured, including the simulated
link's delays (a model of a slow link on loopback, not a measurement over one).
Intervals: 95% t-intervals of the mean over the {len(settings["seeds"])} seeds (wide with few
seeds). Raw curves: `options.json`.
"""
    (out / "options.md").write_text(text)


def write_result(path: Path, method: Method, args: argparse.Namespace, curves: list[Any]) -> None:
    """``path``: the method, the settings and the seeds' curves of one run, written whole (a
    temporary file renamed over it), so a file that exists holds a finished run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "method": dataclasses.asdict(method),
        "task": args.task,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seeds": args.seeds,
        "world_size": dist.get_world_size(),
        "backend": args.backend,
        "torch": torch.__version__,
        "curves": curves,
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("ddp", "lookahead"), default="lookahead")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--outer-momentum", type=float, default=0.0)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--fragments", type=int, default=1)
    parser.add_argument("--sync-delay", type=int, default=0)
    parser.add_argument("--compression", choices=("bfloat16", "int8"), default=None)
    parser.add_argument("--compare", action="store_true", help="run the whole comparison grid")
    parser.add_argument(
        "--compare-options", action="store_true", help="compare DistributedLookahead's options"
    )
    parser.add_argument("--link-latency-ms", type=float, default=None)
    parser.add_argument("--link-mb-per-s", type=float, default=None)
    parser.add_argument("--task", choices=tuple(METRICS), default="digits")
    parser.add_argument("--out", type=Path, default=None, help="default reports/distributed-TASK")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="default: the task's AdamW lr")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", default="gloo")
    parser.add_argument(
        "--result-json",
        type=Path,
        default=None,
        help="write the run's method, settings and per-seed curves to this file when it ends",
    )
    args = parser.parse_args()
    if args.method == "ddp" and args.compression not in (None, "bfloat16"):
        parser.error("--method ddp takes --compression bfloat16 (its bf16_compress_hook) only")
    if args.compare and args.task != "digits":
        parser.error("--compare (report.md) is for the digits task; use --compare-options")
    if args.out is None:
        args.out = Path(f"reports/distributed-{args.task}")

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group(args.backend)
    device = "cpu"
    if args.backend == "nccl":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    task = build_task(args.task)
    data = task.load(None, device)
    metric = METRICS[args.task]
    if args.lr is None:
        args.lr = task.learning_rate("adamw")
    link = None
    if args.link_latency_ms is not None or args.link_mb_per_s is not None:
        link = SimulatedLink((args.link_latency_ms or 0.0) / 1e3, (args.link_mb_per_s or 1e6) * 1e6)
    if args.compare:
        methods: tuple[Method, ...] = COMPARISON
    elif args.compare_options:
        methods = OPTIONS_COMPARISON
    else:
        methods = (
            Method(
                args.method,
                args.k,
                args.alpha,
                args.outer_momentum,
                args.nesterov,
                args.fragments,
                args.sync_delay,
                args.compression,
            ),
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
                link=link,
                fragment_by=FRAGMENT_BY[args.task],
            )
            for seed in args.seeds
        ]
        if dist.get_rank() == 0:
            summary = summarise(method, curves, metric)
            summaries.append(summary)
            if args.result_json is not None:
                write_result(args.result_json, method, args, curves)
            print(
                f"{method.label:<62} {summary['bytes_all_reduced_per_rank'] / 1e6:8.2f} MB  "
                f"{METRIC_NAMES[metric]} {summary[f'final_{metric}_mean']:.4f} "
                f"± {summary[f'final_{metric}_std']:.4f}  "
                f"train {summary['train_seconds_mean']:.1f} s",
                flush=True,
            )
    if (args.compare or args.compare_options) and dist.get_rank() == 0:
        settings = {
            "command": f"OMP_NUM_THREADS=1 torchrun --nproc_per_node={dist.get_world_size()} "
            + " ".join(["examples/distributed_digits.py", *sys.argv[1:]]),
            "wall_seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()} CPU"
            if device == "cpu"
            else torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "backend": args.backend,
            "task": args.task,
            "max_grad_norm": task.max_grad_norm,
            "world_size": dist.get_world_size(),
            "parameters": sum(p.numel() for p in task.build_model().parameters()),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "eval_every": args.eval_every,
            "seeds": args.seeds,
            "link": {"latency_ms": args.link_latency_ms, "mb_per_s": args.link_mb_per_s},
        }
        if args.compare:
            write_report(args.out, summaries, settings)
            print(f"report: {args.out / 'report.md'}")
        else:
            write_options_report(args.out, summaries, settings)
            print(f"report: {args.out / 'options.md'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
