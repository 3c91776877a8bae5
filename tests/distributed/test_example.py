"""The torchrun example on the digits task: its byte counts, its report, and its command line."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.distributed._cluster import Cluster
from torch_lookahead.distributed._exchange import INT8_BLOCK

pytestmark = pytest.mark.distributed

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distributed_digits.py"
DIGITS_CNN_BYTES = 38_282 * 4  # float32 parameters of the lab's DigitsCNN
DIGITS_CNN_TENSORS = 8


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("distributed_digits", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_example(rank: int, world_size: int, out: str) -> None:
    example = _example()
    task = example.DigitsTask()
    data = task.load(None, "cpu")
    steps, k = 10, 5
    methods = [example.Method("ddp"), example.Method("lookahead", k=k, alpha=0.5)]
    summaries = []
    for method in methods:
        curves = [
            example.train(
                method, task, data, steps=steps, batch_size=16, lr=2e-3, eval_every=5, seed=seed
            )
            for seed in (0, 1)
        ]
        if rank == 0:
            assert [point["step"] for point in curves[0]] == [5, 10]
            summaries.append(example.summarise(method, curves))
        else:
            assert curves == [[], []]
    if rank == 0:
        ddp, lookahead = (s["bytes_all_reduced_per_rank"] for s in summaries)
        assert ddp == steps * DIGITS_CNN_BYTES  # the gradients, every step
        # steps // k syncs, and none more: the run ends at a cycle end, where its closing sync()
        # sends nothing (an extra outer step there would move momentum runs by the momentum
        # alone). Each is the
        # weights (an even number of float32 values) and the verdict's int64 sums (a flag, a flag
        # per tensor, a count, two fingerprint values and their squares for the one group)
        per_sync = DIGITS_CNN_BYTES + 8 * (1 + DIGITS_CNN_TENSORS + 6)
        assert lookahead == steps // k * per_sync
        settings = {
            "command": "test",
            "wall_seconds": 0.0,
            "machine": "test",
            "torch": "test",
            "backend": "gloo",
            "world_size": world_size,
            "parameters": 38_282,
            "steps": steps,
            "batch_size": 16,
            "lr": 2e-3,
            "eval_every": 5,
            "seeds": [0, 1],
        }
        example.write_report(Path(out), summaries, settings)


def check_options_example(rank: int, world_size: int, out: str) -> None:
    example = _example()
    task = example.DigitsTask()
    data = task.load(None, "cpu")
    method = example.Method(
        "lookahead", k=5, alpha=1.0, fragments=2, sync_delay=1, compression="int8"
    )
    link = example.SimulatedLink(latency_s=0.0, bytes_per_s=1e12)  # the wrapper, no delay
    curves = [
        example.train(
            method, task, data, steps=10, batch_size=16, lr=2e-3, eval_every=5, seed=0, link=link
        )
    ]
    assert example.dist.all_reduce is link.all_reduce  # the wrapper is removed after the run
    if rank != 0:
        return
    summary = example.summarise(method, curves)

    # F=2 cuts DigitsCNN into the convolutions and the first linear layer (tensors of 144, 16,
    # 4,608 and 32 values) and the rest (32,768, 64, 640, 10); fragment 1 syncs at steps 2 and
    # 7, fragment 0 at 5 and 10. int8 starts each tensor on a new block of 1,024 values (8 and
    # 35 blocks), pads to an even number of blocks (2 ranks) and adds a float32 scale per block,
    # plus the verdict's int64 sums (a flag, a flag per tensor, a count, two fingerprint values
    # and their squares a group).
    def int8_bytes(blocks: int, tensors: int, groups: int) -> int:
        blocks += blocks % 2
        return blocks * INT8_BLOCK + 4 * blocks + 8 * (1 + tensors + 6 * groups)

    fragment_bytes = [int8_bytes(8, 4, 1), int8_bytes(35, 4, 1)]
    # The sync that ends the run (step 10) applies fragment 0's delayed sync, launched at 10, and
    # exchanges fragment 1 alone: fragment 0 has no inner steps since that launch.
    final_sync = fragment_bytes[1]
    assert summary["bytes_all_reduced_per_rank"] == 2 * sum(fragment_bytes) + final_sync
    assert summary["peak_step_bytes"] == fragment_bytes[0] + final_sync  # fragment 0 at 10
    settings = {
        "command": "test",
        "wall_seconds": 0.0,
        "machine": "test",
        "torch": "test",
        "backend": "gloo",
        "world_size": world_size,
        "parameters": 38_282,
        "steps": 10,
        "batch_size": 16,
        "lr": 2e-3,
        "eval_every": 5,
        "seeds": [0],
        "link": {"latency_ms": 0.0, "mb_per_s": 1e6},
    }
    example.write_options_report(Path(out), [summary], settings)


def check_final_evaluation_is_flushed(rank: int, world_size: int) -> list[torch.Tensor]:
    example = _example()
    task = example.DigitsTask()
    data = task.load(None, "cpu")
    built: list[torch.nn.Module] = []
    evaluated: list[list[torch.Tensor]] = []
    build_model, evaluate = task.build_model, task.evaluate

    def recording_build() -> torch.nn.Module:
        built.append(build_model())
        return built[-1]

    def recording_evaluate(model: torch.nn.Module, data: object) -> dict[str, float]:
        evaluated.append([p.detach().clone() for p in model.parameters()])
        return evaluate(model, data)  # type: ignore[no-any-return]

    task.build_model, task.evaluate = recording_build, recording_evaluate
    # The last step (10) ends a cycle and launches a sync that sync_delay=2 applies two steps
    # later, i.e. never: the final evaluation must not see the slow weights of step 5.
    method = example.Method("lookahead", k=5, alpha=0.5, sync_delay=2)
    example.train(method, task, data, steps=10, batch_size=16, lr=2e-3, eval_every=10, seed=0)
    final = [p.detach().clone() for p in built[-1].parameters()]
    if rank == 0:
        (shipped,) = evaluated
        for evaluated_weight, final_weight in zip(shipped, final, strict=True):
            assert torch.equal(evaluated_weight, final_weight)
    return final


def test_final_evaluation_sees_the_completed_sync(cluster: Cluster) -> None:
    pytest.importorskip("sklearn")
    first, second = cluster.run(check_final_evaluation_is_flushed)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)  # the run ends on a completed sync: one model, every rank


def test_options_example_counts_compressed_fragment_bytes(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    cluster.run(check_options_example, str(tmp_path))
    report = (tmp_path / "options.md").read_text()
    # The bytes themselves are checked exactly in check_options_example.
    assert re.search(r"\| k=5, alpha=1\.0 \| 2 \| 1 \| int8 \| [0-9.]+ \| [0-9.]+ \|", report)
    assert (tmp_path / "options.json").exists()


CHAR_LSTM_PARAMETERS = 124_160  # the lab's CharLSTM: embedding, one LSTM layer, read-out


def check_charlm_example(rank: int, world_size: int, out: str) -> None:
    example = _example()
    task = example.build_task("charlm")
    data = task.load(None, "cpu")
    shards = [example.shard_of(data, r, world_size) for r in range(world_size)]
    # Contiguous, disjoint slices of the training text that together cover it.
    assert example.torch.equal(
        example.torch.cat([shard.train_inputs for shard in shards]), data.train_inputs
    )
    assert all(shard.train_inputs.numel() >= data.train_inputs.numel() // 2 for shard in shards)
    # A few validation windows keep the evaluation cheap; training is untouched.
    data = example.dataclasses.replace(
        data, val_inputs=data.val_inputs[:32], val_targets=data.val_targets[:32]
    )
    steps, metric = 4, example.METRICS["charlm"]
    methods = [
        example.Method("ddp"),
        example.Method("ddp", compression="bfloat16"),
        example.Method("lookahead", k=2, alpha=1.0, fragments=4, sync_delay=1, compression="int8"),
    ]
    summaries = []
    for method in methods:
        curves = [
            example.train(
                method,
                task,
                data,
                steps=steps,
                batch_size=4,
                lr=task.learning_rate("adamw"),
                eval_every=2,
                seed=seed,
                fragment_by=example.FRAGMENT_BY["charlm"],
            )
            for seed in (0, 1)
        ]
        if rank != 0:
            assert curves == [[], []]
            continue
        assert [point["step"] for point in curves[0]] == [2, 4]
        for point in curves[0]:
            assert abs(point["val_bpc"] - point["val_loss"] / math.log(2)) < 1e-9
            assert 0.0 < point["val_bpc"] < 8.0  # below a uniform guess over 256 bytes
        # The held-out test split is measured once, at the end, on the shipped weights.
        assert "test_bpc" not in curves[0][0]
        assert 0.0 < curves[0][-1]["test_bpc"] < 8.0
        summaries.append(example.summarise(method, curves, metric))
    if rank != 0:
        return
    ddp, ddp_bf16, lookahead = summaries
    assert ddp["bytes_all_reduced_per_rank"] == steps * CHAR_LSTM_PARAMETERS * 4
    assert ddp["peak_step_bytes"] == CHAR_LSTM_PARAMETERS * 4
    # bf16_compress_hook: 2 bytes a gradient value on the wire, and it trains the model too.
    assert ddp_bf16["bytes_all_reduced_per_rank"] == steps * CHAR_LSTM_PARAMETERS * 2
    assert ddp_bf16["peak_step_bytes"] == CHAR_LSTM_PARAMETERS * 2
    for curve, plain in zip(ddp_bf16["curves"], ddp["curves"], strict=True):
        assert curve[-1]["val_bpc"] != plain[-1]["val_bpc"]  # the rounded gradients differ
    # int8: about a byte per value; the last step moves a fragment and the whole model (the sync
    # that ends the run), under a quarter of the float32 bytes each.
    assert CHAR_LSTM_PARAMETERS < lookahead["peak_step_bytes"] < 2 * CHAR_LSTM_PARAMETERS
    assert lookahead["final_val_bpc_ci95"] >= 0.0
    settings = {
        "command": "test",
        "wall_seconds": 0.0,
        "machine": "test",
        "torch": "test",
        "backend": "gloo",
        "task": "charlm",
        "max_grad_norm": task.max_grad_norm,
        "world_size": world_size,
        "parameters": CHAR_LSTM_PARAMETERS,
        "steps": steps,
        "batch_size": 4,
        "lr": task.learning_rate("adamw"),
        "eval_every": 2,
        "seeds": [0, 1],
        "link": {"latency_ms": 0.0, "mb_per_s": 1e6},
    }
    example.write_options_report(Path(out), summaries, settings)


def test_example_runs_the_charlm_task(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("scipy")  # the example's confidence intervals (the lab extra)
    cluster.run(check_charlm_example, str(tmp_path))
    report = (tmp_path / "options.md").read_text()
    assert report.startswith("# DistributedLookahead's options on the charlm task")
    assert "| final val bits per character (mean ± 95%) |" in report
    assert "| DDP | - | - | float32 | 1.99 | 496.6 |" in report
    assert "| DDP | - | - | bfloat16 (`bf16_compress_hook`) | 0.99 | 248.3 |" in report
    assert "| k=2, alpha=1.0 | 4 | 1 | int8 |" in report
    assert "`charlm`" in report and "`digits`" not in report


def test_example_counts_bytes_and_writes_its_report(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    cluster.run(check_example, str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| DDP | 1 | - | - | 1.53 | 1.000 |" in report
    assert "| DistributedLookahead | 5 | 0.5 | - | 0.31 | 0.200 |" in report
    assert (tmp_path / "bytes_vs_accuracy.png").stat().st_size > 10_000
    assert (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_example_runs_under_torchrun(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(EXAMPLE),
        "--method", "lookahead", "--k", "5", "--steps", "10", "--eval-every", "5", "--seeds", "0",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DistributedLookahead k=5 alpha=0.5" in result.stdout
    assert "0.31 MB" in result.stdout  # two syncs of the whole model: 10 steps end a cycle


@pytest.mark.slow
def test_example_runs_charlm_under_torchrun(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(EXAMPLE),
        "--task", "charlm", "--method", "lookahead", "--k", "2", "--fragments", "4",
        "--compression", "int8", "--steps", "4", "--batch-size", "4", "--eval-every", "4",
        "--seeds", "0",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DistributedLookahead k=2 alpha=0.5 F=4 int8" in result.stdout
    assert "val bits per character" in result.stdout


def test_the_charlm_report_paired_table_is_what_its_script_computes() -> None:
    """reports/distributed-charlm/report.md's paired differences come from options.json through
    the committed script, not from a hand calculation."""
    pytest.importorskip("scipy", reason="the script's t-quantile (a dev extra, not in test-oldest)")
    folder = EXAMPLE.parents[1] / "reports" / "distributed-charlm"
    spec = importlib.util.spec_from_file_location("paired", folder / "paired_differences.py")
    assert spec is not None and spec.loader is not None
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    options = json.loads((folder / "options.json").read_text(encoding="utf-8"))
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "\n".join(paired.table(options)) in report
    assert "\n".join(paired.ddp_table(options)) in report
