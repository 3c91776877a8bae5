"""A DistributedLookahead sync that fails: rollback and a clear error (injected failures, a hung
collective that runs into the process group's timeout), and DCP resume on another world size."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from tests._slow import slow_weights_of
from tests.distributed._cluster import Cluster
from tests.distributed._replica_utils import assert_same_on_all_ranks, unprepared
from torch_lookahead.distributed import (
    OUTER_MOMENTUM_KEY,
    DistributedLookahead,
    DistributedLookaheadState,
    SyncFailedError,
    fragment_param_groups,
    saved_world_size,
)

pytestmark = pytest.mark.distributed

FAULT_JOB = Path(__file__).resolve().parent / "_fault_job.py"


def _tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x, y = torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def _snapshot(opt: DistributedLookahead, key: str) -> list[torch.Tensor]:
    return [opt.state[p][key].clone() for g in opt.param_groups for p in g["params"]]


def _restore(model: torch.nn.Module, opt: DistributedLookahead, checkpoint: Any) -> None:
    model.load_state_dict(checkpoint[0])
    opt.load_state_dict(checkpoint[1])


class _FailingWork:
    def wait(self) -> None:
        raise RuntimeError("injected: Connection closed by peer")


def check_failed_collective_rolls_back(
    rank: int, world_size: int, sync_delay: int, compression: str | None
) -> None:
    model = _tiny_model(0)
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        k=3,
        alpha=0.5,
        outer_momentum=0.5,
        sync_delay=sync_delay,
        compression=compression,  # type: ignore[arg-type]
    )
    for step in range(3 + sync_delay):  # one completed sync
        _train_step(model, opt, rank, step)
    slow = _snapshot(opt, "lookahead_slow")
    momentum = _snapshot(opt, OUTER_MOMENTUM_KEY)
    assert momentum[0].any()
    checkpoint = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    original, original_all_to_all = dist.all_reduce, dist.all_to_all_single

    def failing_all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return _FailingWork()  # the verdict's sums

    def failing_all_to_all(*args: Any, **kwargs: Any) -> Any:
        return _FailingWork()  # the first phase

    dist.all_reduce = failing_all_reduce
    dist.all_to_all_single = failing_all_to_all
    try:
        for step in range(3 + sync_delay, 5 + sync_delay):  # local steps
            _train_step(model, opt, rank, step)
        with pytest.raises(SyncFailedError) as info:
            for step in range(5 + sync_delay, 6 + 2 * sync_delay):
                _train_step(model, opt, rank, step)
    finally:
        dist.all_reduce, dist.all_to_all_single = original, original_all_to_all
    message = str(info.value)
    assert f"the sync of parameter groups [0] failed on rank {rank} of 2" in message
    assert "RuntimeError: injected: Connection closed by peer" in message
    assert "rolled back to their last completed sync" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    for p, before in zip(model.parameters(), slow, strict=True):
        assert torch.equal(p.detach(), before)  # the weights of the last completed sync
        assert "lookahead_launch" not in opt.state[p]
    for now, before in zip(_snapshot(opt, "lookahead_slow"), slow, strict=True):
        assert torch.equal(now, before)
    for now, before in zip(_snapshot(opt, OUTER_MOMENTUM_KEY), momentum, strict=True):
        assert torch.equal(now, before)
    assert opt.param_groups[0]["lookahead_step"] == 0
    assert_same_on_all_ranks(model.parameters())
    # The other ranks may have committed the sync: this rank refuses to go on...
    with pytest.raises(SyncFailedError, match="refuses to step or sync"):
        _train_step(model, opt, rank, 20)
    with pytest.raises(SyncFailedError, match="refuses to step or sync"):
        opt.sync()
    # ...until every rank restarts from the same checkpoint.
    _restore(model, opt, checkpoint)
    for step in range(20, 23 + sync_delay):
        _train_step(model, opt, rank, step)
    assert_same_on_all_ranks(slow_weights_of(opt))


@pytest.mark.parametrize(
    ("sync_delay", "compression"), [(0, None), (1, None), (0, "int8"), (1, "bfloat16")]
)
def test_a_failed_collective_rolls_back_and_names_the_failure(
    cluster: Cluster, sync_delay: int, compression: str | None
) -> None:
    cluster.run(check_failed_collective_rolls_back, sync_delay, compression)


def check_one_rank_failing_never_leaves_the_ranks_diverged(rank: int, world_size: int) -> None:
    from torch_lookahead.distributed import _exchange

    model = _tiny_model(0)
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1), k=3, alpha=0.5, outer_momentum=0.5
    )
    for step in range(3):  # one completed sync, then a checkpoint
        _train_step(model, opt, rank, step)
    checkpoint = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    original = _exchange.Exchange.wait

    def fails_after_the_collectives(self: Any) -> Any:
        original(self)  # rank 1 completes and commits; rank 0 hears of an error
        raise RuntimeError("injected: error reported on one rank only")

    if rank == 0:
        _exchange.Exchange.wait = fails_after_the_collectives  # type: ignore[method-assign]
    try:
        for step in range(3, 5):
            _train_step(model, opt, rank, step)
        if rank == 0:
            with pytest.raises(SyncFailedError, match="failed on rank 0"):
                _train_step(model, opt, rank, 5)
        else:
            _train_step(model, opt, rank, 5)  # committed here
    finally:
        _exchange.Exchange.wait = original  # type: ignore[method-assign]
    if rank == 0:
        with pytest.raises(SyncFailedError, match="refuses to step or sync"):
            _train_step(model, opt, rank, 6)
        # Restarted alone from the checkpoint (its peer was not): the next sync finds that the
        # ranks count different syncs, and every rank refuses.
        _restore(model, opt, checkpoint)
    for step in range(6, 8):
        _train_step(model, opt, rank, step)
    with pytest.raises(SyncFailedError, match="disagree on how many syncs"):
        _train_step(model, opt, rank, 8)
    with pytest.raises(SyncFailedError, match="refuses to step or sync"):
        _train_step(model, opt, rank, 9)
    # Every rank restarts from the same checkpoint: the replicas agree again.
    _restore(model, opt, checkpoint)
    for step in range(3, 9):
        _train_step(model, opt, rank, step)
    assert_same_on_all_ranks(slow_weights_of(opt))
    assert_same_on_all_ranks([opt.state[p][OUTER_MOMENTUM_KEY] for p in model.parameters()])


def test_one_rank_failing_ends_in_agreement_or_refusal_on_every_rank(cluster: Cluster) -> None:
    cluster.run(check_one_rank_failing_never_leaves_the_ranks_diverged)


def check_a_rank_that_cannot_prepare_fails_the_sync_everywhere(
    rank: int, world_size: int, sync_delay: int
) -> None:
    model = _tiny_model(0)
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1), k=3, alpha=0.5, sync_delay=sync_delay
    )
    for step in range(3 + sync_delay):
        _train_step(model, opt, rank, step)
    slow = _snapshot(opt, "lookahead_slow")
    with unprepared(rank == 1):
        for step in range(3 + sync_delay, 5 + sync_delay):
            _train_step(model, opt, rank, step)
        with pytest.raises(SyncFailedError, match="1 of 2 ranks could not prepare") as info:
            for step in range(5 + sync_delay, 6 + 2 * sync_delay):
                _train_step(model, opt, rank, step)
    if rank == 1:
        assert "this rank: RuntimeError: injected: out of memory" in str(info.value)
    for p, before in zip(model.parameters(), slow, strict=True):
        assert torch.equal(p.detach(), before)  # rolled back on every rank
    for step in range(20, 26):  # the process group works: training goes on
        _train_step(model, opt, rank, step)
    assert_same_on_all_ranks(slow_weights_of(opt))


@pytest.mark.parametrize("sync_delay", [0, 1])
def test_a_rank_that_cannot_prepare_its_part_fails_the_sync_on_every_rank(
    cluster: Cluster, sync_delay: int
) -> None:
    cluster.run(check_a_rank_that_cannot_prepare_fails_the_sync_everywhere, sync_delay)


def check_hung_collective_ends_at_the_timeout(rank: int, world_size: int) -> str:
    group = dist.new_group(list(range(world_size)), timeout=timedelta(seconds=2))
    model = _tiny_model(0)
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1), k=2, alpha=0.5, process_group=group
    )
    if rank == 1:
        return ""  # this rank never reaches the sync: rank 0's collective hangs
    _train_step(model, opt, rank, 0)
    slow = _snapshot(opt, "lookahead_slow")
    with pytest.raises(SyncFailedError, match="failed on rank 0 of 2") as info:
        _train_step(model, opt, rank, 1)
    for p, before in zip(model.parameters(), slow, strict=True):
        assert torch.equal(p.detach(), before)
    return str(info.value)


def test_a_hung_collective_raises_at_the_process_group_timeout(cluster: Cluster) -> None:
    message, _ = cluster.run(check_hung_collective_ends_at_the_timeout)
    assert "timed out" in message.lower() or "timeout" in message.lower(), message


# ---------------------------------------------------------------- another world size
def _build(model: torch.nn.Module, process_group: Any = None) -> DistributedLookahead:
    return DistributedLookahead(
        torch.optim.AdamW(fragment_param_groups(model, 2), lr=0.01),
        k=4,
        alpha=0.6,
        outer_momentum=0.5,
        process_group=process_group,
    )


def check_save_on_two_ranks(rank: int, world_size: int, directory: str) -> None:
    model = _tiny_model(0)
    opt = _build(model)
    for step in range(9):  # fragment 0 synced at 4 and 8, fragment 1 at 2 and 6
        _train_step(model, opt, rank, step)
    dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    if rank == 0:
        torch.save(
            {
                "slow": [s.clone() for s in slow_weights_of(opt)],
                "momentum": _snapshot(opt, OUTER_MOMENTUM_KEY),
                "steps": [g["lookahead_step"] for g in opt.param_groups],
            },
            Path(directory) / "expected.pt",
        )
    exp_avg = [opt.state[p]["exp_avg"] for g in opt.param_groups for p in g["params"]]
    torch.save(exp_avg, Path(directory) / f"exp_avg_{rank}.pt")


def check_resume_on(
    rank: int, world_size: int, directory: str, ranks: int
) -> list[list[float]] | None:
    if rank >= ranks:
        return None
    group = dist.new_group(list(range(ranks))) if ranks != world_size else None
    model = _tiny_model(seed=5)
    opt = _build(model, group)
    state = DistributedLookaheadState(model, opt, checkpoint_world_size=saved_world_size(directory))
    dcp.load({"train": state}, checkpoint_id=directory, process_group=group)
    expected = torch.load(Path(directory) / "expected.pt", weights_only=True)
    for p, slow in zip(model.parameters(), expected["slow"], strict=True):
        assert torch.equal(p.detach(), slow)  # the parameters restart from the slow weights
    for a, b in zip(slow_weights_of(opt), expected["slow"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(_snapshot(opt, OUTER_MOMENTUM_KEY), expected["momentum"], strict=True):
        assert torch.equal(a, b)
    assert [g["lookahead_step"] for g in opt.param_groups] == expected["steps"]
    source = torch.load(Path(directory) / f"exp_avg_{rank % 2}.pt", weights_only=True)
    own = [opt.state[p]["exp_avg"] for g in opt.param_groups for p in g["params"]]
    for a, b in zip(own, source, strict=True):
        assert torch.equal(a, b)
    # The parameters hold the slow weights: sync() takes no outer step and sends nothing, it
    # only restarts the cycles at the fragments' phases.
    bytes_before = opt.bytes_all_reduced
    opt.sync()
    assert opt.bytes_all_reduced == bytes_before
    for p, slow in zip(model.parameters(), expected["slow"], strict=True):
        assert torch.equal(p.detach(), slow)
    for a, b in zip(_snapshot(opt, OUTER_MOMENTUM_KEY), expected["momentum"], strict=True):
        assert torch.equal(a, b)
    assert [g["lookahead_step"] for g in opt.param_groups] == [0, 2]
    for step in range(9, 13):  # every fragment syncs once more across the new ranks
        _train_step(model, opt, rank, step)
    assert_same_on_all_ranks(slow_weights_of(opt), group)
    return [[float(p.detach().sum())] for p in slow_weights_of(opt)]


def test_two_rank_checkpoint_resumes_on_one_and_on_three_ranks(
    cluster: Cluster, tmp_path: Path
) -> None:
    directory = str(tmp_path / "checkpoint")
    cluster.run(check_save_on_two_ranks, directory)
    assert saved_world_size(directory) == 2
    one = cluster.run(check_resume_on, directory, 1)
    assert one[0] is not None and one[1] is None
    three = Cluster(world_size=3)
    try:
        results = three.run(check_resume_on, directory, 3)
    finally:
        three.stop()
    assert results[0] == results[1] == results[2]
    assert results[0] != one[0]  # three ranks averaged other data than one rank alone


# ---------------------------------------------------------------- SIGKILL under torchrun
def _torchrun_job(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True)
    (out / "stderr.txt").touch()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--max-restarts=1", str(FAULT_JOB), "--out", str(out), *extra,
    ]  # fmt: skip
    repository = Path(__file__).resolve().parents[2]
    # The job imports tests._slow: a script run by torchrun has only its own folder on sys.path.
    path = os.pathsep.join(filter(None, [str(repository), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path},
        cwd=repository,
    )


@pytest.mark.slow
def test_a_rank_killed_mid_run_restarts_from_the_checkpoint_to_the_same_weights(
    tmp_path: Path,
) -> None:
    uninterrupted = _torchrun_job(tmp_path / "uninterrupted")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-12000:]
    killed = _torchrun_job(tmp_path / "killed", "--kill-at", "15")  # 3 steps after a checkpoint
    assert killed.returncode == 0, killed.stderr[-12000:]
    attempts = (tmp_path / "killed" / "attempts.txt").read_text().splitlines()
    assert attempts == ["attempt 0 starts at step 0", "attempt 1 starts at step 12"]
    assert "exitcode: -9" in killed.stderr  # rank 1 died of SIGKILL
    expected = torch.load(tmp_path / "uninterrupted" / "final.pt", weights_only=True)
    got = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert got["steps"] == expected["steps"]
    for key in ("params", "slow"):
        for a, b in zip(got[key], expected[key], strict=True):
            assert torch.equal(a, b)
