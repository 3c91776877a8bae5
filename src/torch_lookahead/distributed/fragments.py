"""Parameter groups for streaming fragments: a model cut into F contiguous pieces of similar size.

:class:`~torch_lookahead.distributed.DistributedLookahead` syncs the groups of fragment ``f`` at
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
        runs of parameters, each assigned by where its middle falls in the model's cumulative
        element count, so their sizes differ by at most one unit (module or parameter).

    Raises:
        ValueError: if a fragment would be empty (fewer units than fragments, or one unit larger
            than a fragment should be); use fewer fragments or ``by="size"``.
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
    total = sum(p.numel() for unit in units for p in unit)
    if not units or total == 0:
        raise ValueError("the model has no parameters to cut into fragments")
    groups: list[dict[str, Any]] = [
        {"params": [], FRAGMENT_KEY: f, **group_options} for f in range(fragments)
    ]
    before = 0
    for unit in units:
        size = sum(p.numel() for p in unit)
        middle = before + size / 2
        index = min(fragments - 1, int(middle * fragments / total))
        groups[index]["params"].extend(unit)
        before += size
    empty = [f for f, group in enumerate(groups) if not group["params"]]
    if empty:
        raise ValueError(
            f"cutting the model {by!r}-wise into {fragments} fragments leaves fragments {empty} "
            f"empty ({len(units)} units for {total} elements); use fewer fragments"
            + (" or by='size'" if by == "module" else "")
        )
    return groups
