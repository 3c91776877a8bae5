"""The torch.optim plumbing that NovoGrad and AdaBound share: validated parameter groups, flags
back-filled when unpickling, and the step loop over groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, overload

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _use_grad_for_differentiable

from ._flat import FlatState, flat_state
from ._functional import default_to_foreach, raise_sparse, setdefault_flags

__all__ = ["GroupwiseOptimizer"]


class GroupwiseOptimizer(Optimizer):
    """Subclasses say how to validate a group and how to update one; this class does the rest."""

    #: Group flags that older pickles may lack, with the value they had before they existed.
    _flag_defaults: ClassVar[dict[str, Any]] = {}

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError/TypeError naming the first invalid hyper-parameter of ``group``."""
        raise NotImplementedError

    def _step_group(self, group: dict[str, Any]) -> None:
        """Update the parameters of ``group`` that have a gradient."""
        raise NotImplementedError

    def _init_state(self, group: dict[str, Any], param: Tensor, grad: Tensor) -> dict[str, Tensor]:
        """The state of a parameter at its first step."""
        raise NotImplementedError

    def _params_with_grad(
        self, group: dict[str, Any], max_key: str | None = None
    ) -> tuple[list[Tensor], list[Tensor], list[dict[str, Tensor]]]:
        """The parameters of ``group`` that have a gradient, their gradients and states.

        States are created on a parameter's first step; with ``max_key`` (the running maximum
        of amsgrad/amsbound), that entry is also created when the flag is turned on mid-run, from
        the current second moment ``exp_avg_sq``.
        """
        params: list[Tensor] = []
        grads: list[Tensor] = []
        states: list[dict[str, Tensor]] = []
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise_sparse(type(self).__name__)
            state = self.state[param]
            if len(state) == 0:
                state.update(self._init_state(group, param, grad))
            if max_key is not None and max_key not in state:
                state[max_key] = state["exp_avg_sq"].clone()
            params.append(param)
            grads.append(grad)
            states.append(state)
        return params, grads, states

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; its hyper-parameters are validated like the constructor's."""
        self._check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        setdefault_flags(self, self._flag_defaults)

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
        flat_states = self.__dict__.setdefault("_flat_states", {})
        live_groups = {id(group) for group in self.param_groups}
        for stale in [key for key in flat_states if key not in live_groups]:
            del flat_states[stale]  # groups replaced by load_state_dict: free their buffers
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _flat_state_for(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        states: list[dict[str, Tensor]],
        tensor_keys: tuple[str, ...],
        scalar_keys: tuple[str, ...] = (),
    ) -> FlatState | None:
        """The flat state backing ``group`` (see :mod:`._flat`) when the multi-tensor path runs,
        kept between steps and rebuilt when it no longer holds; None otherwise."""
        flat_states: dict[int, FlatState] = self.__dict__.setdefault("_flat_states", {})
        foreach = group["foreach"]
        if foreach is None:
            foreach = default_to_foreach(params, differentiable=False)
        if not foreach:
            flat_states.pop(id(group), None)
            return None
        current = flat_state(flat_states.get(id(group)), params, states, tensor_keys, scalar_keys)
        if current is None:
            flat_states.pop(id(group), None)
        else:
            flat_states[id(group)] = current
        return current
