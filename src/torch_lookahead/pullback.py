"""What happens to the inner optimizer's momentum at a Lookahead sync (``pullback_momentum``).

Three policies, applied to the momentum buffers of each synced parameter right after
``fast <- slow``:

* ``"none"``: keep the inner state as it is (the paper's and the official code's default).
* ``"reset"``: ``buf <- 0``.
* ``"pullback"``: interpolate the momentum like the weights, against a slow copy of the momentum
  that starts at zero::

      buf      <- alpha * buf + (1 - alpha) * slow_buf
      slow_buf <- buf            (a copy, never an alias)

Which state entries are "momentum" depends on the optimizer class; the table below knows torch's
own optimizers, and [register_momentum_keys][torch_lookahead.register_momentum_keys] teaches it any other class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead import _sync
from torch_lookahead._tensors import local_shards

__all__ = [
    "PULLBACK_MODES",
    "PullbackMode",
    "apply_momentum_policy_",
    "ensure_slow_momentum_",
    "momentum_keys_for",
    "register_momentum_keys",
    "registered_momentum_classes",
    "slow_momentum_key",
]

PullbackMode = Literal["none", "reset", "pullback"]
PULLBACK_MODES: tuple[str, ...] = ("none", "reset", "pullback")

_MOMENTUM_KEYS: dict[type[Optimizer], tuple[str, ...]] = {
    torch.optim.SGD: ("momentum_buffer",),
    torch.optim.Adam: ("exp_avg",),
    torch.optim.AdamW: ("exp_avg",),
    torch.optim.NAdam: ("exp_avg",),
    torch.optim.RAdam: ("exp_avg",),
    torch.optim.Adamax: ("exp_avg",),
}


def register_momentum_keys(optimizer_class: type[Optimizer], keys: Iterable[str]) -> None:
    """Declare which per-parameter state entries of ``optimizer_class`` hold its momentum.

    After this, ``Lookahead(optimizer_class(...), pullback_momentum="reset" | "pullback")`` acts on
    those entries. Subclasses inherit the registration unless they register their own.

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
    for cls in type(optimizer).__mro__:
        if cls in _MOMENTUM_KEYS:
            return _MOMENTUM_KEYS[cls]
    return None


def registered_momentum_classes() -> list[str]:
    """Names of the optimizer classes whose momentum buffers are known, sorted."""
    return sorted(cls.__name__ for cls in _MOMENTUM_KEYS)


def slow_momentum_key(key: str) -> str:
    """State key of the slow copy of the momentum entry ``key`` (used by ``"pullback"``)."""
    return f"lookahead_slow_{key}"


def ensure_slow_momentum_(
    params: Sequence[Tensor], state: Mapping[Tensor, Any], keys: Sequence[str]
) -> None:
    """Give every momentum buffer of ``params`` a slow copy (zeros) where it has none yet.

    Called before a sync changes anything, so that the sync itself allocates nothing.
    """
    for p in params:
        param_state = state[p]
        for key in keys:
            buffer = param_state.get(key)
            slow_key = slow_momentum_key(key)
            if isinstance(buffer, Tensor) and slow_key not in param_state:
                param_state[slow_key] = torch.zeros_like(buffer)


def apply_momentum_policy_(
    mode: PullbackMode,
    params: Sequence[Tensor],
    state: Mapping[Tensor, Any],
    keys: Sequence[str],
    alpha: float,
    *,
    foreach: bool,
) -> None:
    """Apply ``mode`` to the momentum buffers ``state[p][key]`` of the synced ``params``.

    ``"reset"`` zeroes them; ``"pullback"`` computes ``buf <- alpha*buf + (1-alpha)*slow_buf``
    and then ``slow_buf <- buf`` (a copy), with ``slow_buf`` from `ensure_slow_momentum_`.
    Both leave a buffer that was already synced unchanged, so applying them twice is applying
    them once.
    """
    if mode == "none":
        return
    with torch.no_grad():
        for key in keys:
            with_buffer = [p for p in params if isinstance(state[p].get(key), Tensor)]
            buffers = [state[p][key] for p in with_buffer]
            if mode == "reset":
                for buffer in local_shards(buffers):
                    buffer.zero_()
                continue
            slow_buffers = [state[p][slow_momentum_key(key)] for p in with_buffer]
            _sync.lerp_(buffers, slow_buffers, 1.0 - alpha, foreach=foreach)
            for slow_buffer, buffer in zip(
                local_shards(slow_buffers), local_shards(buffers), strict=True
            ):
                slow_buffer.copy_(buffer)
