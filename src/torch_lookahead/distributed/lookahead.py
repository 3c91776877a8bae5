"""Lookahead across workers: k local steps on each rank, then one averaged outer step.

``DistributedLookahead`` is :class:`torch_lookahead.Lookahead` with the fast weights averaged over a
process group at every sync. Between syncs the ranks do not communicate, so the model must *not* be
wrapped in DistributedDataParallel (which would all-reduce gradients at every step).
"""

from __future__ import annotations

import math
import numbers
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead._tracking import GroupTracking
from torch_lookahead.distributed._replicas import (
    average_,
    broadcast_from_first_rank_,
    check_same_shapes,
    require_process_group,
)
from torch_lookahead.distributed.functional import momentum_outer_step_
from torch_lookahead.lookahead import ALPHA_KEY, SLOW_KEY, Lookahead, _interrupts_deferred

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from torch_lookahead.lookahead import LookaheadOptions

__all__ = ["OUTER_MOMENTUM_KEY", "DistributedLookahead"]

OUTER_MOMENTUM_KEY = "lookahead_outer_momentum"


def _validate_outer_momentum(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"outer_momentum must be a real number in [0, 1), got {value!r}")
    momentum = float(value)
    if math.isnan(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"outer_momentum must be in [0, 1), got {momentum}")
    return momentum


class DistributedLookahead(Lookahead):
    r"""Lookahead across workers: local inner steps, one all-reduce of the weights every k steps.

    .. math::
       \begin{aligned}
            &\textbf{input}: \text{inner optimizer } A \text{ on each of } W \text{ ranks},\
                k,\ \alpha,\ \mu \text{ (outer momentum)} \\
            &\theta^{(r)}_0 \leftarrow \theta^{(0)}_0 \text{ (rank 0's weights)},\quad
                \phi_0 \leftarrow \theta_0,\quad u_0 \leftarrow 0 \\
            &\textbf{for}\: t=1 \textbf{ to } \ldots \textbf{ do} \\
            &\hspace{5mm}\theta^{(r)}_t \leftarrow A^{(r)}(\theta^{(r)}_{t-1})
                \quad \text{(each rank on its own data, no communication)} \\
            &\hspace{5mm}\textbf{if}\: t \bmod k = 0 \\
            &\hspace{10mm}\bar\theta \leftarrow \tfrac{1}{W}\textstyle\sum_r \theta^{(r)}_t
                \quad \text{(one all-reduce)} \\
            &\hspace{10mm}\textbf{if}\: \mu = 0:\ \phi \leftarrow \phi + \alpha(\bar\theta - \phi) \\
            &\hspace{10mm}\textbf{else}:\ \delta \leftarrow \phi - \bar\theta,\quad
                u \leftarrow \mu u + \delta \\
            &\hspace{15mm}\phi \leftarrow \phi - \alpha\,(\delta + \mu u)
                \textbf{ if } \textit{nesterov} \textbf{ else } \phi - \alpha u \\
            &\hspace{10mm}\theta^{(r)}_t \leftarrow \phi \text{ on every rank}
       \end{aligned}

    With one rank this is exactly :class:`~torch_lookahead.Lookahead`. With ``alpha=1`` and no
    outer momentum it is periodic model averaging (local SGD); with outer heavy-ball momentum it
    is SlowMo (Wang et al., 2020) and with Nesterov momentum DiLoCo's outer step (Douillard et al.,
    2023). Each rank keeps its own inner-optimizer state (never communicated); the slow weights and
    outer momentum (``optimizer.state[p]["lookahead_outer_momentum"]``) are identical on all ranks.

    Construction and every sync are collective: all ranks of ``process_group`` must build the
    optimizer over the same parameter shapes and call ``step()`` the same number of times (a
    float16 ``GradScaler``, which skips steps on each rank alone, breaks this; bfloat16 needs no
    scaler). The constructor checks the shapes and copies rank 0's parameters to every rank. Model buffers
    (e.g. BatchNorm statistics) are not averaged. Every rank must update the same parameters;
    a parameter that received gradients on some ranks only is reported at the next sync.

    Args:
        optimizer: the inner optimizer of this rank, over the (unwrapped, not DDP) model.
        k: inner steps between two syncs. Default: 5.
        alpha: outer step size (Lookahead's alpha, DiLoCo's outer learning rate). Default: 0.5.
        outer_momentum: ``mu`` above, in [0, 1). Default: 0 (no outer momentum).
        nesterov: use the Nesterov form of the outer momentum (needs ``outer_momentum > 0``).
        process_group: the ranks to average over. Default: the default (world) group.
        foreach: as for :class:`~torch_lookahead.Lookahead`.
        **options: every other keyword option of :class:`~torch_lookahead.Lookahead`
            (``pullback_momentum`` acts on each rank's own inner state; ``check_finite`` checks
            the averaged weights, so that every rank raises together).

    ``bytes_all_reduced`` counts the bytes this rank has all-reduced (a per-process statistic,
    not checkpointed). Save and resume with :class:`DistributedLookaheadState` and
    ``torch.distributed.checkpoint``.

    Example (launched with ``torchrun --nproc_per_node=2``)::

        dist.init_process_group("gloo")
        model = Net()  # not wrapped in DistributedDataParallel
        opt = DistributedLookahead(torch.optim.AdamW(model.parameters()), k=20, alpha=0.8)
        for x, y in this_ranks_shard_of_the_data:
            loss_fn(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    """

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        *,
        outer_momentum: float = 0.0,
        nesterov: bool = False,
        process_group: dist.ProcessGroup | None = None,
        foreach: bool | None = None,
        **options: Unpack[LookaheadOptions],
    ) -> None:
        momentum = _validate_outer_momentum(outer_momentum)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs outer_momentum > 0")
        group = require_process_group(process_group)
        super().__init__(optimizer, k, alpha, foreach=foreach, **options)
        self.outer_momentum = momentum
        self.nesterov = nesterov
        self.process_group = group
        self.bytes_all_reduced = 0
        for group_index, param_group in enumerate(self.param_groups):
            self._adopt_replicas(param_group, group_index)

    def _adopt_replicas(self, param_group: dict[str, Any], group_index: int) -> None:
        """Collective: check that the ranks agree on the group's shapes, then take rank 0's values."""
        params: list[Tensor] = list(param_group["params"])
        for index, p in enumerate(params):
            if hasattr(p, "to_local"):
                raise TypeError(
                    f"parameter {index} of group {group_index} is a DTensor (FSDP2 or tensor "
                    "parallel). DistributedLookahead averages whole replicas; for sharded models "
                    "use torch_lookahead.Lookahead inside fully_shard instead (docs/distributed.md)"
                )
        check_same_shapes(params, self.process_group)
        with torch.no_grad():
            broadcast_from_first_rank_(params, self.process_group)

    # ------------------------------------------------------------------ hooks into the core
    def _store_initial_weights(self, captured: list[tuple[Tensor, Tensor]]) -> None:
        super()._store_initial_weights(captured)
        if self.outer_momentum > 0.0:
            state = self.state
            for p, _ in captured:
                state[p][OUTER_MOMENTUM_KEY] = torch.zeros_like(state[p][SLOW_KEY])

    def _sync_groups(self, groups: list[dict[str, Any]]) -> None:
        """Average the due groups' fast weights over the ranks in one bucketed all-reduce, then
        take each group's outer step."""
        tracked = self._tracking_of(groups)
        self._check_replicated(groups, tracked)
        state = self.state
        if self.outer_momentum > 0.0:
            for tracking in tracked:
                for p, slow in zip(tracking.params, tracking.slows, strict=True):
                    if OUTER_MOMENTUM_KEY not in state[p]:
                        state[p][OUTER_MOMENTUM_KEY] = torch.zeros_like(slow)
        with torch.no_grad(), _interrupts_deferred():
            self.bytes_all_reduced += average_(
                list(chain.from_iterable(t.params for t in tracked)), self.process_group
            )
            if self.check_finite:
                self._require_finite(groups, tracked)
            for group, tracking in zip(groups, tracked, strict=True):
                if self.outer_momentum > 0.0:
                    momentum_outer_step_(
                        tracking.params,
                        tracking.slows,
                        [state[p][OUTER_MOMENTUM_KEY] for p in tracking.params],
                        alpha=group[ALPHA_KEY],
                        outer_momentum=self.outer_momentum,
                        nesterov=self.nesterov,
                        foreach=self._use_foreach(),
                    )
                # With mu = 0 this is Lookahead's own sync on the averaged weights. With mu > 0
                # the fast weights already equal the slow ones, so its lerp and copy change
                # nothing (lerp between equal tensors is exact) and it only restarts the cycle
                # and applies pullback_momentum.
                self._sync_group(group, tracking)

    def _check_replicated(self, groups: list[dict[str, Any]], tracked: list[GroupTracking]) -> None:
        """Check that all ranks have slow copies of the same parameters (one small all-reduce)."""
        has_slow: list[bool] = []
        for group, tracking in zip(groups, tracked, strict=True):
            with_slow = set(map(id, tracking.params))
            has_slow.extend(id(p) in with_slow for p in group["params"])
        if not has_slow:
            return
        device = next(chain.from_iterable(g["params"] for g in groups)).device
        counts = torch.tensor(has_slow, dtype=torch.int32, device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=self.process_group)
        self.bytes_all_reduced += counts.numel() * counts.element_size()
        world_size = dist.get_world_size(self.process_group)
        partial = [i for i, count in enumerate(counts.tolist()) if 0 < count < world_size]
        if partial:
            raise ValueError(
                f"parameters {partial[:10]} (counted across the synced parameter groups) have been "
                "updated on some ranks but not on others, so their replicas would diverge. Every "
                "rank must update the same parameters: make unused parameters take part in the "
                "loss (e.g. + 0 * p.sum()) or put them in a group of their own that all ranks "
                "leave unused"
            )

    # ------------------------------------------------------------------ collective variants
    @torch.no_grad()
    def reset_slow(self) -> None:
        """Average the parameters over the ranks and restart the slow weights (and momentum) there."""
        self._require_train_mode("reset_slow()")
        groups = self.param_groups
        tracked = self._tracking_of(groups)
        self._check_replicated(groups, tracked)
        self.bytes_all_reduced += average_(
            list(chain.from_iterable(t.params for t in tracked)), self.process_group
        )
        super().reset_slow()
        for param_state in self.state.values():
            buffer = param_state.get(OUTER_MOMENTUM_KEY)
            if isinstance(buffer, Tensor):
                buffer.zero_()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (collective: all ranks add the same shapes; rank 0's values win)."""
        super().add_param_group(param_group)
        self._adopt_replicas(self.param_groups[-1], len(self.param_groups) - 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this rank's state dict; outer momentum buffers keep the slow copies' dtype/device."""
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict cast every state tensor to its parameter's dtype (bf16 for a
        # bf16 model); the buffers are placed again from the caller's untouched tensors.
        saved_params = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        state = self.state
        for saved_key, p in zip(saved_params, params, strict=True):
            saved = state_dict["state"].get(saved_key, {}).get(OUTER_MOMENTUM_KEY)
            if isinstance(saved, Tensor):
                slow = state[p][SLOW_KEY]
                state[p][OUTER_MOMENTUM_KEY] = saved.to(
                    device=slow.device, dtype=slow.dtype, copy=True
                )

    # ------------------------------------------------------------------ pickling, repr
    def __getstate__(self) -> dict[str, Any]:
        if self.process_group is not dist.group.WORLD:
            raise TypeError(
                "a DistributedLookahead over a custom process group cannot be pickled or deep-copied "
                "(process groups cannot); checkpoint it with DistributedLookaheadState instead"
            )
        return {
            **super().__getstate__(),
            "outer_momentum": self.outer_momentum,
            "nesterov": self.nesterov,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.process_group = require_process_group(None)
        self.bytes_all_reduced = 0

    def __repr__(self) -> str:
        head, rest = super().__repr__().split("\n", 1)
        return (
            f"Distributed{head} outer_momentum={self.outer_momentum}, nesterov={self.nesterov}, "
            f"world_size={dist.get_world_size(self.process_group)},\n{rest}"
        )
