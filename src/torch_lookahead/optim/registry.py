"""Optimizers by name: one table, with a ``lookahead_`` prefix that wraps any entry.

``create_optimizer("lookahead_adamw", model, lr=1e-3, lookahead={"k": 5, "alpha": 0.5})``
builds ``Lookahead(AdamW(model.parameters(), lr=1e-3), k=5, alpha=0.5)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from ..lookahead import Lookahead
from .adabound import AdaBound
from .novograd import NovoGrad
from .ranger import Ranger

__all__ = ["LOOKAHEAD_PREFIX", "create_optimizer", "list_optimizers"]

LOOKAHEAD_PREFIX = "lookahead_"


@dataclass(frozen=True)
class _Entry:
    """How to build one named optimizer: its class and the defaults that the name implies."""

    optimizer_class: Callable[..., Optimizer]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    composes_with_lookahead: bool = True


_REGISTRY: dict[str, _Entry] = {
    "sgd": _Entry(torch.optim.SGD),
    "momentum": _Entry(torch.optim.SGD, {"momentum": 0.9}),
    "nesterov": _Entry(torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": _Entry(torch.optim.Adam),
    "adamw": _Entry(torch.optim.AdamW),
    "nadam": _Entry(torch.optim.NAdam),
    "radam": _Entry(torch.optim.RAdam),
    "novograd": _Entry(NovoGrad),
    "adabound": _Entry(AdaBound),
    "amsbound": _Entry(AdaBound, {"amsbound": True}),
    # Already Lookahead over RAdam: "lookahead_ranger" would nest two Lookaheads.
    "ranger": _Entry(Ranger, composes_with_lookahead=False),
}


def list_optimizers() -> list[str]:
    """Every name [create_optimizer][torch_lookahead.create_optimizer] accepts, ``lookahead_`` variants included, sorted."""
    names = list(_REGISTRY)
    names += [LOOKAHEAD_PREFIX + n for n, e in _REGISTRY.items() if e.composes_with_lookahead]
    return sorted(names)


def create_optimizer(
    name: str,
    params: Iterable[Any] | torch.nn.Module,
    *,
    lookahead: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Optimizer:
    """Build the optimizer called ``name`` over ``params``.

    Args:
        name: one of [list_optimizers][torch_lookahead.list_optimizers] (case-insensitive): ``"sgd"``, ``"momentum"``
            (SGD, momentum 0.9), ``"nesterov"``, ``"adam"``, ``"adamw"``, ``"nadam"``,
            ``"radam"``, ``"novograd"``, ``"adabound"``, ``"amsbound"``, ``"ranger"``, or any of
            them but ``"ranger"`` prefixed with ``"lookahead_"``.
        params: parameters, parameter groups, or a module (its ``parameters()``).
        lookahead: keyword arguments of [Lookahead][torch_lookahead.Lookahead] (``k``, ``alpha``,
            ``pullback_momentum``, ``slow_dtype``) for a
            ``lookahead_`` name; Lookahead's defaults otherwise. Only valid with that prefix.
        **kwargs: the optimizer's own keyword arguments (``lr``, ``weight_decay``, ...); they
            override the defaults the name implies.

    Raises:
        ValueError: for an unknown name (the message lists the known ones), or ``lookahead``
            given for a name without the prefix.

    Example:
        >>> opt = create_optimizer("lookahead_novograd", model, lr=1e-2,  # doctest: +SKIP
        ...                        lookahead={"k": 6, "alpha": 0.5, "pullback_momentum": "reset"})
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}: {name!r}")
    key = name.strip().lower()
    wrap = key.startswith(LOOKAHEAD_PREFIX)
    base = key[len(LOOKAHEAD_PREFIX) :] if wrap else key
    entry = _REGISTRY.get(base)
    if lookahead is not None and not isinstance(lookahead, Mapping):
        raise TypeError(f"lookahead must be a mapping of Lookahead arguments, got {lookahead!r}")
    # Ranger takes Lookahead's arguments (k, alpha, pullback_momentum, slow_dtype) as keywords.
    given = "".join(f", {key}={value!r}" for key, value in dict(lookahead or {"k": 6}).items())
    ranger = f"{base!r} already is Lookahead over RAdam: create_optimizer({base!r}, params{given})"
    if entry is None or (wrap and not entry.composes_with_lookahead):
        hint = f" ({ranger})" if entry is not None else ""
        raise ValueError(
            f"unknown optimizer {name!r}{hint}; known names: {', '.join(list_optimizers())}"
        )
    if lookahead is not None and not wrap:
        fix = f"e.g. {LOOKAHEAD_PREFIX + base!r}" if entry.composes_with_lookahead else ranger
        raise ValueError(
            f"lookahead={dict(lookahead)!r} is only valid for names starting with "
            f"{LOOKAHEAD_PREFIX!r} ({fix}); got {name!r}"
        )
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    optimizer = entry.optimizer_class(params, **{**entry.defaults, **kwargs})
    if wrap:
        return Lookahead(optimizer, **dict(lookahead or {}))
    return optimizer
