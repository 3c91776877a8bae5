"""State that arrives from outside: checking a checkpoint before it is loaded, and warning about a
detour through a plain optimizer.

A load is all or nothing: ``check_loadable`` raises before anything is loaded. A saved group
records (``lookahead_synced_at``, written by ``state_dict()``) the inner step count of its first
parameter with slow weights at its last sync; if that count has since grown by more than the
group's counter, an optimizer without Lookahead stepped the state. That can only be warned about:
the slow weights are kept (the user may have meant it), never dropped on a guess.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from itertools import chain
from typing import Any

from torch import Tensor

from torch_lookahead._checks import check_alpha, check_k, check_step_count
from torch_lookahead._keys import (
    ALPHA_KEY,
    EVAL_KEY,
    FAST_KEY,
    K_KEY,
    SLOW_KEY,
    STEP_KEY,
    SYNCED_AT_KEY,
)

__all__ = ["check_loadable", "inner_step_count", "warn_if_detoured"]

_TIMM_SLOW_KEY = "lookahead_slow_buff"


def check_loadable(
    state_dict: dict[str, Any], groups: list[dict[str, Any]]
) -> list[tuple[Tensor, Tensor]]:
    """Check ``state_dict`` against the parameters; return (param, saved slow copy) pairs."""
    saved_groups, saved_state = state_dict.get("param_groups"), state_dict.get("state")
    if not isinstance(saved_groups, list) or not isinstance(saved_state, dict):
        raise ValueError(
            "state_dict must be an optimizer state dict with 'state' (a dict) and "
            "'param_groups' (a list)"
        )
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"the checkpoint has {len(saved_groups)} parameter groups, this optimizer has {len(groups)}"
        )
    for index, (saved, current) in enumerate(zip(saved_groups, groups, strict=True)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            raise ValueError(f"parameter group {index} of the checkpoint has no 'params' list")
        if len(saved["params"]) != len(current["params"]):
            raise ValueError(
                f"parameter group {index}: the checkpoint has {len(saved['params'])} parameters, "
                f"this optimizer has {len(current['params'])}"
            )
        for key, check in (
            (K_KEY, check_k),
            (ALPHA_KEY, check_alpha),
            (STEP_KEY, check_step_count),
        ):
            if key in saved:
                check(saved[key], f"checkpoint param_groups[{index}][{key!r}]")
        if not isinstance(saved.get(EVAL_KEY, False), bool):
            raise TypeError(
                f"checkpoint param_groups[{index}][{EVAL_KEY!r}] must be a bool, "
                f"got {saved[EVAL_KEY]!r}"
            )
    id_map = dict(
        zip(
            chain.from_iterable(g["params"] for g in saved_groups),
            chain.from_iterable(g["params"] for g in groups),
            strict=True,
        )
    )
    pairs: list[tuple[Tensor, Tensor]] = []
    for key, param_state in saved_state.items():
        p = id_map.get(key)
        if p is None:
            raise ValueError(
                f"the checkpoint has state for parameter {key!r}, which no group lists"
            )
        if _TIMM_SLOW_KEY in param_state and SLOW_KEY not in param_state:
            raise ValueError(
                f"the checkpoint's state of parameter {key!r} has {_TIMM_SLOW_KEY!r}: it was "
                "written by timm's Lookahead. Convert it first with "
                "torch_lookahead.integrations.migrate.convert_timm_state_dict"
            )
        for name, value in param_state.items():
            if not name.startswith("lookahead_"):
                continue
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"state {name!r} of parameter {key!r} in the checkpoint must be a tensor, "
                    f"got {type(value).__name__}"
                )
            if value.shape != p.shape:
                raise ValueError(
                    f"state {name!r} of parameter {key!r} has shape {tuple(value.shape)} in the "
                    f"checkpoint, but the parameter has shape {tuple(p.shape)}"
                )
        slow = param_state.get(SLOW_KEY)
        if isinstance(slow, Tensor):
            pairs.append((p, slow))
    return pairs


def inner_step_count(params: list[Any], state: Mapping[Any, Any]) -> int | None:
    """The inner optimizer's ``step`` count of the first of ``params`` with slow (or, in eval mode,
    fast) weights, where its state holds one as a number or a one-element tensor."""
    for p in params:
        param_state = state.get(p)
        if not isinstance(param_state, dict):
            continue
        if SLOW_KEY not in param_state and FAST_KEY not in param_state:
            continue
        count = param_state.get("step")
        if isinstance(count, Tensor) and count.numel() == 1:
            return int(count.item())
        if isinstance(count, (int, float)) and not isinstance(count, bool):
            return int(count)
        return None
    return None


def warn_if_detoured(groups: list[dict[str, Any]], state: Mapping[Any, Any]) -> None:
    """Warn for each group whose inner step count grew by more than its Lookahead counter since
    the sync recorded in its ``lookahead_synced_at``; nothing is changed."""
    for index, group in enumerate(groups):
        synced_at = group.get(SYNCED_AT_KEY)
        if type(synced_at) is not int or synced_at < 0:
            continue
        count = inner_step_count(group["params"], state)
        counted = group.get(STEP_KEY, 0)
        if count is None or count - synced_at <= counted:
            continue
        warnings.warn(
            f"parameter group {index}: the inner optimizer has taken {count - synced_at} steps "
            f"since the last Lookahead sync, but Lookahead counted {counted}: this state was "
            "stepped by an optimizer without Lookahead, so its slow weights are that much older. "
            "They are kept; call reset_slow() to restart them from the current weights",
            UserWarning,
            stacklevel=3,
        )
