"""Collectives over whole parameter replicas: check them and broadcast them across ranks (their
mean is ``_exchange``'s).

Every function here is collective: all ranks of the group must call it with the same tensors (same
shapes and dtypes, in the same order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "broadcast_from_first_rank_",
    "buckets",
    "check_same_shapes",
    "like_parameter",
    "local",
    "require_process_group",
]


def buckets(*tensorlists: Sequence[Tensor]) -> list[list[list[Tensor]]]:
    """The parallel lists split by the (device, dtype) of the first one, in order of appearance."""
    positions: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensorlists[0]):
        positions.setdefault((tensor.device, tensor.dtype), []).append(index)
    return [[[tensors[i] for i in kept] for tensors in tensorlists] for kept in positions.values()]


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2: this rank's rows), a plain tensor as it is. In-place
    updates of the shard reach the DTensor."""
    to_local = getattr(t, "to_local", None)
    return t if to_local is None else to_local()


def like_parameter(shard: Tensor, parameter: Tensor) -> Tensor:
    """``shard`` (this rank's part of a tensor shaped like ``parameter``) in the parameter's form:
    a DTensor with its mesh and placements for a DTensor parameter, else itself."""
    if not hasattr(parameter, "to_local"):
        return shard
    from torch.distributed.tensor import DTensor

    assert isinstance(parameter, DTensor)
    return DTensor.from_local(
        shard,
        parameter.device_mesh,
        parameter.placements,
        run_check=False,
        shape=parameter.shape,
        stride=parameter.stride(),
    )


def require_process_group(process_group: dist.ProcessGroup | None) -> dist.ProcessGroup:
    """The group to use (the default group for None); raise if torch.distributed is not set up."""
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        raise RuntimeError(
            "DistributedLookahead needs an initialised process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the environment "
            "for it), or pass process_group="
        )
    if process_group is None:
        default_group = dist.group.WORLD
        assert default_group is not None  # is_initialized() guarantees it
        return default_group
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"process_group must be a torch.distributed.ProcessGroup or None, got {process_group!r}"
        )
    return process_group


def _buckets(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """Tensors grouped by (device, dtype), groups in first-appearance order (the same on every rank)."""
    return [bucket for (bucket,) in buckets(tensors)]


def _flatten(bucket: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in bucket])


def _copy_from_flat_(bucket: Sequence[Tensor], flat: Tensor) -> None:
    pieces = torch.split(flat, [t.numel() for t in bucket])
    torch._foreach_copy_(
        [t.detach() for t in bucket],
        [piece.view(t.shape) for piece, t in zip(pieces, bucket, strict=True)],
    )


def broadcast_from_first_rank_(tensors: Sequence[Tensor], group: dist.ProcessGroup) -> None:
    """Overwrite every tensor with its value on the group's rank 0, in place (one broadcast a bucket)."""
    source = dist.get_global_rank(group, 0)
    for bucket in _buckets(tensors):
        flat = _flatten(bucket)
        # A complex tensor travels as its real view (the same memory): gloo broadcasts no complex
        # dtype in torch 2.6 ("Invalid scalar type").
        dist.broadcast(
            torch.view_as_real(flat) if flat.is_complex() else flat, src=source, group=group
        )
        _copy_from_flat_(bucket, flat)


def check_same_shapes(tensors: Sequence[Tensor], group: dist.ProcessGroup) -> None:
    """Raise ValueError on every rank unless all ranks hold tensors of the same shapes and dtypes."""
    signature = [(tuple(t.shape), str(t.dtype)) for t in tensors]
    signatures: list[list[tuple[tuple[int, ...], str]] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(signatures, signature, group=group)
    reference = signatures[0]
    assert reference is not None
    for rank, other in enumerate(signatures[1:], start=1):
        assert other is not None
        if len(other) == len(reference):
            mismatches = [
                i for i, (a, b) in enumerate(zip(reference, other, strict=True)) if a != b
            ]
            if not mismatches:
                continue
            i = mismatches[0]
            detail = (
                f"parameter {i} is {reference[i][0]} {reference[i][1]} on rank 0 but "
                f"{other[i][0]} {other[i][1]} on rank {rank}"
            )
        else:
            detail = f"rank 0 has {len(reference)} parameters, rank {rank} has {len(other)}"
        raise ValueError(
            "DistributedLookahead averages whole replicas, so every rank must build the same model "
            f"and the same parameter groups: {detail} (ranks numbered within the process group)"
        )
