"""State that arrives from outside: checking a checkpoint before it is loaded, adopting what it
carries, and noticing slow weights that an optimizer without Lookahead outlived.

A load is all or nothing: ``check_loadable`` raises before anything is loaded. Which values win:
the checkpoint's per-group ``k`` and ``alpha`` (as its learning rates do), and ``defaults`` then
reports them (``adopt_checkpoint_defaults``). A group records at each sync the inner step count of
its first parameter (``mark_synced``); a state whose count has since grown more than the group's
counter was stepped without Lookahead, and its slow weights are dropped
(``drop_stale_slow_weights``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from itertools import chain
from typing import Any

from torch import Tensor

from torch_lookahead._checks import check_alpha, check_k, check_step_count
from torch_lookahead._keys import ALPHA_KEY, EVAL_KEY, K_KEY, SLOW_KEY, STEP_KEY, SYNCED_AT_KEY

__all__ = [
    "adopt_checkpoint_defaults",
    "check_loadable",
    "drop_stale_slow_weights",
    "inner_step_count",
    "mark_synced",
]


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
        for key, check in ((K_KEY, check_k), (ALPHA_KEY, check_alpha)):
            if key in saved:
                check(saved[key], f"checkpoint param_groups[{index}][{key!r}]")
        if STEP_KEY in saved:
            check_step_count(saved[STEP_KEY], f"checkpoint param_groups[{index}][{STEP_KEY!r}]")
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


def adopt_checkpoint_defaults(
    groups: list[dict[str, Any]], defaults: dict[str, Any], before: dict[str, Any]
) -> None:
    """Make ``defaults`` report the loaded groups' k and alpha where all groups agree."""
    for key in (K_KEY, ALPHA_KEY):
        values = {group[key] for group in groups}
        if len(values) != 1:
            continue
        (loaded,) = values
        if loaded != before[key]:
            warnings.warn(
                f"the checkpoint's {key}={loaded} replaces this optimizer's {before[key]} "
                "(a checkpoint's per-group values win, as its learning rates do)",
                UserWarning,
                stacklevel=3,
            )
        defaults[key] = loaded


def mark_synced(group: dict[str, Any], params: list[Tensor], state: Mapping[Tensor, Any]) -> None:
    """Record the inner step count of the group's first parameter at this sync.

    ``load_state_dict`` compares it with the loaded one to detect a state that a plain
    optimizer stepped after it left Lookahead (its slow weights would be stale).
    """
    first = group["params"][0] if group["params"] else None
    count = None
    if first is not None and params and params[0] is first:
        count = inner_step_count(state.get(first))
    group[SYNCED_AT_KEY] = -1 if count is None else count


def drop_stale_slow_weights(groups: list[dict[str, Any]], state: Mapping[Tensor, Any]) -> None:
    """Drop Lookahead's state of groups whose inner state was stepped without Lookahead.

    A group remembers (``lookahead_synced_at``) the inner step count of its first parameter at
    the last sync; since then that count can have grown by at most the group's counter. If it
    grew more, a plain optimizer stepped this state after a Lookahead checkpoint was loaded
    into it, and the slow weights are that many steps old.
    """
    for index, group in enumerate(groups):
        synced_at = group.get(SYNCED_AT_KEY)
        if type(synced_at) is not int or synced_at < 0 or not group["params"]:
            continue
        count = inner_step_count(state.get(group["params"][0]))
        allowed = synced_at + group[STEP_KEY]
        if count is None or count <= allowed:
            continue
        warnings.warn(
            f"parameter group {index}: the inner optimizer has taken {count - synced_at} "
            f"steps since the last Lookahead sync, but Lookahead counted {group[STEP_KEY]}: "
            "this state was stepped by an optimizer without Lookahead, so its slow weights "
            "are stale. They were dropped and are captured again from the current weights "
            "at the next step",
            UserWarning,
            stacklevel=3,
        )
        for p in group["params"]:
            param_state = state.get(p)
            if param_state is not None:
                for name in [n for n in param_state if n.startswith("lookahead_")]:
                    del param_state[name]
        group[STEP_KEY] = 0
        group[SYNCED_AT_KEY] = -1
        group[EVAL_KEY] = False  # the fast weights kept in eval form went with the rest


def inner_step_count(param_state: Any) -> int | None:
    """The inner optimizer's ``step`` count of a parameter, where it is a number on the CPU."""
    if not isinstance(param_state, dict) or SLOW_KEY not in param_state:
        return None
    count = param_state.get("step")
    if isinstance(count, Tensor):
        if count.device.type != "cpu" or count.numel() != 1:
            return None
        return int(count.item())
    if isinstance(count, (int, float)) and not isinstance(count, bool):
        return int(count)
    return None
