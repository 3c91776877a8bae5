"""Slow weights created after a checkpoint without them, while the ranks' weights differ.

Each rank's step captures a new slow copy from its own weights; the group's next sync replaces
the copies by their mean over the ranks (exact, the exchange of ``reset_slow``) before its outer
step, so every rank ends with the same slow weights. Met here with every option (compression,
fragments and their phases, a delayed sync, outer momentum), a failed sync, eval mode, a DCP
save and resume in between, copies (deepcopy), and one rank whose slow weights were cleared alone.
"""

from __future__ import annotations

import copy
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
)

pytestmark = pytest.mark.distributed

LR = 0.1


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def _grads(rank: int, step: int, params: list[torch.nn.Parameter]) -> None:
    """A gradient of each rank's own, the same at every step (so the weights are predictable)."""
    generator = torch.Generator().manual_seed(100 * rank + 7)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


def _step(model: torch.nn.Module, opt: DistributedLookahead, rank: int, step: int) -> None:
    _grads(rank, step, list(model.parameters()))
    opt.step()
    opt.zero_grad()


def _params(model: torch.nn.Module, fragments: int) -> Any:
    return fragment_param_groups(model, fragments) if fragments > 1 else model.parameters()


def _diverge_and_load_plain(
    rank: int, model: torch.nn.Module, opt: DistributedLookahead, fragments: int = 1
) -> None:
    """Each rank's own weights (rank 0's plus a rank-dependent shift), then a checkpoint of the
    plain inner optimizer (no slow weights), as after training without Lookahead."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.25 * (rank + 1) * (i + 1))
    plain = torch.optim.SGD(_params(model, fragments), lr=LR)
    opt.load_state_dict(plain.state_dict())


def _gathered_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    means = []
    for t in tensors:
        total = t.detach().clone().double()
        dist.all_reduce(total)
        means.append(total / dist.get_world_size())
    return means


def _slows(opt: DistributedLookahead) -> list[torch.Tensor]:
    return [opt.state[p]["lookahead_slow"] for g in opt.param_groups for p in g["params"]]


CASES: list[dict[str, Any]] = [
    {},
    {"compression": "bfloat16"},
    {"compression": "int8"},
    {"sync_delay": 2},
    {"sync_delay": 2, "compression": "int8"},
    {"outer_momentum": 0.5, "nesterov": True},
    {"fragments": 2},
    {"fragments": 2, "sync_delay": 1, "compression": "bfloat16"},
]


def check_new_slow_weights_agree(rank: int, world_size: int, options: dict[str, Any]) -> None:
    options = dict(options)
    fragments = options.pop("fragments", 1)
    k, alpha, delay = 4, 0.5, options.get("sync_delay", 0)
    model = _model()
    opt = DistributedLookahead(
        torch.optim.SGD(_params(model, fragments), lr=LR), k=k, alpha=alpha, **options
    )
    _diverge_and_load_plain(rank, model, opt, fragments)
    start = _gathered_mean(list(model.parameters()))  # the replicas' mean, where phi starts
    sent = opt.bytes_all_reduced
    # Every group syncs within k steps of the load and applies it `delay` steps later.
    for step in range(k + delay):
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))
    if not delay and fragments == 1:  # (else some groups have stepped since their sync)
        assert_same_on_all_ranks(model.parameters())
    if options.get("outer_momentum"):
        assert_same_on_all_ranks([opt.state[p][OUTER_MOMENTUM_KEY] for p in model.parameters()])
    sync = 0
    if fragments == 1 and not options:
        # phi = mean(theta_0) + alpha * (mean(theta_k) - mean(theta_0)), theta_k = theta_0 - k lr g
        mean_grads = _gathered_mean([p.grad for p in _with_grads(rank, model)])
        for slow, s0, g in zip(_slows(opt), start, mean_grads, strict=True):
            expected = s0 - alpha * k * LR * g
            torch.testing.assert_close(slow.double(), expected, rtol=0, atol=1e-5)
        n_values = sum(p.numel() for p in model.parameters())
        tensors = len(list(model.parameters()))
        sync = 4 * n_values + 8 * (1 + tensors + 2)  # the weights and the verdict
        settle = 4 * n_values + 8 * (1 + tensors)  # the new slow copies, once, and their verdict
        assert opt.bytes_all_reduced - sent == sync + settle
    # Settled: the next cycles exchange the weights alone, and the replicas stay together.
    sent = opt.bytes_all_reduced
    for step in range(k + delay, 3 * k + delay):
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))
    if sync:
        assert opt.bytes_all_reduced - sent == 2 * sync  # two syncs of the weights alone


def _with_grads(rank: int, model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = list(model.parameters())
    _grads(rank, 0, params)
    return params


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_new_slow_weights_after_a_plain_checkpoint_agree(
    cluster: Cluster, options: dict[str, Any]
) -> None:
    cluster.run(check_new_slow_weights_agree, options)


def check_construction_sends_nothing_more(rank: int, world_size: int) -> None:
    model = _model()
    opt = DistributedLookahead(torch.optim.SGD(model.parameters(), lr=LR), k=4, alpha=0.5)
    for step in range(4):
        _step(model, opt, rank, step)
    n_values = sum(p.numel() for p in model.parameters())
    assert opt.bytes_all_reduced == 4 * n_values + 8 * (1 + 4 + 2)  # one sync, nothing else


def test_slow_weights_of_the_broadcast_weights_need_no_second_exchange(cluster: Cluster) -> None:
    cluster.run(check_construction_sends_nothing_more)


def check_rank_cleared_alone(rank: int, world_size: int) -> None:
    model = _model()
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=LR), k=4, alpha=0.5, outer_momentum=0.5
    )
    for step in range(6):  # one sync (momentum non-zero), two steps into the next cycle
        _step(model, opt, rank, step)
    if rank == 1:  # this rank loses its slow weights (and their momentum) alone
        for p in model.parameters():
            del opt.state[p]["lookahead_slow"]
            del opt.state[p][OUTER_MOMENTUM_KEY]
    for step in range(6, 8):  # rank 1 captures new copies from its own weights; the sync settles
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))
    assert_same_on_all_ranks([opt.state[p][OUTER_MOMENTUM_KEY] for p in model.parameters()])
    assert_same_on_all_ranks(model.parameters())


def test_a_rank_whose_slow_weights_were_cleared_alone_rejoins(cluster: Cluster) -> None:
    cluster.run(check_rank_cleared_alone)


def check_failed_sync_keeps_them_new(rank: int, world_size: int) -> None:
    model = _model()
    opt = DistributedLookahead(torch.optim.SGD(model.parameters(), lr=LR), k=3, alpha=0.5)
    _diverge_and_load_plain(rank, model, opt)
    own = [p.detach().clone() for p in model.parameters()]
    with unprepared(rank == 1):
        for step in range(2):
            _step(model, opt, rank, step)
        with pytest.raises(SyncFailedError, match="1 of 2 ranks could not prepare"):
            _step(model, opt, rank, 2)
    for p, before in zip(model.parameters(), own, strict=True):
        assert torch.equal(p.detach(), before)  # rolled back to this rank's own new slow copy
    for step in range(3, 6):  # the next sync settles them
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))
    assert_same_on_all_ranks(model.parameters())


def test_a_failed_sync_leaves_new_slow_weights_to_the_next(cluster: Cluster) -> None:
    cluster.run(check_failed_sync_keeps_them_new)


def check_eval_mode_in_between(rank: int, world_size: int) -> None:
    model = _model()
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=LR), k=4, alpha=0.5, sync_delay=2
    )
    _diverge_and_load_plain(rank, model, opt)
    for step in range(5):  # the sync launched at step 4, pending
        _step(model, opt, rank, step)
    with opt.slow_weights():
        opt.state_dict()  # waits for the exchange in eval mode; the settling waits for train
    _step(model, opt, rank, 5)  # applied: settled, then the outer step
    with opt.slow_weights():
        assert_same_on_all_ranks(model.parameters())
    assert_same_on_all_ranks(slow_weights_of(opt))


def test_eval_mode_between_launch_and_apply(cluster: Cluster) -> None:
    cluster.run(check_eval_mode_in_between)


def check_dcp_save_before_the_sync(rank: int, world_size: int, directory: str) -> None:
    model = _model()
    opt = DistributedLookahead(torch.optim.SGD(model.parameters(), lr=LR), k=4, alpha=0.5)
    _diverge_and_load_plain(rank, model, opt)
    for step in range(2):  # new copies captured, not yet settled
        _step(model, opt, rank, step)
    dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    for step in range(2, 4):
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))

    resumed_model = _model()
    resumed = DistributedLookahead(
        torch.optim.SGD(resumed_model.parameters(), lr=LR), k=4, alpha=0.5
    )
    dcp.load({"train": DistributedLookaheadState(resumed_model, resumed)}, checkpoint_id=directory)
    assert_same_on_all_ranks(_slows(resumed))  # the checkpoint holds one copy of each
    for step in range(2, 8):
        _step(resumed_model, resumed, rank, step)
    assert_same_on_all_ranks(_slows(resumed))
    assert_same_on_all_ranks(resumed_model.parameters())


def test_a_dcp_checkpoint_before_the_sync_resumes_in_agreement(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.run(check_dcp_save_before_the_sync, str(tmp_path / "checkpoint"))


class _FailingWork:
    def wait(self) -> None:
        raise RuntimeError("injected: Connection closed by peer")


def check_refusal_in_the_settling(rank: int, world_size: int) -> None:
    model = _model()
    opt = DistributedLookahead(torch.optim.SGD(model.parameters(), lr=LR), k=3, alpha=0.5)
    _diverge_and_load_plain(rank, model, opt)
    plain = torch.optim.SGD(model.parameters(), lr=LR).state_dict()
    start = [p.detach().clone() for p in model.parameters()]
    original = dist.all_to_all_single
    calls = []

    def second_fails(*args: Any, **kwargs: Any) -> Any:  # the sync's passes, the settling's fails
        calls.append(1)
        return _FailingWork() if len(calls) == 2 else original(*args, **kwargs)

    dist.all_to_all_single = second_fails
    try:
        for step in range(2):
            _step(model, opt, rank, step)
        with pytest.raises(SyncFailedError, match="failed on rank"):
            _step(model, opt, rank, 2)
    finally:
        dist.all_to_all_single = original
    with pytest.raises(SyncFailedError, match="refuses to step or sync"):
        _step(model, opt, rank, 3)
    # Every rank restarts from the same weights and the plain checkpoint: settled at the sync.
    with torch.no_grad():
        for p, before in zip(model.parameters(), start, strict=True):
            p.copy_(before)
    opt.load_state_dict(plain)
    for step in range(3, 6):
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))
    assert_same_on_all_ranks(model.parameters())


def test_a_collective_failing_in_the_settling_refuses_until_a_load(cluster: Cluster) -> None:
    cluster.run(check_refusal_in_the_settling)


def _step_params(params: list[torch.Tensor], opt: DistributedLookahead, rank: int) -> None:
    _grads(rank, 0, params)  # type: ignore[arg-type]
    opt.step()
    opt.zero_grad()


def check_copies_keep_what_is_new(rank: int, world_size: int, delay: int) -> None:
    model = _model()
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=LR), k=4, alpha=0.5, sync_delay=delay
    )
    fresh = copy.deepcopy(opt)  # not stepped: its weights are still the broadcast ones
    fresh_params = [p for g in fresh.param_groups for p in g["params"]]
    for _ in range(4):
        _step_params(fresh_params, fresh, rank)
    if not delay:
        n_values = sum(p.numel() for p in fresh_params)
        assert fresh.bytes_all_reduced == 4 * n_values + 8 * (1 + 4 + 2)  # no settling
    _diverge_and_load_plain(rank, model, opt)
    params = list(model.parameters())
    for _ in range(2 + 3 * (delay > 0)):  # new copies; with a delay, a sync in flight too
        _step_params(params, opt, rank)
    copied = copy.deepcopy(opt)
    copied_params = [p for g in copied.param_groups for p in g["params"]]
    for _ in range(4):
        _step_params(params, opt, rank)
        _step_params(copied_params, copied, rank)
    assert_same_on_all_ranks(_slows(copied))
    for a, b in zip(_slows(opt), _slows(copied), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("delay", [0, 2])
def test_copies_keep_which_slow_weights_are_new(cluster: Cluster, delay: int) -> None:
    cluster.run(check_copies_keep_what_is_new, delay)
