"""The Lookahead wrapper: its states, its operations and the ``torch.optim.Optimizer`` contract.

docs/design.md has the state table: what every public operation does in every state. Everything
the wrapper keeps lives in the inner optimizer's own structures, so every tool that saves, moves,
shards or proxies an optimizer sees it; each tensor is named by what it holds:

* per parameter group: ``lookahead_k``, ``lookahead_alpha``, ``lookahead_step`` (the position in
  the k-cycle) and ``lookahead_eval_mode`` (whether the parameters hold the slow weights);
* per parameter, in ``optimizer.state[p]``: in train mode ``lookahead_slow`` (the slow weights,
  once captured); in eval mode ``lookahead_fast`` (the fast weights), and ``lookahead_slow`` only
  where its dtype or device differs from the parameter's (the parameter then holds them rounded);
  the slow momentum copies of the ``"pullback"`` policy.

Nothing is derived from that state between calls: every operation scans the groups, as
``torch.optim``'s ``_init_group`` does. Not saved: an operation an exception interrupted
(``_plan``, see ``torch_lookahead._sync``), which every public operation finishes first.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import compress, repeat
from typing import Any, TypedDict, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead._checks import check_alpha, check_k, check_step_count
from torch_lookahead._keys import (
    ALPHA_KEY,
    EVAL_KEY,
    FAST_KEY,
    K_KEY,
    SLOW_KEY,
    STEP_KEY,
    SYNCED_AT_KEY,
)
from torch_lookahead._loading import (
    check_loadable,
    inner_step_count,
    warn_if_stepped_without_lookahead,
)
from torch_lookahead._sync import Plan, Scratch, Step, swap_steps, sync_steps
from torch_lookahead._tensors import local_shards, same_placements, same_shapes
from torch_lookahead.pullback import (
    PULLBACK_MODES,
    PullbackMode,
    momentum_buffers,
    momentum_keys_for,
    registered_momentum_classes,
    slow_momentum_key,
)

__all__ = [
    "ALPHA_KEY",
    "EVAL_KEY",
    "FAST_KEY",
    "K_KEY",
    "SLOW_KEY",
    "STEP_KEY",
    "SYNCED_AT_KEY",
    "Lookahead",
    "LookaheadOptions",
    "load_slow_parameters",
]

Closure = Callable[[], Any]
_NO_STATE: dict[str, Any] = {}  # stands for a parameter without state; never written
_placement = operator.attrgetter("device", "dtype")
_shape = operator.attrgetter("shape")


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
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(
            f"slow_device must be None, a str, a device index or a torch.device, got {device!r}"
        )
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"slow_device={device!r} does not name a device here: {error}") from None
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


def _held(
    params: Sequence[Tensor], state: Any, key: str
) -> tuple[list[Tensor], list[Any], list[dict[str, Any]]]:
    """The parameters whose state holds ``key``, those entries and the state dicts (C-level scan)."""
    states = list(map(state.get, params, repeat(_NO_STATE)))
    held = list(map(dict.get, states, repeat(key)))
    present = list(map(operator.is_not, held, repeat(None)))
    if all(present):
        return list(params), held, states
    return (
        list(compress(params, present)),
        list(compress(held, present)),
        list(compress(states, present)),
    )


def _require_tensors_like(
    group: dict[str, Any], where: int, params: list[Tensor], held: list[Any], key: str
) -> None:
    """Raise ``ValueError`` before anything changes unless every entry is a tensor of its
    parameter's shape (a parameter resized through ``.data``, a value assigned by hand)."""
    if all(map(isinstance, held, repeat(Tensor))) and same_shapes(held, params):
        return
    for p, value in zip(params, held, strict=True):
        if not isinstance(value, Tensor) or value.shape != p.shape:
            found = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)
            index = next(i for i, q in enumerate(group["params"]) if q is p)
            raise ValueError(
                f"state[{key!r}] of parameter {index} in parameter group {where} must be a tensor "
                f"of the parameter's shape {tuple(p.shape)}, got {found}; after changing a "
                "parameter's shape, call reset_slow()"
            )


def _store(states: list[dict[str, Any]], key: str, values: list[Tensor]) -> None:
    for param_state, value in zip(states, values, strict=True):
        param_state[key] = value


def _rename(states: list[dict[str, Any]], old: str, new: str) -> None:
    """Move each ``state[old]`` to ``state[new]`` (idempotent: a second run finds nothing to move)."""
    for param_state in states:
        value = param_state.get(old)
        if value is not None:
            param_state[new] = value
            del param_state[old]


def _drop(states: list[dict[str, Any]], key: str) -> None:
    for param_state in states:
        param_state.pop(key, None)


def _copy_pairs(targets: list[Tensor], sources: list[Tensor]) -> None:
    if targets:
        torch._foreach_copy_(local_shards(targets), local_shards(sources))


def _zero(tensors: list[Tensor]) -> None:
    if tensors:
        torch._foreach_zero_(local_shards(tensors))


def _set(groups: list[dict[str, Any]], key: str, values: list[Any]) -> None:
    for group, value in zip(groups, values, strict=True):
        group[key] = value


def _inner_step(
    optimizer: Optimizer,
    closure: Closure | None,
    kwargs: dict[str, Any],
    stepped: Callable[[], None],
) -> Any:
    """``optimizer.step(closure, **kwargs)`` with its own step hooks but not the global ones, and
    ``stepped()`` called as soon as the inner step has returned, before its post-hooks.

    ``torch.optim`` wraps every optimizer class's ``step`` so that it runs the global step hooks
    and the instance's hooks. The wrapper's own ``step`` already ran the global hooks for this
    user step, so the inner step is called through the undecorated function, with the inner
    optimizer's instance hooks around it in torch's order. An LR scheduler built on the inner
    optimizer wraps its ``step`` on the instance only to record that it was called; that record is
    made here. Where the decoration is not there, or ``step`` was replaced on the instance in
    another way, the plain call is made.
    """
    if closure is not None:
        kwargs = {"closure": closure, **kwargs}
    step = type(optimizer).step
    undecorated = getattr(step, "__wrapped__", None)
    replaced = vars(optimizer).get("step")
    if replaced is not None and getattr(replaced, "_wrapped_by_lr_sched", False):
        optimizer._opt_called = True  # type: ignore[attr-defined]  # what its wrapper records
        replaced = None
    if undecorated is None or not getattr(step, "hooked", False) or replaced is not None:
        out = optimizer.step(**kwargs)
        stepped()
        return out
    args: tuple[Any, ...] = (optimizer,)
    for pre_hook in optimizer._optimizer_step_pre_hooks.values():
        result = pre_hook(optimizer, args, kwargs)
        if result is not None:
            args, kwargs = result
    with torch.autograd.profiler.record_function(f"Optimizer.step#{type(optimizer).__name__}.step"):
        out = undecorated(*args, **kwargs)
    stepped()
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
    ``optimizer.state[p]["lookahead_slow"]`` (docs/design.md has the state table); ``k``,
    ``alpha`` and the step counter live in each
    parameter group (``lookahead_k``, ``lookahead_alpha``, ``lookahead_step``), so a group may carry
    its own values and a scheduler may change them: every ``step()`` checks them first, as the
    constructor does, and raises before anything changes. A group whose counter has reached its
    ``k`` when a step begins (k was lowered below the steps already taken, or an exception
    stopped the previous step between its inner step and its sync) is synced first.

    An operation that changes tensors (the sync, ``eval()``/``train()``, ``reset_slow()``) that
    an exception interrupts (Ctrl-C, out of memory, an error from torch or a hook) is finished by
    the next call of any operation, with the result of one uninterrupted call: nothing is applied
    twice or lost. A gradient computed before a sync that completes at the next ``step()`` is then
    one sync stale, unless the step takes a closure.

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
            of ``eval()``/``train()``. Default (None): yes, on every device. Unlike
            ``torch.optim``, whose ``None`` takes the per-tensor loop on the CPU, because on
            the CPU the multi-tensor kernels are the faster ones for this update
            (docs/benchmarks.md).
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
        optimizer.defaults.update({K_KEY: k, ALPHA_KEY: alpha, STEP_KEY: 0})
        self._check_groups()
        # Groups that carry values of their own (set by the user, or left by an earlier Lookahead
        # or a loaded checkpoint) keep them, as a checkpoint's do: said, not silent.
        self._adopt_group_values({K_KEY: k, ALPHA_KEY: alpha}, "the parameter groups'")
        warn_if_stepped_without_lookahead(self.param_groups, self.state)
        for group in self.param_groups:
            group.pop(SYNCED_AT_KEY, None)

    def _init_runtime(self) -> None:
        """What is not pickled: the hook dictionaries, torch's step decoration, the scratch
        buffers and an interrupted operation.

        ``Optimizer.__init__`` would build a second list of parameter groups, so the wrapper runs
        what ``Optimizer.__setstate__`` runs for an unpickled optimizer instead.
        """
        self._plan: Plan | None = None
        self._scratch: Scratch = {}
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

    @property
    def in_eval_mode(self) -> bool:
        """Whether the parameters of any group hold the slow weights (``eval()`` without
        ``train()``, or an eval-form checkpoint loaded). ``step()``, ``sync()``, ``reset_slow()``
        and ``load_state_dict()`` raise while it is true; a group added since is in train mode."""
        return any(group.get(EVAL_KEY, False) for group in self.param_groups)

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

    # ------------------------------------------------------------------ checks and bookkeeping
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
            updates.append((group, update))
        for group, update in updates:
            group.update(update)

    def _adopt_group_values(self, before: dict[str, Any], whose: str) -> None:
        """Make ``defaults`` report the groups' k and alpha where all groups agree, with a warning
        where they differ from ``before`` (the constructor's, or those in place before a load)."""
        groups = self.param_groups
        for key in (K_KEY, ALPHA_KEY):
            values = {group[key] for group in groups}
            if len(values) != 1:
                continue
            (value,) = values
            if value != before[key]:
                warnings.warn(
                    f"{whose} {key}={value} replaces this optimizer's {before[key]} (values "
                    "in the parameter groups win, as their learning rates do)",
                    UserWarning,
                    stacklevel=3,
                )
            self.defaults[key] = value

    def _require_train_mode(self, what: str) -> None:
        if self.in_eval_mode:
            raise RuntimeError(
                f"Lookahead.{what} was called in eval mode (the parameters hold the slow weights); "
                "call optimizer.train() first"
            )

    def _finish(self) -> None:
        """Finish the operation an exception interrupted, if any (see ``torch_lookahead._sync``)."""
        if self._plan is not None:
            self._plan.run()
            self._plan = None

    def _run(self, steps: list[Step]) -> None:
        """Run an operation's steps; kept as the pending operation until they have all run."""
        self._finish()
        self._plan = Plan(steps)
        self._finish()

    def _sync_overdue(self) -> None:
        """Complete the sync of every group at k or more: a step stopped between its inner step
        and its sync (or a lowered ``lookahead_k``). Every operation that steps or syncs runs this
        first, as it finishes a pending plan first."""
        overdue = [group for group in self.param_groups if group[STEP_KEY] >= group[K_KEY]]
        if overdue:
            self.outer_step(overdue)

    def _use_foreach(self) -> bool:
        return True if self.foreach is None else self.foreach

    def _index(self, group: dict[str, Any]) -> int:
        return next(i for i, g in enumerate(self.param_groups) if g is group)

    def _slow_placement(self, p: Tensor) -> tuple[torch.device, torch.dtype]:
        wanted = self.slow_dtype
        dtype = p.dtype
        if wanted is not None and p.is_floating_point() and dtype.itemsize < wanted.itemsize:
            dtype = wanted
        return (self.slow_device if self.slow_device is not None else p.device), dtype

    def _new_slow_copy(self, p: Tensor, source: Tensor) -> Tensor:
        """A fresh slow copy for parameter ``p`` holding ``source``, placed as configured."""
        device, dtype = self._slow_placement(p)
        source = source.detach()
        with torch.inference_mode(False), torch.no_grad():
            if hasattr(p, "to_local"):  # a DTensor (FSDP2)
                if self.slow_device is not None:
                    raise ValueError("slow_device is not supported for DTensor (FSDP2) parameters")
                return source.to(dtype=dtype, copy=True)
            pin = device.type == "cpu" and p.device.type == "cuda"
            slow = torch.empty_like(p, dtype=dtype, device=device, pin_memory=pin)
            slow.copy_(source)
            return slow

    def _replaced_slow_copies(
        self, params: list[Tensor], slows: list[Tensor], states: list[dict[str, Any]]
    ) -> tuple[list[Tensor], list[Step]]:
        """Slow copies placed where this optimizer wants them (after ``model.double()``, or a
        checkpoint of another ``slow_dtype``), allocated now, and the step that stores them."""
        unconfigured = self.slow_dtype is None and self.slow_device is None
        if unconfigured and same_placements(params, slows):
            return slows, []
        moved = [
            i
            for i, (p, s) in enumerate(zip(params, slows, strict=True))
            if _placement(s) != self._slow_placement(p)
        ]
        if not moved:
            return slows, []
        slows = list(slows)
        for i in moved:
            slows[i] = self._new_slow_copy(params[i], slows[i])
        step = partial(_store, [states[i] for i in moved], SLOW_KEY, [slows[i] for i in moved])
        return slows, [step]

    # ------------------------------------------------------------------ the step
    def step(self, closure: Closure | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """One inner step; after every ``lookahead_k``-th inner step of a group, sync that group.

        The closure, if any, runs exactly once per inner evaluation (through the inner optimizer)
        and the inner step's return value (the loss) is returned. The inner step is counted as
        soon as it returns, so an exception from a step post-hook or from the sync leaves a
        counter that the next ``step()`` completes (it syncs first, without a second inner step).
        """
        self._finish()
        self._require_train_mode("step()")
        self._check_groups()
        groups = self.param_groups
        self._sync_overdue()
        for group in groups:
            if group[STEP_KEY] + 1 >= group[K_KEY]:
                self.slow_pairs(
                    group
                )  # a slow copy that cannot sync raises before anything changes
        state = self.state
        missing: list[Tensor] = []
        for group in groups:
            params = group["params"]
            slows = map(dict.get, map(state.get, params, repeat(_NO_STATE)), repeat(SLOW_KEY))
            missing.extend(compress(params, map(operator.is_, slows, repeat(None))))
        captured: list[tuple[Tensor, Tensor]] = []

        def capture() -> None:
            # phi_0: the weights before their first update, once it is known which will change.
            captured.extend((p, self._new_slow_copy(p, p)) for p in missing if p.grad is not None)

        def stepped() -> None:
            # Stored only now: some inner optimizers create their state only if state[p] is empty.
            for p, slow in captured:
                state[p][SLOW_KEY] = slow
            for group in groups:
                group[STEP_KEY] += 1

        if closure is None:
            capture()
            loss = _inner_step(self.optimizer, None, kwargs, stepped)
        else:
            first_call = [True]

            def capturing_closure() -> Any:
                loss = closure()
                if first_call[0]:  # evaluated before the inner optimizer changes a parameter
                    first_call[0] = False
                    capture()
                return loss

            loss = _inner_step(self.optimizer, capturing_closure, kwargs, stepped)
        due = [group for group in groups if group[STEP_KEY] >= group[K_KEY]]
        if due:
            self.outer_step(due)
        self.after_step()
        return loss

    # ------------------------------------------------------------------ extension surface
    def after_step(self) -> None:
        """Called at the end of every ``step()``, inside it (for subclasses; does nothing here).

        Subclasses extend the step here rather than by overriding ``step``: torch decorates each
        optimizer class's ``step`` with the step hooks, so a ``super().step()`` would run them
        twice.
        """

    def cycle_start(self, group: dict[str, Any]) -> int:
        """The counter ``group`` gets after ``sync()`` or ``reset_slow()``: 0 here. Subclasses
        return another phase (streaming fragments keep theirs)."""
        return 0

    def slow_pairs(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The group's parameters that have slow copies, and those copies, in group order (train
        mode). Raises ``ValueError`` for a slow copy that is not a tensor of its parameter's shape."""
        params, slows, _ = _held(group["params"], self.state, SLOW_KEY)
        _require_tensors_like(group, self._index(group), params, slows, SLOW_KEY)
        return params, slows

    def require_finite(self, groups: Sequence[dict[str, Any]]) -> None:
        """Raise ``FloatingPointError`` naming the first parameter of ``groups`` with a slow copy
        that holds NaN or inf (the check of ``check_finite=True``, run before a sync changes
        anything)."""
        for group in groups:
            params, _ = self.slow_pairs(group)
            for p in params:
                if not bool(torch.isfinite(local_shards([p])[0]).all()):
                    index = next(i for i, q in enumerate(group["params"]) if q is p)
                    raise FloatingPointError(
                        f"parameter {index} of parameter group {self._index(group)} holds NaN or "
                        "inf at a Lookahead sync (check_finite=True); the sync was not applied and "
                        "the slow weights still hold the last finite point. Restore it with "
                        "load_slow_parameters(model, opt.slow_parameters()) and lower the learning "
                        "rate, or skip the batch"
                    )

    def outer_step(
        self, groups: list[dict[str, Any]], restart: Callable[[dict[str, Any]], int] | None = None
    ) -> None:
        """The outer step of ``groups`` (the paper's rule, in ``torch_lookahead._sync``)::

            slow <- slow + alpha * (fast - slow);  fast <- slow;  the momentum policy

        then each group's counter restarts (at 0, or at ``restart(group)``). ``step()`` calls it
        for the groups whose cycle has ended, ``sync()`` for all; subclasses override it to replace
        the local rule (e.g. by an exchange across workers) and call it for the local part. It is
        resumable: every check and allocation comes first, and after an exception the next
        operation finishes it.
        """
        if self.check_finite:
            self.require_finite(groups)
        self._run(self._outer_step_steps(groups, restart))

    def _outer_step_steps(
        self, groups: list[dict[str, Any]], restart: Callable[[dict[str, Any]], int] | None
    ) -> list[Step]:
        state, foreach = self.state, self._use_foreach()
        keys = (momentum_keys_for(self.optimizer) or ()) if self.pullback_momentum != "none" else ()
        steps: list[Step] = []
        for group in groups:
            params, slows, states = _held(group["params"], state, SLOW_KEY)
            _require_tensors_like(group, self._index(group), params, slows, SLOW_KEY)
            slows, moved = self._replaced_slow_copies(params, slows, states)
            steps += moved
            fast, slow = list(params), list(slows)
            dicts, buffers, names = momentum_buffers(params, state, keys)
            if self.pullback_momentum == "pullback":
                # The pullback is the outer step with the momentum as fast and its slow copy
                # (zeros at first, allocated here) as slow.
                slow_keys = list(map(slow_momentum_key, names))
                held: list[Any] = list(map(dict.get, dicts, slow_keys))
                new = [i for i, h in enumerate(held) if not isinstance(h, Tensor)]
                with torch.inference_mode(False):
                    for i in new:
                        held[i] = torch.zeros_like(buffers[i])
                for i in new:
                    steps.append(partial(dicts[i].__setitem__, slow_keys[i], held[i]))
                fast += buffers
                slow += held
            steps += sync_steps(fast, slow, group[ALPHA_KEY], self._scratch, foreach=foreach)
            if self.pullback_momentum == "reset":
                steps.append(partial(_zero, buffers))
        counters = [0 if restart is None else restart(group) for group in groups]
        steps.append(partial(_set, groups, STEP_KEY, counters))
        return steps

    @torch.no_grad()
    def sync(self) -> None:
        """Take an outer step now, in every group, and restart the k-step cycles.

        This changes the training trajectory (it is an extra outer step); use it, for example,
        to end training on a sync before a final evaluation or export.
        """
        self._finish()
        self._require_train_mode("sync()")
        self._check_groups()
        self._sync_overdue()  # so sync() after a step stopped before its sync is step(); sync()
        self.outer_step(self.param_groups, self.cycle_start)

    @torch.no_grad()
    def reset_slow(self) -> None:
        """Re-capture the slow weights from the current parameters and restart the k-step cycles.

        Use it after model surgery or after loading new weights into a model mid-training.
        Slow momentum copies of the ``"pullback"`` policy restart at zero.
        """
        self._finish()
        self._require_train_mode("reset_slow()")
        self._check_groups()
        state = self.state
        keys = momentum_keys_for(self.optimizer) or ()
        steps: list[Step] = []
        for group in self.param_groups:
            params, slows, states = _held(group["params"], state, SLOW_KEY)
            fresh = [
                i
                for i, (p, s) in enumerate(zip(params, slows, strict=True))
                if not isinstance(s, Tensor)
                or s.shape != p.shape
                or _placement(s) != self._slow_placement(p)
            ]
            if fresh:  # resized or misplaced: a new copy
                new = [self._new_slow_copy(params[i], params[i]) for i in fresh]
                steps.append(partial(_store, [states[i] for i in fresh], SLOW_KEY, new))
            kept = sorted(set(range(len(params))) - set(fresh))
            steps.append(partial(_copy_pairs, [slows[i] for i in kept], [params[i] for i in kept]))
            slow_buffers = [
                param_state[slow_momentum_key(key)]
                for param_state in states
                for key in keys
                if isinstance(param_state.get(slow_momentum_key(key)), Tensor)
            ]
            steps.append(partial(_zero, slow_buffers))
        groups = self.param_groups
        steps.append(partial(_set, groups, STEP_KEY, [self.cycle_start(g) for g in groups]))
        self._run(steps)

    # ------------------------------------------------------------------ slow weights in eval mode
    def _switch(self, to_eval: bool, groups: list[dict[str, Any]]) -> None:
        """Put the slow weights into the parameters of ``groups`` (``to_eval``) or the fast ones back.

        A slow copy of the parameter's dtype and device trades values with it through the scratch
        buffer and is renamed ``lookahead_fast``; one of another placement stays, and the fast
        weights go to a new ``lookahead_fast`` of the parameter's (docs/design.md).
        """
        self._finish()
        groups = [group for group in groups if group.get(EVAL_KEY, False) != to_eval]
        if not groups:
            return
        state, foreach = self.state, self._use_foreach()
        key = SLOW_KEY if to_eval else FAST_KEY
        params: list[Tensor] = []
        held: list[Tensor] = []
        states: list[dict[str, Any]] = []
        for group in groups:
            group_params, group_held, group_states = _held(group["params"], state, key)
            _require_tensors_like(group, self._index(group), group_params, group_held, key)
            params += group_params
            held += group_held
            states += group_states
        if to_eval:  # swapped where the slow copy has the parameter's placement
            swapped = (
                [True] * len(params)
                if same_placements(params, held)  # the usual case, at C speed
                else list(map(operator.eq, map(_placement, params), map(_placement, held)))
            )
        else:  # swapped where the slow weights are in the parameter (no lookahead_slow kept)
            swapped = [SLOW_KEY not in param_state for param_state in states]
        copied = list(map(operator.not_, swapped))
        copied_params = list(compress(params, copied))
        copied_states = list(compress(states, copied))
        swapped_states = list(compress(states, swapped))
        steps: list[Step] = []
        if to_eval:
            with torch.inference_mode(False):
                stashes = [torch.empty_like(p) for p in copied_params]
            steps.append(partial(_copy_pairs, stashes, copied_params))
            steps.append(partial(_copy_pairs, copied_params, list(compress(held, copied))))
        else:
            steps.append(partial(_copy_pairs, copied_params, list(compress(held, copied))))
        steps += swap_steps(
            list(compress(params, swapped)),
            list(compress(held, swapped)),
            self._scratch,
            foreach=foreach,
        )
        if to_eval:
            steps.append(partial(_store, copied_states, FAST_KEY, stashes))
            steps.append(partial(_rename, swapped_states, SLOW_KEY, FAST_KEY))
        else:
            steps.append(partial(_drop, copied_states, FAST_KEY))
            steps.append(partial(_rename, swapped_states, FAST_KEY, SLOW_KEY))
            steps.append(
                partial(self._place_slow_copies, list(compress(params, swapped)), swapped_states)
            )
        steps.append(partial(_set, groups, EVAL_KEY, [to_eval] * len(groups)))
        self._run(steps)

    def _place_slow_copies(self, params: list[Tensor], states: list[dict[str, Any]]) -> None:
        slows = [param_state[SLOW_KEY] for param_state in states]
        _, moved = self._replaced_slow_copies(params, slows, states)
        for step in moved:
            step()

    @torch.no_grad()
    def eval(self) -> None:
        """Put the slow weights into the parameters (idempotent). ``step()`` raises until ``train()``.

        Resumable like the sync; nothing is allocated after the first call except for slow copies
        of another dtype or device. The HF Trainer and Accelerate call ``eval()``/``train()`` on
        their own.
        """
        self._switch(True, self.param_groups)

    @torch.no_grad()
    def train(self) -> None:
        """Put the fast weights back into the parameters (idempotent)."""
        self._switch(False, self.param_groups)

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Context manager: the parameters hold the slow weights inside, the fast weights after.

        Safe to nest; the groups it switched (and only those) switch back, also when the body
        raises.
        """
        switched = [group for group in self.param_groups if not group.get(EVAL_KEY, False)]
        with torch.no_grad():
            self._switch(True, switched)
        try:
            yield
        finally:
            with torch.no_grad():
                self._switch(False, switched)

    @torch.no_grad()
    def slow_parameters(self) -> list[Tensor]:
        """Copies of the slow weights, in the parameters' dtype and device, in param-group order.

        ``[p for g in opt.param_groups for p in g["params"]]`` is the matching parameter order;
        [load_slow_parameters][torch_lookahead.load_slow_parameters] copies them into a model (e.g. to ship the slow model).
        """
        self._finish()
        state = self.state
        values = []
        for group in self.param_groups:
            for p in group["params"]:
                slow = state.get(p, _NO_STATE).get(SLOW_KEY)
                # No lookahead_slow: not updated yet, or (eval mode) the parameter holds them.
                source = slow if isinstance(slow, Tensor) else p
                values.append(source.detach().to(dtype=p.dtype, device=p.device, copy=True))
        return values

    def eval_state_dict(
        self, state_dict: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[tuple[Tensor, Tensor]]]:
        """A state dict as ``eval()`` would have written it, and the slow weights for the model.

        ``state_dict`` (default: ``self.state_dict()``) is this optimizer's, taken now. Returned:
        a new state dict in the eval form (docs/design.md: groups flagged
        ``lookahead_eval_mode``, the fast weights under ``lookahead_fast`` (the parameter itself,
        not a copy), ``lookahead_slow`` only where its dtype or device differs from the
        parameter's), and the (parameter, slow weights) pairs that the model's saved state must
        hold instead of the parameters. Nothing live changes; groups already in eval mode are
        left as they are. Integrations use it to write an eval-form checkpoint without swapping.
        """
        self._finish()
        saved = self.state_dict() if state_dict is None else state_dict
        saved_state = dict(saved["state"])
        pairs: list[tuple[Tensor, Tensor]] = []
        for group, saved_group in zip(self.param_groups, saved["param_groups"], strict=True):
            if group.get(EVAL_KEY, False):
                continue
            for p, key in zip(group["params"], saved_group["params"], strict=True):
                slow = self.state.get(p, _NO_STATE).get(SLOW_KEY)
                if not isinstance(slow, Tensor) or key not in saved_state:
                    continue
                entry = {**saved_state[key], FAST_KEY: p.detach()}
                if _placement(slow) == _placement(p):
                    del entry[SLOW_KEY]
                    pairs.append((p, slow))
                else:
                    pairs.append((p, slow.to(device=p.device, dtype=p.dtype)))
                saved_state[key] = entry
        groups = [{**g, EVAL_KEY: True} for g in saved["param_groups"]]
        return {**saved, "state": saved_state, "param_groups": groups}, pairs

    # ------------------------------------------------------------------ torch.optim contract
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (see ``torch.optim.Optimizer.zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; ``lookahead_k``/``lookahead_alpha`` may be given per group."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        checked = dict(param_group)
        for key, check in (
            (K_KEY, check_k),
            (ALPHA_KEY, check_alpha),
            (STEP_KEY, check_step_count),
        ):
            if key in checked:
                checked[key] = check(checked[key], key)
        param_group.update(checked)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (standard format; slow weights in per-parameter state).

        Each saved group also records ``lookahead_synced_at`` (the inner step count of its first
        parameter with slow weights at its last sync), so that a load can warn about a detour
        through a plain optimizer. The inner optimizer's own ``state_dict`` makes it (it may be
        overridden, and runs the inner optimizer's hooks); the state-dict hooks registered on the
        wrapper run around it, as ``torch.optim.Optimizer.state_dict`` runs them.
        """
        self._finish()
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.optimizer.state_dict()
        for saved, group in zip(state_dict["param_groups"], self.param_groups, strict=True):
            count = inner_step_count(group["params"], self.state)
            saved[SYNCED_AT_KEY] = -1 if count is None else count - group.get(STEP_KEY, 0)
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
        starts the slow weights from the current weights at the next step. A Lookahead checkpoint
        that a plain optimizer stepped on is warned about (docs/checkpoints.md); its slow weights
        are kept. Slow copies keep this optimizer's ``slow_dtype``/``slow_device``.

        Everything is checked before anything is loaded: a checkpoint that does not fit raises
        ``ValueError`` or ``TypeError`` and leaves the optimizer as it was. Loading in eval mode
        raises (call ``train()`` first); an eval-form checkpoint loads into eval mode.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be an optimizer state dict (a dict), got {type(state_dict).__name__}"
            )
        self._finish()
        self._require_train_mode("load_state_dict()")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_slows = check_loadable(state_dict, self.param_groups)
        warn_if_stepped_without_lookahead(state_dict["param_groups"], state_dict["state"])
        before = {K_KEY: self.defaults.get(K_KEY), ALPHA_KEY: self.defaults.get(ALPHA_KEY)}
        # Optimizer.load_state_dict casts every state tensor to its parameter's dtype and device;
        # slow copies follow this wrapper's slow_dtype/slow_device instead (fp32 stays fp32).
        # They are made from the saved values before anything is loaded, so that an error here
        # leaves the optimizer as it was.
        placed = [
            (p, self._new_slow_copy(p, saved_slow))
            for p, saved_slow in saved_slows
            if _placement(p) != self._slow_placement(p)
        ]
        self.optimizer.load_state_dict(state_dict)
        state = self.state
        for p, slow in placed:
            state[p][SLOW_KEY] = slow
        for group in self.param_groups:
            group.pop(SYNCED_AT_KEY, None)
        self._check_groups()
        self._adopt_group_values(before, "the checkpoint's")
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # ------------------------------------------------------------------ pickling, repr
    def __getstate__(self) -> dict[str, Any]:
        # Like Optimizer.__getstate__, hooks are not pickled; nor is the decorated `step` a
        # scheduler may have put on the instance, nor the scratch buffers.
        self._finish()
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
