"""Which parameters of each group have slow copies: computed once, checked at every use.

A step has to know, for every parameter group, which parameters already have a slow copy (to sync
them) and which do not (to capture theirs before their first update). Looking that up parameter by
parameter costs a Python-level hash per tensor, as long as a whole sync on thousands of small
tensors. So the answer is kept, and before every use it is checked against everything the
``torch.optim`` API lets a user (or a framework) change: the ``state`` object and each of its
per-parameter dicts, the ``param_groups`` list, each group dict and its ``params`` list, and the
slow-copy entry of every tracked parameter. The checks compare object identities with C-level
``map`` calls; anything that differs rebuilds the answer. Nothing else is cached: no tensor view,
no flattened buffer.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from torch import Tensor

__all__ = ["GroupTracking", "Tracking", "build_tracking"]

_is = operator.is_


@dataclass(frozen=True)
class GroupTracking:
    """One group's parameters split by whether they have a slow copy under ``slow_key``."""

    params: list[Tensor]
    """Parameters with a slow copy, in group order."""
    slows: list[Tensor]
    """Their slow copies, parallel to ``params``."""
    untracked: list[Tensor]
    """Parameters without a slow copy yet."""


@dataclass(frozen=True)
class Tracking:
    """The split of every group, with what it was computed from (to check it is still current)."""

    groups: list[GroupTracking]
    _state: Mapping[Tensor, Any]
    _state_dicts: list[Any]
    _group_dicts: list[dict[str, Any]]
    _group_params: list[list[Tensor]]
    _slow_dicts: list[dict[str, Any]]
    _slows: list[Tensor]
    _untracked_dicts: list[dict[str, Any]]
    _slow_key: str

    def is_current(
        self,
        param_groups: Sequence[dict[str, Any]],
        state: Mapping[Tensor, Any],
        *,
        slows: bool,
    ) -> bool:
        """Whether nothing it was computed from has been replaced, added or removed since.

        With ``slows=False`` the slow-copy entries of tracked parameters are not compared: enough
        to know which parameters lack a slow copy (what a step needs), not which copies they have
        (what a sync needs).
        """
        if state is not self._state or len(state) != len(self._state_dicts):
            return False
        if not all(map(_is, state.values(), self._state_dicts)):
            return False
        if len(param_groups) != len(self._group_dicts):
            return False
        if not all(map(_is, param_groups, self._group_dicts)):
            return False
        for group, params in zip(param_groups, self._group_params, strict=True):
            current = group["params"]
            if len(current) != len(params) or not all(map(_is, current, params)):
                return False
        key = repeat(self._slow_key)
        # A slow copy assigned by hand to a parameter that had none.
        if not all(map(_is, map(dict.get, self._untracked_dicts, key), repeat(None))):
            return False
        return not slows or all(map(_is, map(dict.get, self._slow_dicts, key), self._slows))


def build_tracking(
    param_groups: Sequence[dict[str, Any]], state: Mapping[Tensor, Any], slow_key: str
) -> Tracking:
    """Split every group's parameters by whether ``state[p][slow_key]`` holds a slow copy.

    Raises ``ValueError`` (before anything is changed) for a slow-copy entry that is not a tensor
    of its parameter's shape, e.g. one a user assigned by hand.
    """
    groups: list[GroupTracking] = []
    slow_dicts: list[dict[str, Any]] = []
    all_slows: list[Tensor] = []
    untracked_dicts: list[dict[str, Any]] = []
    for group_index, group in enumerate(param_groups):
        params: list[Tensor] = []
        slows: list[Tensor] = []
        untracked: list[Tensor] = []
        for index, p in enumerate(group["params"]):
            param_state = state.get(p)
            slow = None if param_state is None else param_state.get(slow_key)
            if slow is None:
                untracked.append(p)
                if param_state is not None:
                    untracked_dicts.append(param_state)
                continue
            if not isinstance(slow, Tensor) or slow.shape != p.shape:
                found = (
                    f"shape {tuple(slow.shape)}"
                    if isinstance(slow, Tensor)
                    else type(slow).__name__
                )
                raise ValueError(
                    f"state[{slow_key!r}] of parameter {index} in group {group_index} must be a "
                    f"tensor of the parameter's shape {tuple(p.shape)}, got {found}"
                )
            assert param_state is not None
            params.append(p)
            slows.append(slow)
            slow_dicts.append(param_state)
            all_slows.append(slow)
        groups.append(GroupTracking(params, slows, untracked))
    return Tracking(
        groups=groups,
        _state=state,
        _state_dicts=list(state.values()),
        _group_dicts=list(param_groups),
        _group_params=[list(group["params"]) for group in param_groups],
        _slow_dicts=slow_dicts,
        _slows=all_slows,
        _untracked_dicts=untracked_dicts,
        _slow_key=slow_key,
    )
