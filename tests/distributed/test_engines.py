"""The plain Lookahead inside torch's distributed engines, on two gloo ranks: DDP, FSDP2
(``fully_shard``), distributed checkpointing (DCP) and ZeroRedundancyOptimizer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from tests._torch_versions import needs_fsdp2_on_cpu
from tests.distributed._cluster import Cluster
from tests.distributed._replica_utils import (
    assert_same_on_all_ranks,
    assert_states_equal,
    state_tensors,
)
from torch_lookahead import Lookahead
from torch_lookahead.distributed import DistributedLookahead

pytestmark = pytest.mark.distributed

K, ALPHA = 3, 0.5


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(4, 8, generator=generator), torch.randn(4, 4, generator=generator)


def _full_batch(world_size: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_batch(r, step) for r in range(world_size)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _train_step(
    model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _lookahead_adamw(params: object) -> Lookahead:
    return Lookahead(torch.optim.AdamW(params, lr=0.01), k=K, alpha=ALPHA)  # type: ignore[arg-type]


def check_ddp(rank: int, world_size: int) -> None:
    model = _model(seed=rank)  # DDP broadcasts rank 0's weights
    ddp = DistributedDataParallel(model)
    opt = _lookahead_adamw(ddp.parameters())
    reference = _model(seed=0)
    reference_opt = _lookahead_adamw(reference.parameters())
    for step in range(8 * K + 1):  # eight syncs
        _train_step(ddp, opt, _batch(rank, step))
        _train_step(reference, reference_opt, _full_batch(world_size, step))
        assert_same_on_all_ranks(model.parameters())
        assert_same_on_all_ranks([opt.state[p]["lookahead_slow"] for p in model.parameters()])
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_ddp_replicas_stay_identical_and_match_one_process(cluster: Cluster) -> None:
    cluster.run(check_ddp)


def _sharded_model(seed: int, world_size: int) -> nn.Sequential:
    mesh = init_device_mesh("cpu", (world_size,))
    model = _model(seed)
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _counters(opt: torch.optim.Optimizer) -> list[int]:
    return [group["lookahead_step"] for group in opt.param_groups]


def check_fsdp2_and_dcp(rank: int, world_size: int, directory: str) -> None:
    model = _sharded_model(seed=0, world_size=world_size)
    opt = _lookahead_adamw(model.parameters())
    reference = _model(seed=0)
    reference_opt = _lookahead_adamw(reference.parameters())

    with pytest.raises(TypeError, match="DTensor"):
        DistributedLookahead(torch.optim.SGD(model.parameters(), lr=0.1))

    steps_before_save = 2 * K + 1  # mid-cycle
    for step in range(steps_before_save):
        _train_step(model, opt, _batch(rank, step))
        _train_step(reference, reference_opt, _full_batch(world_size, step))
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        slow = opt.state[p]["lookahead_slow"]
        # The slow copy is sharded exactly like its parameter: no rank holds the full tensor.
        assert isinstance(slow, DTensor) and slow.placements == p.placements
        assert slow.to_local().shape == p.to_local().shape and slow.to_local().numel() < p.numel()
        torch.testing.assert_close(p.full_tensor(), q, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            slow.full_tensor(), reference_opt.state[q]["lookahead_slow"], rtol=0, atol=1e-6
        )
    assert _counters(opt) == [1]

    # Reading a state dict, in any of its forms, never changes the optimizer (torch.distributed.checkpoint steps an optimizer whose state looks empty).
    snapshot = state_tensors(opt)
    read_options = {
        "sharded": StateDictOptions(),
        "sharded_flat": StateDictOptions(flatten_optimizer_state_dict=True),
        "full": StateDictOptions(full_state_dict=True),
        "full_flat": StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True),
        "full_rank0": StateDictOptions(full_state_dict=True, cpu_offload=True),
    }
    # Deep copies: the state dicts alias the live state (Adam's "step" tensors, the local shards).
    saved = {
        name: copy.deepcopy(get_optimizer_state_dict(model, opt, options=o))
        for name, o in read_options.items()
    }
    assert_states_equal(snapshot, state_tensors(opt))
    assert _counters(opt) == [1]
    if rank == 0:
        full_slow = saved["full_rank0"]["state"]["0.weight"]["lookahead_slow"]
        assert not isinstance(full_slow, DTensor) and full_slow.shape == (16, 8)
    else:
        assert not saved["full_rank0"]
    assert isinstance(saved["sharded"]["state"]["0.weight"]["lookahead_slow"], DTensor)
    assert "state.0.weight.lookahead_slow" in saved["sharded_flat"]

    dcp.save(
        {"model": get_model_state_dict(model), "optim": saved["sharded"]}, checkpoint_id=directory
    )
    for step in range(steps_before_save, steps_before_save + K + 2):
        _train_step(model, opt, _batch(rank, step))
    expected_params = [p.to_local().clone() for p in model.parameters()]
    expected_state = state_tensors(opt)

    # dcp.load into a template from a freshly built model and optimizer, then continue.
    resumed_model = _sharded_model(seed=1, world_size=world_size)
    resumed = _lookahead_adamw(resumed_model.parameters())
    template = {
        "model": get_model_state_dict(resumed_model),
        "optim": get_optimizer_state_dict(resumed_model, resumed),
    }
    dcp.load(template, checkpoint_id=directory)
    set_model_state_dict(resumed_model, template["model"])
    set_optimizer_state_dict(resumed_model, resumed, template["optim"])
    assert_states_equal(snapshot, state_tensors(resumed))
    assert _counters(resumed) == [1]
    for step in range(steps_before_save, steps_before_save + K + 2):
        _train_step(resumed_model, resumed, _batch(rank, step))
    for expected, p in zip(expected_params, resumed_model.parameters(), strict=True):
        assert torch.equal(expected, p.to_local())
    assert_states_equal(expected_state, state_tensors(resumed))

    # The other forms load back exactly too. (torch 2.13 itself cannot load a full *and*
    # flattened optimizer state dict, with or without Lookahead: KeyError in _unflatten_state_dict.)
    load_options = {
        "sharded_flat": read_options["sharded_flat"],
        "full": read_options["full"],
        "full_rank0": StateDictOptions(
            full_state_dict=True, cpu_offload=True, broadcast_from_rank0=True
        ),
    }
    for name, options in load_options.items():
        other_model = _sharded_model(seed=2, world_size=world_size)
        other = _lookahead_adamw(other_model.parameters())
        set_optimizer_state_dict(other_model, other, saved[name], options=options)
        assert_states_equal(snapshot, state_tensors(other))
        assert _counters(other) == [1], name


@needs_fsdp2_on_cpu
def test_fsdp2_shards_the_slow_weights_and_dcp_resumes_exactly(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.run(check_fsdp2_and_dcp, str(tmp_path / "checkpoint"))


def _zero(model: nn.Module) -> ZeroRedundancyOptimizer:
    return ZeroRedundancyOptimizer(
        model.parameters(),
        optimizer_class=Lookahead.wrap(torch.optim.AdamW, k=K, alpha=ALPHA),
        lr=0.01,
    )


def check_zero(rank: int, world_size: int) -> None:
    ddp = DistributedDataParallel(_model(seed=rank))
    zero = _zero(ddp)
    reference = _model(seed=0)
    reference_opt = _lookahead_adamw(reference.parameters())
    for step in range(2 * K + 2):
        _train_step(ddp, zero, _batch(rank, step))
        _train_step(reference, reference_opt, _full_batch(world_size, step))
    for p, q in zip(ddp.module.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)

    zero.consolidate_state_dict(to=0)
    # A deep copy: the consolidated state dict aliases rank 0's live local state.
    checkpoint = [copy.deepcopy(zero.state_dict()) if rank == 0 else None]
    if rank == 0:
        state, groups = checkpoint[0]["state"], checkpoint[0]["param_groups"]  # type: ignore[index]
        assert len(state) == 4 and all("lookahead_slow" in s for s in state.values())
        assert [g["lookahead_step"] for g in groups] == [2]
    dist.broadcast_object_list(checkpoint, src=0)
    weights_at_checkpoint = [p.detach().clone() for p in ddp.module.parameters()]
    for step in range(2 * K + 2, 3 * K + 3):
        _train_step(ddp, zero, _batch(rank, step))

    resumed_ddp = DistributedDataParallel(_model(seed=5))
    with torch.no_grad():
        for p, saved in zip(resumed_ddp.module.parameters(), weights_at_checkpoint, strict=True):
            p.copy_(saved)
    resumed = _zero(resumed_ddp)
    resumed.load_state_dict(checkpoint[0])  # type: ignore[arg-type]
    for step in range(2 * K + 2, 3 * K + 3):
        _train_step(resumed_ddp, resumed, _batch(rank, step))
    for p, q in zip(ddp.module.parameters(), resumed_ddp.module.parameters(), strict=True):
        assert torch.equal(p, q)


def test_zero_redundancy_optimizer_with_a_lookahead_factory(cluster: Cluster) -> None:
    cluster.run(check_zero)
