"""Lookahead across workers: k local steps on each rank, then one averaged outer step.

``DistributedLookahead`` is [Lookahead][torch_lookahead.Lookahead] with the fast weights averaged over a
process group at every sync. Between syncs the replicas do not communicate, so a model averaged
over all ranks must *not* be wrapped in DistributedDataParallel (which would all-reduce gradients at
every step). A replica may span several ranks (``device_mesh``): FSDP2 or DDP inside it, Lookahead
across replicas.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.optim import Optimizer

from torch_lookahead import check_k
from torch_lookahead.distributed._exchange import (
    COMPRESSIONS,
    Compression,
    Exchange,
    Verdict,
    start_mean,
)
from torch_lookahead.distributed._replicas import (
    broadcast_from_first_rank_,
    check_same_shapes,
    like_parameter,
    local,
    require_process_group,
)
from torch_lookahead.distributed.functional import momentum_outer_step_
from torch_lookahead.lookahead import (
    ALPHA_KEY,
    FAST_KEY,
    K_KEY,
    SLOW_KEY,
    STEP_KEY,
    Lookahead,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from torch_lookahead.lookahead import LookaheadOptions

__all__ = [
    "FRAGMENT_KEY",
    "LAUNCH_KEY",
    "MEAN_DELTA_KEY",
    "MEAN_KEY",
    "OUTER_MOMENTUM_KEY",
    "RESTARTED_AT_KEY",
    "SYNCS_KEY",
    "DistributedLookahead",
    "SyncFailedError",
]

OUTER_MOMENTUM_KEY = "lookahead_outer_momentum"
FRAGMENT_KEY = "lookahead_fragment"
"""Parameter-group key: the index of the streaming fragment the group belongs to."""
LAUNCH_KEY = "lookahead_launch"
"""Per-parameter state while a delayed sync is pending: this rank's weights when it was launched."""
MEAN_KEY = "lookahead_launch_mean"
"""Per-parameter state while a delayed exact sync is pending: the mean weights, once received."""
MEAN_DELTA_KEY = "lookahead_launch_mean_delta"
"""Per-parameter state while a delayed compressed sync is pending: the mean pseudo-gradient
(float32), once received; the mean weights are the slow weights minus it."""
SYNCS_KEY = "lookahead_syncs"
"""Parameter-group key: the syncs of the group that this rank has committed. Every exchange
carries it, so ranks with different histories (one restarted alone from a checkpoint) are found."""
RESTARTED_AT_KEY = "lookahead_restarted_at"
"""Parameter-group key: the counter at which the group's cycle last restarted, where it is not 0
(``sync()``, ``reset_slow()`` and the load of a plain checkpoint restart a streaming fragment at
its phase; absent: 0). The group has inner steps since its last outer step, hence owes one, iff
its counter differs: a counter equal to the phase is also reached that many steps after a sync."""
_PENDING_KEYS = (LAUNCH_KEY, MEAN_KEY, MEAN_DELTA_KEY)


_Pairs = tuple[list[Tensor], list[Tensor]]
"""A group's parameters with slow copies and those copies (``Lookahead.slow_pairs``)."""


class SyncFailedError(RuntimeError):
    """A DistributedLookahead sync failed and its groups were rolled back, or the optimizer
    refuses to go on until a checkpoint is loaded (the message says which)."""


@dataclass
class _Pending:
    """A delayed sync: launched at a group's cycle end, applied ``sync_delay`` inner steps later."""

    groups: list[dict[str, Any]]
    params: list[list[Tensor]]
    exchange: Exchange | None  # in flight, or None once its results are in the state
    unsettled: list[int] | None = None  # its groups whose slow weights differ, once received


def _require_received(entries: Iterable[dict[str, Any]]) -> None:
    """Raise ``ValueError`` for a delayed sync saved without its result (while it was in flight)."""
    for entry in entries:
        if LAUNCH_KEY in entry and MEAN_KEY not in entry and MEAN_DELTA_KEY not in entry:
            raise ValueError(
                f"a delayed sync has {LAUNCH_KEY!r} without {MEAN_KEY!r} or {MEAN_DELTA_KEY!r} "
                "in its state: the state was saved while its mean was in flight"
            )


def _before_step(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Step pre-hook: a DistributedLookahead that refuses to go on raises before the inner step;
    delayed syncs that an interrupted step left due are applied before it."""
    assert isinstance(optimizer, DistributedLookahead)
    optimizer._require_usable()
    if not optimizer.in_eval_mode:  # else step() raises
        optimizer._apply_due()


def _validate_outer_momentum(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"outer_momentum must be a real number in [0, 1), got {value!r}")
    momentum = float(value)
    if math.isnan(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"outer_momentum must be in [0, 1), got {momentum}")
    return momentum


def _has_steps(group: dict[str, Any]) -> bool:
    """Whether ``group`` has inner steps since its cycle last restarted (its counter, the same on
    every rank, moved from where it restarted)."""
    return bool(group[STEP_KEY] != group.get(RESTARTED_AT_KEY, 0))


def _restart(group: dict[str, Any], counter: int) -> None:
    """Restart ``group``'s cycle at ``counter`` and remember where (`RESTARTED_AT_KEY`)."""
    _remember_restart(group, counter)
    group[STEP_KEY] = counter


def _remember_restart(group: dict[str, Any], counter: int) -> None:
    if counter:
        group[RESTARTED_AT_KEY] = counter
    else:
        group.pop(RESTARTED_AT_KEY, None)


def _remembering(
    restart: Callable[[dict[str, Any]], int] | None,
) -> Callable[[dict[str, Any]], int]:
    """``restart`` (None: 0), remembering each counter it gives as where its group's cycle
    restarted. The core calls it as its plan is made, whose last step stores the counters: not
    before (an exception in the exchange or the outer momentum step would leave a mark without
    its counter), and a plan an exception stops is finished by the next call."""

    def restarted(group: dict[str, Any]) -> int:
        counter = 0 if restart is None else restart(group)
        _remember_restart(group, counter)
        return counter

    return restarted


def _shares_a_group(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    ids = set(map(id, b))
    return any(id(group) in ids for group in a)


def _validate_sync_delay(value: object, k: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"sync_delay must be a non-negative int, got {value!r}")
    if value >= k:
        raise ValueError(f"sync_delay must be smaller than k={k}, got {value}")
    return value


def _validate_compression(value: object) -> Compression | None:
    for known in COMPRESSIONS:
        if value == known:
            return known
    if value is not None:
        raise ValueError(f"compression must be None or one of {COMPRESSIONS}, got {value!r}")
    return None


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

    With one rank this is exactly [Lookahead][torch_lookahead.Lookahead]. With ``alpha=1`` and no
    outer momentum it is periodic model averaging (local SGD); with outer heavy-ball momentum it
    is SlowMo (Wang et al., 2020) and with Nesterov momentum DiLoCo's outer step (Douillard et al.,
    2023). Each rank keeps its own inner-optimizer state (never communicated); the slow weights and
    outer momentum (``optimizer.state[p]["lookahead_outer_momentum"]``) are identical on all ranks
    after every sync of their group (slow weights that differ, e.g. captured from each rank's own
    weights after loading a checkpoint without them, are settled by the group's next sync).

    Construction and every sync are collective: all ranks of ``process_group`` must build the
    optimizer over the same parameter shapes and call ``step()`` the same number of times (a
    float16 ``GradScaler``, which skips steps on each rank alone, breaks this; bfloat16 needs no
    scaler). The constructor checks the shapes and copies rank 0's parameters to every rank. Model buffers
    (e.g. BatchNorm statistics) are not averaged. Every rank must update the same parameters;
    a parameter that received gradients on some ranks only is reported at the next sync.

    Args:
        optimizer: the inner optimizer of this rank, over the model (not wrapped in DDP over
            the ranks averaged; with ``device_mesh``, DDP or FSDP2 over the mesh's rows).
        k: inner steps between two syncs. Default: 5.
        alpha: outer step size (Lookahead's alpha, DiLoCo's outer learning rate). Default: 0.5.
        outer_momentum: ``mu`` above, in [0, 1). Default: 0 (no outer momentum).
        nesterov: use the Nesterov form of the outer momentum (needs ``outer_momentum > 0``).
        sync_delay: inner steps between launching a sync's communication and applying it
            (overlap, see above); smaller than ``k``. Default: 0 (synchronous).
        compression: ``None`` (exact, default), ``"bfloat16"`` or ``"int8"`` (see above).
        process_group: the ranks to average over. Default: the default (world) group.
        device_mesh: instead of ``process_group``, sharded workers: a 2-D DeviceMesh
            (replicate, shard) whose row ``i`` is replica ``i``. The local shards are averaged
            over the replicate dimension (the column of this rank). See below.
        **options: every other keyword option of [Lookahead][torch_lookahead.Lookahead]
            (``pullback_momentum`` acts on each rank's own inner state).

    **Streaming fragments** (Streaming DiLoCo, Douillard et al., 2025). Parameter groups carrying
    ``lookahead_fragment = f`` (for ``f`` in ``0 .. F-1``; `fragment_param_groups` builds
    them by module or by size) are synced at the steps ``t`` with ``(t - o_f) % k == 0``,
    ``o_f = (f * k) // F``: the constructor starts fragment ``f``'s counter at ``(k - o_f) % k``.
    Each sync then moves one fragment, about 1/F of the bytes. The phase lives in the groups'
    counters, so checkpoints resume it; ``sync()``, ``reset_slow()`` and the load of a plain
    checkpoint restart each fragment at it, which the group remembers
    (``lookahead_restarted_at``), so that ``sync()`` tells a fragment with inner steps since its
    last outer step from one just restarted there. Groups without the key are fragment 0 (F = 1
    is the plain class, bit for bit).

    **Overlap** (``sync_delay = d``, ``0 <= d < k``). The mean is launched asynchronously at the
    end of a group's cycle (step ``t``) and applied after the ``d``-th inner step that follows:

    .. math::
       \begin{aligned}
            &t:\ \text{launch } \bar\theta_t = \tfrac{1}{W}\textstyle\sum_r \theta^{(r)}_t,
                \ \text{keep } \theta^{(r)}_t,\ \text{restart the cycle} \\
            &t+d:\ \phi \leftarrow \text{outer step}(\phi, \bar\theta_t)
                \ \text{(as above)},\quad
                \theta^{(r)} \leftarrow \phi + (\theta^{(r)}_{t+d} - \theta^{(r)}_t)
       \end{aligned}

    so the correction a sync makes arrives ``d`` steps late and each rank keeps the local progress
    of those steps. ``d = 0`` is the synchronous sync. The exchange has two phases (an all-to-all,
    then an all-gather of the reduced chunks): the second is launched after ``ceil(d / 2)`` inner
    steps, so that both overlap inner steps. The launch copy and, once received, the
    result live in ``optimizer.state[p]`` (``lookahead_launch``; ``lookahead_launch_mean``, or with
    compression the mean pseudo-gradient ``lookahead_launch_mean_delta``) until applied, so a
    checkpoint taken in between resumes exactly (``state_dict()`` waits for the result, also in
    eval mode: it does not depend on where the slow weights are).

    **Compression** (``compression="bfloat16"`` or ``"int8"``). The ranks exchange the
    pseudo-gradient ``delta = phi - theta^(r)`` encoded in bfloat16 or in int8 with one float32
    scale per block of 1024 values of one tensor (a block never spans two tensors), sum it in
    float32 and take ``theta_bar = phi - mean(delta)``; every rank decodes the same bytes, so the
    replicas stay identical. ``None`` (default) averages the weights exactly: they travel in their
    own dtype and are summed in float32 (float64 for float64 weights), so a bfloat16 model's mean
    is rounded once, whatever the number of ranks.

    **Faults.** Every sync ends with the same verdict on every rank: beside the data, each rank
    sends (in the same launch, no extra round trip) whether it could prepare its part, which
    parameters have slow copies, and how many syncs of each group it has committed
    (``lookahead_syncs`` in the group), and a fingerprint of each group's slow weights (an
    integer hash of their bits, one read pass). Where the fingerprints differ (slow weights
    captured from each rank's own weights after a checkpoint without them, or reloaded per rank),
    the sync first replaces that group's slow weights by their exact mean over the ranks and
    zeroes their outer momentum, in one more exchange, so that every rank holds the same slow
    weights; nothing needs to be remembered. A rank that could not prepare its part takes part
    with zeros: every rank rolls the groups of that sync back to their last completed sync
    (parameters = slow weights, counters 0, slow weights and outer momentum untouched, a pending
    delayed sync dropped; each rank's inner-optimizer state keeps its local steps) and raises `SyncFailedError`. A parameter updated on some ranks only raises
    ``ValueError`` on every rank. If a collective raises on a rank (a rank died; a collective that
    hangs raises when the process group's ``timeout`` runs out), that rank rolls back, raises
    `SyncFailedError` and then refuses to step or sync until a checkpoint is loaded, since other
    ranks may have committed; ranks whose committed-sync counts differ (one restarted alone) all
    refuse at their next sync. Let the launcher restart the job from the last checkpoint
    (``torchrun --max-restarts``).

    **Sharded workers** (``device_mesh``, HSDP's layout). Each row of the mesh is one replica,
    whose model is sharded over the row with ``fully_shard(model, mesh=device_mesh["shard"])``
    (its parameters, slow copies and outer momentum are DTensors), or replicated over it with
    ``DistributedDataParallel(model, process_group=device_mesh.get_group("shard"))``. A sync is
    the exchange above over the ranks of this rank's column, on local shards: every column
    averages the same shard of each replica, so the rows end with the same slow weights, as one
    unsharded rank per replica would (up to the rounding of the gradients' reduction inside a
    row). Checkpoints name their parts by row (see DistributedLookaheadState).

    ``bytes_all_reduced`` counts the bytes of the payloads this rank has exchanged (a per-process
    statistic, not checkpointed). Save and resume with [DistributedLookaheadState][torch_lookahead.distributed.DistributedLookaheadState] and
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
        sync_delay: int = 0,
        compression: Compression | None = None,
        process_group: dist.ProcessGroup | None = None,
        device_mesh: DeviceMesh | None = None,
        **options: Unpack[LookaheadOptions],
    ) -> None:
        momentum = _validate_outer_momentum(outer_momentum)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs outer_momentum > 0")
        sync_delay = _validate_sync_delay(sync_delay, check_k(k))
        compression = _validate_compression(compression)
        if device_mesh is not None:
            if process_group is not None:
                raise ValueError("pass process_group or device_mesh, not both")
            if not isinstance(device_mesh, DeviceMesh) or device_mesh.ndim != 2:
                raise TypeError(
                    "device_mesh must be a 2-D torch.distributed.DeviceMesh (replicate, shard), "
                    f"got {device_mesh!r}"
                )
            process_group = device_mesh.get_group(0)
        group = require_process_group(process_group)
        self.device_mesh = device_mesh
        self._shard_ranks = (
            None
            if device_mesh is None
            else sorted(dist.get_process_group_ranks(device_mesh.get_group(1)))
        )
        self._pending: list[_Pending] = []
        self._blocking = False
        self._refusal: str | None = None
        super().__init__(optimizer, k, alpha, **options)
        self.register_step_pre_hook(_before_step)
        self.outer_momentum = momentum
        self.nesterov = nesterov
        self.sync_delay = sync_delay
        self.compression = compression
        self.process_group = group
        self.bytes_all_reduced = 0
        for group_index, param_group in enumerate(self.param_groups):
            self._adopt_replicas(param_group, group_index)
        self._start_fragment_phases()

    def _adopt_replicas(self, param_group: dict[str, Any], group_index: int) -> None:
        """Collective: check that the ranks agree on the group's shapes, then take rank 0's values."""
        params: list[Tensor] = list(param_group["params"])
        for index, p in enumerate(params):
            if hasattr(p, "to_local") and self.device_mesh is None:
                raise TypeError(
                    f"parameter {index} of group {group_index} is a DTensor (FSDP2 or tensor "
                    "parallel): pass device_mesh=, the 2-D (replicate, shard) mesh whose shard "
                    "dimension the model is sharded over (docs/distributed-workers.md)"
                )
            mesh = getattr(p, "device_mesh", None)
            if mesh is not None and self._shard_ranks is not None:
                ranks = sorted(mesh.mesh.flatten().tolist())
                if ranks != self._shard_ranks:
                    raise ValueError(
                        f"parameter {index} of group {group_index} is sharded over ranks {ranks}, "
                        f"but device_mesh's shard dimension holds ranks {self._shard_ranks} here"
                    )
        shards = [local(p) for p in params]
        check_same_shapes(shards, self.process_group)
        with torch.no_grad():
            broadcast_from_first_rank_(shards, self.process_group)

    def _start_fragment_phases(self) -> None:
        """Start each fragment's counter at its offset, in groups that have not stepped yet."""
        fragments = [g[FRAGMENT_KEY] for g in self.param_groups if FRAGMENT_KEY in g]
        for index, fragment in enumerate(fragments):
            if isinstance(fragment, bool) or not isinstance(fragment, int) or fragment < 0:
                raise ValueError(
                    f"param_groups[...][{FRAGMENT_KEY!r}] must be a non-negative int, "
                    f"got {fragment!r} (group {index} with the key)"
                )
        if not fragments:
            return
        state = self.state
        for group in self.param_groups:
            fragment = group.get(FRAGMENT_KEY)
            if fragment is None or group[STEP_KEY] != 0:
                continue
            if any(SLOW_KEY in state.get(p, {}) for p in group["params"]):
                continue  # already stepping: its counter is its phase
            _restart(group, self.cycle_start(group))

    def cycle_start(self, group: dict[str, Any]) -> int:
        """Fragment ``f`` of ``F`` restarts at ``(k - (f * k) // F) % k``: its phase."""
        fragments = [g.get(FRAGMENT_KEY, 0) for g in self.param_groups]
        k, fragment = group[K_KEY], group.get(FRAGMENT_KEY, 0)
        return int((k - (fragment * k) // (max(fragments) + 1)) % k)

    # ------------------------------------------------------------------ settling
    @torch.no_grad()
    def _settle(
        self, groups: list[dict[str, Any]], params: list[list[Tensor]], unsettled: list[int]
    ) -> None:
        """Replace the slow weights of ``groups[i]`` for ``i`` in ``unsettled`` (those whose
        fingerprints differ across the ranks, by the verdict of their sync) by their mean over the
        ranks, and restart their outer momentum at zero, on every rank. Exact (the exchange of
        ``reset_slow``); collective, at the same point of every rank's sync."""
        if not unsettled:
            return
        state = self.state
        new = [p for i in unsettled for p in params[i]]
        slows = [state[p][SLOW_KEY] for p in new]
        exchange = self._start(groups, params, [local(s) for s in slows])
        verdict, means = self._wait(groups, params, exchange)
        if not verdict.committed:  # a rank could not prepare its slow copies: try at the next sync
            self._roll_back(groups, params)
            raise SyncFailedError(
                f"the mean of differing slow weights of parameter groups {self._indices(groups)} "
                "failed on some rank: those groups were rolled back to their last completed sync"
            )
        for p, slow, mean in zip(new, slows, means, strict=True):
            assert mean is not None
            local(slow).copy_(mean)
            momentum = state[p].get(OUTER_MOMENTUM_KEY)
            if isinstance(momentum, Tensor):
                momentum.zero_()

    # ------------------------------------------------------------------ the core's extension surface
    def after_step(self) -> None:
        """Give new slow copies their outer momentum; apply the delayed syncs whose
        ``sync_delay`` inner steps have passed."""
        if self.outer_momentum > 0.0:
            self._add_outer_momentum([self.slow_pairs(group) for group in self.param_groups])
        self._apply_due()

    def _apply_due(self) -> None:
        """Apply the delayed syncs whose ``sync_delay`` inner steps have passed. The end of every
        step does; so does the start of the next one, for a step that an exception stopped
        before its end (as ``step()`` completes an overdue sync first). Half-way, after
        ``ceil(sync_delay / 2)`` steps, a sync's exchange is advanced: its first phase waited
        for and its second launched, so that both phases overlap inner steps. The counters
        decide, so every rank advances at the same step."""
        halfway = (self.sync_delay + 1) // 2
        for pending in self._pending:
            if pending.exchange is not None and pending.groups[0][STEP_KEY] >= halfway:
                pending.exchange.advance()
        due = [p for p in self._pending if p.groups[0][STEP_KEY] >= self.sync_delay]
        for pending in due:
            self._apply_pending(pending)

    def _add_outer_momentum(self, tracked: list[_Pairs]) -> None:
        state = self.state
        for group_params, group_slows in tracked:
            for p, slow in zip(group_params, group_slows, strict=True):
                if OUTER_MOMENTUM_KEY not in state[p]:
                    state[p][OUTER_MOMENTUM_KEY] = torch.zeros_like(slow)

    def outer_step(
        self, groups: list[dict[str, Any]], restart: Callable[[dict[str, Any]], int] | None = None
    ) -> None:
        """Average the due groups' fast weights over the ranks (one exchange for all of them),
        then take each group's outer step, now or ``sync_delay`` inner steps later. A group
        without inner steps since its cycle last restarted (after its pending delayed sync is
        applied, whose progress since the launch counts) holds its slow weights: its cycle only
        restarts, without an exchange or an outer step. Its counter decides, the same on every
        rank."""
        self._require_usable()
        for pending in [p for p in self._pending if _shares_a_group(p.groups, groups)]:
            self._apply_pending(pending)  # k was lowered to sync_delay or below
        for group in [g for g in groups if not _has_steps(g)]:
            _restart(group, 0 if restart is None else restart(group))
        groups = [g for g in groups if _has_steps(g)]
        if not groups:
            return
        tracked = [self.slow_pairs(group) for group in groups]
        if self.outer_momentum > 0.0:
            self._add_outer_momentum(tracked)
        params = [t[0] for t in tracked]
        with torch.no_grad():
            exchange = self._launch(groups, tracked, self.compression)
            if self.sync_delay > 0 and not self._blocking:
                state = self.state
                for p in chain.from_iterable(params):
                    state[p][LAUNCH_KEY] = p.detach().clone()
                for group in groups:
                    _restart(group, 0 if restart is None else restart(group))  # restarts here
                self._pending.append(_Pending(groups, params, exchange))
                return
            results, unsettled = self._collect(groups, params, exchange)
            self._settle(groups, params, unsettled)
            slows = list(chain.from_iterable(t[1] for t in tracked))
            means = [self._mean(result, slow) for result, slow in zip(results, slows, strict=True)]
            self._outer_steps(groups, tracked, means, _remembering(restart))

    def _mean(self, result: Tensor, slow: Tensor) -> Tensor:
        """The mean weights from an exchange's result: itself (exact), or the slow weights minus
        the mean pseudo-gradient (compressed)."""
        if self.compression is None:
            return result
        shard = local(slow.detach())
        return shard - result.to(shard.device, shard.dtype)

    def _launch(
        self, groups: list[dict[str, Any]], tracked: list[_Pairs], compression: Compression | None
    ) -> Exchange:
        """Start the exchange of every parameter of ``groups``; those without slow copies on this
        rank take part as absent (the verdict says whether all ranks agree, and which groups'
        slow weights differ across the ranks)."""
        slow_of = {id(p): s for ps, ss in tracked for p, s in zip(ps, ss, strict=True)}
        params = list(chain.from_iterable(g["params"] for g in groups))
        references = [slow_of.get(id(p)) for p in params]
        return self._start(
            groups,
            [t[0] for t in tracked],
            [local(p) for p in params],
            compression=compression,
            references=[None if r is None else local(r) for r in references],
            present=[id(p) in slow_of for p in params],
            history=[g.get(SYNCS_KEY, 0) for g in groups],
            fingerprinted=[[local(s) for s in t[1]] for t in tracked],
        )

    def _start(
        self,
        groups: list[dict[str, Any]],
        params: list[list[Tensor]],
        tensors: list[Tensor],
        **options: Any,
    ) -> Exchange:
        """``start_mean(tensors, **options)`` for the sync of ``groups`` over their ``params``,
        counted in ``bytes_all_reduced``; if it raises, roll back, refuse and raise."""
        try:
            exchange = start_mean(tensors, self.process_group, **options)
        except BaseException as error:
            self._refuse(groups, params, error)
            raise self._failure(groups, error) from error
        self.bytes_all_reduced += exchange.payload_bytes
        return exchange

    def _wait(
        self, groups: list[dict[str, Any]], params: list[list[Tensor]], exchange: Exchange
    ) -> tuple[Verdict, list[Tensor | None]]:
        """``exchange.wait()``; if a collective raises, roll back, refuse and raise."""
        try:
            return exchange.wait()
        except BaseException as error:
            self._refuse(groups, params, error)
            if isinstance(error, Exception):
                raise self._failure(groups, error) from error
            raise

    def _collect(
        self, groups: list[dict[str, Any]], params: list[list[Tensor]], exchange: Exchange
    ) -> tuple[list[Tensor], list[int]]:
        """Wait for ``exchange`` and return the results of ``params`` (those with slow copies, per
        group) and the positions of the groups whose slow weights differ across the ranks (for
        `_settle`), or raise: every rank reaches the same verdict from the same sums."""
        verdict, results = self._wait(groups, params, exchange)
        if verdict.committed:
            for group in groups:
                group[SYNCS_KEY] = group.get(SYNCS_KEY, 0) + 1
            exchanged = list(chain.from_iterable(g["params"] for g in groups))
            position = {id(p): i for i, p in enumerate(exchanged)}
            out = [results[position[id(p)]] for p in chain.from_iterable(params)]
            return [result for result in out if result is not None], verdict.unsettled
        if verdict.partial:
            self._drop_launch(chain.from_iterable(params))
            raise ValueError(
                f"parameters {verdict.partial[:10]} (counted across the synced parameter groups) "
                "have been updated on some ranks but not on others, so their replicas would "
                "diverge. Every rank must update the same parameters: make unused parameters "
                "take part in the loss (e.g. + 0 * p.sum()) or put them in a group of their "
                "own that all ranks leave unused"
            )
        self._roll_back(groups, params)
        if not verdict.history_agrees:
            self._refusal = (
                "the ranks disagree on how many syncs they have committed (a rank was restarted "
                "from another checkpoint than the others, or a sync committed on some ranks only)"
            )
            raise SyncFailedError(self._refusal_message())
        unprepared = verdict.world_size - verdict.prepared
        cause = exchange.error
        raise SyncFailedError(
            f"{unprepared} of {verdict.world_size} ranks could not prepare their part of the sync "
            f"of parameter groups {self._indices(groups)}"
            + (f" (this rank: {type(cause).__name__}: {cause})" if cause is not None else "")
            + ": every rank rolled those groups back to their last completed sync (parameters = "
            "slow weights, counters 0; slow weights and outer momentum unchanged), and training "
            "may go on"
        ) from cause

    def _outer_steps(
        self,
        groups: list[dict[str, Any]],
        tracked: list[_Pairs],
        means: list[Tensor],
        restart: Callable[[dict[str, Any]], int] | None,
    ) -> None:
        """Put the means into the parameters and take every group's outer step."""
        params = list(chain.from_iterable(t[0] for t in tracked))
        for p, mean in zip(params, means, strict=True):
            local(p.detach()).copy_(mean)
        state = self.state
        for group, (group_params, group_slows) in zip(groups, tracked, strict=True):
            if self.outer_momentum > 0.0:
                momentum_outer_step_(
                    [local(p.detach()) for p in group_params],
                    [local(s) for s in group_slows],
                    [local(state[p][OUTER_MOMENTUM_KEY]) for p in group_params],
                    alpha=group[ALPHA_KEY],
                    outer_momentum=self.outer_momentum,
                    nesterov=self.nesterov,
                    foreach=True,
                )
            # With mu = 0 this is Lookahead's own sync on the averaged weights. With mu > 0
            # the fast weights already equal the slow ones, so its lerp and copy change
            # nothing (lerp between equal tensors is exact) and it only restarts the cycle
            # and applies pullback_momentum.
        super().outer_step(groups, restart)

    def _apply_pending(self, pending: _Pending) -> None:
        """Apply a delayed sync: outer step on the launched mean, then the local progress since."""
        with torch.no_grad():
            self._receive(pending)
            self._pending.remove(pending)
            self._settle(pending.groups, pending.params, pending.unsettled or [])
            state = self.state
            params = list(chain.from_iterable(pending.params))
            progress = []
            for p in params:
                launched = state[p].pop(LAUNCH_KEY)
                progress.append(launched.sub_(p.detach()).neg_())  # theta_now - theta_launch
            means = []
            for p in params:
                entry = state[p]
                result = entry.pop(MEAN_KEY, None)
                if result is None:  # a compressed sync: the mean pseudo-gradient
                    result = self._mean(local(entry.pop(MEAN_DELTA_KEY)), entry[SLOW_KEY])
                means.append(local(result))
            tracked = [(ps, [state[p][SLOW_KEY] for p in ps]) for ps in pending.params]
            # The cycle restarted at the launch: the counters stay.
            self._outer_steps(pending.groups, tracked, means, operator.itemgetter(STEP_KEY))
            for p, change in zip(params, progress, strict=True):
                p.detach().add_(change)

    def _receive(self, pending: _Pending) -> None:
        """Wait for a pending sync and keep its result in the state: the mean weights
        (``MEAN_KEY``, exact) or the mean pseudo-gradient in float32 (``MEAN_DELTA_KEY``). Neither
        depends on where the slow weights are, so ``eval()`` may swap them while it is in flight."""
        exchange = pending.exchange
        if exchange is None:
            return
        try:
            results, pending.unsettled = self._collect(pending.groups, pending.params, exchange)
        except BaseException:
            if pending in self._pending:
                self._pending.remove(pending)
            raise
        pending.exchange = None
        state = self.state
        for p, result in zip(chain.from_iterable(pending.params), results, strict=True):
            # In the parameter's form (a DTensor for a sharded one), so that a checkpoint holds it
            # as it holds the parameter.
            if self.compression is None:
                kept = result.to(dtype=p.dtype, device=p.device, copy=True)
                state[p][MEAN_KEY] = like_parameter(kept, p)
            else:
                state[p][MEAN_DELTA_KEY] = like_parameter(result.to(device=p.device, copy=True), p)

    def _drop_launch(self, params: Iterable[Tensor]) -> None:
        state = self.state
        for p in params:
            for key in _PENDING_KEYS:
                state[p].pop(key, None)

    def _roll_back(self, groups: list[dict[str, Any]], params: list[list[Tensor]]) -> None:
        """Return ``groups`` to their last completed sync: weights = slow weights, counters 0."""
        state = self.state
        with torch.no_grad():
            for group_params in params:
                for p in group_params:
                    p.detach().copy_(state[p][SLOW_KEY])
            self._drop_launch(chain.from_iterable(params))
        for group in groups:
            _restart(group, 0)
        self._pending = [p for p in self._pending if not _shares_a_group(p.groups, groups)]

    def _refuse(
        self, groups: list[dict[str, Any]], params: list[list[Tensor]], error: BaseException
    ) -> None:
        """A collective raised on this rank: roll back, and refuse to go on until a checkpoint is
        loaded, since the other ranks may have committed the sync."""
        self._roll_back(groups, params)
        self._refusal = (
            f"a collective of the sync of parameter groups {self._indices(groups)} failed on this "
            f"rank ({type(error).__name__}: {error}), and the other ranks may have committed it"
        )

    def _refusal_message(self) -> str:
        return (
            f"DistributedLookahead on rank {dist.get_rank(self.process_group)} refuses to step or "
            f"sync: {self._refusal}. The replicas could diverge silently from here. Restart every "
            "rank from the same checkpoint (load_state_dict, or DistributedLookaheadState with "
            "torch.distributed.checkpoint), e.g. with torchrun --max-restarts"
        )

    def _require_usable(self) -> None:
        if self._refusal is not None:
            raise SyncFailedError(self._refusal_message())

    def _indices(self, groups: list[dict[str, Any]]) -> list[int]:
        return [i for i, g in enumerate(self.param_groups) if any(g is h for h in groups)]

    def _failure(self, groups: list[dict[str, Any]], error: BaseException) -> SyncFailedError:
        return SyncFailedError(
            f"the sync of parameter groups {self._indices(groups)} failed on rank "
            f"{dist.get_rank(self.process_group)} of {dist.get_world_size(self.process_group)}: "
            f"{type(error).__name__}: {error}. Those groups were rolled back to their last "
            "completed sync (parameters = slow weights, counters 0; slow weights and outer "
            "momentum unchanged). This rank now refuses to step until a checkpoint is loaded: the "
            "process group is most likely broken (a rank died, or a collective ran past the "
            "process group's timeout), and other ranks may have committed the sync. Restart the "
            "job from the last checkpoint, e.g. with torchrun --max-restarts"
        )

    def _rebuild_pending(self) -> None:
        """Pending delayed syncs from the state (after loading or unpickling): one per group."""
        state = self.state
        self._pending = []
        for group in self.param_groups:
            params = [p for p in group["params"] if LAUNCH_KEY in state.get(p, {})]
            if not params:
                continue
            _require_received(state[p] for p in params)
            self._pending.append(_Pending([group], [params], None))

    def _receive_all(self) -> None:
        """Wait for every delayed sync in flight and keep its result in the state."""
        with torch.no_grad():
            for pending in list(self._pending):
                self._receive(pending)

    @torch.no_grad()
    def _restart_from_slow_weights(self) -> None:
        """Parameters <- slow weights and no delayed sync pending (a resume on another world size)."""
        self._pending = []
        for group in self.param_groups:
            params, slows = self.slow_pairs(group)
            for p, slow in zip(params, slows, strict=True):
                p.detach().copy_(slow)
            self._drop_launch(params)
            _remember_restart(group, group[STEP_KEY])  # no inner steps since: at the slow weights

    # ------------------------------------------------------------------ collective variants
    @torch.no_grad()
    def sync(self) -> None:
        """Bring every group to a completed sync now and restart the cycles (collective; idempotent).

        Every pending delayed sync is applied; then the groups with inner steps since their last
        outer step (a delayed sync's progress since its launch counts) take one, in one exchange,
        and every group's counter restarts (a streaming fragment at its phase, ``cycle_start``).
        A group without such steps takes no outer step and sends nothing: its parameters already
        hold its slow weights (another outer step would move them by the outer momentum alone).
        So ``sync()`` right after a cycle's end, or twice in a row, changes nothing and exchanges
        nothing, and a run may always end on ``sync()``. The counters decide, the same on every
        rank. Slow weights that differ across the ranks are settled by the group's next sync with
        inner steps, not by a ``sync()`` without them (e.g. right after a rollback)."""
        self._require_usable()
        if self.in_eval_mode:
            super().sync()  # raises
        for pending in list(self._pending):
            self._apply_pending(pending)
        self._blocking = True
        try:
            super().sync()
        finally:
            self._blocking = False

    @torch.no_grad()
    def reset_slow(self) -> None:
        """Average the parameters over the ranks and restart the slow weights (and momentum) there.

        A pending delayed sync is dropped. The average is exact (``compression`` is not used).
        """
        self._require_usable()
        if self.in_eval_mode:
            super().reset_slow()  # raises
        # A step stopped between its inner step and its end: its sync and the delayed syncs due
        # at it come first, as in step(); sync() (Lookahead.reset_slow would re-capture the
        # weights without them).
        overdue = [group for group in self.param_groups if group[STEP_KEY] >= group[K_KEY]]
        if overdue:
            self.outer_step(overdue)
        self._apply_due()
        self._receive_all()
        for pending in self._pending:
            self._drop_launch(chain.from_iterable(pending.params))
        self._pending = []
        groups = self.param_groups
        tracked = [self.slow_pairs(group) for group in groups]
        params = [t[0] for t in tracked]
        results, _ = self._collect(groups, params, self._launch(groups, tracked, None))
        for p, mean in zip(chain.from_iterable(params), results, strict=True):
            local(p.detach()).copy_(mean)
        for group in groups:  # before the core's plan stores the counters (see outer_step)
            _remember_restart(group, self.cycle_start(group))
        super().reset_slow()
        for param_state in self.state.values():
            buffer = param_state.get(OUTER_MOMENTUM_KEY)
            if isinstance(buffer, Tensor):
                buffer.zero_()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (collective: all ranks add the same shapes; rank 0's values win)."""
        super().add_param_group(param_group)
        self._adopt_replicas(self.param_groups[-1], len(self.param_groups) - 1)
        self._start_fragment_phases()

    def state_dict(self) -> dict[str, Any]:
        """The state dict (see Lookahead); a delayed sync in flight is waited for first, so that
        its result is saved (``lookahead_launch_mean`` or ``lookahead_launch_mean_delta``) and the
        resume is exact. Also in eval mode: the result does not depend on the swapped slots."""
        self._receive_all()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this rank's state dict; outer momentum keeps the slow copies' dtype and device.

        All or nothing: everything that can fail is checked before anything is loaded. Delayed
        syncs in flight here are dropped; those saved in the checkpoint are resumed. A plain
        inner-optimizer checkpoint (no ``lookahead_step``) starts each streaming fragment at its
        phase (``cycle_start``). Slow weights the checkpoint lacks are captured from each rank's
        weights at its next step; their group's next sync finds that they differ across the
        ranks and replaces them by their mean, so the ranks' weights need not agree; outer
        momentum whose slow weights the
        checkpoint lacks is dropped with them (it restarts at zero with the new slow weights).
        Loading ends a refusal to step after a failed sync (every rank must load the same
        checkpoint).
        """
        saved_state = state_dict.get("state") if isinstance(state_dict, dict) else None
        if isinstance(saved_state, dict):
            _require_received(e for e in saved_state.values() if isinstance(e, dict))
        super().load_state_dict(state_dict)
        self._refusal = None
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"], strict=True):
            if STEP_KEY not in saved_group:  # a plain checkpoint: restarted at cycle_start
                _remember_restart(group, group[STEP_KEY])
        # Optimizer.load_state_dict cast every state tensor to its parameter's dtype (bf16 for a
        # bf16 model); the float32 buffers are placed again from the caller's untouched tensors.
        saved_params = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        state = self.state
        for saved_key, p in zip(saved_params, params, strict=True):
            saved_entry = state_dict["state"].get(saved_key, {})
            entry = state.get(p)
            if entry is None:
                continue
            holder = entry.get(SLOW_KEY, p if FAST_KEY in entry else None)
            momentum = saved_entry.get(OUTER_MOMENTUM_KEY)
            if isinstance(momentum, Tensor):
                if holder is None:  # its slow weights were dropped: it restarts with new ones
                    entry.pop(OUTER_MOMENTUM_KEY, None)
                else:
                    entry[OUTER_MOMENTUM_KEY] = momentum.to(
                        device=holder.device, dtype=holder.dtype, copy=True
                    )
            delta = saved_entry.get(MEAN_DELTA_KEY)
            if isinstance(delta, Tensor):
                entry[MEAN_DELTA_KEY] = delta.to(device=p.device, dtype=torch.float32, copy=True)
        self._rebuild_pending()

    # ------------------------------------------------------------------ pickling, repr
    def __getstate__(self) -> dict[str, Any]:
        if self.process_group is not dist.group.WORLD:
            raise TypeError(
                "a DistributedLookahead over a custom process group cannot be pickled or deep-copied "
                "(process groups cannot); checkpoint it with DistributedLookaheadState instead"
            )
        self._receive_all()
        return {
            **super().__getstate__(),
            "outer_momentum": self.outer_momentum,
            "nesterov": self.nesterov,
            "sync_delay": self.sync_delay,
            "compression": self.compression,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {"sync_delay": 0, "compression": None, **state}
        self._blocking = False
        self._refusal = None
        super().__setstate__(state)
        self.register_step_pre_hook(_before_step)
        self.process_group = require_process_group(None)
        self.device_mesh = None  # only a run over the world group pickles
        self._shard_ranks = None
        self.bytes_all_reduced = 0
        self._rebuild_pending()

    def __repr__(self) -> str:
        head, rest = super().__repr__().split("\n", 1)
        return (
            f"Distributed{head} outer_momentum={self.outer_momentum}, nesterov={self.nesterov}, "
            f"sync_delay={self.sync_delay}, compression={self.compression!r}, "
            f"world_size={dist.get_world_size(self.process_group)},\n{rest}"
        )
