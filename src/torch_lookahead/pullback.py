"""What happens to the inner optimizer's momentum at a Lookahead sync (``pullback_momentum``).

* ``"none"``: keep the inner state as it is (the paper's and the official code's default).
* ``"reset"``: ``buf <- 0``.
* ``"pullback"``: ``buf <- alpha * buf + (1 - alpha) * slow_buf; slow_buf <- buf``: the outer step
  itself, with ``buf`` as the fast and ``slow_buf`` (zero at first) as the slow weights.

Which state entries are momentum depends on the optimizer class: torch's own are known;
[register_momentum_keys][torch_lookahead.register_momentum_keys] teaches others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch.optim import Optimizer

PullbackMode = Literal["none", "reset", "pullback"]
PULLBACK_MODES: tuple[str, ...] = ("none", "reset", "pullback")

_MOMENTUM_KEYS: dict[type[Optimizer], tuple[str, ...]] = {
    torch.optim.SGD: ("momentum_buffer",),
    **{cls: ("exp_avg",) for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam)},
    **{cls: ("exp_avg",) for cls in (torch.optim.RAdam, torch.optim.Adamax)},
}


def register_momentum_keys(optimizer_class: type[Optimizer], keys: Iterable[str]) -> None:
    """Declare which per-parameter state entries of ``optimizer_class`` (and of its subclasses
    that register none) hold its momentum, for ``pullback_momentum="reset" | "pullback"``.

    Example:
        >>> register_momentum_keys(MyLion, ["exp_avg"])  # doctest: +SKIP
    """
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
        raise TypeError(
            f"optimizer_class must be a subclass of torch.optim.Optimizer, got {optimizer_class!r}"
        )
    key_tuple = tuple(keys)
    if not key_tuple or not all(isinstance(k, str) and k for k in key_tuple):
        raise ValueError(f"keys must be a non-empty list of state-entry names, got {keys!r}")
    if any(k.startswith("lookahead_") for k in key_tuple):
        raise ValueError(f"keys must name the inner optimizer's own state, got {key_tuple!r}")
    _MOMENTUM_KEYS[optimizer_class] = key_tuple


def momentum_keys_for(optimizer: Optimizer) -> tuple[str, ...] | None:
    """The momentum state keys of ``optimizer``'s class (nearest registered base class), or None."""
    return next((_MOMENTUM_KEYS[c] for c in type(optimizer).__mro__ if c in _MOMENTUM_KEYS), None)


def registered_momentum_classes() -> list[str]:
    """Names of the optimizer classes whose momentum buffers are known, sorted."""
    return sorted(cls.__name__ for cls in _MOMENTUM_KEYS)


def slow_momentum_key(key: str) -> str:
    """State key of the slow copy of the momentum entry ``key`` (used by ``"pullback"``)."""
    return f"lookahead_slow_{key}"
