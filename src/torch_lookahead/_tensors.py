"""Tensor plumbing shared by the sync, the optimizers and the distributed code.

One place for each of: the local shards of DTensors, grouping parallel lists by device and
dtype, and cutting a list of CPU tensors into cache-sized blocks.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from itertools import compress, repeat

import torch
from torch import Tensor

__all__ = [
    "OPTIMIZER_BLOCK_BYTES",
    "SYNC_BLOCK_BYTES",
    "cache_blocks",
    "group_by_device_and_dtype",
    "local_shards",
    "one_placement",
    "same_placements",
    "same_shapes",
]

#: Bytes of one tensor list per block of the CPU sync: a block of fast and slow weights fits in a
#: 1 MiB L2 cache with room to spare, so the copy after the lerp reads from cache.
SYNC_BLOCK_BYTES = 256 * 1024
#: Bytes of parameters per block of the optimizers' CPU multi-tensor kernels: a block of
#: parameters, gradients, state and temporaries (several times this) stays in the last-level cache
#: from the block's first ``_foreach`` op to its last.
OPTIMIZER_BLOCK_BYTES = 1024 * 1024

_PLAIN_TENSOR_TYPES = frozenset({Tensor, torch.nn.Parameter})
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_is_cpu = operator.attrgetter("is_cpu")


def local_shards(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Return the local shard of every DTensor (FSDP2, tensor parallel) and plain tensors as is.

    In-place updates of a shard reach its DTensor. ``torch._foreach_*`` kernels have no DTensor
    sharding strategy for every op, so the kernels of this package run on shards.
    """
    if set(map(type, tensors)) <= _PLAIN_TENSOR_TYPES:  # the usual case, at C speed
        return list(tensors)
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def group_by_device_and_dtype(
    tensorlists: Sequence[Sequence[Tensor]],
) -> Iterator[list[list[Tensor]]]:
    """Yield the parallel lists restricted to each (device, dtype) of the first list.

    Groups come in order of first appearance (the same on every rank of a job that builds the
    same model), tensors keep their order inside a group. Only the first list is inspected: the
    others are parallel to it.
    """
    first = tensorlists[0]
    if not first:
        return
    if one_placement(first):
        yield [list(tensors) for tensors in tensorlists]
        return
    indices: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(first):
        indices.setdefault((tensor.device, tensor.dtype), []).append(index)
    for positions in indices.values():
        yield [[tensors[i] for i in positions] for tensors in tensorlists]


# The checks below run at C speed through ``map`` and create no container per tensor (a list of
# 20,000 tuples or sizes costs more in garbage collection than in building it).
def one_placement(tensors: Sequence[Tensor]) -> bool:
    """Whether the (non-empty) ``tensors`` share one device and one dtype."""
    return len(set(map(_dtype_of, tensors))) == 1 and (
        all(map(_is_cpu, tensors)) or len(set(map(_device_of, tensors))) == 1
    )


def same_placements(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Whether ``a[i]`` and ``b[i]`` have the same device and dtype for every ``i``."""
    if torch.compiler.is_compiling():  # dynamo traces no attrgetter
        return [(x.device, x.dtype) for x in a] == [(y.device, y.dtype) for y in b]
    if list(map(_dtype_of, a)) != list(map(_dtype_of, b)):
        return False
    return (all(map(_is_cpu, a)) and all(map(_is_cpu, b))) or list(map(_device_of, a)) == list(
        map(_device_of, b)
    )


def same_shapes(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Whether ``a[i]`` and ``b[i]`` have the same shape for every ``i``.

    Counts of dimensions and elements first: they settle tensors of at most one dimension."""
    if torch.compiler.is_compiling():
        return [x.shape for x in a] == [y.shape for y in b]
    dims = list(map(Tensor.dim, a))
    if dims != list(map(Tensor.dim, b)) or list(map(Tensor.numel, a)) != list(map(Tensor.numel, b)):
        return False
    several = list(map(operator.lt, repeat(1), dims))
    if not any(several):
        return True
    size = Tensor.size
    return list(map(size, compress(a, several))) == list(map(size, compress(b, several)))


def cache_blocks(tensors: Sequence[Tensor], block_bytes: int) -> Iterator[slice]:
    """Split ``range(len(tensors))`` into consecutive slices of at most ``block_bytes`` each.

    ``tensors`` share one dtype (a device/dtype bucket). A tensor larger than a block gets a slice
    to itself. Meant for CPU lists, where a multi-tensor kernel over a block reads what the
    previous kernel wrote from cache instead of memory; blocking changes only the order of the same
    element-wise operations, never a result.
    """
    if not tensors:
        return
    limit = max(1, block_bytes // tensors[0].element_size())
    start, filled = 0, 0
    for index, numel in enumerate(map(Tensor.numel, tensors)):
        if index > start and filled + numel > limit:
            yield slice(start, index)
            start, filled = index, 0
        filled += numel
    yield slice(start, len(tensors))
