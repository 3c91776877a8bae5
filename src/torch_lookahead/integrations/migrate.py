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

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from torch_lookahead._checks import GROUP_CHECKS, check_alpha, check_k
from torch_lookahead.lookahead import ALPHA_KEY, EVAL_KEY, FAST_KEY, K_KEY, SLOW_KEY, STEP_KEY
from torch_lookahead.pullback import slow_momentum_key

__all__ = ["convert_pytorch_optimizer_state_dict", "convert_timm_state_dict"]

_TIMM_SLOW_KEY = "lookahead_slow_buff"
_PYTORCH_OPTIMIZER_SLOW_KEY = "slow_params"
_PYTORCH_OPTIMIZER_SLOW_MOMENTUM_KEY = "slow_momentum"
_PYTORCH_OPTIMIZER_FAST_KEY = "backup_params"  # during evaluation only: the fast weights
# pytorch_optimizer's pullback acts on this inner state entry only (SGD's momentum).
_PYTORCH_OPTIMIZER_MOMENTUM_KEY = "momentum_buffer"


def _require_dicts(entries: Iterable[tuple[object, object]], name: str) -> None:
    for key, entry in entries:
        if not isinstance(entry, dict):
            raise TypeError(f"{name}[{key!r}] must be a dict, got {type(entry).__name__}")


def _require_optimizer_state_dict(state_dict: object, name: str) -> dict[str, Any]:
    if (
        not isinstance(state_dict, dict)
        or not isinstance(state_dict.get("state"), dict)
        or not isinstance(state_dict.get("param_groups"), list)
    ):
        raise ValueError(
            f"{name} must be an optimizer state dict with 'state' and 'param_groups' (a dict of "
            "per-parameter dicts, a list of dicts with a 'params' list)"
        )
    _require_dicts(state_dict["state"].items(), f"{name}['state']")
    _require_dicts(enumerate(state_dict["param_groups"]), f"{name}['param_groups']")
    for index, group in enumerate(state_dict["param_groups"]):
        if not isinstance(group.get("params"), list):
            raise TypeError(f"{name}['param_groups'][{index}]['params'] must be a list of ids")
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
        ValueError: ``state_dict`` is not a timm Lookahead state dict, or a group's
            ``lookahead_*`` value is out of range (the message names the entry).
        TypeError: an entry of ``state_dict`` has the wrong type (the message names it).
    """
    state_dict = _require_optimizer_state_dict(state_dict, "state_dict")
    groups = []
    for index, group in enumerate(state_dict["param_groups"]):
        if any(key not in group for key in (K_KEY, ALPHA_KEY, STEP_KEY)):
            raise ValueError(
                f"param group {index} lacks timm's {K_KEY!r}/{ALPHA_KEY!r}/{STEP_KEY!r}: "
                "not a timm Lookahead state dict"
            )
        where = f"state_dict['param_groups'][{index}]"
        values = {key: check(group[key], f"{where}[{key!r}]") for key, check in GROUP_CHECKS}
        groups.append({**group, **values, STEP_KEY: values[STEP_KEY] % values[K_KEY]})
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
    * moves the group's ``counter`` (steps since the last sync, as here, so below ``k``) to
      ``lookahead_step``;
    * moves ``slow_params`` to ``lookahead_slow`` and, from ``pullback_momentum="pullback"``,
      ``slow_momentum`` to ``lookahead_slow_momentum_buffer``.

    pytorch_optimizer copies the slow weights of every parameter when it is built; a sync sets
    those of the parameters with a gradient to their weights. Each parameter with inner state
    carries its slow weights over. A parameter without inner state either was never updated (its
    slow weights are its weights) or was updated by an optimizer that keeps no state for it
    (``torch.optim.SGD`` without momentum). Its slow weights are carried over where its group is
    mid-cycle (``counter > 0``), none of its group's parameters has inner state, and either no
    group has any or the group has SGD's ``dampening`` and ``momentum == 0``; otherwise they are
    dropped and torch-lookahead takes them just before the parameter's first update, equal to the
    slow weights dropped (an inner optimizer that creates its state only when the state is empty,
    as Adam or pytorch_optimizer's SGDP, fails on a state that holds only the slow weights). The
    checkpoint cannot tell two rare cases apart from these:

    * an inner optimizer that keeps state, one of whose groups was never updated (frozen from the
      start), saved mid-cycle, where no group has inner state or the group has SGD's keys with
      ``momentum == 0`` (SGDP): its slow weights are carried, and the inner optimizer raises at the
      load (Adam: ``KeyError: 'step'``) or at the group's first update. Convert a checkpoint saved
      at a sync (``counter == 0``) instead, or drop those parameters' entries from the result;
    * a group without inner state beside groups with inner state, whose optimizer keeps no state
      for it yet lacks SGD's keys (no torch.optim optimizer): its slow weights are dropped, and
      restart from the weights at the group's next update.

    A parameter without a gradient at a sync keeps its slow weights in pytorch_optimizer, while
    torch-lookahead syncs every parameter that has slow weights: a parameter updated, then frozen
    across a sync, follows different trajectories in the two libraries, converted or not.

    A checkpoint written during evaluation, between ``backup_and_load_cache()`` and
    ``clear_and_load_backup()``, holds the fast weights in ``backup_params`` (the model holds the
    slow ones). It becomes torch-lookahead's eval form: the groups flagged
    ``lookahead_eval_mode``, the fast weights in ``lookahead_fast``; after loading it,
    ``train()`` does what ``clear_and_load_backup()`` did.

    Args:
        state_dict: ``pytorch_optimizer_lookahead.state_dict()``.
        k: the ``k`` the pytorch_optimizer Lookahead was built with.
        alpha: its ``alpha``.

    Returns:
        A state dict for [`Lookahead.load_state_dict`][torch_lookahead.Lookahead.load_state_dict].

    Raises:
        ValueError: ``state_dict`` is not a pytorch_optimizer Lookahead state dict (the message
            names the entry), a ``counter`` is not below ``k``, or ``k`` / ``alpha`` are out of
            range.
        TypeError: an entry of ``state_dict`` has the wrong type (the message names it).
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
    saved = state_dict["lookahead_state"]
    if not isinstance(saved, dict):
        raise TypeError(
            "state_dict['lookahead_state'] must be a dict keyed by (group index, parameter index), "
            f"got {type(saved).__name__}"
        )
    _require_dicts(saved.items(), "state_dict['lookahead_state']")
    groups = []
    for index, group in enumerate(inner["param_groups"]):
        name = f"state_dict['base_optimizer']['param_groups'][{index}]['counter']"
        counter = check_k(group.get("counter", 0), name, least=0)
        if counter >= k:
            raise ValueError(
                f"{name} is {counter}, but pytorch_optimizer restarts it at k: the k={k} passed is "
                "likely not the k the optimizer was built with"
            )
        converted_group = {key: value for key, value in group.items() if key != "counter"}
        groups.append({**converted_group, K_KEY: k, ALPHA_KEY: alpha, STEP_KEY: counter})
    # Saved during evaluation: the model holds the slow weights, pytorch_optimizer the fast ones.
    evaluating = any(_PYTORCH_OPTIMIZER_FAST_KEY in entry for entry in saved.values())
    weights = _PYTORCH_OPTIMIZER_FAST_KEY if evaluating else _PYTORCH_OPTIMIZER_SLOW_KEY
    moves = {
        weights: FAST_KEY if evaluating else SLOW_KEY,
        _PYTORCH_OPTIMIZER_SLOW_MOMENTUM_KEY: slow_momentum_key(_PYTORCH_OPTIMIZER_MOMENTUM_KEY),
    }
    state = {param_id: dict(param_state) for param_id, param_state in inner["state"].items()}
    # Slow weights carried for parameters without inner state (see the docstring).
    with_state = [any(map(state.__contains__, group["params"])) for group in groups]
    stateless = [
        bool(group[STEP_KEY]) and not held and (not any(with_state) or _sgd_without_momentum(group))
        for group, held in zip(groups, with_state, strict=True)
    ]
    for position, entry in saved.items():
        param_id = _pytorch_optimizer_param(position, inner["param_groups"])
        if param_id not in state and not stateless[position[0]]:
            continue  # its slow weights are its weights (see the docstring)
        for old, new in moves.items():
            if old == _PYTORCH_OPTIMIZER_SLOW_MOMENTUM_KEY and old not in entry:
                continue  # written for pullback_momentum="pullback" only
            if not isinstance(entry.get(old), Tensor):
                raise TypeError(
                    f"state_dict['lookahead_state'][{position!r}][{old!r}] must be a tensor, "
                    f"got {type(entry.get(old)).__name__}"
                )
            state.setdefault(param_id, {})[new] = entry[old]
    if evaluating:
        groups = [{**group, EVAL_KEY: True} for group in groups]
    return {"state": state, "param_groups": groups}


def _sgd_without_momentum(group: dict[str, Any]) -> bool:
    """Whether ``group`` looks like one of ``torch.optim.SGD`` without momentum, which keeps no
    state for the parameters it updates (so do some optimizers that keep state, like
    pytorch_optimizer's SGDP)."""
    return "dampening" in group and bool(group.get("momentum") == 0)


def _pytorch_optimizer_param(position: object, groups: list[dict[str, Any]]) -> Any:
    """The standard state-dict id of the parameter pytorch_optimizer keys as (group, index)."""
    if not (
        isinstance(position, tuple)
        and len(position) == 2
        and all(type(index) is int and index >= 0 for index in position)
    ):
        raise ValueError(
            "state_dict['lookahead_state'] keys must be (group index, parameter index) pairs of "
            f"non-negative ints, got {position!r}"
        )
    group_index, param_index = position
    if group_index >= len(groups) or param_index >= len(groups[group_index]["params"]):
        sizes = [len(group["params"]) for group in groups]
        raise ValueError(
            f"lookahead_state key {position!r} names no parameter of the base optimizer, whose "
            f"groups hold {sizes} parameters"
        )
    return groups[group_index]["params"][param_index]
