"""The torchrun example on the digits task: its byte counts, its report, and its command line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.distributed._cluster import Cluster

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
        assert lookahead == (steps // k) * (DIGITS_CNN_BYTES + 4 * DIGITS_CNN_TENSORS)
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
    # F=2 cuts DigitsCNN into the convolutions and the first linear layer's 4,800 values and
    # the rest, 33,482 (fragment 1 syncs at steps 2 and 7, fragment 0 at 5 and 10); int8 pads
    # each to whole blocks of 1,024 per rank and adds a float32 scale per block, plus the 4-byte
    # agreement flag of each of a fragment's 4 tensors.
    fragment_bytes = [6144 + 4 * 6 + 16, 34816 + 4 * 34 + 16]
    assert summary["bytes_all_reduced_per_rank"] == 2 * sum(fragment_bytes)
    assert summary["peak_step_bytes"] == max(fragment_bytes)
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


def test_options_example_counts_compressed_fragment_bytes(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    cluster.run(check_options_example, str(tmp_path))
    report = (tmp_path / "options.md").read_text()
    assert "| k=5, alpha=1.0 | 2 | 1 | int8 | 0.08 | 35.0 |" in report
    assert (tmp_path / "options.json").exists()


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
    assert "0.31 MB" in result.stdout
