"""Save and resume a DistributedLookahead run with ``torch.distributed.checkpoint`` (DCP).

Between syncs the ranks hold different fast weights and each rank has its own inner-optimizer
state, while the slow weights and the outer momentum are the same everywhere. A plain DCP save of
``model.state_dict()`` would treat the (unsharded) fast weights as replicated and keep one rank's
copy, so a resume mid-cycle would not be exact. :class:`DistributedLookaheadState` splits the state
into what is shared (saved once per process group) and what is each rank's own (saved per rank).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from torch_lookahead.distributed.lookahead import OUTER_MOMENTUM_KEY, DistributedLookahead
from torch_lookahead.lookahead import SLOW_KEY

__all__ = ["SHARED_STATE_KEYS", "DistributedLookaheadState"]

SHARED_STATE_KEYS = (SLOW_KEY, OUTER_MOMENTUM_KEY)
"""Per-parameter state entries that are identical on every rank of the process group."""


class DistributedLookaheadState:
    """A ``torch.distributed.checkpoint`` Stateful for a model trained with DistributedLookahead.

    The checkpoint holds, under ``replicas_from_rank_<r0>`` (``r0`` = the global rank of the
    process group's rank 0), the slow weights, outer momentum and parameter groups once, and under
    ``rank_<r>`` each rank's model state (its fast weights and buffers) and inner-optimizer state.
    Resuming needs the same world size; the result is bit-identical to an uninterrupted run.

    Example::

        state = {"train": DistributedLookaheadState(model, optimizer)}
        dcp.save(state, checkpoint_id=path)
        ...  # later, with a freshly built model and optimizer on every rank
        dcp.load(state, checkpoint_id=path)
    """

    def __init__(self, model: nn.Module, optimizer: DistributedLookahead) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, DistributedLookahead):
            raise TypeError(
                f"optimizer must be a DistributedLookahead, got {type(optimizer).__name__}; "
                "a torch_lookahead.Lookahead checkpoints with DCP's get/set_optimizer_state_dict"
            )
        self.model = model
        self.optimizer = optimizer

    def _keys(self) -> tuple[str, str]:
        group = self.optimizer.process_group
        return (
            f"replicas_from_rank_{dist.get_global_rank(group, 0)}",
            f"rank_{dist.get_rank()}",
        )

    def state_dict(self) -> dict[str, Any]:
        """Split the model and optimizer state into the shared part and this rank's part."""
        # On a fresh optimizer this takes DCP's zero-learning-rate step, which creates every state
        # entry (slow weights included) so that the result can serve as a loading template.
        optimizer_state: dict[str, Any] = dict(get_optimizer_state_dict(self.model, self.optimizer))
        shared_state: dict[str, dict[str, Any]] = {}
        own_state: dict[str, dict[str, Any]] = {}
        for name, param_state in optimizer_state["state"].items():
            shared_state[name] = {k: v for k, v in param_state.items() if k in SHARED_STATE_KEYS}
            own_state[name] = {k: v for k, v in param_state.items() if k not in SHARED_STATE_KEYS}
        shared_key, own_key = self._keys()
        return {
            shared_key: {"state": shared_state, "param_groups": optimizer_state["param_groups"]},
            own_key: {"model": get_model_state_dict(self.model), "optimizer": own_state},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the two parts back together and load them into the model and optimizer."""
        shared_key, own_key = self._keys()
        shared, own = state_dict[shared_key], state_dict[own_key]
        names = set(shared["state"]) | set(own["optimizer"])
        merged_state = {
            name: {**own["optimizer"].get(name, {}), **shared["state"].get(name, {})}
            for name in names
        }
        set_model_state_dict(self.model, own["model"])
        optimizer_state: dict[str, Any] = {
            "state": merged_state,
            "param_groups": shared["param_groups"],
        }
        set_optimizer_state_dict(self.model, self.optimizer, optimizer_state)  # type: ignore[arg-type]
