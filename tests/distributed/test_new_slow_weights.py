"""Slow weights that differ across the ranks, as after a checkpoint without them.

Each rank's step captures a new slow copy from its own weights; every sync compares the
fingerprints of each group's slow weights, and the sync of a group whose fingerprints differ
replaces them by their mean over the ranks (exact, the exchange of ``reset_slow``) before its
outer step, so every rank ends with the same slow weights. Met here with every option
(compression, fragments and their phases, a delayed sync, outer momentum), a failed sync, eval
mode, a DCP save and resume in between, copies (deepcopy), one rank whose slow weights were
cleared alone, a failing step post-hook at the capture, each rank reloading its own state dict,
and slow weights one bit apart.
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
    _exchange,
    fragment_param_groups,
)
from torch_lookahead.distributed._exchange import fingerprint

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
        sync = 4 * n_values + 8 * (1 + tensors + 6)  # the weights and the verdict
        settle = 4 * n_values + 8 * (1 + tensors)  # the differing slow weights, and their verdict
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
    assert opt.bytes_all_reduced == 4 * n_values + 8 * (1 + 4 + 6)  # one sync, nothing else


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
        assert fresh.bytes_all_reduced == 4 * n_values + 8 * (1 + 4 + 6)  # no settling
    _diverge_and_load_plain(rank, model, opt)
    params = list(model.parameters())
    for _ in range(2 + 3 * (delay > 0)):  # new copies; with a delay, a sync in flight too
        _step_params(params, opt, rank)
    copied = copy.deepcopy(opt)
    copied_params = [p for g in copied.param_groups for p in g["params"]]
    for _ in range(4 + 4 * (delay > 0)):
        _step_params(params, opt, rank)
        _step_params(copied_params, copied, rank)
    assert_same_on_all_ranks(_slows(copied))
    if not delay:  # (with a delay, the copy's pending sync does not know its verdict: the
        # copy settles at its next sync, not at the pending one's application)
        for a, b in zip(_slows(opt), _slows(copied), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("delay", [0, 2])
def test_copies_settle_their_slow_weights(cluster: Cluster, delay: int) -> None:
    cluster.run(check_copies_keep_what_is_new, delay)


def check_post_hook_failure_at_the_capture(rank: int, world_size: int, delay: int) -> None:
    model = _model()
    inner = torch.optim.SGD(model.parameters(), lr=LR)
    opt = DistributedLookahead(inner, k=4, alpha=0.5, sync_delay=delay, compression="int8")
    _diverge_and_load_plain(rank, model, opt)

    def fails(*args: Any) -> None:
        raise RuntimeError("injected: post-hook failure")

    handle = inner.register_step_post_hook(fails)
    with pytest.raises(RuntimeError, match="injected"):  # the capture is stored, the step's end
        _step(model, opt, rank, 0)  # (DistributedLookahead's after_step) never runs
    handle.remove()
    for step in range(1, 4 + delay):  # the group's next sync, applied
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))


@pytest.mark.parametrize("delay", [0, 2])
def test_a_step_post_hook_failing_at_the_capture_still_settles(
    cluster: Cluster, delay: int
) -> None:
    cluster.run(check_post_hook_failure_at_the_capture, delay)


def check_own_state_dict_reloaded(rank: int, world_size: int, delay: int) -> None:
    model = _model()
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=LR),
        k=4,
        alpha=0.5,
        sync_delay=delay,
        compression="int8",
    )
    _diverge_and_load_plain(rank, model, opt)
    captured = 2 if not delay else 5  # with a delay, a sync is in flight too
    for step in range(captured):
        _step(model, opt, rank, step)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # each rank its own slow copies
    for step in range(captured, captured + 4 + delay):  # a sync launched after the load, applied
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))


@pytest.mark.parametrize("delay", [0, 2])
def test_each_rank_reloading_its_own_state_dict_settles(cluster: Cluster, delay: int) -> None:
    cluster.run(check_own_state_dict_reloaded, delay)


def check_slow_weights_one_bit_apart(rank: int, world_size: int, change: str) -> None:
    model = _model()
    opt = DistributedLookahead(torch.optim.SGD(model.parameters(), lr=LR), k=4, alpha=0.5)
    for step in range(2):  # slow weights captured from the broadcast weights: the same
        _step(model, opt, rank, step)
    slow = _slows(opt)[0]  # the first layer's weight, 24 values
    if rank == 1:
        flat = slow.view(-1)
        if change == "one-bit":
            flat.view(torch.int32)[17] ^= 1
        else:  # two values swapped
            flat[[3, 20]] = flat[[20, 3]].clone()
    sent = opt.bytes_all_reduced
    for step in range(2, 4):
        _step(model, opt, rank, step)
    assert_same_on_all_ranks(_slows(opt))
    n_values = sum(p.numel() for p in model.parameters())
    sync, settle = 4 * n_values + 8 * (1 + 4 + 6), 4 * n_values + 8 * (1 + 4)
    assert opt.bytes_all_reduced - sent == sync + settle  # the sync settled the group


@pytest.mark.parametrize("change", ["one-bit", "swap"])
def test_slow_weights_one_bit_apart_are_settled(cluster: Cluster, change: str) -> None:
    cluster.run(check_slow_weights_one_bit_apart, change)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fingerprint_tells_one_bit_and_a_swap(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=generator).to(dtype) for s in [(30, 50), (7,), ()]]
    cpu = torch.device("cpu")
    reference = fingerprint(tensors, cpu)
    assert reference.dtype == torch.int64 and reference.shape == (2,)
    assert 0 <= int(reference[0]) < 2**20 and 0 <= int(reference[1]) < 2**13
    assert torch.equal(fingerprint([t.clone() for t in tensors], cpu), reference)
    words = tensors[0].view(-1).view(torch.int16 if dtype == torch.bfloat16 else torch.int32)
    for position in torch.randint(0, words.numel(), (40,), generator=generator).tolist():
        for bit in (0, 9):
            changed = [t.clone() for t in tensors]
            changed[0].view(-1).view(words.dtype)[position] ^= 1 << bit
            assert not torch.equal(fingerprint(changed, cpu), reference)
    swapped = [t.clone() for t in tensors]
    swapped[0].view(-1)[[5, 1400]] = swapped[0].view(-1)[[1400, 5]]
    assert not torch.equal(fingerprint(swapped, cpu), reference)
    moved = [tensors[1], tensors[0], tensors[2]]  # the same tensors in another order
    assert not torch.equal(fingerprint(moved, cpu), reference)
    assert torch.equal(fingerprint([], cpu), torch.zeros(2, dtype=torch.int64))
    monkeypatch.setattr(_exchange, "FINGERPRINT_CHUNK", 7)  # chunks of 7 words: one bit still
    assert not torch.equal(fingerprint(changed, cpu), fingerprint(tensors, cpu))
