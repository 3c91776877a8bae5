"""The Lookahead synchronisation kernels: one pass over fast and slow weights, nothing else.

``sync_`` applies Algorithm 1's outer step in place::

    slow <- slow + alpha * (fast - slow)
    fast <- slow

over parallel lists of tensors. Pairs that share device and dtype go through the vectorised
``torch._foreach_*`` kernels (one launch per device/dtype bucket); pairs that differ (fp32 slow
copies of bf16 parameters, slow copies kept on the CPU for CUDA parameters) are handled one tensor
at a time with a temporary in the slow copy's precision on the parameter's device.

The memory floor of a sync is four passes over the weights (read fast and slow, write both); a lerp
followed by a copy makes five. On the CPU the sync therefore runs block by block, each block about
``CPU_BLOCK_BYTES`` of parameters (longer tensors are cut into views of that length), so that the
copy reads what the lerp has just written from cache, not from memory: measured at 0.85-0.96 of
the floor where whole-list foreach calls take 0.99-1.08 (``benchmarks/results/sync.md``, where the
floor is twice one copy of the same bytes). Blocking changes only the order of the same
element-wise operations, never a result. Accelerators keep whole buckets (their foreach kernels
tile on their own), and so does ``torch.compile``, whose generated code fuses the lerp and the
copy into one loop. With ``compiled=True`` the long float32/float64 CPU tensors skip the blocks
and go through such a loop, compiled once (``_compiled_sync``), with the same result to the bit.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead._compiled_sync import sync_long_tensors_

__all__ = ["CPU_BLOCK_BYTES", "lerp_", "local_shards", "swap_", "sync_"]

# Bytes of parameters per block of the CPU sync: fast + slow blocks (2x this) fit in a 1 MiB L2
# cache with room to spare, and stay in L3 where L2 is smaller. 128 KiB to 1 MiB measured alike.
CPU_BLOCK_BYTES = 256 * 1024
# Buckets of at most this many blocks run whole: they stay in cache anyway, and each block costs a
# pair of kernel calls.
CPU_UNBLOCKED_BLOCKS = 4

_PLAIN_TENSOR_TYPES = frozenset({Tensor, torch.nn.Parameter})
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_is_cpu = operator.attrgetter("is_cpu")


def local_shards(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Return the local shard of every DTensor (FSDP2, tensor parallel) and plain tensors as is.

    In-place updates of a shard reach its DTensor. ``torch._foreach_copy_`` has no DTensor sharding
    strategy, so every kernel here runs on shards.
    """
    if set(map(type, tensors)) <= _PLAIN_TENSOR_TYPES:  # the usual case, at C speed
        return list(tensors)
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def _same_placement(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.dtype == b.dtype


def _buckets(
    fast: list[Tensor], slow: list[Tensor]
) -> tuple[list[tuple[list[Tensor], list[Tensor]]], list[tuple[Tensor, Tensor]]]:
    """Split the pairs into foreach-able (device, dtype) buckets and mismatched single pairs."""
    matched_fast: list[Tensor] = []
    matched_slow: list[Tensor] = []
    mismatched: list[tuple[Tensor, Tensor]] = []
    # The usual cases are checked with C-level maps, a few tens of nanoseconds per tensor; the
    # most usual (one dtype, all on the CPU) without building device objects.
    fast_dtypes = set(map(_dtype_of, fast))
    if (
        len(fast_dtypes) == 1
        and set(map(_dtype_of, slow)) == fast_dtypes
        and all(map(_is_cpu, fast))
        and all(map(_is_cpu, slow))
    ):
        return [(fast, slow)], mismatched
    dtypes, devices = list(map(_dtype_of, fast)), list(map(_device_of, fast))
    if dtypes == list(map(_dtype_of, slow)) and devices == list(map(_device_of, slow)):
        if len(set(dtypes)) == 1 and len(set(devices)) == 1:
            return [(fast, slow)], mismatched
        matched_fast, matched_slow = fast, slow
    else:
        for f, s in zip(fast, slow, strict=True):
            if _same_placement(f, s):
                matched_fast.append(f)
                matched_slow.append(s)
            else:
                mismatched.append((f, s))
    buckets: list[tuple[list[Tensor], list[Tensor]]] = []
    if matched_fast:
        grouped = Optimizer._group_tensors_by_device_and_dtype([matched_fast, matched_slow])  # type: ignore[list-item]
        for (bucket_fast, bucket_slow), _ in grouped.values():
            buckets.append((list(bucket_fast), list(bucket_slow)))  # type: ignore[arg-type]
    return buckets, mismatched


def sync_(
    fast: Sequence[Tensor],
    slow: Sequence[Tensor],
    alpha: float,
    *,
    foreach: bool,
    compiled: bool = False,
) -> None:
    """Outer Lookahead step, in place: ``slow <- slow + alpha*(fast - slow); fast <- slow``.

    Args:
        fast: the parameters (fast weights).
        slow: their slow copies, same shapes; device and dtype may differ from ``fast``.
        alpha: the slow-weights step size in [0, 1].
        foreach: use the vectorised ``torch._foreach_*`` kernels for matched pairs.
        compiled: sync long float32/float64 CPU tensors with the kernel ``torch.compile``
            generates (``_compiled_sync``), bit-identical to the eager one; the eager kernel
            wherever that kernel is unavailable.
    """
    if not fast:
        return
    fast_local, slow_local = local_shards(fast), local_shards(slow)
    buckets, mismatched = _buckets(fast_local, slow_local)
    blocked = not torch.compiler.is_compiling()
    if compiled and blocked:
        with torch.no_grad():  # generated code goes through the autograd layer: not below it
            buckets = [
                sync_long_tensors_(bucket_fast, bucket_slow, alpha)
                if bucket_fast[0].device.type == "cpu"
                else (bucket_fast, bucket_slow)
                for bucket_fast, bucket_slow in buckets
            ]
        buckets = [bucket for bucket in buckets if bucket[0]]
    with torch.no_grad(), _below_autograd() if blocked else contextlib.nullcontext():
        for bucket_fast, bucket_slow in buckets:
            on_cpu = blocked and bucket_fast[0].device.type == "cpu"
            blocks = (
                _cache_blocks(bucket_fast, bucket_slow) if on_cpu else [(bucket_fast, bucket_slow)]
            )
            for block_fast, block_slow in blocks:
                if foreach and len(block_fast) > 1:
                    torch._foreach_lerp_(block_slow, block_fast, alpha)
                    torch._foreach_copy_(block_fast, block_slow)
                else:
                    for f, s in zip(block_fast, block_slow, strict=True):
                        s.lerp_(f, alpha)
                        f.copy_(s)
    offloaded_from: set[torch.device] = set()
    for whole_f, whole_s in mismatched:
        same_cpu = blocked and whole_f.device.type == "cpu" and whole_s.device.type == "cpu"
        for f, s in _pieces(whole_f, whole_s) if same_cpu else [(whole_f, whole_s)]:
            # The arithmetic happens in the slow copy's precision, on the parameter's device.
            work = s.to(device=f.device, non_blocking=True)
            work.lerp_(f.to(work.dtype), alpha)
            f.copy_(work)
            if work is not s:
                s.copy_(work, non_blocking=True)
                offloaded_from.add(f.device)
    for device in offloaded_from:
        # Slow copies in (pinned) host memory must be complete before anyone reads them.
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _below_autograd() -> contextlib.AbstractContextManager[object]:
    """Run the in-place kernels below the autograd layer (version counters still advance).

    Under ``no_grad`` the autograd kernel of an in-place op has nothing to record, yet for a
    parameter (a tensor that requires grad) it still reads the tensor's autograd metadata: with
    thousands of small parameters whose metadata has left the cache since the last sync, that
    alone cost 6% of a sync (2,000 x 2,500 floats, cold caches:
    ``benchmarks/results/sync-overheads.md``). Falls back to doing nothing where torch lacks the
    guard.
    """
    guard = getattr(torch._C, "_AutoDispatchBelowAutograd", None)
    return contextlib.nullcontext() if guard is None else guard()


def _block_numel(t: Tensor) -> int:
    return max(1, CPU_BLOCK_BYTES // t.element_size())


def _pieces(fast: Tensor, slow: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The pair itself, or matching flat views of at most one block each when it is longer."""
    block_numel = _block_numel(fast)
    if fast.numel() <= block_numel or not (fast.is_contiguous() and slow.is_contiguous()):
        return [(fast, slow)]
    fast_views = torch.split(fast.view(-1), block_numel)
    slow_views = torch.split(slow.view(-1), block_numel)
    return list(zip(fast_views, slow_views, strict=True))


def _cache_blocks(
    fast: list[Tensor], slow: list[Tensor]
) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """Consecutive runs of pairs holding about one block of fast weights, in order.

    A tensor longer than a block comes out as single-pair blocks of views (see ``_pieces``).
    """
    block_numel = _block_numel(fast[0])
    sizes = list(map(Tensor.numel, fast))
    if sum(sizes) <= CPU_UNBLOCKED_BLOCKS * block_numel:
        yield fast, slow  # small enough to stay in cache as a whole
        return
    start, filled = 0, 0
    for index, numel in enumerate(sizes):
        if numel > block_numel:
            if start < index:
                yield fast[start:index], slow[start:index]
            for f, s in _pieces(fast[index], slow[index]):
                yield [f], [s]
            start, filled = index + 1, 0
            continue
        filled += numel
        if filled >= block_numel:
            yield fast[start : index + 1], slow[start : index + 1]
            start, filled = index + 1, 0
    if start < len(fast):
        yield fast[start:], slow[start:]


def lerp_(
    targets: Sequence[Tensor], ends: Sequence[Tensor], weight: float, *, foreach: bool
) -> None:
    """``target <- target + weight*(end - target)`` for every pair (same device and dtype)."""
    if not targets:
        return
    targets_local, ends_local = local_shards(targets), local_shards(ends)
    if foreach:
        grouped = Optimizer._group_tensors_by_device_and_dtype([targets_local, ends_local])  # type: ignore[list-item]
        for (bucket_targets, bucket_ends), _ in grouped.values():
            torch._foreach_lerp_(bucket_targets, bucket_ends, weight)  # type: ignore[arg-type]
    else:
        for t, e in zip(targets_local, ends_local, strict=True):
            t.lerp_(e, weight)


def swap_(
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    scratch: dict[tuple[torch.device, torch.dtype], Tensor],
) -> None:
    """Exchange the values of each pair in place through one reusable scratch buffer per device/dtype.

    The scratch buffer grows to the largest tensor seen and is kept in ``scratch`` so repeated swaps
    allocate nothing. Every pair must share device and dtype.
    """
    for x, y in zip(local_shards(a), local_shards(b), strict=True):
        key = (x.device, x.dtype)
        buffer = scratch.get(key)
        if buffer is None or buffer.numel() < x.numel():
            buffer = torch.empty(x.numel(), device=x.device, dtype=x.dtype)
            scratch[key] = buffer
        view = buffer[: x.numel()].view(x.shape)
        view.copy_(x)
        x.copy_(y)
        y.copy_(view)
