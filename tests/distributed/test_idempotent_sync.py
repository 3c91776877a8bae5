"""``DistributedLookahead.sync()`` is idempotent: it takes an outer step only in the groups with
inner steps since their last outer step, and sends nothing when there are none.

Before, ``sync()`` right after a cycle's end, or right after another ``sync()``, took another outer
step: with outer momentum it moved the slow weights by the momentum alone, and it always cost an
exchange; with fragments or ``sync_delay``, the groups that had just synced were stepped again.
Each case below meets one mechanism that restarts a group's cycle (fragments' phases, delayed
syncs, ``reset_slow``, checkpoints, DCP, rollback, interrupted steps, the settling of differing
slow weights). Two gloo ranks, each on its own data, so the replicas' fast weights differ.
"""

from __future__ import annotations

import copy
import io
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from tests._slow import slow_weights_of
from tests.distributed._cluster import Cluster
from tests.distributed._replica_utils import (
    assert_same_on_all_ranks,
    assert_states_equal,
    state_tensors,
    unprepared,
)
from torch_lookahead import Lookahead
from torch_lookahead.distributed import (
    DistributedLookahead,
    DistributedLookaheadState,
    SyncFailedError,
    fragment_param_groups,
)
from torch_lookahead.distributed import checkpoint as checkpoint_module
from torch_lookahead.distributed.lookahead import RESTARTED_AT_KEY, STEP_KEY

pytestmark = pytest.mark.distributed

K = 4
MOMENTUM = {"outer_momentum": 0.9, "nesterov": True}
CONFIGS = {
    "momentum": {"outer_momentum": 0.9},
    "nesterov": MOMENTUM,
    "no momentum, int8": {"compression": "int8"},
    "fragments 2": {"fragments": 2, **MOMENTUM},
    "fragments 4": {"fragments": 4, **MOMENTUM},
    "delay 2": {"sync_delay": 2, **MOMENTUM},
    "bfloat16": {"compression": "bfloat16", **MOMENTUM},
    "int8": {"compression": "int8", **MOMENTUM},
    "fragments 2, delay 1, int8": {
        "fragments": 2,
        "sync_delay": 1,
        "compression": "int8",
        **MOMENTUM,
    },
}


class _Interrupted(Exception):
    pass


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Linear(4, 2)
    )


def _build(model: torch.nn.Module, config: dict[str, Any]) -> DistributedLookahead:
    options = dict(config)
    fragments = options.pop("fragments", 1)
    params: Any = model.parameters()
    if fragments > 1:
        params = fragment_param_groups(model, fragments, by="size")
    return DistributedLookahead(
        torch.optim.SGD(params, lr=0.05, momentum=0.5), k=K, alpha=0.6, **options
    )


def _steps(model: torch.nn.Module, opt: DistributedLookahead, rank: int, count: int) -> None:
    for _ in range(count):
        index = model.steps_taken = getattr(model, "steps_taken", 0) + 1  # the twin's data too
        generator = torch.Generator().manual_seed(1000 * rank + index)
        x, y = torch.randn(6, 3, generator=generator), torch.randn(6, 2, generator=generator)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _snapshot(model: torch.nn.Module, opt: DistributedLookahead) -> dict[str, Any]:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "state": state_tensors(opt),
        "groups": groups,
        "bytes": opt.bytes_all_reduced,
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any], *, counters: bool = True) -> None:
    """Bit-identical parameters and state, the same groups and bytes; with ``counters=False``,
    the groups' counters (and where they restarted) may differ."""
    for x, y in zip(a["params"], b["params"], strict=True):
        assert torch.equal(x, y)
    assert_states_equal(a["state"], b["state"])
    kept = (lambda key: True) if counters else (lambda key: key not in (STEP_KEY, RESTARTED_AT_KEY))
    assert [{k: v for k, v in g.items() if kept(k)} for g in a["groups"]] == [
        {k: v for k, v in g.items() if kept(k)} for g in b["groups"]
    ]
    assert a["bytes"] == b["bytes"], (a["bytes"], b["bytes"])


def _at_phases(opt: DistributedLookahead) -> bool:
    """Every group's counter is its phase, where sync() restarts it."""
    return all(g[STEP_KEY] == opt.cycle_start(g) for g in opt.param_groups)


def _group_tensors(opt: DistributedLookahead, index: int) -> list[torch.Tensor]:
    """Every tensor of group ``index``: its parameters and their whole state."""
    group = opt.param_groups[index]
    out = [p.detach().clone() for p in group["params"]]
    for p in group["params"]:
        out += [v.detach().clone() for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
    return out


# ---------------------------------------------------------------------------- sync(); sync()
def check_second_sync_changes_nothing(rank: int, world_size: int, config: dict[str, Any]) -> None:
    for steps in (2 * K, 2 * K + 1, 2 * K + 3):  # at a cycle end (of fragment 0), and mid-cycle
        model = _model()
        opt = _build(model, config)
        _steps(model, opt, rank, steps)
        opt.sync()
        after = _snapshot(model, opt)
        opt.sync()
        _assert_same(_snapshot(model, opt), after)
        assert_same_on_all_ranks(slow_weights_of(opt))
        assert_same_on_all_ranks(list(model.parameters()))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sync_twice_in_a_row_is_bit_identical_and_sends_nothing(
    cluster: Cluster, name: str
) -> None:
    cluster.run(check_second_sync_changes_nothing, CONFIGS[name])


# ---------------------------------------------------------------------------- right after a cycle's end
def check_sync_at_a_cycle_end(rank: int, world_size: int, config: dict[str, Any]) -> None:
    model = _model()
    opt = _build(model, config)
    _steps(model, opt, rank, 2 * K)  # the cycle end of every group (no fragments, no delay)
    before = _snapshot(model, opt)
    opt.sync()
    _assert_same(_snapshot(model, opt), before)


@pytest.mark.parametrize("name", ["momentum", "nesterov", "no momentum, int8", "bfloat16"])
def test_sync_right_after_a_cycle_end_changes_nothing(cluster: Cluster, name: str) -> None:
    cluster.run(check_sync_at_a_cycle_end, CONFIGS[name])


def check_fragment_that_just_synced(rank: int, world_size: int, config: dict[str, Any]) -> None:
    model = _model()
    opt = _build(model, config)
    _steps(model, opt, rank, 2 * K)  # fragment 0 has just synced; the others are mid-cycle
    assert opt.param_groups[0][STEP_KEY] == 0
    others = [i for i in range(1, len(opt.param_groups))]
    kept = _group_tensors(opt, 0)
    moved = {i: _group_tensors(opt, i) for i in others}
    syncs = opt.param_groups[0].get("lookahead_syncs")
    opt.sync()
    for x, y in zip(kept, _group_tensors(opt, 0), strict=True):
        assert torch.equal(x, y)
    assert opt.param_groups[0].get("lookahead_syncs") == syncs  # not exchanged
    for i in others:  # they had steps since their last sync: they took it
        changed = [
            not torch.equal(x, y) for x, y in zip(moved[i], _group_tensors(opt, i), strict=True)
        ]
        assert any(changed), i
    assert _at_phases(opt)
    assert_same_on_all_ranks(slow_weights_of(opt))


@pytest.mark.parametrize("fragments", [2, 4])
def test_sync_leaves_a_fragment_that_just_synced_alone(cluster: Cluster, fragments: int) -> None:
    cluster.run(check_fragment_that_just_synced, {"fragments": fragments, **MOMENTUM})


def check_sync_with_a_delayed_sync_just_launched(
    rank: int, world_size: int, config: dict[str, Any]
) -> None:
    """At the launch (counter 0) sync() applies the delayed sync and nothing else: the result is
    the synchronous run's, bit for bit (the first cycle is the same in both)."""
    model, twin = _model(), _model()
    opt = _build(model, {**config, "sync_delay": 2})
    twin_opt = _build(twin, {**config, "sync_delay": 0})
    _steps(model, opt, rank, K)
    _steps(twin, twin_opt, rank, K)
    assert opt._pending  # launched, in flight
    opt.sync()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_states_equal(state_tensors(opt), state_tensors(twin_opt))
    assert opt.bytes_all_reduced == twin_opt.bytes_all_reduced


@pytest.mark.parametrize("compression", [None, "int8"])
def test_sync_with_a_delayed_sync_just_launched_applies_it_alone(
    cluster: Cluster, compression: str | None
) -> None:
    cluster.run(
        check_sync_with_a_delayed_sync_just_launched, {"compression": compression, **MOMENTUM}
    )


def check_sync_after_steps(rank: int, world_size: int, config: dict[str, Any]) -> None:
    for extra in (1, K - 1):
        model = _model()
        opt = _build(model, config)
        _steps(model, opt, rank, 2 * K)
        opt.sync()  # may or may not do something (fragments, delay)
        _steps(model, opt, rank, extra)
        before = _snapshot(model, opt)
        opt.sync()
        after = _snapshot(model, opt)
        assert after["bytes"] > before["bytes"]
        changed = [
            not torch.equal(a, b) for a, b in zip(before["params"], after["params"], strict=True)
        ]
        assert all(changed)  # every group had steps since: every parameter took the outer step
        for key in after["state"]:
            if key[1] == "lookahead_outer_momentum":
                assert not torch.equal(after["state"][key], before["state"][key]), key
        assert_same_on_all_ranks(list(model.parameters()))


@pytest.mark.parametrize("name", ["nesterov", "fragments 2", "delay 2", "int8"])
def test_sync_after_inner_steps_still_takes_the_outer_step(cluster: Cluster, name: str) -> None:
    cluster.run(check_sync_after_steps, CONFIGS[name])


# ---------------------------------------------------------------------------- the mechanisms it meets
def check_reset_slow_then_sync(rank: int, world_size: int) -> None:
    model = _model()
    opt = _build(model, {"fragments": 2, **MOMENTUM})
    _steps(model, opt, rank, 2 * K + 1)
    opt.reset_slow()
    assert opt.param_groups[1][STEP_KEY] == opt.cycle_start(opt.param_groups[1]) != 0
    before = _snapshot(model, opt)
    opt.sync()
    _assert_same(_snapshot(model, opt), before)
    # The phase is kept: the fragments keep syncing at different steps.
    _steps(model, opt, rank, K)
    assert len({g[STEP_KEY] for g in opt.param_groups}) == 2


def test_sync_after_reset_slow_changes_nothing(cluster: Cluster) -> None:
    cluster.run(check_reset_slow_then_sync)


def check_checkpoints(rank: int, world_size: int) -> None:
    config = {"fragments": 2, **MOMENTUM}
    model = _model()
    opt = _build(model, config)
    _steps(model, opt, rank, 2 * K + 1)
    opt.sync()
    assert opt.param_groups[1].get(RESTARTED_AT_KEY) == opt.param_groups[1][STEP_KEY] != 0
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    # The same checkpoint: the sync() it was taken after is remembered.
    resumed_model = _model()
    resumed = _build(resumed_model, config)
    resumed_model.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    before = _snapshot(resumed_model, resumed)
    resumed.sync()
    _assert_same(_snapshot(resumed_model, resumed), before)

    # Pickled (deep-copied) with the optimizer.
    assert copy.deepcopy(opt).param_groups[1][RESTARTED_AT_KEY] == opt.param_groups[1][STEP_KEY]

    # A checkpoint of an earlier version, without the key: a group away from counter 0 owes a
    # sync (absent means 0), decided alike on every rank; afterwards sync() is idempotent again.
    older = copy.deepcopy(saved[1])
    for group in older["param_groups"]:
        group.pop(RESTARTED_AT_KEY, None)
    old_model = _model()
    old = _build(old_model, config)
    old_model.load_state_dict(saved[0])
    old.load_state_dict(older)
    before = _snapshot(old_model, old)
    old.sync()
    assert old.bytes_all_reduced > before["bytes"]
    after = _snapshot(old_model, old)
    old.sync()
    _assert_same(_snapshot(old_model, old), after)
    assert_same_on_all_ranks(slow_weights_of(old))

    # A plain inner-optimizer checkpoint: every fragment restarts at its phase, no steps since.
    plain_model = _model()
    plain = _build(plain_model, config)
    plain_model.load_state_dict(saved[0])
    inner = torch.optim.SGD(fragment_param_groups(_model(), 2, by="size"), lr=0.05, momentum=0.5)
    plain.load_state_dict(inner.state_dict())  # no lookahead_step: a plain checkpoint
    assert [g[STEP_KEY] for g in plain.param_groups] == [0, K // 2]
    before = _snapshot(plain_model, plain)
    plain.sync()
    _assert_same(_snapshot(plain_model, plain), before)


def test_sync_after_loading_checkpoints(cluster: Cluster) -> None:
    cluster.run(check_checkpoints)


def check_detour_then_reset_slow(rank: int, world_size: int) -> None:
    """docs/checkpoints.md: a fragmented checkpoint stepped by a single-process Lookahead and
    loaded back keeps a stale ``lookahead_restarted_at``; ``reset_slow()`` on return restarts
    every fragment from the replicas' mean, after which ``sync()`` is idempotent and a sync after
    steps steps."""
    config = {"fragments": 2, **MOMENTUM}
    model = _model()
    opt = _build(model, config)
    _steps(model, opt, rank, 2 * K + 1)
    opt.sync()
    assert opt.param_groups[1].get(RESTARTED_AT_KEY, 0) != 0
    detour = Lookahead(
        torch.optim.SGD(fragment_param_groups(model, 2, by="size"), lr=0.05, momentum=0.5),
        k=K,
        alpha=0.6,
    )
    detour.load_state_dict(opt.state_dict())
    _steps(model, detour, rank, K)  # type: ignore[arg-type]  # the counters come round again
    back = _build(model, config)
    back.load_state_dict(detour.state_dict())
    back.reset_slow()
    for p, slow in zip(model.parameters(), slow_weights_of(back), strict=True):
        assert torch.equal(p.detach(), slow)
    assert_same_on_all_ranks(slow_weights_of(back))
    before = _snapshot(model, back)
    back.sync()
    _assert_same(_snapshot(model, back), before)
    _steps(model, back, rank, 1)
    sent = back.bytes_all_reduced
    back.sync()
    assert back.bytes_all_reduced > sent


def test_reset_slow_after_a_detour_through_lookahead(cluster: Cluster) -> None:
    cluster.run(check_detour_then_reset_slow)


def check_dcp(rank: int, world_size: int, path: str) -> None:
    config = {"fragments": 2, **MOMENTUM}
    for steps, then_sync in ((2 * K + 1, True), (2 * K, False)):
        model = _model()
        opt = _build(model, config)
        _steps(model, opt, rank, steps)
        if then_sync:
            opt.sync()  # fragment 1 remembers its phase; without: it has none to remember
        where = os.path.join(path, f"{steps}")
        dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=where)
        # The fresh optimizer remembers fragment 1's phase (its template has the key) whether or
        # not the checkpoint does: it never travels in the parameter groups.
        resumed_model = _model()
        resumed = _build(resumed_model, config)
        dcp.load({"train": DistributedLookaheadState(resumed_model, resumed)}, checkpoint_id=where)
        for key in (RESTARTED_AT_KEY, "lookahead_syncs"):  # committed syncs, too
            assert [g.get(key) for g in resumed.param_groups] == [
                g.get(key) for g in opt.param_groups
            ]
        before = _snapshot(resumed_model, resumed)
        opt.sync()
        resumed.sync()
        after = _snapshot(resumed_model, resumed)
        assert (after["bytes"] == before["bytes"]) == then_sync
        for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
            assert torch.equal(a, b)
        dist.barrier()


def test_sync_after_a_dcp_resume(cluster: Cluster, tmp_path: Any) -> None:
    cluster.run(check_dcp, str(tmp_path))


def test_dcp_blobs_of_earlier_formats_have_no_restarts() -> None:
    for blob in ({"format": 2, "replicas": 2, "pending": {}}, {}):
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        assert checkpoint_module._read_blob(buffer.getvalue())["groups"] is None


def check_rollback_then_sync(rank: int, world_size: int) -> None:
    model = _model()
    opt = _build(model, {"fragments": 2, **MOMENTUM})
    _steps(model, opt, rank, 2 * K + 1)
    with unprepared(rank == 1), pytest.raises(SyncFailedError):
        opt.sync()
    assert [g[STEP_KEY] for g in opt.param_groups] == [0, 0]  # rolled back
    before = _snapshot(model, opt)
    opt.sync()  # at the last completed sync already: only the cycles restart, at their phases
    _assert_same(_snapshot(model, opt), before, counters=False)
    assert _at_phases(opt)
    _steps(model, opt, rank, 1)
    bytes_before = opt.bytes_all_reduced
    opt.sync()
    assert opt.bytes_all_reduced > bytes_before
    assert_same_on_all_ranks(slow_weights_of(opt))


def test_sync_after_a_rollback_changes_nothing(cluster: Cluster) -> None:
    cluster.run(check_rollback_then_sync)


def check_interrupted_step(rank: int, world_size: int, config: dict[str, Any]) -> None:
    """An exception from the inner step's post-hook at a cycle end: sync() completes the overdue
    sync (the core's rule), once, as the uninterrupted twin's step did."""
    model, twin = _model(), _model()
    opt, twin_opt = _build(model, config), _build(twin, config)
    _steps(model, opt, rank, 2 * K - 1)
    _steps(twin, twin_opt, rank, 2 * K)

    def raise_once(*_: Any) -> None:
        handle.remove()
        raise _Interrupted

    handle = opt.optimizer.register_step_post_hook(raise_once)
    with pytest.raises(_Interrupted):
        _steps(model, opt, rank, 1)
    opt.sync()
    opt.sync()
    twin_opt.sync()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_states_equal(state_tensors(opt), state_tensors(twin_opt))
    assert opt.bytes_all_reduced == twin_opt.bytes_all_reduced


@pytest.mark.parametrize("name", ["nesterov", "fragments 2", "delay 2"])
def test_sync_after_an_interrupted_step_completes_its_sync_once(
    cluster: Cluster, name: str
) -> None:
    cluster.run(check_interrupted_step, CONFIGS[name])


def check_add_param_group(rank: int, world_size: int) -> None:
    model = _model()
    extra = torch.nn.Linear(2, 2)
    opt = _build(model, {"fragments": 2, **MOMENTUM})
    _steps(model, opt, rank, 2 * K + 1)
    opt.sync()
    opt.add_param_group({"params": list(extra.parameters()), "lookahead_fragment": 2})
    before = _snapshot(model, opt)
    opt.sync()  # no group has steps since; the cycles restart at their phases among 3 fragments
    _assert_same(_snapshot(model, opt), before, counters=False)
    assert _at_phases(opt)


def test_sync_after_add_param_group(cluster: Cluster) -> None:
    cluster.run(check_add_param_group)


def check_differing_slow_weights_settled(rank: int, world_size: int) -> None:
    """Slow weights captured from each rank's own weights (a plain checkpoint per rank): the
    sync() after steps settles them; the next sync() sends nothing."""
    model = _model()
    opt = _build(model, MOMENTUM)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * (rank + 1))  # each rank loaded its own model weights
    inner = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    opt.load_state_dict(inner.state_dict())
    _steps(model, opt, rank, 2)
    opt.sync()
    assert_same_on_all_ranks(slow_weights_of(opt))
    assert_same_on_all_ranks(list(model.parameters()))
    before = _snapshot(model, opt)
    opt.sync()
    _assert_same(_snapshot(model, opt), before)


def test_differing_slow_weights_settled_by_the_sync_after_steps(cluster: Cluster) -> None:
    cluster.run(check_differing_slow_weights_settled)


# ---------------------------------------------------------------------------- sync() interrupted
def check_sync_interrupted_in_its_outer_momentum_step(rank: int, world_size: int) -> None:
    """An exception after the exchange, in the outer momentum step, before the core's plan:
    the retry sync() gives the uninterrupted result. The mark of where a fragment restarted is
    written as the core's plan is made; written before, it claimed a restart whose counter was
    never stored, and a fragment at its phase with steps since took no outer step at the retry."""
    import torch_lookahead.distributed.lookahead as module

    config = {"fragments": 2, "outer_momentum": 0.5}
    model, twin = _model(), _model()
    opt, twin_opt = _build(model, config), _build(twin, config)
    group = opt.param_groups[1]
    for _ in range(4 * K):  # until fragment 1 is at its phase, with steps since it restarted
        _steps(model, opt, rank, 1)
        _steps(twin, twin_opt, rank, 1)
        if group[STEP_KEY] == opt.cycle_start(group) != 0 and module._has_steps(group):
            break
    else:
        raise AssertionError("fragment 1 never reached its phase")
    real = module.momentum_outer_step_

    def interrupted(*args: Any, **kwargs: Any) -> None:
        module.momentum_outer_step_ = real
        raise _Interrupted

    module.momentum_outer_step_ = interrupted
    try:
        with pytest.raises(_Interrupted):
            opt.sync()
    finally:
        module.momentum_outer_step_ = real
    opt.sync()
    twin_opt.sync()
    done, expected = _snapshot(model, opt), _snapshot(twin, twin_opt)
    # The interrupted exchange was sent, and counted, once more; all else is the twin's.
    assert done["bytes"] > expected["bytes"]
    expected["bytes"] = done["bytes"]
    for ours, theirs in zip(done["groups"], expected["groups"], strict=True):
        theirs["lookahead_syncs"] = ours["lookahead_syncs"]
    _assert_same(done, expected)


def test_sync_interrupted_in_its_outer_momentum_step_gives_the_uninterrupted_result(
    cluster: Cluster,
) -> None:
    cluster.run(check_sync_interrupted_in_its_outer_momentum_step)
