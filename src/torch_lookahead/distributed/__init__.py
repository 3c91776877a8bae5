"""Lookahead with torch.distributed.

* [DistributedLookahead][torch_lookahead.distributed.DistributedLookahead]: each rank runs k inner steps on its own data without
  communicating, then the fast weights are averaged in one all-reduce and the slow weights take an
  outer step (Lookahead, local SGD, SlowMo and DiLoCo's outer step in one class).
  Options: streaming fragments (`fragment_param_groups`), a sync delay that overlaps the
  communication with the next inner steps, bfloat16/int8 compressed communication, and a sync
  whose verdict every rank shares: it commits everywhere or rolls back everywhere and raises
  `SyncFailedError`, and a rank whose collective failed refuses to go on until a checkpoint is
  loaded.
* [DistributedLookaheadState][torch_lookahead.distributed.DistributedLookaheadState]: exact save/resume of such a run with
  ``torch.distributed.checkpoint`` (also on another number of ranks, from the slow weights).

The plain [Lookahead][torch_lookahead.Lookahead] needs nothing from this package under DDP, FSDP2,
DCP or ZeRO; docs/distributed.md gives the wrapping order for each engine.
"""

from torch_lookahead.distributed.checkpoint import (
    SHARED_STATE_KEYS,
    DistributedLookaheadState,
    saved_world_size,
)
from torch_lookahead.distributed.fragments import fragment_param_groups
from torch_lookahead.distributed.functional import momentum_outer_step_
from torch_lookahead.distributed.lookahead import (
    FRAGMENT_KEY,
    OUTER_MOMENTUM_KEY,
    DistributedLookahead,
    SyncFailedError,
)

__all__ = [
    "FRAGMENT_KEY",
    "OUTER_MOMENTUM_KEY",
    "SHARED_STATE_KEYS",
    "DistributedLookahead",
    "DistributedLookaheadState",
    "SyncFailedError",
    "fragment_param_groups",
    "momentum_outer_step_",
    "saved_world_size",
]
