"""Lookahead's outer step over lists of tensors, and the exchange used by ``eval()``/``train()``.

``sync_`` applies Algorithm 1's outer step in place::

    slow <- slow + alpha * (fast - slow)
    fast <- slow

Pairs that share device and dtype go through the multi-tensor ``torch._foreach_*`` kernels; pairs
that differ (fp32 slow copies of bf16 parameters, slow copies kept on the CPU for CUDA parameters)
are computed one at a time in the slow copy's precision on the parameter's device.

On the CPU the pairs are visited in blocks of about ``SYNC_BLOCK_BYTES`` (longer tensors as views
of that length), so that the copy reads what the lerp has just written from cache rather than from
memory; blocking changes the order of the same element-wise operations, never a result. The
measured effect is on ``docs/benchmarks.md``. Accelerators take whole buckets, and so does a sync
traced by ``torch.compile``, whose generated code fuses the lerp and the copy on its own.

Every temporary a call needs is allocated before it changes the first tensor, so a call that runs
out of memory leaves every pair as it was.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from torch_lookahead._tensors import (
    SYNC_BLOCK_BYTES,
    cache_blocks,
    group_by_device_and_dtype,
    local_shards,
    same_placement,
)

__all__ = ["lerp_", "swap_", "sync_"]

# A bucket of at most this many blocks stays in cache as a whole: it is not cut into blocks.
_UNBLOCKED_BLOCKS = 4

_Pairs = list[tuple[Tensor, Tensor]]
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_is_cpu = operator.attrgetter("is_cpu")


def sync_(fast: Sequence[Tensor], slow: Sequence[Tensor], alpha: float, *, foreach: bool) -> None:
    """Outer Lookahead step, in place: ``slow <- slow + alpha*(fast - slow); fast <- slow``.

    Args:
        fast: the parameters (fast weights).
        slow: their slow copies, same shapes; device and dtype may differ from ``fast``.
        alpha: the slow-weights step size in [0, 1].
        foreach: use the multi-tensor ``torch._foreach_*`` kernels for pairs of one placement.
    """
    if not fast:
        return
    fast, slow = local_shards(fast), local_shards(slow)
    matched_fast, matched_slow, mismatched = _split_by_placement(fast, slow)
    blocked = not torch.compiler.is_compiling()
    with torch.no_grad():
        if matched_fast:
            for bucket_fast, bucket_slow in group_by_device_and_dtype([matched_fast, matched_slow]):
                on_cpu = blocked and bucket_fast[0].device.type == "cpu"
                blocks = (
                    _cpu_blocks(bucket_fast, bucket_slow)
                    if on_cpu
                    else [(bucket_fast, bucket_slow)]
                )
                for block_fast, block_slow in blocks:
                    _lerp_then_copy_(block_fast, block_slow, alpha, foreach=foreach)
        if mismatched:
            _sync_mismatched_(mismatched, alpha, blocked=blocked)


def _split_by_placement(
    fast: list[Tensor], slow: list[Tensor]
) -> tuple[list[Tensor], list[Tensor], _Pairs]:
    """The pairs that share device and dtype (two parallel lists), and the others."""
    # The usual case, every pair matched, is recognised with C-level maps.
    if list(map(_dtype_of, fast)) == list(map(_dtype_of, slow)) and (
        (all(map(_is_cpu, fast)) and all(map(_is_cpu, slow)))
        or list(map(_device_of, fast)) == list(map(_device_of, slow))
    ):
        return fast, slow, []
    matched_fast: list[Tensor] = []
    matched_slow: list[Tensor] = []
    mismatched: _Pairs = []
    for f, s in zip(fast, slow, strict=True):
        if same_placement(f, s):
            matched_fast.append(f)
            matched_slow.append(s)
        else:
            mismatched.append((f, s))
    return matched_fast, matched_slow, mismatched


def _lerp_then_copy_(
    fast: list[Tensor], slow: list[Tensor], alpha: float, *, foreach: bool
) -> None:
    if foreach and len(fast) > 1:
        torch._foreach_lerp_(slow, fast, alpha)
        torch._foreach_copy_(fast, slow)
    else:
        for f, s in zip(fast, slow, strict=True):
            s.lerp_(f, alpha)
            f.copy_(s)


def _sync_mismatched_(pairs: _Pairs, alpha: float, *, blocked: bool) -> None:
    """The outer step for pairs of different dtype or device, in the slow copy's precision.

    Two scratch buffers per (parameter device, slow dtype), as long as the longest piece, hold the
    slow copy brought to the parameter's device and the parameter in the slow dtype.
    """
    pieces: _Pairs = []
    for f, s in pairs:
        both_cpu = f.device.type == "cpu" and s.device.type == "cpu"
        pieces.extend(_pieces(f, s) if blocked and both_cpu else [(f, s)])
    longest: dict[tuple[torch.device, torch.dtype, bool], int] = {}
    for f, s in pieces:
        for moved, needed in ((False, f.dtype != s.dtype), (True, f.device != s.device)):
            if needed:
                key = (f.device, s.dtype, moved)
                longest[key] = max(longest.get(key, 0), f.numel())
    scratch = {
        key: torch.empty(numel, device=key[0], dtype=key[1]) for key, numel in longest.items()
    }
    offloaded_from: set[torch.device] = set()
    for f, s in pieces:
        numel = f.numel()
        work = s
        if f.device != s.device:
            work = scratch[(f.device, s.dtype, True)][:numel].view(s.shape)
            work.copy_(s, non_blocking=True)
        end = f
        if f.dtype != s.dtype:
            end = scratch[(f.device, s.dtype, False)][:numel].view(f.shape)
            end.copy_(f)
        work.lerp_(end, alpha)
        f.copy_(work)
        if work is not s:
            # Same stream: the next piece's copy into `work` waits for this one.
            s.copy_(work, non_blocking=True)
            offloaded_from.add(f.device)
    for device in offloaded_from:
        # Slow copies in (pinned) host memory must be complete before anyone reads them.
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _pieces(fast: Tensor, slow: Tensor) -> _Pairs:
    """The pair itself, or matching flat views of at most one block each when it is longer."""
    block_numel = max(1, SYNC_BLOCK_BYTES // fast.element_size())
    if fast.numel() <= block_numel or not (fast.is_contiguous() and slow.is_contiguous()):
        return [(fast, slow)]
    fast_views = torch.split(fast.view(-1), block_numel)
    slow_views = torch.split(slow.view(-1), block_numel)
    return list(zip(fast_views, slow_views, strict=True))


def _cpu_blocks(
    fast: list[Tensor], slow: list[Tensor]
) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """Consecutive runs of pairs holding about one block of fast weights each, in order.

    A tensor longer than a block comes out as blocks of one pair of views (see ``_pieces``).
    """
    itemsize = fast[0].element_size()
    sizes = list(map(Tensor.numel, fast))
    if sum(sizes) * itemsize <= _UNBLOCKED_BLOCKS * SYNC_BLOCK_BYTES:
        yield fast, slow  # small enough to stay in cache as a whole
        return
    if max(sizes) * itemsize > SYNC_BLOCK_BYTES:
        pieces = [piece for f, s in zip(fast, slow, strict=True) for piece in _pieces(f, s)]
        fast = [f for f, _ in pieces]
        slow = [s for _, s in pieces]
    for block in cache_blocks(fast, SYNC_BLOCK_BYTES):
        yield fast[block], slow[block]


def lerp_(
    targets: Sequence[Tensor], ends: Sequence[Tensor], weight: float, *, foreach: bool
) -> None:
    """``target <- target + weight*(end - target)`` for every pair (same device and dtype)."""
    if not targets:
        return
    targets, ends = local_shards(targets), local_shards(ends)
    with torch.no_grad():
        if foreach:
            for bucket_targets, bucket_ends in group_by_device_and_dtype([targets, ends]):
                torch._foreach_lerp_(bucket_targets, bucket_ends, weight)
        else:
            for t, e in zip(targets, ends, strict=True):
                t.lerp_(e, weight)


def swap_(
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    scratch: dict[tuple[torch.device, torch.dtype], Tensor],
    *,
    foreach: bool,
) -> None:
    """Exchange the values of each pair in place (every pair shares device and dtype).

    Over the sync's blocks (``_cpu_blocks``) through one scratch buffer per device and dtype as
    long as the longest block, kept in ``scratch`` so that repeated exchanges allocate nothing:
    three multi-tensor copies per block.
    """
    if not a:
        return
    a, b = local_shards(a), local_shards(b)
    with torch.no_grad():
        for bucket_a, bucket_b in group_by_device_and_dtype([a, b]):
            blocks = list(_cpu_blocks(bucket_a, bucket_b))  # the sync's blocks, on any device
            longest = max(sum(map(Tensor.numel, block_a)) for block_a, _ in blocks)
            key = (bucket_a[0].device, bucket_a[0].dtype)
            buffer = scratch.get(key)
            if buffer is None or buffer.numel() < longest:
                buffer = scratch[key] = torch.empty(longest, device=key[0], dtype=key[1])
            for block_a, block_b in blocks:
                sizes = list(map(Tensor.numel, block_a))
                flat = torch.split(buffer[: sum(sizes)], sizes)
                held = [view.view(x.shape) for view, x in zip(flat, block_a, strict=True)]
                if foreach:
                    torch._foreach_copy_(held, block_a)
                    torch._foreach_copy_(block_a, block_b)
                    torch._foreach_copy_(block_b, held)
                else:
                    for h, x, y in zip(held, block_a, block_b, strict=True):
                        h.copy_(x)
                        x.copy_(y)
                        y.copy_(h)
