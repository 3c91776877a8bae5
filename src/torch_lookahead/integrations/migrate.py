"""Convert Lookahead checkpoints of timm and pytorch_optimizer into torch-lookahead's format.

torch-lookahead's ``Lookahead.state_dict()`` is the inner optimizer's standard state dict with

* per parameter group: ``lookahead_k``, ``lookahead_alpha`` and ``lookahead_step`` (inner steps
  since the last sync, ``0 <= lookahead_step < lookahead_k`` between steps);
* per parameter: ``lookahead_slow`` (the slow weights) and, for ``pullback_momentum="pullback"``,
  ``lookahead_slow_<momentum key>``.

Both converters take the other library's ``state_dict()`` (as loaded by ``torch.load``), return a
new dict in that format for [`Lookahead.load_state_dict`][torch_lookahead.Lookahead.load_state_dict], and leave their
input unchanged (tensors are shared, not copied). They need only torch.

Once the other library has synced at least once, training continues on the same trajectory it
would have followed there, up to floating-point rounding (each library writes the interpolation
``slow + alpha*(fast - slow)`` with a different sequence of operations).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from torch_lookahead._checks import check_alpha, check_k
from torch_lookahead.lookahead import ALPHA_KEY, K_KEY, SLOW_KEY, STEP_KEY
from torch_lookahead.pullback import slow_momentum_key

__all__ = ["convert_pytorch_optimizer_state_dict", "convert_timm_state_dict"]

_TIMM_SLOW_KEY = "lookahead_slow_buff"
_PYTORCH_OPTIMIZER_SLOW_KEY = "slow_params"
_PYTORCH_OPTIMIZER_SLOW_MOMENTUM_KEY = "slow_momentum"
# pytorch_optimizer's pullback acts on this inner state entry only (SGD's momentum).
_PYTORCH_OPTIMIZER_MOMENTUM_KEY = "momentum_buffer"


def _require_optimizer_state_dict(state_dict: object, name: str) -> dict[str, Any]:
    if (
        not isinstance(state_dict, dict)
        or not isinstance(state_dict.get("state"), dict)
        or not isinstance(state_dict.get("param_groups"), list)
    ):
        raise ValueError(f"{name} must be an optimizer state dict with 'state' and 'param_groups'")
    return state_dict


def convert_timm_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Convert the ``state_dict()`` of ``timm.optim.Lookahead`` (timm 0.4 to 1.x).

    timm keeps the same format with different meanings, so the conversion

    * renames the slow weights ``lookahead_slow_buff`` to ``lookahead_slow``;
    * replaces ``lookahead_step``, which timm counts from the start of training (it syncs when
      ``lookahead_step % lookahead_k == 0``), by the steps since the last sync,
      ``lookahead_step % lookahead_k``;
    * keeps ``lookahead_k``, ``lookahead_alpha`` and the inner optimizer's state as they are.

    timm creates the slow weights at its first sync, from the fast weights of that moment. A
    checkpoint written before that sync has none, and torch-lookahead then takes them from the
    parameters just before the next step (see the migration guide).

    Args:
        state_dict: ``timm_lookahead.state_dict()``.

    Returns:
        A state dict for [`Lookahead.load_state_dict`][torch_lookahead.Lookahead.load_state_dict].

    Raises:
        ValueError: ``state_dict`` is not a timm Lookahead state dict.
    """
    state_dict = _require_optimizer_state_dict(state_dict, "state_dict")
    groups = []
    for index, group in enumerate(state_dict["param_groups"]):
        if any(key not in group for key in (K_KEY, ALPHA_KEY, STEP_KEY)):
            raise ValueError(
                f"param group {index} lacks timm's {K_KEY!r}/{ALPHA_KEY!r}/{STEP_KEY!r}: "
                "not a timm Lookahead state dict"
            )
        k = check_k(group[K_KEY], K_KEY)
        groups.append({**group, K_KEY: k, STEP_KEY: int(group[STEP_KEY]) % k})
    state = {}
    for param_id, param_state in state_dict["state"].items():
        converted = {key: value for key, value in param_state.items() if key != _TIMM_SLOW_KEY}
        if _TIMM_SLOW_KEY in param_state:
            converted[SLOW_KEY] = param_state[_TIMM_SLOW_KEY]
        state[param_id] = converted
    return {**state_dict, "state": state, "param_groups": groups}


def convert_pytorch_optimizer_state_dict(
    state_dict: dict[str, Any], *, k: int, alpha: float
) -> dict[str, Any]:
    """Convert the ``state_dict()`` of ``pytorch_optimizer.Lookahead`` (3.x, 4.x).

    pytorch_optimizer saves ``{"lookahead_state": {(group, index): {...}}, "base_optimizer":
    inner_state_dict}``, without ``k`` and ``alpha``, so pass the values it was built with. The
    conversion

    * starts from the inner optimizer's state dict and adds ``lookahead_k=k`` and
      ``lookahead_alpha=alpha`` to every group;
    * moves the group's ``counter`` (steps since the last sync, as here) to ``lookahead_step``;
    * moves ``slow_params`` to ``lookahead_slow`` and, from ``pullback_momentum="pullback"``,
      ``slow_momentum`` to ``lookahead_slow_momentum_buffer``, for every parameter that has inner
      optimizer state.

    pytorch_optimizer copies the slow weights of every parameter when it is built; a parameter
    that was never updated has no inner state, and its copy is dropped: torch-lookahead takes it
    just before the parameter's first update (an inner optimizer such as Adam must create its own
    state first).

    Args:
        state_dict: ``pytorch_optimizer_lookahead.state_dict()``.
        k: the ``k`` the pytorch_optimizer Lookahead was built with.
        alpha: its ``alpha``.

    Returns:
        A state dict for [`Lookahead.load_state_dict`][torch_lookahead.Lookahead.load_state_dict].

    Raises:
        ValueError: ``state_dict`` is not a pytorch_optimizer Lookahead state dict, or ``k`` /
            ``alpha`` are out of range.
    """
    k = check_k(k)
    alpha = check_alpha(alpha)
    if not isinstance(state_dict, dict) or not {"lookahead_state", "base_optimizer"} <= set(
        state_dict
    ):
        raise ValueError(
            "state_dict must be a pytorch_optimizer Lookahead state dict with 'lookahead_state' "
            "and 'base_optimizer'"
        )
    inner = _require_optimizer_state_dict(
        state_dict["base_optimizer"], "state_dict['base_optimizer']"
    )
    groups = []
    for group in inner["param_groups"]:
        converted_group = {key: value for key, value in group.items() if key != "counter"}
        converted_group.update(
            {K_KEY: k, ALPHA_KEY: alpha, STEP_KEY: int(group.get("counter", 0)) % k}
        )
        groups.append(converted_group)
    state = {param_id: dict(param_state) for param_id, param_state in inner["state"].items()}
    for position, lookahead_state in state_dict["lookahead_state"].items():
        param_id = _pytorch_optimizer_param_id(position, inner["param_groups"])
        if param_id not in state:
            continue
        slow = lookahead_state.get(_PYTORCH_OPTIMIZER_SLOW_KEY)
        if isinstance(slow, Tensor):
            state[param_id][SLOW_KEY] = slow
        slow_momentum = lookahead_state.get(_PYTORCH_OPTIMIZER_SLOW_MOMENTUM_KEY)
        if isinstance(slow_momentum, Tensor):
            state[param_id][slow_momentum_key(_PYTORCH_OPTIMIZER_MOMENTUM_KEY)] = slow_momentum
    return {"state": state, "param_groups": groups}


def _pytorch_optimizer_param_id(position: object, groups: list[dict[str, Any]]) -> Any:
    """The standard state-dict id of the parameter pytorch_optimizer keys as (group, index)."""
    if not (isinstance(position, tuple) and len(position) == 2):
        raise ValueError(
            f"lookahead_state keys must be (group index, parameter index) pairs, got {position!r}"
        )
    group_index, param_index = position
    try:
        return groups[group_index]["params"][param_index]
    except (IndexError, TypeError) as error:
        raise ValueError(
            f"lookahead_state key {position!r} names no parameter of the base optimizer"
        ) from error
