"""The torch.optim plumbing that NovoGrad and AdaBound share: validated parameter groups (also
Ranger's), the gathering of parameters, gradients and state, the flat state, and the step loop
over groups."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, overload

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT, _use_grad_for_differentiable

from ._flat import FlatState, flat_state
from ._functional import (
    FunctionalStep,
    default_to_foreach,
    new_step_counter,
    python_number,
    raise_sparse,
)

__all__ = ["GroupwiseOptimizer", "ValidatedGroups"]


class ValidatedGroups(Optimizer):
    """An optimizer whose every parameter group, given to the constructor or to
    `add_param_group`, is validated by `_check_group`, numpy numbers becoming the Python numbers
    they hold (see `python_number`): its checkpoints load with ``torch.load(weights_only=True)``."""

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError/TypeError naming the first invalid hyper-parameter of ``group``."""
        raise NotImplementedError

    def _derived_entries(self, group: dict[str, Any]) -> dict[str, Any]:
        """The entries that a new ``group`` takes from its other values unless given: none."""
        return {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; its hyper-parameters are validated like the constructor's.
        A group refused for one of them is left as it was given."""
        given = {**self.defaults, **param_group}
        given = {key: python_number(value) for key, value in given.items() if key != "params"}
        group = {**self._derived_entries(given), **given}
        self._check_group(group)
        param_group.update(group)
        super().add_param_group(param_group)


class GroupwiseOptimizer(ValidatedGroups):
    """Subclasses say how to validate a group, what state a parameter has and which functional
    step updates a group; this class does the rest."""

    #: The hyper-parameters of a step, a NamedTuple whose fields are keys of the group.
    _hyperparameters: ClassVar[type[Any]]
    #: The functional step that updates a group.
    _functional: ClassVar[FunctionalStep]

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(params, {**defaults, "differentiable": False})

    def _init_state(self, param: Tensor, grad: Tensor) -> dict[str, Tensor]:
        """The state of a parameter at its first step."""
        raise NotImplementedError

    def _state_keys(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The state entries that the step of ``group`` uses: those of the parameter's shape, and
        the 0-dim ones (``max_exp_avg_sq`` is created when it is among them)."""
        raise NotImplementedError

    def _missing_group_entries(self, group: dict[str, Any]) -> dict[str, Any]:
        """The values that a group saved before an entry existed takes for it: every flag (a
        constructor argument whose default is a bool or None) its constructor default, as a
        checkpoint written before the flag existed was trained without it."""
        signature = inspect.signature(type(self).__init__)
        return {
            "differentiable": False,
            **{
                name: parameter.default
                for name, parameter in signature.parameters.items()
                if parameter.default is None or isinstance(parameter.default, bool)
            },
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the optimizer (``load_state_dict`` and unpickling end here).

        As torch.optim's own optimizers do, a checkpoint of an older version loads: entries a
        group lacks take the values of `_missing_group_entries`, and a step count saved as a
        Python number (older torch, torch-optimizer) becomes the tensor that a step updates.
        Every state tensor then owns its memory: the flat state (see `._flat`) is rebuilt at the
        next step, and an entry that viewed a shared buffer (the old flat state's, or the
        storage that ``torch.load`` shares among the views it read) would keep all of it alive
        and be saved with all of it when its parameter is left out of the new one.
        """
        # Everything is made before it is installed: an exception here leaves the optimizer as it
        # was (Lookahead finishes a load by loading again).
        for param_state in state.get("state", {}).values():
            step = param_state.get("step")
            if step is not None and (not isinstance(step, Tensor) or step.dim() != 0):
                param_state["step"] = new_step_counter().fill_(float(step))  # also one saved as [1]
            for key, value in param_state.items():
                if type(value) is Tensor and value.untyped_storage().nbytes() != value.nbytes:
                    param_state[key] = value.clone()
        for group in state.get("param_groups", []):
            for key, value in self._missing_group_entries(group).items():
                group.setdefault(key, value)
        super().__setstate__(state)
        self.__dict__.pop("_flat_states", None)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): a closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flat_states: dict[int, FlatState] = self.__dict__.setdefault("_flat_states", {})
        live_groups = {id(group) for group in self.param_groups}
        for stale in [key for key in flat_states if key not in live_groups]:
            flat_states.pop(stale).release()  # groups removed from param_groups
        # Every gradient of every group is checked before any state is created or changed.
        gathered = [(group, *self._params_with_grad(group)) for group in self.param_groups]
        for group, params, grads in gathered:
            tensor_keys, scalar_keys = self._state_keys(group)
            states = self._states(params, grads, (*tensor_keys, *scalar_keys))
            foreach = group["foreach"]
            if foreach is None:
                foreach = default_to_foreach(params)
            flat = self._flat_state_for(group, foreach, params, states, tensor_keys, scalar_keys)
            keys = (*tensor_keys, *scalar_keys)
            state_lists = {key: [state[key] for state in states] for key in keys}
            fields = self._hyperparameters._fields
            hyper = self._hyperparameters(**{name: group[name] for name in fields})
            self._functional(params, grads, state_lists, hyper, foreach, flat)
        return loss

    def _params_with_grad(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The parameters of ``group`` that have a gradient, and their gradients, which must be
        dense."""
        params: list[Tensor] = []
        grads: list[Tensor] = []
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise_sparse(type(self).__name__)
            params.append(param)
            grads.append(grad)
        return params, grads

    def _states(
        self, params: list[Tensor], grads: list[Tensor], keys: tuple[str, ...]
    ) -> list[dict[str, Tensor]]:
        """The states of ``params``, created on a parameter's first step. The running maximum of
        the second moment ``max_exp_avg_sq``, when among ``keys`` but not in a state yet
        (amsgrad/amsbound turned on mid-run), starts from the current second moment
        ``exp_avg_sq``."""
        states: list[dict[str, Tensor]] = []
        for param, grad in zip(params, grads, strict=True):
            state = self.state[param]
            if len(state) == 0:
                state.update(self._init_state(param, grad))
            if "max_exp_avg_sq" in keys and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
            states.append(state)
        return states

    def _flat_state_for(
        self,
        group: dict[str, Any],
        foreach: bool,
        params: list[Tensor],
        states: list[dict[str, Tensor]],
        tensor_keys: tuple[str, ...],
        scalar_keys: tuple[str, ...],
    ) -> FlatState | None:
        """The flat state backing ``group`` (see `._flat`) when the multi-tensor path runs,
        kept between steps and rebuilt when it no longer holds; None otherwise. The entries
        that still view the buffers of one no longer kept get their own copies."""
        flat_states: dict[int, FlatState] = self.__dict__.setdefault("_flat_states", {})
        previous = flat_states.pop(id(group), None)
        current = None
        if foreach:
            current = flat_state(previous, params, states, tensor_keys, scalar_keys)
        if previous is not None and current is not previous:
            previous.release()
        if current is not None:
            flat_states[id(group)] = current
        return current
