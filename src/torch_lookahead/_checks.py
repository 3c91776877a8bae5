"""What comes from outside, checked before anything changes: Lookahead's arguments, the values in
its parameter groups, a checkpoint to load; and the names of Lookahead's state (docs/design.md)."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Hashable
from functools import partial
from itertools import accumulate, chain
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead.pullback import (
    PULLBACK_MODES,
    PullbackMode,
    momentum_keys_for,
    registered_momentum_classes,
)

# Per parameter: the slow weights (in eval mode only where the parameter cannot hold them exactly).
SLOW_KEY = "lookahead_slow"
FAST_KEY = "lookahead_fast"  # per parameter, in eval mode only: the fast weights
K_KEY = "lookahead_k"  # per group: inner steps between two syncs
ALPHA_KEY = "lookahead_alpha"  # per group: the slow-weights step size
STEP_KEY = "lookahead_step"  # per group: inner steps since the group's last sync, in [0, k)
EVAL_KEY = "lookahead_eval_mode"  # per group: whether the parameters hold the slow weights
_TIMM_SLOW_KEY = "lookahead_slow_buff"


def _integer(value: object) -> int | None:
    """``value`` as an int if it is an integer (numpy integers included, ``bool`` not)."""
    try:
        return None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_k(value: object, name: str = "k", least: int = 1) -> int:
    """Return ``value`` as an int if it is an integer of at least ``least`` (1: the inner steps per
    sync; 0: a group's counter), else raise ``TypeError`` (``bool``, ``2.5``, ``"5"``) or
    ``ValueError`` (integers below ``least``)."""
    kind = "a positive" if least else "a non-negative"
    role = "the number of inner steps per sync" if least else "inner steps since the sync"
    if (number := _integer(value)) is None:
        raise TypeError(f"{name} must be {kind} int ({role}), got {value!r}")
    if number < least:
        raise ValueError(f"{name} must be {kind} int (>= {least}), got {number}")
    return number


def check_alpha(value: object, name: str = "alpha") -> float:
    """Return ``value`` as a float if it is a real number in [0, 1] (the slow step size), else raise
    ``TypeError`` (``None``, ``"0.5"``, tensors) or ``ValueError`` (``nan``, outside [0, 1])."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in [0, 1] (the slow-weights step size), got {value!r}"
        )
    if math.isnan(number := float(value)) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (the slow-weights step size), got {number}")
    return number


GROUP_CHECKS = ((K_KEY, check_k), (ALPHA_KEY, check_alpha), (STEP_KEY, partial(check_k, least=0)))


def check_options(
    optimizer: Optimizer, pullback: object, dtype: object
) -> tuple[PullbackMode, torch.dtype | None]:
    """Check the constructor's keyword options; return them."""
    if pullback not in PULLBACK_MODES:
        raise ValueError(f"pullback_momentum must be one of {PULLBACK_MODES}, got {pullback!r}")
    if pullback != "none" and momentum_keys_for(optimizer) is None:
        raise ValueError(
            f"pullback_momentum={pullback!r} needs to know which state entries of "
            f"{type(optimizer).__name__} are momentum buffers; known classes: "
            f"{', '.join(registered_momentum_classes())}. Register one with torch_lookahead."
            "register_momentum_keys(YourOptimizer, [...]), or use pullback_momentum='none'"
        )
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"slow_dtype must be None or a floating-point torch.dtype, got {dtype!r}")
    return cast(PullbackMode, pullback), dtype


def check_loadable(
    state_dict: dict[str, Any], groups: list[dict[str, Any]]
) -> tuple[list[Tensor], list[Tensor]]:
    """Check ``state_dict`` against the parameters; return those with a saved slow copy, and those."""
    saved_groups, saved_state = state_dict.get("param_groups"), state_dict.get("state")
    if not (isinstance(saved_groups, list) and isinstance(saved_state, dict)) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved_groups
    ):
        raise ValueError(
            "state_dict must be an optimizer state dict with 'state' (a dict) and "
            "'param_groups' (a list of dicts, each with a 'params' list)"
        )
    sizes = [len(g["params"]) for g in saved_groups], [len(g["params"]) for g in groups]
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"the checkpoint's parameter groups have {sizes[0]} parameters, this optimizer's {sizes[1]}"
        )
    for index, saved in enumerate(saved_groups):
        for key, check in GROUP_CHECKS:
            if key in saved:
                check(saved[key], f"checkpoint param_groups[{index}][{key!r}]")
        if not isinstance(saved.get(EVAL_KEY, False), bool):
            raise TypeError(f"checkpoint param_groups[{index}][{EVAL_KEY!r}] must be a bool")
    ids = list(chain.from_iterable(g["params"] for g in saved_groups))
    if not all(isinstance(i, Hashable) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"the checkpoint's parameter ids must be distinct, got {ids}")
    id_map = dict(zip(ids, chain.from_iterable(g["params"] for g in groups), strict=True))
    for key, param_state in saved_state.items():
        if (p := id_map.get(key)) is None or not isinstance(param_state, dict):
            what = type(param_state).__name__ if p is not None else "an id no group lists"
            raise ValueError(f"checkpoint state {key!r} must be a parameter's dict, got {what}")
        if _TIMM_SLOW_KEY in param_state and SLOW_KEY not in param_state:
            raise ValueError(
                f"the checkpoint's state of parameter {key!r} has {_TIMM_SLOW_KEY!r}: it was "
                "written by timm's Lookahead. Convert it first with "
                "torch_lookahead.integrations.migrate.convert_timm_state_dict"
            )
        for name, value in param_state.items():
            if str(name).startswith("lookahead_") and not _dense_like(value, p):
                raise (ValueError if isinstance(value, Tensor) else TypeError)(
                    f"state {name!r} of parameter {key!r} in the checkpoint must be a strided tensor "
                    f"of the parameter's shape {tuple(p.shape)}, with data, each element stored once;"
                    f" got {(value.layout, value.shape, value.device) if isinstance(value, Tensor) else value}"
                )
    with_slow = [key for key, param_state in saved_state.items() if SLOW_KEY in param_state]
    return [id_map[key] for key in with_slow], [saved_state[key][SLOW_KEY] for key in with_slow]


def _dense_like(value: object, p: Tensor) -> bool:
    """Whether ``value`` is a strided tensor of ``p``'s shape with data, each element stored once."""
    if not isinstance(value, Tensor) or value.shape != p.shape or value.layout != torch.strided:
        return False
    dims = sorted((s, n) for s, n in zip(value.stride(), value.shape, strict=True) if n > 1)
    spans = accumulate((s * (n - 1) for s, n in dims), initial=0)  # each stride passes them
    return not value.is_meta and all(s > span for (s, _), span in zip(dims, spans, strict=False))
