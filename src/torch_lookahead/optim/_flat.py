"""Flat state: the per-parameter state tensors of a group as views into one buffer per key.

With thousands of small tensors, a step spends its time dispatching one ``_foreach`` kernel per
tensor per op on CPU. When a group's state tensors are consecutive views of one buffer, the
element-wise math runs once over that buffer instead, and only the gradient gather
(``torch.cat``) and the parameter update remain per tensor.

Nothing changes for the user: ``optimizer.state[p]`` still holds one tensor per entry, of the
parameter's shape (0-dim for scalars such as ``step``), which ``state_dict()`` saves and
``load_state_dict()`` restores as usual. The layout is an optimisation that the optimizer checks
at every step (the state entries must be the very view objects it made, still viewing its
buffers) and rebuilds, copying the current values, whenever it does not hold, e.g. after
``load_state_dict``, after another object replaced a state entry or its ``.data``, or when the
parameters that have a gradient change. No entry is left viewing the buffers of a rebuilt or
dropped flat state (see `FlatState.release`), nor, after ``load_state_dict`` or unpickling, a
storage shared with other entries (``GroupwiseOptimizer.__setstate__`` gives each its own), so
the state holds, and ``torch.save`` writes, its logical size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FlatState", "flat_state", "flatten", "unflatten"]


@dataclass
class FlatState:
    """Buffers backing the state of ``params``, in order, and the views placed in the state."""

    params: list[Tensor]
    states: list[dict[str, Tensor]]
    buffers: dict[str, Tensor]
    views: dict[str, list[Tensor]]
    numels: list[int]
    #: Where each view's elements start, by key: a view whose ``.data`` was replaced moves.
    addresses: dict[str, list[int]]

    def is_current(
        self, params: Sequence[Tensor], states: Sequence[dict[str, Tensor]], keys: Sequence[str]
    ) -> bool:
        """Whether the same parameters' state entries ``keys`` are still exactly these views of
        the buffers (and no more: an entry added since, e.g. by ``amsgrad`` turned on, needs a
        new one)."""
        if (
            set(keys) != set(self.views)
            or len(params) != len(self.params)
            or any(p is not q for p, q in zip(params, self.params, strict=True))
        ):
            return False
        return all(
            all(
                state.get(key) is view and view.data_ptr() == address
                for state, view, address in zip(states, views, self.addresses[key], strict=True)
            )
            for key, views in self.views.items()
        )

    def release(self) -> None:
        """Give every state entry that is still one of these views its own copy, once, when the
        buffers are dropped: an entry left viewing them would keep the whole buffer alive."""
        for key, views in self.views.items():
            for state, view in zip(self.states, views, strict=True):
                if state.get(key) is view:
                    state[key] = view.clone()


def _eligible(params: Sequence[Tensor]) -> bool:
    """Plain, real, contiguous tensors sharing one device and dtype, and more than one of them."""
    if len(params) < 2:
        return False
    first = params[0]
    return all(
        type(p) in (Tensor, torch.nn.Parameter)
        and p.device == first.device
        and p.dtype == first.dtype
        and not p.is_complex()
        and p.is_contiguous()
        for p in params
    )


def flat_state(
    previous: FlatState | None,
    params: list[Tensor],
    states: list[dict[str, Tensor]],
    tensor_keys: Sequence[str],
    scalar_keys: Sequence[str] = (),
) -> FlatState | None:
    """``previous`` if it still backs these parameters' state, else a new one, or None.

    A new one copies the current values of ``tensor_keys`` (entries of the parameter's shape) and
    ``scalar_keys`` (0-dim entries) into one buffer per key and re-points the state entries to
    views of it. None when the parameters cannot share buffers: fewer than two, DTensors, complex
    or non-contiguous tensors, mixed devices or dtypes, or state entries that do not fit.
    """
    if previous is not None and previous.is_current(params, states, (*tensor_keys, *scalar_keys)):
        return previous
    if torch.compiler.is_compiling() or not _eligible(params):
        return None
    for key in (*tensor_keys, *scalar_keys):
        first = states[0][key]
        for p, state in zip(params, states, strict=True):
            value = state[key]
            shape = p.shape if key in tensor_keys else torch.Size()
            if value.shape != shape or value.dtype != first.dtype or value.device != first.device:
                return None
    numels = [p.numel() for p in params]
    buffers: dict[str, Tensor] = {}
    views: dict[str, list[Tensor]] = {}
    for key in (*tensor_keys, *scalar_keys):
        values = [state[key] for state in states]
        if key in scalar_keys:
            buffer = torch.stack(values)
            key_views = list(buffer.unbind(0))
        else:
            buffer = torch.cat([value.reshape(-1) for value in values])
            key_views = unflatten(buffer, params)
        for state, view in zip(states, key_views, strict=True):
            state[key] = view
        buffers[key] = buffer
        views[key] = key_views
    addresses = {key: [view.data_ptr() for view in key_views] for key, key_views in views.items()}
    return FlatState(list(params), list(states), buffers, views, numels, addresses)


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors' elements as one 1-D tensor: a view for a single tensor, else a new one."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch._C._nn.flatten_dense_tensors(list(tensors))


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of consecutive pieces of the 1-D ``flat``, shaped like the tensors of ``like``."""
    return list(torch._C._nn.unflatten_dense_tensors(flat, list(like)))
