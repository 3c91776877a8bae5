"""DistributedLookahead over workers of two ranks each, on four gloo ranks: a 2-D device mesh of
2 replica groups x 2 ranks. HSDP's layout: each replica group an FSDP2 model (``fully_shard`` over
the mesh's shard dimension), the local shards averaged across the replica groups. And DDP inside a
site: each replica group a DistributedDataParallel model over the same dimension.

The reference is the unsharded 2-replica run, in the same processes: a DistributedLookahead over
the mesh's replicate dimension whose replica ``i`` sees the whole batch that replica group ``i``'s
two ranks see between them. FSDP2 and DDP average the two half-batch gradients, the reference takes
the gradient of the whole batch's mean loss: equal up to float rounding, so compared within a
tolerance. The DCP checkpoint resumes bit for bit on the same layout and from the slow weights on
another number of replica groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from tests._torch_versions import needs_fsdp2_on_cpu
from tests.distributed._cluster import Cluster
from tests.distributed._replica_utils import assert_states_equal, state_tensors
from torch_lookahead.distributed import (
    DistributedLookahead,
    DistributedLookaheadState,
    saved_world_size,
)

pytestmark = [pytest.mark.distributed, needs_fsdp2_on_cpu]

K, ALPHA, SLOW = 3, 0.5, "lookahead_slow"
ROWS = 4  # rows of each shard's batch


@pytest.fixture(scope="module")
def four() -> Iterator[Cluster]:
    pool = Cluster(world_size=4)
    yield pool
    pool.stop()


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _replica_batch(replica: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replica ``replica``'s whole batch at ``step``; shard ``s`` of it takes rows s*ROWS.."""
    generator = torch.Generator().manual_seed(1000 * replica + step)
    return torch.randn(2 * ROWS, 8, generator=generator), torch.randn(
        2 * ROWS, 4, generator=generator
    )


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def _diloco(model: nn.Module, **placement: object) -> DistributedLookahead:
    inner = torch.optim.AdamW(model.parameters(), lr=0.01)
    return DistributedLookahead(
        inner,
        k=K,
        alpha=ALPHA,
        outer_momentum=0.5,
        nesterov=True,
        **placement,
    )


def _sharded(mesh: DeviceMesh) -> tuple[nn.Module, DistributedLookahead]:
    model = _model()
    fully_shard(model, mesh=mesh["shard"])
    return model, _diloco(model, device_mesh=mesh)


def _ddp_in_sites(mesh: DeviceMesh) -> tuple[nn.Module, DistributedLookahead]:
    model = DistributedDataParallel(_model(), process_group=mesh.get_group("shard"))
    return model, _diloco(model, device_mesh=mesh)


def _train(model: nn.Module, opt: DistributedLookahead, mesh: DeviceMesh, steps: range) -> None:
    replica, shard = mesh.get_local_rank(0), mesh.get_local_rank(1)
    shards = mesh.size(1)
    for step in steps:
        x, y = _replica_batch(replica % 2, step)
        rows = slice(shard * 2 * ROWS // shards, (shard + 1) * 2 * ROWS // shards)
        _step(model, opt, x[rows], y[rows])


def _slow(opt: DistributedLookahead) -> list[torch.Tensor]:
    return [opt.state[p][SLOW].full_tensor() for p in opt.param_groups[0]["params"]]


def check_hsdp(rank: int, world_size: int, directory: str) -> list[float]:
    """Returns the largest difference of each slow tensor from the unsharded run's."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    _check_errors(mesh)
    model, opt = _sharded(mesh)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    reference = _model()
    reference_opt = _diloco(reference, process_group=mesh.get_group("replicate"))
    replica = mesh.get_local_rank(0)
    steps = 2 * K + 1  # two syncs, then mid-cycle
    _train(model, opt, mesh, range(steps))
    for step in range(steps):
        _step(reference, reference_opt, *_replica_batch(replica, step))
    reference_slow = [reference_opt.state[p][SLOW] for p in reference.parameters()]
    for mine, expected in zip(_slow(opt), reference_slow, strict=True):
        torch.testing.assert_close(mine, expected, rtol=1e-6, atol=1e-7)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.full_tensor(), q.detach(), rtol=1e-6, atol=1e-7)
    slow = _slow(opt)
    _assert_same_everywhere(slow, world_size)  # both replica groups, bit for bit

    ddp, ddp_opt = _ddp_in_sites(mesh)
    _train(ddp, ddp_opt, mesh, range(steps))
    ddp_slow = [ddp_opt.state[p][SLOW] for p in ddp.parameters()]
    for mine, expected in zip(ddp_slow, reference_slow, strict=True):
        torch.testing.assert_close(mine, expected, rtol=1e-6, atol=1e-7)
    _assert_same_everywhere(ddp_slow, world_size)
    # Per sync a rank sends its payload (FSDP2: its shard, half the values; DDP: all of them)
    # and the verdict's int64 sums (a flag, one per tensor, a count, two fingerprint values
    # and their squares).
    verdicts = 2 * 8 * (1 + 4 + 6)
    assert 2 * (opt.bytes_all_reduced - verdicts) == ddp_opt.bytes_all_reduced - verdicts
    differences = [
        float((mine - expected).abs().max())
        for mine, expected in zip(_slow(opt), reference_slow, strict=True)
    ]

    # Save mid-cycle; the same layout resumes bit for bit.
    dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    assert saved_world_size(directory) == 2
    _train(model, opt, mesh, range(steps, steps + K + 1))
    resumed, resumed_opt = _sharded(mesh)
    dcp.load({"train": DistributedLookaheadState(resumed, resumed_opt)}, checkpoint_id=directory)
    _train(resumed, resumed_opt, mesh, range(steps, steps + K + 1))
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p.to_local(), q.to_local())
    for mine, theirs in zip(_slow(opt), _slow(resumed_opt), strict=True):
        assert torch.equal(mine, theirs)

    # Four replica groups of one shard resume from the slow weights and outer momentum saved.
    wide = init_device_mesh("cpu", (4, 1), mesh_dim_names=("replicate", "shard"))
    elastic, elastic_opt = _sharded(wide)
    state = DistributedLookaheadState(
        elastic, elastic_opt, checkpoint_world_size=saved_world_size(directory)
    )
    dcp.load({"train": state}, checkpoint_id=directory)
    for p, s in zip(elastic.parameters(), slow, strict=True):
        assert torch.equal(p.full_tensor(), s)
    assert [g["lookahead_step"] for g in elastic_opt.param_groups] == [1]
    # Its counter is 1: K - 1 steps end at a sync, where the four replicas agree.
    _train(elastic, elastic_opt, wide, range(steps, steps + K - 1))
    assert [g["lookahead_step"] for g in elastic_opt.param_groups] == [0]
    _assert_same_everywhere([p.full_tensor() for p in elastic.parameters()], world_size)
    return differences


def _check_errors(mesh: DeviceMesh) -> None:
    """Raised on every rank alike, before any collective of the optimizer."""
    sharded = _model()
    fully_shard(sharded, mesh=mesh["shard"])
    with pytest.raises(TypeError, match="pass device_mesh="):
        DistributedLookahead(torch.optim.SGD(sharded.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="2-D"):
        DistributedLookahead(
            torch.optim.SGD(sharded.parameters(), lr=0.1), device_mesh=mesh["shard"]
        )
    with pytest.raises(ValueError, match="not both"):
        DistributedLookahead(
            torch.optim.SGD(sharded.parameters(), lr=0.1),
            device_mesh=mesh,
            process_group=mesh.get_group("replicate"),
        )
    across_all = _model()
    fully_shard(across_all, mesh=init_device_mesh("cpu", (4,)))
    with pytest.raises(ValueError, match=r"sharded over ranks \[0, 1, 2, 3\]"):
        DistributedLookahead(torch.optim.SGD(across_all.parameters(), lr=0.1), device_mesh=mesh)


def _assert_same_everywhere(tensors: list[torch.Tensor], world_size: int) -> None:
    for t in tensors:
        gathered = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(gathered, t)
        assert all(torch.equal(gathered[0], other) for other in gathered[1:])


def test_hsdp_layout_matches_the_unsharded_run_and_resumes(four: Cluster, tmp_path: Path) -> None:
    four.run(check_hsdp, str(tmp_path / "checkpoint"))


def check_hsdp_options(
    rank: int, world_size: int, directory: str, compression: str | None, sync_delay: int
) -> float:
    """The HSDP layout with an option: resumed exactly from a checkpoint taken while a delayed
    sync is pending; returns the largest difference of the slow weights from the unsharded run's."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    options = {"compression": compression, "sync_delay": sync_delay}

    def sharded() -> tuple[nn.Module, DistributedLookahead]:
        model = _model()
        fully_shard(model, mesh=mesh["shard"])
        return model, _diloco(model, device_mesh=mesh, **options)

    model, opt = sharded()
    reference = _model()
    reference_opt = _diloco(reference, process_group=mesh.get_group("replicate"), **options)
    _train(model, opt, mesh, range(2 * K))  # the sync launched at step 2K is pending
    assert any("lookahead_launch" in opt.state[p] for p in model.parameters()) == (sync_delay > 0)
    dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    saved = state_tensors(opt)
    _train(model, opt, mesh, range(2 * K, 3 * K + 1))
    resumed, resumed_opt = sharded()
    dcp.load({"train": DistributedLookaheadState(resumed, resumed_opt)}, checkpoint_id=directory)
    assert_states_equal(saved, state_tensors(resumed_opt))
    _train(resumed, resumed_opt, mesh, range(2 * K, 3 * K + 1))
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p.to_local(), q.to_local())
    for step in range(3 * K + 1):
        _step(reference, reference_opt, *_replica_batch(mesh.get_local_rank(0), step))
    slow = _slow(opt)
    _assert_same_everywhere(slow, world_size)
    reference_slow = [reference_opt.state[p][SLOW] for p in reference.parameters()]
    return max(float((a - b).abs().max()) for a, b in zip(slow, reference_slow, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compression", "sync_delay", "tolerance"),
    [(None, 1, 1e-7), ("bfloat16", 1, 1e-7), ("int8", 1, 1e-3)],
)
def test_hsdp_layout_with_delay_and_compression(
    four: Cluster, tmp_path: Path, compression: str | None, sync_delay: int, tolerance: float
) -> None:
    """int8 scales each block of a local shard, the unsharded run each block of a whole tensor:
    the two quantise differently, within the quantisation step."""
    differences = four.run(
        check_hsdp_options, str(tmp_path / "checkpoint"), compression, sync_delay
    )
    assert max(differences) <= tolerance


def _whole_state(opt: DistributedLookahead) -> dict[tuple[int, str], torch.Tensor]:
    """Every tensor of the optimizer state, whole (DTensors gathered over the row)."""
    return {
        key: value.full_tensor() if isinstance(value, DTensor) else value
        for key, value in state_tensors(opt).items()
    }


def save_while_pending(
    rank: int, world_size: int, directory: str, shards: int, compression: str | None
) -> dict[str, object]:
    """Train 2 replica groups of ``shards`` ranks with ``sync_delay=1`` and save while the sync
    launched at step 2K is pending; then go on to step 3K + 1 (past the next sync's launch and
    application). Returns the whole state saved and the whole slow weights at the end."""
    mesh = init_device_mesh("cpu", (2, shards), mesh_dim_names=("replicate", "shard"))
    model = _model()
    fully_shard(model, mesh=mesh["shard"])
    opt = _diloco(model, device_mesh=mesh, sync_delay=1, compression=compression)
    _train(model, opt, mesh, range(2 * K))
    assert all("lookahead_launch" in opt.state[p] for p in model.parameters())
    dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    saved = _whole_state(opt)
    _train(model, opt, mesh, range(2 * K, 3 * K + 1))
    return {"saved": saved, "slow": _slow(opt)}


def resume_while_pending(
    rank: int,
    world_size: int,
    directory: str,
    shards: int,
    compression: str | None,
    expected: list[dict[str, object]],
) -> None:
    """Resume the checkpoint of `save_while_pending` on 2 replica groups of ``shards`` ranks
    (``expected``: what each replica group saved): the whole state is the one saved, bit for bit, and training on ends at the slow weights of
    the uninterrupted run (up to the rounding of the gradients' reduction inside a row)."""
    mesh = init_device_mesh("cpu", (2, shards), mesh_dim_names=("replicate", "shard"))
    model = _model()
    fully_shard(model, mesh=mesh["shard"])
    opt = _diloco(model, device_mesh=mesh, sync_delay=1, compression=compression)
    assert saved_world_size(directory) == 2
    dcp.load({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    saved = expected[mesh.get_local_rank(0)]
    assert_states_equal(saved["saved"], _whole_state(opt))  # type: ignore[arg-type]
    _train(model, opt, mesh, range(2 * K, 3 * K + 1))
    slow = _slow(opt)
    _assert_same_everywhere(slow, world_size)
    for mine, theirs in zip(slow, saved["slow"], strict=True):  # type: ignore[call-overload]
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)


def test_a_pending_sync_resumes_on_another_number_of_shards(
    cluster: Cluster, four: Cluster, tmp_path: Path
) -> None:
    """A checkpoint taken while a delayed sync is pending holds it independently of how the
    rows were sharded: saved on one shard a row, it resumes on two, and the other way round."""
    one_to_two, two_to_one = str(tmp_path / "one_shard"), str(tmp_path / "two_shards")
    rows = cluster.run(save_while_pending, one_to_two, 1, None)  # rank r: row r
    four.run(resume_while_pending, one_to_two, 2, None, rows)
    rows = four.run(save_while_pending, two_to_one, 2, "bfloat16")[::2]  # ranks 2i, 2i+1: row i
    cluster.run(resume_while_pending, two_to_one, 1, "bfloat16", rows)
