"""Save and resume a DistributedLookahead run with ``torch.distributed.checkpoint`` (DCP).

Between syncs the ranks hold different fast weights and each rank has its own inner-optimizer
state, while the slow weights and the outer momentum are the same everywhere. A plain DCP save of
``model.state_dict()`` would treat the (unsharded) fast weights as replicated and keep one rank's
copy, so a resume mid-cycle would not be exact. [DistributedLookaheadState][torch_lookahead.distributed.DistributedLookaheadState] splits the state
into what is shared (saved once per process group) and what is each rank's own (saved per rank).
The shared part alone is enough to resume on another number of ranks.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from torch_lookahead.distributed.lookahead import (
    LAUNCH_KEY,
    MEAN_DELTA_KEY,
    MEAN_KEY,
    OUTER_MOMENTUM_KEY,
    DistributedLookahead,
)
from torch_lookahead.lookahead import SLOW_KEY

__all__ = ["SHARED_STATE_KEYS", "DistributedLookaheadState", "saved_world_size"]

SHARED_STATE_KEYS = (SLOW_KEY, OUTER_MOMENTUM_KEY)
"""Per-parameter state entries that are identical on every rank of the process group."""
_PENDING_KEYS = (LAUNCH_KEY, MEAN_KEY, MEAN_DELTA_KEY)

_RANK_PART = re.compile(r"(?:^|\.)rank_(\d+)\.")


def saved_world_size(checkpoint_id: str | os.PathLike[str]) -> int:
    """The number of ranks that saved a DistributedLookaheadState in a file-system DCP checkpoint."""
    keys = FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata
    ranks = {match.group(1) for key in keys for match in [_RANK_PART.search(key)] if match}
    if not ranks:
        raise ValueError(f"{os.fspath(checkpoint_id)!r} holds no DistributedLookaheadState")
    return len(ranks)


class DistributedLookaheadState:
    """A ``torch.distributed.checkpoint`` Stateful for a model trained with DistributedLookahead.

    The checkpoint holds, under ``replicas_from_rank_<r0>`` (``r0`` = the global rank of the
    process group's rank 0), the slow weights, outer momentum and parameter groups once, and under
    ``rank_<r>`` each rank's model state (its fast weights and buffers) and inner-optimizer state.
    Resumed on the same number of ranks, the run continues bit-identical to an uninterrupted one.

    On another number of ranks, pass ``checkpoint_world_size`` (`saved_world_size` reads
    it): the slow weights, outer momentum and parameter groups (their counters, so the fragments'
    phases) are loaded, rank ``r`` takes the model buffers and inner-optimizer state that rank
    ``r % checkpoint_world_size`` saved, and every rank's parameters restart from the slow weights
    (the fast weights of the cycle in progress, and a delayed sync in flight, are not carried
    over: checkpoint right after a sync to lose nothing).

    Example::

        state = {"train": DistributedLookaheadState(model, optimizer)}
        dcp.save(state, checkpoint_id=path)
        ...  # later, with a freshly built model and optimizer on every rank
        dcp.load(state, checkpoint_id=path)
        # or on another number of ranks:
        state = {"train": DistributedLookaheadState(model, optimizer,
                                                    checkpoint_world_size=saved_world_size(path))}
        dcp.load(state, checkpoint_id=path)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: DistributedLookahead,
        *,
        checkpoint_world_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, DistributedLookahead):
            raise TypeError(
                f"optimizer must be a DistributedLookahead, got {type(optimizer).__name__}; "
                "a torch_lookahead.Lookahead checkpoints with DCP's get/set_optimizer_state_dict"
            )
        if checkpoint_world_size is not None and (
            isinstance(checkpoint_world_size, bool)
            or not isinstance(checkpoint_world_size, int)
            or checkpoint_world_size < 1
        ):
            raise ValueError(
                f"checkpoint_world_size must be None or a positive int, got {checkpoint_world_size!r}"
            )
        self.model = model
        self.optimizer = optimizer
        group = optimizer.process_group
        self._elastic = checkpoint_world_size is not None and checkpoint_world_size != (
            dist.get_world_size(group)
        )
        self._own_rank = dist.get_rank()
        if self._elastic:
            assert checkpoint_world_size is not None
            source = dist.get_rank(group) % checkpoint_world_size
            self._own_rank = dist.get_global_rank(group, source)

    def _keys(self) -> tuple[str, str]:
        group = self.optimizer.process_group
        return (
            f"replicas_from_rank_{dist.get_global_rank(group, 0)}",
            f"rank_{self._own_rank}",
        )

    def state_dict(self) -> dict[str, Any]:
        """Split the model and optimizer state into the shared part and this rank's part."""
        # On a fresh optimizer this takes DCP's zero-learning-rate step, which creates every state
        # entry (slow weights included) so that the result can serve as a loading template.
        optimizer_state: dict[str, Any] = dict(get_optimizer_state_dict(self.model, self.optimizer))
        shared_state: dict[str, dict[str, Any]] = {}
        own_state: dict[str, dict[str, Any]] = {}
        pending: dict[str, dict[str, Any]] = {}
        for name, param_state in optimizer_state["state"].items():
            shared_state[name] = {k: v for k, v in param_state.items() if k in SHARED_STATE_KEYS}
            own_state[name] = {
                k: v
                for k, v in param_state.items()
                if k not in SHARED_STATE_KEYS and k not in _PENDING_KEYS
            }
            if any(k in param_state for k in _PENDING_KEYS):
                pending[name] = {k: param_state[k] for k in _PENDING_KEYS if k in param_state}
        # A delayed sync pending at the save exists on some steps only, while a loading template
        # is built from a fresh optimizer: its tensors travel as one serialised object, which the
        # template always has.
        blob = io.BytesIO()
        torch.save(pending, blob)
        shared_key, own_key = self._keys()
        return {
            shared_key: {"state": shared_state, "param_groups": optimizer_state["param_groups"]},
            own_key: {
                "model": get_model_state_dict(self.model),
                "optimizer": own_state,
                "pending_syncs": blob.getvalue(),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the two parts back together and load them into the model and optimizer."""
        shared_key, own_key = self._keys()
        shared, own = state_dict[shared_key], state_dict[own_key]
        names = set(shared["state"]) | set(own["optimizer"])
        pending = torch.load(io.BytesIO(own["pending_syncs"]), weights_only=True)
        merged_state = {
            name: {
                **own["optimizer"].get(name, {}),
                **shared["state"].get(name, {}),
                **pending.get(name, {}),
            }
            for name in names
        }
        set_model_state_dict(self.model, own["model"])
        optimizer_state: dict[str, Any] = {
            "state": merged_state,
            "param_groups": shared["param_groups"],
        }
        set_optimizer_state_dict(self.model, self.optimizer, optimizer_state)  # type: ignore[arg-type]
        if self._elastic:
            self.optimizer._restart_from_slow_weights()
