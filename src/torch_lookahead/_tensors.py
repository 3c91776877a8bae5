"""Tensor plumbing shared by the sync and the optimizers. The checks run at C speed through ``map``
and build no container per tensor: on models of many small tensors, per-tensor Python work is what
a step or a sync costs beyond its kernels."""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate, compress, repeat
from typing import Any

import torch
from torch import Tensor

_PLAIN_TENSOR_TYPES = frozenset({Tensor, torch.nn.Parameter})
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_placement = operator.attrgetter("device", "dtype")
_is_cpu = operator.attrgetter("is_cpu")


def local_shards(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The local shard of every DTensor (FSDP2, tensor parallel), plain tensors as they are
    (``torch._foreach_*`` kernels have no DTensor strategy for every op; in-place updates of a
    shard reach its DTensor)."""
    if set(map(type, tensors)) <= _PLAIN_TENSOR_TYPES:
        return tensors if isinstance(tensors, list) else list(tensors)
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def group_by_device_and_dtype(
    tensorlists: Sequence[Sequence[Any]], keys: int = 1
) -> list[list[list[Any]]]:
    """The parallel lists grouped by the (device, dtype) of the tensors of their first ``keys``
    lists, in order of first appearance (the same on every rank of a job that builds the same
    model); tensors keep their order inside a group."""
    if not tensorlists[0]:
        return []
    if all(map(one_placement, tensorlists[:keys])):  # one placement, recognised at C speed
        return [[list(tensors) for tensors in tensorlists]]
    indices: dict[tuple[Any, ...], list[int]] = {}
    placements = zip(*(map(_placement, t) for t in tensorlists[:keys]), strict=True)
    for index, placement in enumerate(placements):
        indices.setdefault(placement, []).append(index)
    return [[[t[i] for i in positions] for t in tensorlists] for positions in indices.values()]


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
    cpu = all(map(_is_cpu, a)) and all(map(_is_cpu, b))
    return cpu or list(map(_device_of, a)) == list(map(_device_of, b))


def same_shapes(a: Sequence[Tensor], b: Sequence[Tensor]) -> tuple[list[int], list[int]] | None:
    """The dimension and element counts of ``b`` if each ``a[i]`` is a tensor of ``b[i]``'s shape,
    else None (the counts settle tensors of at most one dimension; ``size()`` is slow)."""
    if torch.compiler.is_compiling():
        same = [x.shape for x in a] == [y.shape for y in b]
        return ([y.dim() for y in b], [y.numel() for y in b]) if same else None
    dims, numels = list(map(Tensor.dim, b)), list(map(Tensor.numel, b))
    try:
        same = dims == list(map(Tensor.dim, a)) and numels == list(map(Tensor.numel, a))
    except TypeError:  # an entry of ``a`` that is not a tensor
        return None
    if same and max(dims, default=0) > 1:
        several, size = list(map(operator.lt, repeat(1), dims)), Tensor.size
        same = [*map(size, compress(a, several))] == [*map(size, compress(b, several))]
    return (dims, numels) if same else None


def cache_blocks(
    tensors: Sequence[Tensor], block_bytes: int, sizes: Sequence[int] | None = None
) -> Iterator[slice]:
    """Consecutive slices of ``range(len(tensors))`` (one dtype, element counts ``sizes`` if known)
    of at most ``block_bytes`` each, a larger tensor alone: a multi-tensor kernel over a CPU block
    reads what the previous one wrote from cache. Blocking never changes a result."""
    if not tensors:
        return
    limit = max(1, block_bytes // tensors[0].element_size())
    ends = list(accumulate(map(Tensor.numel, tensors) if sizes is None else sizes))
    start, base = 0, 0
    while start < len(ends):
        stop = max(start + 1, bisect_right(ends, base + limit, start))
        yield slice(start, stop)
        start, base = stop, ends[stop - 1]
