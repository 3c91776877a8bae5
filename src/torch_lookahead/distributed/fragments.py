"""Parameter groups for streaming fragments: a model cut into F contiguous pieces of similar size.

[DistributedLookahead][torch_lookahead.distributed.DistributedLookahead] syncs the groups of fragment ``f`` at
the steps ``t`` with ``(t - o_f) % k == 0`` (Streaming DiLoCo, Douillard et al., 2025), so each
sync moves about 1/F of the weights.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from torch_lookahead.distributed.lookahead import FRAGMENT_KEY

__all__ = ["fragment_param_groups"]


def fragment_param_groups(
    model: nn.Module,
    fragments: int,
    *,
    by: Literal["module", "size"] = "module",
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Cut ``model.parameters()`` into ``fragments`` parameter groups of similar size, in order.

    Args:
        model: the model (its parameters, in ``model.parameters()`` order, each once).
        fragments: F, the number of groups, each tagged ``lookahead_fragment = f``.
        by: ``"module"`` keeps the parameters of one module (a layer's weight and bias) in one
            fragment; ``"size"`` may cut between any two parameters, which balances better.
        **group_options: put into every group (e.g. ``weight_decay=0.1``).

    Returns:
        One dict per fragment, for the inner optimizer's constructor. Fragments are contiguous
        runs of units (modules or parameters) and the cut makes the largest fragment as small as
        a contiguous cut can; a single unit larger than 1/F of the model stays whole, so the
        bytes of the largest sync cannot drop below it.

    Raises:
        ValueError: with fewer units than fragments.
    """
    if isinstance(fragments, bool) or not isinstance(fragments, int) or fragments < 1:
        raise ValueError(f"fragments must be a positive int, got {fragments!r}")
    if by not in ("module", "size"):
        raise ValueError(f"by must be 'module' or 'size', got {by!r}")
    if FRAGMENT_KEY in group_options or "params" in group_options:
        raise ValueError(f"group_options cannot set 'params' or {FRAGMENT_KEY!r}")
    seen: set[int] = set()
    units: list[list[Tensor]] = []
    modules = model.modules() if by == "module" else ()
    if by == "module":
        for module in modules:
            own: list[Tensor] = [p for p in module.parameters(recurse=False) if id(p) not in seen]
            seen.update(map(id, own))
            if own:
                units.append(own)
    else:
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                units.append([p])
    if len(units) < fragments:
        raise ValueError(
            f"cannot cut {len(units)} {'modules with parameters' if by == 'module' else 'parameters'}"
            f" into {fragments} non-empty fragments; use fewer fragments"
            + (" or by='size'" if by == "module" else "")
        )
    sizes = [sum(p.numel() for p in unit) for unit in units]
    groups: list[dict[str, Any]] = [
        {"params": [], FRAGMENT_KEY: f, **group_options} for f in range(fragments)
    ]
    for unit, fragment in zip(units, _cut(sizes, fragments), strict=True):
        groups[fragment]["params"].extend(unit)
    return groups


def _count_runs(sizes: list[int], cap: int) -> int:
    """Contiguous runs that greedy packing to at most ``cap`` elements each makes."""
    runs, current = 1, 0
    for size in sizes:
        if current and current + size > cap:
            runs, current = runs + 1, 0
        current += size
    return runs


def _cut(sizes: list[int], fragments: int) -> list[int]:
    """The fragment of each unit: ``fragments`` non-empty contiguous runs, the largest smallest.

    The smallest feasible cap on a run's size is found by bisection over greedy packing; runs are
    then packed to that cap, cutting early only where every remaining unit must start a run.
    """
    low, high = max(sizes), sum(sizes)
    while low < high:
        middle = (low + high) // 2
        if _count_runs(sizes, middle) <= fragments:
            high = middle
        else:
            low = middle + 1
    assignment: list[int] = []
    fragment, current = 0, 0
    for index, size in enumerate(sizes):
        units_left = len(sizes) - index
        if assignment and (current + size > low or units_left <= fragments - 1 - fragment):
            fragment, current = fragment + 1, 0
        assignment.append(fragment)
        current += size
    return assignment
