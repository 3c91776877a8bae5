"""The Lookahead synchronisation kernels: one pass over fast and slow weights, nothing else.

``sync_`` applies Algorithm 1's outer step in place::

    slow <- slow + alpha * (fast - slow)
    fast <- slow

over parallel lists of tensors. Pairs that share device and dtype go through the vectorised
``torch._foreach_*`` kernels (one launch per device/dtype bucket); pairs that differ (fp32 slow
copies of bf16 parameters, slow copies kept on the CPU for CUDA parameters) are handled one tensor
at a time with a temporary in the slow copy's precision on the parameter's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["lerp_", "local_shards", "swap_", "sync_"]


def local_shards(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Return the local shard of every DTensor (FSDP2, tensor parallel) and plain tensors as is.

    In-place updates of a shard reach its DTensor. ``torch._foreach_copy_`` has no DTensor sharding
    strategy, so every kernel here runs on shards.
    """
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


def sync_(fast: Sequence[Tensor], slow: Sequence[Tensor], alpha: float, *, foreach: bool) -> None:
    """Outer Lookahead step, in place: ``slow <- slow + alpha*(fast - slow); fast <- slow``.

    Args:
        fast: the parameters (fast weights).
        slow: their slow copies, same shapes; device and dtype may differ from ``fast``.
        alpha: the slow-weights step size in [0, 1].
        foreach: use the vectorised ``torch._foreach_*`` kernels for matched pairs.
    """
    if not fast:
        return
    fast_local, slow_local = local_shards(fast), local_shards(slow)
    buckets, mismatched = _buckets(fast_local, slow_local)
    for bucket_fast, bucket_slow in buckets:
        if foreach:
            torch._foreach_lerp_(bucket_slow, bucket_fast, alpha)
            torch._foreach_copy_(bucket_fast, bucket_slow)
        else:
            for f, s in zip(bucket_fast, bucket_slow, strict=True):
                s.lerp_(f, alpha)
                f.copy_(s)
    offloaded_from: set[torch.device] = set()
    for f, s in mismatched:
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
