"""Lookahead with torch.distributed.

* :class:`DistributedLookahead`: each rank runs k inner steps on its own data without
  communicating, then the fast weights are averaged in one all-reduce and the slow weights take an
  outer step (Lookahead, local SGD, SlowMo and DiLoCo's outer step in one class).
* :class:`DistributedLookaheadState`: exact save/resume of such a run with
  ``torch.distributed.checkpoint``.

The plain :class:`torch_lookahead.Lookahead` needs nothing from this package under DDP, FSDP2,
DCP or ZeRO; docs/distributed.md gives the wrapping order for each engine.
"""

from torch_lookahead.distributed.checkpoint import SHARED_STATE_KEYS, DistributedLookaheadState
from torch_lookahead.distributed.functional import momentum_outer_step_
from torch_lookahead.distributed.lookahead import OUTER_MOMENTUM_KEY, DistributedLookahead

__all__ = [
    "OUTER_MOMENTUM_KEY",
    "SHARED_STATE_KEYS",
    "DistributedLookahead",
    "DistributedLookaheadState",
    "momentum_outer_step_",
]
