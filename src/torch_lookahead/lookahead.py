"""The Lookahead wrapper: bookkeeping, state and the ``torch.optim.Optimizer`` contract.

Everything the wrapper keeps lives in the inner optimizer's own structures, so every tool that
saves, moves, shards or proxies an optimizer sees it:

* per parameter group: ``lookahead_k``, ``lookahead_alpha``, ``lookahead_step`` (inner steps since
  the last sync), ``lookahead_synced_at`` (the inner step count of the group's first parameter at
  the last sync, where the inner optimizer counts steps on the CPU; -1 where it does not) and, while evaluating,
  ``lookahead_eval_mode``;
* per parameter, in ``optimizer.state[p]``: ``lookahead_slow`` (the slow weights), the slow momentum
  copies of the ``"pullback"`` policy and, for mixed-precision slow copies in eval mode,
  ``lookahead_fast``.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypedDict, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead import _sync
from torch_lookahead._checks import check_alpha, check_k, check_step_count
from torch_lookahead._keys import (
    ALPHA_KEY,
    EVAL_KEY,
    FAST_STASH_KEY,
    K_KEY,
    SLOW_KEY,
    STEP_KEY,
    SYNCED_AT_KEY,
)
from torch_lookahead._loading import (
    adopt_checkpoint_defaults,
    check_loadable,
    drop_stale_slow_weights,
    mark_synced,
)
from torch_lookahead._tensors import local_shards, same_placement
from torch_lookahead._tracking import GroupTracking, Tracking, build_tracking
from torch_lookahead.pullback import (
    PULLBACK_MODES,
    PullbackMode,
    apply_momentum_policy_,
    ensure_slow_momentum_,
    momentum_keys_for,
    registered_momentum_classes,
    slow_momentum_key,
)

__all__ = [
    "ALPHA_KEY",
    "EVAL_KEY",
    "FAST_STASH_KEY",
    "K_KEY",
    "SLOW_KEY",
    "STEP_KEY",
    "SYNCED_AT_KEY",
    "Lookahead",
    "LookaheadOptions",
    "load_slow_parameters",
]


Closure = Callable[[], Any]


class LookaheadOptions(TypedDict, total=False):
    """Keyword options of [Lookahead][torch_lookahead.Lookahead] that the classes built on it pass through unchanged.

    A new option of ``Lookahead`` is added here once and reaches ``Ranger`` and
    ``DistributedLookahead`` without further code.
    """

    pullback_momentum: PullbackMode
    slow_dtype: torch.dtype | None
    slow_device: str | torch.device | None
    check_finite: bool


def _validate_pullback(mode: object, optimizer: Optimizer) -> PullbackMode:
    if mode not in PULLBACK_MODES:
        raise ValueError(f"pullback_momentum must be one of {PULLBACK_MODES}, got {mode!r}")
    if mode != "none" and momentum_keys_for(optimizer) is None:
        raise ValueError(
            f"pullback_momentum={mode!r} needs to know which state entries of "
            f"{type(optimizer).__name__} are momentum buffers; known classes: "
            f"{', '.join(registered_momentum_classes())}. Use "
            "torch_lookahead.register_momentum_keys(YourOptimizer, [...]) to add one, or "
            "pullback_momentum='none'."
        )
    return cast(PullbackMode, mode)


def _validate_slow_dtype(dtype: object) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"slow_dtype must be None or a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _validate_slow_device(device: object) -> torch.device | None:
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"slow_device must be None, a str or a torch.device, got {device!r}")
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"slow_device must name a device such as 'cpu', got {device!r}") from error
    if parsed.type == "meta":
        raise ValueError(
            "slow_device='meta' cannot hold the slow weights' values; use a real device"
        )
    try:
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"slow_device={device!r} is not available here: {error}") from None
    return parsed


def _validate_flag(name: str, value: object, *, optional: bool) -> None:
    if not isinstance(value, bool) and not (optional and value is None):
        accepted = "None or a bool" if optional else "a bool"
        raise TypeError(f"{name} must be {accepted}, got {value!r}")


def _is_dtensor(t: Tensor) -> bool:
    return hasattr(t, "to_local")


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block has finished, then deliver it.

    A sync changes the fast weights, the slow weights and the momentum of many tensors; an
    interrupt between two of those changes would leave a half-applied outer step. Only the main
    thread receives signals, so elsewhere (and while ``torch.compile`` traces) this does nothing.
    """
    if torch.compiler.is_compiling() or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append((number, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])


def _inner_step_without_global_hooks(
    optimizer: Optimizer, closure: Closure | None, kwargs: dict[str, Any]
) -> Any:
    """``optimizer.step(closure, **kwargs)`` with its own step hooks but not the global ones.

    ``torch.optim`` wraps every optimizer class's ``step`` so that it runs the global step hooks
    (``register_optimizer_step_pre_hook``/``_post_hook``) and the instance's hooks. The wrapper's
    own ``step`` already ran the global hooks once for this user step, so the inner step is called
    through the undecorated function, with the inner optimizer's instance hooks run around it in
    torch's order. Where the decoration is not there (or ``step`` was replaced on the instance,
    e.g. by an LR scheduler built on the inner optimizer), the plain call is made.
    """
    if closure is not None:
        kwargs = {"closure": closure, **kwargs}
    step = type(optimizer).step
    undecorated = getattr(step, "__wrapped__", None)
    if undecorated is None or not getattr(step, "hooked", False) or "step" in vars(optimizer):
        return optimizer.step(**kwargs)
    args: tuple[Any, ...] = (optimizer,)
    for pre_hook in optimizer._optimizer_step_pre_hooks.values():
        result = pre_hook(optimizer, args, kwargs)
        if result is not None:
            args, kwargs = result
    with torch.autograd.profiler.record_function(f"Optimizer.step#{type(optimizer).__name__}.step"):
        out = undecorated(*args, **kwargs)
    optimizer._optimizer_step_code()
    for post_hook in optimizer._optimizer_step_post_hooks.values():
        post_hook(optimizer, args, kwargs)
    return out


class Lookahead(Optimizer):
    r"""Lookahead: k steps forward with any optimizer, 1 step back (Zhang et al., 2019).

    .. math::
       \begin{aligned}
            &\textbf{input}: \text{inner optimizer } A,\ \theta_0 \text{ (params)},\
                k \text{ (sync period)},\ \alpha \text{ (slow step size)} \\
            &\phi_0 \leftarrow \theta_0 \quad \text{(captured at the first step that updates } \theta) \\
            &\textbf{for}\: t=1 \textbf{ to } \ldots \textbf{ do} \\
            &\hspace{5mm}\theta_t \leftarrow A(\theta_{t-1}) \quad \text{(one inner step)} \\
            &\hspace{5mm}\textbf{if}\: t \bmod k = 0 \\
            &\hspace{10mm}\phi \leftarrow \phi + \alpha(\theta_t - \phi) \\
            &\hspace{10mm}\theta_t \leftarrow \phi \\
            &\textbf{return}\: \phi
       \end{aligned}

    ``alpha=1`` is exactly the inner optimizer, ``alpha=0`` keeps the weights at the slow copy and
    ``k=1`` with plain SGD is SGD with learning rate ``alpha*lr``.

    The wrapper is a ``torch.optim.Optimizer``: ``param_groups``, ``state`` and ``defaults`` are the
    inner optimizer's own (live views with setters), so LR schedulers, GradScaler, checkpoints,
    Lightning, Accelerate, the HF Trainer, DCP and ZeRO see one optimizer, and one ``step()`` is one
    step to every step hook, global or not. The slow weights are kept in
    ``optimizer.state[p]["lookahead_slow"]``; ``k``, ``alpha`` and the step counter live in each
    parameter group (``lookahead_k``, ``lookahead_alpha``, ``lookahead_step``), so a group may carry
    its own values and a scheduler may change them: every ``step()`` checks them first, as the
    constructor does, and raises before anything changes. A group whose counter has reached its
    ``k`` when a step begins (k was lowered below the steps already taken, or an exception
    interrupted the previous sync) is synced first.

    Args:
        optimizer: the inner ("fast") optimizer, any ``torch.optim.Optimizer``.
        k: number of inner steps between two syncs (a positive int). Default: 5.
        alpha: slow-weights step size in [0, 1]. Default: 0.5.
        pullback_momentum: what the inner momentum does at a sync: ``"none"`` keeps it (default),
            ``"reset"`` zeroes it, ``"pullback"`` interpolates it like the weights
            (see ``torch_lookahead.pullback``).
        slow_dtype: floating dtype of the slow copies of parameters with a narrower floating dtype,
            e.g. ``torch.float32`` for bf16/fp16 models. Default: the parameter's dtype.
        slow_device: device that holds the slow copies (e.g. ``"cpu"`` to keep them off the
            accelerator, in pinned memory; they are moved only at the sync). Default: the
            parameter's device.
        foreach: use the multi-tensor ``torch._foreach_*`` kernels for the sync and the exchange
            of ``eval()``/``train()``. Default (None): yes.
        check_finite: at every sync, before anything changes, check that the fast weights are
            finite and raise ``FloatingPointError`` naming the first parameter that is not, so
            that NaN or inf never reach the slow weights. Costs one pass over the weights per
            sync. Default: False (a non-finite fast weight then poisons the slow weights).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-3), k=5, alpha=0.5)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step(); opt.zero_grad()
        >>> with opt.slow_weights():  # evaluate on the slow weights
        ...     _ = model(torch.randn(8, 4))

    .. _Lookahead Optimizer\: k steps forward, 1 step back:
        https://arxiv.org/abs/1907.08610
    """

    optimizer: Optimizer

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        *,
        pullback_momentum: PullbackMode = "none",
        slow_dtype: torch.dtype | None = None,
        slow_device: str | torch.device | None = None,
        foreach: bool | None = None,
        check_finite: bool = False,
    ) -> None:
        if isinstance(optimizer, Lookahead):
            raise TypeError(
                "optimizer is already a Lookahead; wrapping Lookahead in Lookahead changes the "
                "semantics (see docs: multilayer Lookahead) and is not supported"
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer instance, got {type(optimizer).__name__}"
            )
        k = check_k(k)
        alpha = check_alpha(alpha)
        _validate_flag("foreach", foreach, optional=True)
        _validate_flag("check_finite", check_finite, optional=False)
        self.pullback_momentum = _validate_pullback(pullback_momentum, optimizer)
        self.slow_dtype = _validate_slow_dtype(slow_dtype)
        self.slow_device = _validate_slow_device(slow_device)
        self.optimizer = optimizer
        self.foreach = foreach
        self.check_finite = check_finite
        self._init_runtime()
        # New groups, also those added straight to the inner optimizer, inherit these defaults.
        optimizer.defaults.update({K_KEY: k, ALPHA_KEY: alpha, STEP_KEY: 0, SYNCED_AT_KEY: -1})
        self._check_groups()
        drop_stale_slow_weights(self.param_groups, self.state)

    def _init_runtime(self) -> None:
        """What is not pickled: the hook dictionaries and torch's step decoration, and caches.

        ``Optimizer.__init__`` would build a second list of parameter groups, so the wrapper runs
        what ``Optimizer.__setstate__`` runs for an unpickled optimizer instead.
        """
        self._tracking: Tracking | None = None
        self._swap_scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        Optimizer.__setstate__(self, {})

    # ------------------------------------------------------------------ live views of the inner
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> defaultdict[Tensor, Any]:
        return self.optimizer.state

    @state.setter
    def state(self, value: defaultdict[Tensor, Any]) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def is_second_order(self) -> bool:
        """Forwarded from the inner optimizer (timm's train loop asks, e.g. for AdaHessian)."""
        return bool(getattr(self.optimizer, "is_second_order", False))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def wrap(
        cls,
        optimizer_class: type[Optimizer] | Callable[..., Optimizer],
        k: int = 5,
        alpha: float = 0.5,
        **lookahead_kwargs: Any,
    ) -> type[Lookahead]:
        """An optimizer class for APIs that build the optimizer from the parameters themselves.

        ``Lookahead.wrap(AdamW, k=5)(params, lr=1e-3)`` returns
        ``Lookahead(AdamW(params, lr=1e-3), k=5)``. The result is a subclass of ``Lookahead`` (so
        of ``torch.optim.Optimizer``), which is what ``ZeroRedundancyOptimizer(params,
        optimizer_class=...)``, the HF Trainer's ``optimizer_cls_and_kwargs`` and DeepSpeed's
        client optimizer expect. Calling it returns a plain ``Lookahead`` (so that it pickles and
        loads anywhere): test instances with ``isinstance(opt, Lookahead)``, not against the
        class ``wrap`` returned.
        """
        if not callable(optimizer_class):
            raise TypeError(
                f"optimizer_class must be an optimizer class or factory, got {optimizer_class!r}"
            )
        k = check_k(k)
        alpha = check_alpha(alpha)
        try:
            inspect.signature(cls).bind(None, k, alpha, **lookahead_kwargs)
        except TypeError as error:
            raise TypeError(f"{cls.__name__}.wrap: {error}") from None

        def build(_wrapped_class: type, params: Any, **kwargs: Any) -> Lookahead:
            return cls(optimizer_class(params, **kwargs), k=k, alpha=alpha, **lookahead_kwargs)

        name = f"{cls.__name__}{getattr(optimizer_class, '__name__', 'Optimizer')}"
        namespace = {
            "__new__": build,
            "__module__": cls.__module__,
            "__qualname__": name,
            "__doc__": f"``{name}(params, **kwargs)`` is ``{cls.__name__}({name[len(cls.__name__) :]}"
            f"(params, **kwargs), k={k}, alpha={alpha})``.",
            "inner_class": optimizer_class,
            "wrap_kwargs": {"k": k, "alpha": alpha, **lookahead_kwargs},
        }
        return type(name, (cls,), namespace)

    # ------------------------------------------------------------------ checks at every step
    def _check_groups(self) -> None:
        """Validate every group's ``k``, ``alpha`` and counter, and give groups the keys they lack.

        Users and schedulers may change the values at any time, and groups may be added straight
        to the inner optimizer, so this runs before every step and sync. Values already checked
        take one type and range test each; everything is checked before any group is written.
        """
        defaults = self.defaults
        updates: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for index, group in enumerate(self.param_groups):
            k, alpha, steps = group.get(K_KEY), group.get(ALPHA_KEY), group.get(STEP_KEY)
            if (
                type(k) is int
                and k >= 1
                and type(alpha) is float
                and 0.0 <= alpha <= 1.0
                and type(steps) is int
                and steps >= 0
                and SYNCED_AT_KEY in group
            ):
                continue
            update: dict[str, Any] = {}
            for key, check in ((K_KEY, check_k), (ALPHA_KEY, check_alpha)):
                if key in group:
                    update[key] = check(group[key], f"param_groups[{index}][{key!r}]")
                else:
                    update[key] = check(defaults.get(key), f"defaults[{key!r}]")
            name = f"param_groups[{index}][{STEP_KEY!r}]"
            update[STEP_KEY] = check_step_count(group.get(STEP_KEY, 0), name)
            synced_at = group.get(SYNCED_AT_KEY, -1)
            update[SYNCED_AT_KEY] = synced_at if type(synced_at) is int else -1
            updates.append((group, update))
        for group, update in updates:
            group.update(update)

    def _require_train_mode(self, what: str) -> None:
        if any(group.get(EVAL_KEY, False) for group in self.param_groups):
            raise RuntimeError(
                f"Lookahead.{what} was called in eval mode (the parameters hold the slow weights); "
                "call optimizer.train() first"
            )

    def _tracked(self, *, slows: bool = True) -> list[GroupTracking]:
        """Per group (in order): the parameters with slow copies, those copies, and the others.

        ``slows=False`` is for the step's capture, which needs only to know which parameters lack
        a slow copy; the sync, the exchange and everything else read the copies themselves.
        """
        groups, state = self.param_groups, self.state
        if torch.compiler.is_compiling():
            return build_tracking(groups, state, SLOW_KEY).groups
        tracking = self._tracking
        if tracking is None or not tracking.is_current(groups, state, slows=slows):
            tracking = self._tracking = build_tracking(groups, state, SLOW_KEY)
        return tracking.groups

    # ------------------------------------------------------------------ the step
    def step(self, closure: Closure | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """One inner step; after every ``lookahead_k``-th inner step of a group, sync that group.

        The closure, if any, runs exactly once per inner evaluation (through the inner optimizer)
        and the inner step's return value (the loss) is returned.
        """
        self._require_train_mode("step()")
        self._check_groups()
        overdue = [group for group in self.param_groups if group[STEP_KEY] >= group[K_KEY]]
        if overdue:
            self._sync_groups(overdue)
        # The slow copies themselves are read (and checked) only when this step ends with a sync.
        syncing = any(group[STEP_KEY] + 1 >= group[K_KEY] for group in self.param_groups)
        tracked = self._tracked(slows=syncing)
        captured: list[tuple[Tensor, Tensor]] = []
        if closure is None:
            self._capture_initial_weights(tracked, captured)
            loss = _inner_step_without_global_hooks(self.optimizer, None, kwargs)
        else:
            capturing = self._capturing(closure, tracked, captured)
            loss = _inner_step_without_global_hooks(self.optimizer, capturing, kwargs)
        self._store_initial_weights(captured)
        due = []
        for group in self.param_groups:
            group[STEP_KEY] += 1
            if group[STEP_KEY] >= group[K_KEY]:
                due.append(group)
        if due:
            self._sync_groups(due)
        self._after_step()
        return loss

    def _after_step(self) -> None:
        """Runs at the end of every ``step()``, inside it (for subclasses).

        Subclasses extend the step here rather than by overriding ``step``: torch decorates each
        optimizer class's ``step`` with the step hooks, so a ``super().step()`` would run them
        twice.
        """

    def _capturing(
        self, closure: Closure, tracked: list[GroupTracking], captured: list[tuple[Tensor, Tensor]]
    ) -> Closure:
        """Wrap ``closure`` so the first evaluation records the weights it was computed at.

        The inner optimizer evaluates the closure before it changes any parameter, and only then
        is it known which parameters have gradients (LBFGS, for one, computes them inside step).
        """
        first_call = [True]

        def capturing_closure() -> Any:
            loss = closure()
            if first_call[0]:
                first_call[0] = False
                self._capture_initial_weights(tracked, captured)
            return loss

        return capturing_closure

    def _capture_initial_weights(
        self, tracked: list[GroupTracking], captured: list[tuple[Tensor, Tensor]]
    ) -> None:
        """Copy, before they are first updated, the parameters that have a gradient but no slow copy."""
        with torch.no_grad():
            for group in tracked:
                for p in group.untracked:
                    if p.grad is not None:
                        captured.append((p, self._new_slow_copy(p, p)))

    def _store_initial_weights(self, captured: list[tuple[Tensor, Tensor]]) -> None:
        """Insert the captured slow copies, after the inner step created its own state.

        Inserted only now because some inner optimizers create their per-parameter state on the
        first step only if ``state[p]`` is empty.
        """
        state = self.state
        for p, slow in captured:
            state[p][SLOW_KEY] = slow
        if captured and self.pullback_momentum == "pullback":
            ensure_slow_momentum_([p for p, _ in captured], state, self._momentum_keys())

    def _slow_dtype_for(self, p: Tensor) -> torch.dtype:
        wanted = self.slow_dtype
        if wanted is not None and p.is_floating_point() and p.dtype.itemsize < wanted.itemsize:
            return wanted
        return p.dtype

    def _new_slow_copy(self, p: Tensor, source: Tensor) -> Tensor:
        """A fresh slow copy for parameter ``p`` holding ``source``, placed as configured."""
        dtype = self._slow_dtype_for(p)
        device = self.slow_device if self.slow_device is not None else p.device
        source = source.detach()
        if _is_dtensor(p):
            if self.slow_device is not None:
                raise ValueError("slow_device is not supported for DTensor (FSDP2) parameters")
            return source.to(dtype=dtype, copy=True)
        pin = device.type == "cpu" and p.device.type == "cuda"
        slow = torch.empty_like(p, dtype=dtype, device=device, pin_memory=pin)
        slow.copy_(source)
        return slow

    # ------------------------------------------------------------------ the sync
    def _momentum_keys(self) -> tuple[str, ...]:
        return momentum_keys_for(self.optimizer) or ()

    def _use_foreach(self) -> bool:
        return True if self.foreach is None else self.foreach

    def _tracking_of(self, groups: Sequence[dict[str, Any]]) -> list[GroupTracking]:
        by_group = {id(g): t for g, t in zip(self.param_groups, self._tracked(), strict=True)}
        return [by_group[id(group)] for group in groups]

    def _sync_groups(self, groups: list[dict[str, Any]]) -> None:
        """Outer step for the groups whose cycle has ended (one call per step, so that subclasses
        can batch what the groups share, such as communication). Either every group is synced, or
        an exception leaves the failed groups as they were (their counters at ``k``, so that the
        next step syncs them first)."""
        tracked = self._tracking_of(groups)
        if self.check_finite:
            self._require_finite(groups, tracked)
        with torch.no_grad(), _interrupts_deferred():
            for group, tracking in zip(groups, tracked, strict=True):
                self._sync_group(group, tracking)

    def _sync_group(self, group: dict[str, Any], tracking: GroupTracking) -> None:
        """Outer step for one group: slow <- slow + alpha*(fast - slow); fast <- slow; momentum policy.

        Everything it allocates (slow momentum copies, scratch space) is allocated before the
        first tensor changes.
        """
        alpha = group[ALPHA_KEY]
        params, slows = tracking.params, tracking.slows
        state = self.state
        keys = self._momentum_keys()
        if self.pullback_momentum == "pullback":
            ensure_slow_momentum_(params, state, keys)
        foreach = self._use_foreach()
        _sync.sync_(params, slows, alpha, foreach=foreach)
        apply_momentum_policy_(self.pullback_momentum, params, state, keys, alpha, foreach=foreach)
        group[STEP_KEY] = 0
        mark_synced(group, params, self.state)

    def _require_finite(
        self, groups: Sequence[dict[str, Any]], tracked: list[GroupTracking]
    ) -> None:
        group_index = {id(g): i for i, g in enumerate(self.param_groups)}
        for group, tracking in zip(groups, tracked, strict=True):
            for p in local_shards(tracking.params):
                if not bool(torch.isfinite(p).all()):
                    index = next(i for i, q in enumerate(group["params"]) if _same_tensor(q, p))
                    raise FloatingPointError(
                        f"parameter {index} of parameter group {group_index[id(group)]} holds NaN "
                        "or inf at a Lookahead sync (check_finite=True); the sync was not applied and "
                        "the slow weights still hold the last finite point. Restore it with "
                        "load_slow_parameters(model, opt.slow_parameters()) and lower the learning "
                        "rate, or skip the batch"
                    )

    @torch.no_grad()
    def sync(self) -> None:
        """Take an outer step now, in every group, and restart the k-step cycles.

        This changes the training trajectory (it is an extra outer step); use it, for example,
        to end training on a sync before a final evaluation or export.
        """
        self._require_train_mode("sync()")
        self._check_groups()
        self._sync_groups(self.param_groups)

    @torch.no_grad()
    def reset_slow(self) -> None:
        """Re-capture the slow weights from the current parameters and restart the k-step cycles.

        Use it after model surgery or after loading new weights into a model mid-training.
        Slow momentum copies of the ``"pullback"`` policy restart at zero.
        """
        self._require_train_mode("reset_slow()")
        state = self.state
        keys = self._momentum_keys()
        for group, tracking in zip(self.param_groups, self._tracked(), strict=True):
            for p, slow in zip(
                local_shards(tracking.params), local_shards(tracking.slows), strict=True
            ):
                slow.copy_(p)
            for p in tracking.params:
                for key in keys:
                    slow_buffer = state[p].get(slow_momentum_key(key))
                    if isinstance(slow_buffer, Tensor):
                        slow_buffer.zero_()
            group[STEP_KEY] = 0

    # ------------------------------------------------------------------ slow weights in eval mode
    def _exchange(self, to_eval: bool) -> None:
        """Move the slow weights into the parameters (``to_eval``) or the fast weights back."""
        state = self.state
        for group, tracking in zip(self.param_groups, self._tracked(), strict=True):
            if group.get(EVAL_KEY, False) == to_eval:
                continue
            swapped_params: list[Tensor] = []
            swapped_slows: list[Tensor] = []
            stashed: list[Tensor] = []
            for p, slow in zip(tracking.params, tracking.slows, strict=True):
                if same_placement(p, slow):
                    swapped_params.append(p)
                    swapped_slows.append(slow)
                else:
                    stashed.append(p)
            # Slow copies of another dtype/device cannot hold the fast weights without losing
            # bits: the fast weights wait in a buffer of their own, allocated once and reused.
            for p in stashed:
                if to_eval and not isinstance(state[p].get(FAST_STASH_KEY), Tensor):
                    state[p][FAST_STASH_KEY] = torch.empty_like(p)
            _sync.swap_(
                swapped_params, swapped_slows, self._swap_scratch, foreach=self._use_foreach()
            )
            if stashed:
                stashes = [state[p][FAST_STASH_KEY] for p in stashed]
                slow_of = [state[p][SLOW_KEY] for p in stashed]
                if to_eval:
                    torch._foreach_copy_(local_shards(stashes), local_shards(stashed))
                    torch._foreach_copy_(local_shards(stashed), local_shards(slow_of))
                else:
                    torch._foreach_copy_(local_shards(stashed), local_shards(stashes))
            group[EVAL_KEY] = to_eval

    @torch.no_grad()
    def eval(self) -> None:
        """Put the slow weights into the parameters (idempotent). ``step()`` raises until ``train()``.

        The exchange is in place: parameter and slow copy swap values through a small scratch
        buffer, so nothing is allocated after the first call. The HF Trainer and Accelerate call
        ``eval()``/``train()`` on their own.
        """
        self._exchange(to_eval=True)

    @torch.no_grad()
    def train(self) -> None:
        """Put the fast weights back into the parameters (idempotent)."""
        self._exchange(to_eval=False)

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Context manager: the parameters hold the slow weights inside, the fast weights after.

        Safe to nest, and the fast weights come back also when the body raises.
        """
        already_eval = all(group.get(EVAL_KEY, False) for group in self.param_groups)
        self.eval()
        try:
            yield
        finally:
            if not already_eval:
                self.train()

    def _slow_value(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        param_state = self.state.get(p)
        slow = None if param_state is None else param_state.get(SLOW_KEY)
        if not isinstance(slow, Tensor):
            return p  # not updated yet: its slow weights are its current value
        if group.get(EVAL_KEY, False) and same_placement(p, slow):
            return p  # swapped: the parameter holds the slow weights
        return slow

    @torch.no_grad()
    def slow_parameters(self) -> list[Tensor]:
        """Copies of the slow weights, in the parameters' dtype and device, in param-group order.

        ``[p for g in opt.param_groups for p in g["params"]]`` is the matching parameter order;
        [load_slow_parameters][torch_lookahead.load_slow_parameters] copies them into a model (e.g. to ship the slow model).
        """
        return [
            self._slow_value(p, group).detach().to(dtype=p.dtype, device=p.device, copy=True)
            for group in self.param_groups
            for p in group["params"]
        ]

    # ------------------------------------------------------------------ torch.optim contract
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (see ``torch.optim.Optimizer.zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; ``lookahead_k``/``lookahead_alpha`` may be given per group."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        checked = dict(param_group)
        if K_KEY in checked:
            checked[K_KEY] = check_k(checked[K_KEY], K_KEY)
        if ALPHA_KEY in checked:
            checked[ALPHA_KEY] = check_alpha(checked[ALPHA_KEY], ALPHA_KEY)
        if STEP_KEY in checked:
            checked[STEP_KEY] = check_step_count(checked[STEP_KEY], STEP_KEY)
        param_group.update(checked)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (standard format; slow weights in per-parameter state).

        The inner optimizer's own ``state_dict`` makes it (it may be overridden, and runs the
        inner optimizer's hooks); the state-dict hooks registered on the wrapper run around it,
        as ``torch.optim.Optimizer.state_dict`` runs them.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.optimizer.state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this wrapper or of the plain inner optimizer.

        The checkpoint's per-group ``lookahead_k``, ``lookahead_alpha`` and counter win over the
        constructor's (as the checkpoint's learning rates do); ``defaults`` then reports them (a
        warning says when they differ from the constructor's). A plain inner-optimizer checkpoint
        starts the slow weights from the current weights at the next step. Slow weights that a
        plain optimizer carried on while it stepped without Lookahead are detected where the
        inner optimizer counts its steps, dropped with a warning, and captured again.

        Everything is checked before anything is loaded: a checkpoint that does not fit raises
        ``ValueError`` or ``TypeError`` and leaves the optimizer as it was. Loading in eval mode
        raises (call ``train()`` first).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be an optimizer state dict (a dict), got {type(state_dict).__name__}"
            )
        self._require_train_mode("load_state_dict()")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_slows = check_loadable(state_dict, self.param_groups)
        before = {K_KEY: self.defaults.get(K_KEY), ALPHA_KEY: self.defaults.get(ALPHA_KEY)}
        self.optimizer.load_state_dict(state_dict)
        self._place_loaded_slow_copies(saved_slows)
        self._check_groups()
        adopt_checkpoint_defaults(self.param_groups, self.defaults, before)
        drop_stale_slow_weights(self.param_groups, self.state)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _place_loaded_slow_copies(self, saved: Sequence[tuple[Tensor, Tensor]]) -> None:
        # Optimizer.load_state_dict casts every state tensor to its parameter's dtype and device;
        # slow copies follow this wrapper's slow_dtype/slow_device instead (fp32 stays fp32).
        state = self.state
        for p, saved_slow in saved:
            current = state[p][SLOW_KEY]
            wanted_device = self.slow_device if self.slow_device is not None else p.device
            if current.dtype != self._slow_dtype_for(p) or current.device != wanted_device:
                state[p][SLOW_KEY] = self._new_slow_copy(p, saved_slow)

    # ------------------------------------------------------------------ pickling, repr
    def __getstate__(self) -> dict[str, Any]:
        # Like Optimizer.__getstate__, hooks are not pickled; nor is the decorated `step` a
        # scheduler may have put on the instance, nor the caches.
        return {
            "optimizer": self.optimizer,
            "pullback_momentum": self.pullback_momentum,
            "slow_dtype": self.slow_dtype,
            "slow_device": self.slow_device,
            "foreach": self.foreach,
            "check_finite": self.check_finite,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        groups = self.param_groups
        k_values = sorted({g.get(K_KEY) for g in groups}, key=str) or [self.defaults.get(K_KEY)]
        alpha_values = sorted({g.get(ALPHA_KEY) for g in groups}, key=str) or [
            self.defaults.get(ALPHA_KEY)
        ]
        k_text = k_values[0] if len(k_values) == 1 else k_values
        alpha_text = alpha_values[0] if len(alpha_values) == 1 else alpha_values
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return (
            f"Lookahead(k={k_text}, alpha={alpha_text}, pullback_momentum={self.pullback_momentum!r},\n"
            f"  optimizer=\n{inner}\n)"
        )


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a is b or (_is_dtensor(a) and a.to_local() is b)  # type: ignore[attr-defined]


@torch.no_grad()
def load_slow_parameters(
    params: Iterable[Tensor] | torch.nn.Module, slow: Sequence[Tensor]
) -> None:
    """Copy tensors from [slow_parameters][torch_lookahead.Lookahead.slow_parameters] into ``params`` in place, in order.

    ``params`` is the parameter list in the optimizer's param-group order (or a module whose
    ``parameters()`` have that order, the usual case for ``Lookahead(Opt(model.parameters()))``).
    """
    targets = list(params.parameters() if isinstance(params, torch.nn.Module) else params)
    if len(targets) != len(slow):
        raise ValueError(f"got {len(slow)} slow tensors for {len(targets)} parameters")
    for index, (target, value) in enumerate(zip(targets, slow, strict=True)):
        if target.shape != value.shape:
            raise ValueError(
                f"slow tensor {index} has shape {tuple(value.shape)}, parameter {index} has "
                f"shape {tuple(target.shape)}"
            )
        target.copy_(value)
