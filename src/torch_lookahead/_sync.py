"""Lookahead's outer step ``slow <- slow + alpha * (fast - slow); fast <- slow`` (Algorithm 1,
Zhang et al., 2019) and the ``eval()`` exchange over lists of tensors, as resumable plans in blocks
through reused scratch buffers: the steps, and why a resumed plan gives the result of one
uninterrupted run, are in docs/design.md ("Every operation is finished by the next call")."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from torch_lookahead._tensors import (
    cache_blocks,
    group_by_device_and_dtype,
    local_shards,
    same_shapes,
)

#: Bytes of fast weights per block: on the CPU the copy after the lerp reads the block from cache
#: (docs/benchmarks.md); on accelerators a bounded scratch, not a second model.
SYNC_BLOCK_BYTES = 512 * 1024
DEVICE_BLOCK_BYTES = 4 * 1024 * 1024

Step = Callable[[], object]
PlanStep = Step | tuple[Step, Step]  # (step, redo): see Plan
# (device, dtype, slot) -> (buffer, {(numel, count of tensors): the views last made of it})
Scratch = dict[tuple[Any, ...], tuple[Tensor, dict[tuple[int, int], Any]]]
Shapes = tuple[list[int], list[int]]  # dimension and element counts of a list of tensors
_placement = operator.attrgetter("device", "dtype")


class Plan:
    """Steps run in order; ``done`` counts those completed. A step given as ``(step, redo)`` is
    one that reads what it writes: when it runs again after an exception, ``redo`` first puts
    back what it read."""

    def __init__(self, steps: list[PlanStep]) -> None:
        self.steps, self.done, self.started = steps, 0, -1
        self.owner: str | None = None  # the public operation that made it, where that matters

    def run(self) -> None:
        with torch.no_grad():
            while self.done < len(self.steps):
                step = self.steps[self.done]
                if isinstance(step, tuple):
                    step, redo = step
                    if self.started == self.done:
                        redo()
                self.started = self.done
                step()
                self.done += 1


Block = tuple[list[Tensor], list[Tensor], list[int], list[int], int]


def _blocks(a: list[Tensor], b: list[Tensor], sizes: list[int], dims: list[int]) -> list[Block]:
    """Consecutive runs of pairs of about one block of ``a`` each, with their element and dimension
    counts (``sizes``, ``dims``) and the largest run's element count; longer contiguous tensors come
    as flat views of a block. Blocking changes the order of the same operations, never a result."""
    block_bytes = SYNC_BLOCK_BYTES if a[0].device.type == "cpu" else DEVICE_BLOCK_BYTES
    limit = max(1, block_bytes // a[0].element_size())
    if max(sizes) > limit:
        cut: tuple[list[Tensor], list[Tensor]] = ([], [])
        for x, y, numel in zip(a, b, sizes, strict=True):
            whole = numel <= limit or not (x.is_contiguous() and y.is_contiguous())
            cut[0].extend([x] if whole else torch.split(x.view(-1), limit))
            cut[1].extend([y] if whole else torch.split(y.view(-1), limit))
        a, b = cut
        sizes, dims = list(map(Tensor.numel, a)), list(map(Tensor.dim, a))
    runs = list(cache_blocks(a, block_bytes, sizes))
    most = max(sum(sizes[s]) for s in runs)
    return [(a[s], b[s], sizes[s], dims[s], most) for s in runs]


def _copy(targets: list[Tensor], sources: list[Tensor]) -> Step:
    return partial(torch._foreach_copy_, targets, sources)


def _views(
    scratch: Scratch,
    like: list[Tensor],
    sizes: list[int],
    dims: list[int],
    placement: tuple[Any, Any],
    slot: int,
    reserve: int,
) -> tuple[list[Tensor], Step]:
    """Views of the scratch buffer ``(*placement, slot)`` shaped like ``like`` (element and
    dimension counts ``sizes``, ``dims``), kept while the counts (and sizes of tensors of several
    dimensions) match, and the step ``views <- like``: one ``torch.cat`` where all are 1-D. A buffer
    too small is replaced, with its views, by one of ``reserve`` elements (the plan's earlier
    views keep the old one alive)."""
    key, numel = (*placement, slot), sum(sizes)
    if key not in scratch or scratch[key][0].numel() < numel:
        with torch.inference_mode(False):  # so that later plans outside it may write into it
            scratch[key] = (torch.empty(reserve, device=placement[0], dtype=placement[1]), {})
    buffer, kept_views = scratch[key]
    several = max(dims) > 1
    kept = kept_views.get((numel, len(like)))
    if kept is None or kept[1:3] != (dims, sizes) or (several and not same_shapes(kept[0], like)):
        with torch.inference_mode(False):
            views = torch._C._nn.unflatten_dense_tensors(buffer[:numel], like)
            flat = None if several or min(dims) < 1 else buffer[:numel]
        kept = kept_views[(numel, len(like))] = (views, dims, sizes, flat)
    views, flat = list(kept[0]), kept[3]
    return views, _copy(views, like) if flat is None else partial(torch.cat, like, out=flat)


def _plan_blocks(
    a: Sequence[Tensor], b: Sequence[Tensor], keys: int, shapes: Shapes | None = None
) -> list[Block]:
    """The blocks of every placement; ``shapes``: the dimension and element counts of ``a``."""
    shards = local_shards(a)
    if shapes is None or shards is not a:  # counts given are those of the tensors, not shards
        shapes = list(map(Tensor.dim, shards)), list(map(Tensor.numel, shards))
    buckets = group_by_device_and_dtype([shards, local_shards(b), shapes[1], shapes[0]], keys)
    return [block for bucket in buckets for block in _blocks(*bucket)]


def sync_steps(
    fast: Sequence[Tensor], slow: Sequence[Tensor], alpha: float, scratch: Scratch, keys: int = 2
) -> list[PlanStep]:
    """The outer step's steps over the pairs, grouped by the placements of ``fast`` and ``slow``
    (``keys=1``: of ``fast``, each slow placement following from it); every allocation made here."""
    if not fast:
        return []
    if torch.compiler.is_compiling():  # a traced sync is one graph: lerp and copy, fused
        return [partial(_compiled_sync_, local_shards(fast), local_shards(slow), alpha)]
    steps: list[PlanStep] = []
    blocks = _plan_blocks(fast, slow, keys)
    for block_fast, block_slow, sizes, dims, most in blocks:
        placement = _placement(block_slow[0])
        work, save = _views(scratch, block_slow, sizes, dims, placement, 0, most)
        end = block_fast
        if block_fast[0].dtype != placement[1]:  # the fast weights in the slow copy's dtype
            end, widen = _views(scratch, block_fast, sizes, dims, placement, 1, most)
            steps.append(widen)
        lerp = partial(torch._foreach_lerp_, block_slow, end, alpha)
        steps += [save, (lerp, _copy(block_slow, work)), _copy(block_fast, block_slow)]
    return steps


def _compiled_sync_(fast: list[Tensor], slow: list[Tensor], alpha: float) -> None:
    for f, s in zip(fast, slow, strict=True):
        s.lerp_(f.to(s), alpha)
        f.copy_(s)


def swap_steps(
    a: Sequence[Tensor], b: Sequence[Tensor], scratch: Scratch, shapes: Shapes | None = None
) -> list[PlanStep]:
    """The steps that exchange the values of each pair (each pair shares its shape and dtype);
    ``shapes``: the dimension and element counts of ``a``, where known (``same_shapes(b, a)``)."""
    steps: list[PlanStep] = []
    for block_a, block_b, sizes, dims, most in _plan_blocks(a, b, 1, shapes) if a else []:
        held, save = _views(scratch, block_a, sizes, dims, _placement(block_a[0]), 0, most)
        steps += [save, _copy(block_a, block_b), _copy(block_b, held)]
    return steps
