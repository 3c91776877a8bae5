"""Lookahead's outer step and the ``eval()`` swap over lists of tensors, as resumable plans.

The outer step of Algorithm 1 (Zhang et al., 2019) for every (fast, slow) pair::

    slow <- slow + alpha * (fast - slow)
    fast <- slow

An operation is a `Plan`: a list of steps run in order, ``done`` counting the completed ones. A
step writes only tensors it does not read, and no step of its block has written what it reads
before it runs, so running a step again after an exception (KeyboardInterrupt between two calls,
out of memory, an error from torch, also after a step that completed but was not yet counted)
writes the same values. ``Plan.run()`` after any exception therefore finishes the operation with
the result of one uninterrupted call. Per block of pairs::

    sync:  work <- slow; work <- lerp(work, fast, alpha)  |  slow <- work  |  fast <- work
    swap:  work <- a  |  a <- b  |  b <- work

``work`` views a scratch buffer as long as the longest block, allocated (outside inference mode)
before the plan's first write and reused by the next plans. Blocks hold about ``SYNC_BLOCK_BYTES``
of fast weights on the CPU (the copies then read ``work`` from cache) and ``DEVICE_BLOCK_BYTES`` on
accelerators (a bounded scratch, not a second model). Pairs whose slow copy has another dtype or
device are computed in the slow copy's dtype on the fast weights' device. The measured cost is on
``docs/benchmarks.md``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from torch_lookahead._tensors import (
    SYNC_BLOCK_BYTES,
    cache_blocks,
    local_shards,
    one_placement,
    same_shapes,
)

__all__ = ["DEVICE_BLOCK_BYTES", "Plan", "Scratch", "swap_", "swap_steps", "sync_", "sync_steps"]

#: Bytes of fast weights per block on accelerators.
DEVICE_BLOCK_BYTES = 4 * 1024 * 1024
# On the CPU a bucket of at most this many blocks is not cut (its scratch is then that large).
_UNBLOCKED_BLOCKS = 1

Step = Callable[[], object]
# Buffers under (device, dtype, slot), views of them under (device, dtype, slot, numel, count).
Scratch = dict[tuple[Any, ...], Any]
_placement = operator.attrgetter("device", "dtype")


class Plan:
    """Steps run in order; ``done`` counts those completed, so ``run()`` resumes where it stopped."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.done = 0

    def run(self) -> None:
        with torch.no_grad():
            while self.done < len(self.steps):
                self.steps[self.done]()
                self.done += 1


def _copy(targets: list[Tensor], sources: list[Tensor], foreach: bool) -> None:
    if foreach:
        torch._foreach_copy_(targets, sources)
    else:
        for t, s in zip(targets, sources, strict=True):
            t.copy_(s)


def _lerp_into(
    work: list[Tensor],
    slow: list[Tensor],
    end: list[Tensor],
    fast: list[Tensor],
    alpha: float,
    foreach: bool,
) -> None:
    _copy(work, slow, foreach)
    if end is not fast:
        _copy(end, fast, foreach)  # the fast weights in the slow copy's dtype
    if foreach:
        torch._foreach_lerp_(work, end, alpha)
    else:
        for w, e in zip(work, end, strict=True):
            w.lerp_(e, alpha)


def _buckets(a: list[Tensor], b: list[Tensor]) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """The pairs grouped by (placement of ``a``, placement of ``b``), in order of appearance."""
    if one_placement(a) and one_placement(b):
        yield a, b  # one placement, the usual case, recognised at C speed
        return
    buckets: dict[tuple[object, object], tuple[list[Tensor], list[Tensor]]] = {}
    for x, y in zip(a, b, strict=True):
        bucket = buckets.setdefault((_placement(x), _placement(y)), ([], []))
        bucket[0].append(x)
        bucket[1].append(y)
    yield from buckets.values()


def _blocks(a: list[Tensor], b: list[Tensor]) -> list[tuple[list[Tensor], list[Tensor], int]]:
    """Consecutive runs of pairs of about one block of ``a`` each, and their element counts;
    longer contiguous tensors come as flat views of one block. Blocking changes the order of the same element-wise operations,
    never a result."""
    on_cpu = a[0].device.type == "cpu"
    block_bytes = SYNC_BLOCK_BYTES if on_cpu else DEVICE_BLOCK_BYTES
    itemsize = a[0].element_size()
    sizes = list(map(Tensor.numel, a))
    whole = _UNBLOCKED_BLOCKS * block_bytes if on_cpu else block_bytes
    total = sum(sizes)
    if total * itemsize <= whole:
        return [(a, b, total)]
    block_numel = max(1, block_bytes // itemsize)
    if max(sizes) > block_numel:
        cut_a: list[Tensor] = []
        cut_b: list[Tensor] = []
        for x, y, numel in zip(a, b, sizes, strict=True):
            if numel > block_numel and x.is_contiguous() and y.is_contiguous():
                cut_a.extend(torch.split(x.view(-1), block_numel))
                cut_b.extend(torch.split(y.view(-1), block_numel))
            else:
                cut_a.append(x)
                cut_b.append(y)
        a, b = cut_a, cut_b
    return [
        (a[block], b[block], sum(map(Tensor.numel, a[block])))
        for block in cache_blocks(a, block_bytes)
    ]


def _views(
    scratch: Scratch,
    like: list[Tensor],
    device: torch.device,
    dtype: torch.dtype,
    slot: int,
    numel: int,
) -> list[Tensor]:
    """Views of the scratch buffer ``(device, dtype, slot)``, shaped like ``like``.

    The last views made for a given count and length of tensors are kept with the buffer and
    reused when their shapes match (a check at C speed); a grown buffer drops them."""
    key = (device, dtype, slot)
    buffer = scratch.get(key)
    if buffer is None or buffer.numel() < numel:
        # Created outside inference mode, so that later plans outside it may write into it.
        with torch.inference_mode(False):
            buffer = scratch[key] = torch.empty(numel, device=device, dtype=dtype)
        for stale in [k for k in scratch if len(k) == 5 and k[:3] == key]:
            del scratch[stale]
    views_key = (*key, numel, len(like))
    views = scratch.get(views_key)
    if views is None or not same_shapes(views, like):
        with torch.inference_mode(False):
            views = scratch[views_key] = torch._C._nn.unflatten_dense_tensors(buffer[:numel], like)
    return list(views)


def _plan_blocks(
    a: Sequence[Tensor], b: Sequence[Tensor]
) -> list[tuple[list[Tensor], list[Tensor], int]]:
    return [
        block
        for bucket_a, bucket_b in _buckets(local_shards(a), local_shards(b))
        for block in _blocks(bucket_a, bucket_b)
    ]


def sync_steps(
    fast: Sequence[Tensor], slow: Sequence[Tensor], alpha: float, scratch: Scratch, *, foreach: bool
) -> list[Step]:
    """The steps of the outer step over the pairs; every allocation is made here, none in a step."""
    if not fast:
        return []
    if torch.compiler.is_compiling():
        # A traced sync is one graph; the compiler fuses the lerp and the copy.
        return [partial(_compiled_sync_, local_shards(fast), local_shards(slow), alpha)]
    steps: list[Step] = []
    for block_fast, block_slow, numel in _plan_blocks(fast, slow):
        device, dtype = block_fast[0].device, block_slow[0].dtype
        work = _views(scratch, block_fast, device, dtype, 0, numel)
        end = block_fast
        if block_fast[0].dtype != dtype:
            end = _views(scratch, block_fast, device, dtype, 1, numel)
        steps.append(partial(_lerp_into, work, block_slow, end, block_fast, alpha, foreach))
        steps.append(partial(_copy, block_slow, work, foreach))
        steps.append(partial(_copy, block_fast, work, foreach))
    return steps


def _compiled_sync_(fast: list[Tensor], slow: list[Tensor], alpha: float) -> None:
    for f, s in zip(fast, slow, strict=True):
        s.lerp_(f.to(s), alpha)
        f.copy_(s)


def swap_steps(
    a: Sequence[Tensor], b: Sequence[Tensor], scratch: Scratch, *, foreach: bool
) -> list[Step]:
    """The steps that exchange the values of each pair (each pair shares device and dtype)."""
    if not a:
        return []
    steps: list[Step] = []
    for block_a, block_b, numel in _plan_blocks(a, b):
        held = _views(scratch, block_a, block_a[0].device, block_a[0].dtype, 0, numel)
        steps.append(partial(_copy, held, block_a, foreach))
        steps.append(partial(_copy, block_a, block_b, foreach))
        steps.append(partial(_copy, block_b, held, foreach))
    return steps


def sync_(
    fast: Sequence[Tensor],
    slow: Sequence[Tensor],
    alpha: float,
    *,
    foreach: bool,
    scratch: Scratch | None = None,
) -> None:
    """One uninterrupted outer step, in place: ``slow <- slow + alpha*(fast - slow); fast <- slow``."""
    Plan(sync_steps(fast, slow, alpha, {} if scratch is None else scratch, foreach=foreach)).run()


def swap_(a: Sequence[Tensor], b: Sequence[Tensor], scratch: Scratch, *, foreach: bool) -> None:
    """Exchange the values of each pair in place, through the reused ``scratch`` buffers."""
    Plan(swap_steps(a, b, scratch, foreach=foreach)).run()
