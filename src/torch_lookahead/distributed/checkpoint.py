"""Save and resume a DistributedLookahead run with ``torch.distributed.checkpoint`` (DCP).

Between syncs the ranks hold different fast weights and each rank has its own inner-optimizer
state, while the slow weights and the outer momentum are the same everywhere. A plain DCP save of
``model.state_dict()`` would treat the (unsharded) fast weights as replicated and keep one rank's
copy, so a resume mid-cycle would not be exact. [DistributedLookaheadState][torch_lookahead.distributed.DistributedLookaheadState] splits the state
into what is shared (saved once per process group) and what is each rank's own (saved per rank).
The shared part alone is enough to resume on another number of ranks.
"""

from __future__ import annotations

import inspect
import io
import os
import re
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from torch_lookahead.distributed.lookahead import (
    LAUNCH_KEY,
    MEAN_DELTA_KEY,
    MEAN_KEY,
    OUTER_MOMENTUM_KEY,
    RESTARTED_AT_KEY,
    SYNCS_KEY,
    DistributedLookahead,
)
from torch_lookahead.lookahead import EVAL_KEY, FAST_KEY, SLOW_KEY

__all__ = ["SHARED_STATE_KEYS", "DistributedLookaheadState", "saved_world_size"]

SHARED_STATE_KEYS = (SLOW_KEY, OUTER_MOMENTUM_KEY)
"""Per-parameter state entries that are identical on every rank of the process group."""
_PENDING_KEYS = (LAUNCH_KEY, MEAN_KEY, MEAN_DELTA_KEY)

_RANK_PART = re.compile(r"(?:^|\.)rank_(\d+)\.")
_BLOB = "pending_syncs"
"""The bytes entry of each replica's part: the delayed syncs pending at the save, the number of
replicas that saved (format 2 and later; earlier checkpoints hold the pending syncs alone) and
each group's `_SOMETIMES_KEYS` that it holds (format 3)."""
_FORMAT = 3
_SOMETIMES_KEYS = (RESTARTED_AT_KEY, SYNCS_KEY)
"""Parameter-group keys present on some steps only. DCP loads only the keys of its template (a
fresh optimizer, where they may be absent) and raises for a template's key the checkpoint lacks,
so they travel in the blob, never in the parameter groups (checkpoints of earlier formats lost
them: absent after the load)."""


def saved_world_size(checkpoint_id: str | os.PathLike[str]) -> int:
    """The number of replicas (ranks of the optimizer's process group, or replica groups of its
    ``device_mesh``) that saved a DistributedLookaheadState in a file-system DCP checkpoint.

    Read from the checkpoint, where it is stored. Checkpoints written before it was stored hold
    one ``rank_<r>`` part per rank and no count: for those, the number of such parts is returned,
    which is right for runs over the default (world) group only.
    """
    keys = FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata
    blobs = sorted(key for key in keys if key.endswith(f".{_BLOB}"))
    if not blobs:
        raise ValueError(f"{os.fspath(checkpoint_id)!r} holds no DistributedLookaheadState")
    template: dict[str, Any] = {blobs[0]: b""}
    with warnings.catch_warnings():  # a read in this process alone is what is meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        if "no_dist" in inspect.signature(dcp_load).parameters:
            dcp_load(template, checkpoint_id=checkpoint_id, no_dist=True)
        else:  # torch 2.6: only the loader below load() reads in one process of a group
            _load_state_dict(template, FileSystemReader(checkpoint_id), no_dist=True)
    extras = _read_blob(template[blobs[0]])
    if extras["replicas"] is not None:
        return int(extras["replicas"])
    ranks = {match.group(1) for key in keys for match in [_RANK_PART.search(key)] if match}
    return len(ranks)


def _whole(t: Tensor) -> Tensor:
    """A DTensor gathered whole (collective over its mesh), a plain tensor as it is."""
    full_tensor = getattr(t, "full_tensor", None)
    return t if full_tensor is None else full_tensor()


def _like(whole: Tensor, template: Tensor) -> Tensor:
    """This rank's part of ``whole`` in the form of ``template`` (a DTensor: the local shards of
    its mesh and placements, cut from ``whole`` here, without communication)."""
    if not hasattr(template, "to_local"):
        return whole
    from torch.distributed.tensor import DTensor, distribute_tensor

    assert isinstance(template, DTensor)
    return distribute_tensor(
        whole.to(template.device), template.device_mesh, template.placements, src_data_rank=None
    )


def _read_blob(blob: bytes) -> dict[str, Any]:
    """The pending syncs and the number of replicas (None if not stored) of a saved blob."""
    loaded = torch.load(io.BytesIO(blob), weights_only=True)
    if isinstance(loaded.get("format"), int):
        return {**loaded, "groups": loaded.get("groups")}
    return {"pending": loaded, "replicas": None, "groups": None}  # the pending syncs alone


def _train_form(model_state: dict[str, Any], optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """The model state and (in place) the optimizer state as train mode would have written them.

    In eval mode (docs/design.md, "The checkpoint form") a parameter with slow weights holds phi
    and its state ``lookahead_fast`` = theta, with ``lookahead_slow`` only where the slow copy's
    dtype or device differs. Here the model gets theta back and ``lookahead_slow`` = phi (the kept
    copy, else the parameter), so that a checkpoint does not depend on the mode it was taken in and
    always fits the loading template (a fresh optimizer, in train mode). Tensors are regrouped,
    never copied or written: nothing live changes.
    """
    model_state = dict(model_state)
    state = optimizer_state["state"]
    groups = []
    for group in optimizer_state["param_groups"]:
        if group.get(EVAL_KEY, False):
            for name in group["params"]:
                entry = state.get(name)
                if entry is None or FAST_KEY not in entry:
                    continue
                fast = entry[FAST_KEY]
                slow = entry.get(SLOW_KEY, model_state[name])
                state[name] = {k: v for k, v in entry.items() if k != FAST_KEY}
                state[name][SLOW_KEY] = slow
                model_state[name] = fast
            group = {**group, EVAL_KEY: False}
        groups.append(group)
    optimizer_state["param_groups"] = groups
    return model_state


class DistributedLookaheadState:
    """A ``torch.distributed.checkpoint`` Stateful for a model trained with DistributedLookahead.

    The checkpoint holds, under ``replicas_from_rank_<r0>`` (``r0`` = the global rank of the
    process group's rank 0), the slow weights, outer momentum and parameter groups once, and under
    ``rank_<r>`` each rank's model state (its fast weights and buffers), inner-optimizer state,
    and a small blob: the delayed syncs pending at the save and the number of replicas that saved
    (`saved_world_size` reads it). Resumed on the same number of ranks, the run continues
    bit-identical to an uninterrupted one.

    The checkpoint is always in train form, also when saved in eval mode (inside
    ``slow_weights()``): each rank's part holds its fast weights and the shared part the slow
    weights, once, where the eval form would put the slow weights in every rank's model part. So
    it loads whatever the mode it was saved in (into an optimizer in train mode, which it stays
    in). Model files that hold the slow weights come from ``model.state_dict()`` inside
    ``slow_weights()``.

    With a ``device_mesh`` (sharded workers: a replica is a row of the mesh, its parameters
    DTensors sharded over the row, or a DDP model replicated over it), the shared part is keyed by
    the mesh's first global rank, ``replicas_from_rank_<m0>``, and replica ``i``'s part
    ``replica_<i>_from_rank_<m0>``: every rank of the row writes its local shards there, so DCP
    holds each tensor whole and reshards it on load (another number of shards, too). The blob
    holds a pending delayed sync's tensors whole (gathered over the row at the save: one copy
    of the parameters, two while a sync is pending), the same on every rank of the row, so it too
    resumes on another number of shards.

    On another number of replicas, pass ``checkpoint_world_size`` (`saved_world_size` reads
    it): the slow weights, outer momentum and parameter groups (their counters, so the fragments'
    phases) are loaded, replica ``r`` takes the model buffers and inner-optimizer state that
    replica ``r % checkpoint_world_size`` saved, and every rank's parameters restart from the slow
    weights (the fast weights of the cycle in progress, and a delayed sync in flight, are not
    carried over: checkpoint right after a sync to lose nothing).

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
        replicas = dist.get_world_size(group)
        self._elastic = checkpoint_world_size is not None and checkpoint_world_size != replicas
        source = dist.get_rank(group)
        if self._elastic:
            assert checkpoint_world_size is not None
            source %= checkpoint_world_size
        mesh = optimizer.device_mesh
        self._whole = mesh is not None
        if mesh is None:
            # One rank a replica: the parts are named by global ranks.
            self._shared_key = f"replicas_from_rank_{dist.get_global_rank(group, 0)}"
            self._own_key = f"rank_{dist.get_global_rank(group, source)}"
        else:
            # A replica is a row of the mesh, sharded over its columns: every rank of a row
            # writes its shards under the row's key, so the row's DTensors are whole and DCP
            # reshards them. The blob of the pending syncs holds their tensors whole, so it is
            # the same on every rank of the row (DCP keeps one copy) whatever the sharding.
            first = int(mesh.mesh.flatten()[0])
            self._shared_key = f"replicas_from_rank_{first}"
            self._own_key = f"replica_{source}_from_rank_{first}"

    def state_dict(self) -> dict[str, Any]:
        """Split the model and optimizer state into the shared part and this rank's part."""
        # On a fresh optimizer this takes DCP's zero-learning-rate step, which creates every state
        # entry (slow weights included) so that the result can serve as a loading template.
        optimizer_state: dict[str, Any] = dict(get_optimizer_state_dict(self.model, self.optimizer))
        model_state = _train_form(get_model_state_dict(self.model), optimizer_state)
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
                pending[name] = {
                    k: _whole(param_state[k]) if self._whole else param_state[k]
                    for k in _PENDING_KEYS
                    if k in param_state
                }
        # A delayed sync pending at the save exists on some steps only, while a loading template
        # is built from a fresh optimizer: its tensors travel as one serialised object, which the
        # template always has.
        blob = io.BytesIO()
        replicas = dist.get_world_size(self.optimizer.process_group)
        groups = optimizer_state["param_groups"]
        kept = [{k: g[k] for k in _SOMETIMES_KEYS if k in g} for g in groups]
        groups = [{k: v for k, v in g.items() if k not in _SOMETIMES_KEYS} for g in groups]
        extras = {"replicas": replicas, "pending": pending, "groups": kept}
        torch.save({"format": _FORMAT, **extras}, blob)
        shared_key, own_key = self._shared_key, self._own_key
        return {
            shared_key: {"state": shared_state, "param_groups": groups},
            own_key: {
                "model": model_state,
                "optimizer": own_state,
                _BLOB: blob.getvalue(),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the two parts back together and load them into the model and optimizer."""
        shared, own = state_dict[self._shared_key], state_dict[self._own_key]
        names = set(shared["state"]) | set(own["optimizer"])
        extras = _read_blob(own[_BLOB])
        pending = extras["pending"]
        if self._whole:  # each rank takes its shards of the whole tensors
            pending = {
                name: {k: _like(v, shared["state"][name][SLOW_KEY]) for k, v in entries.items()}
                for name, entries in pending.items()
            }
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
        kept = extras["groups"] or [{}] * len(self.optimizer.param_groups)
        for group, entries in zip(self.optimizer.param_groups, kept, strict=True):
            for key in _SOMETIMES_KEYS:
                group.pop(key, None)
            group.update(entries)
        if self._elastic:
            self.optimizer._restart_from_slow_weights()
