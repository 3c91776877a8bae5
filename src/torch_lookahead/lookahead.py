"""The Lookahead wrapper: its state, its operations and the ``torch.optim.Optimizer`` contract.

docs/design.md is the specification: the state table, what every public operation does in every
state, the resumable plans and the checkpoint form. All state lives in the inner optimizer's own
structures, each tensor named by what it holds (``torch_lookahead._checks``); nothing is derived
from it between calls: every operation scans the groups, as ``torch.optim``'s ``_init_group`` does.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import chain, compress, repeat
from typing import Any, TypedDict

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead._checks import (
    ALPHA_KEY,
    EVAL_KEY,
    FAST_KEY,
    GROUP_CHECKS,
    K_KEY,
    SLOW_KEY,
    STEP_KEY,
    SYNCED_AT_KEY,
    check_alpha,
    check_k,
    check_loadable,
    check_options,
    check_step_count,
    inner_step_count,
    warn_if_detoured,
)
from torch_lookahead._sync import Plan, PlanStep, Scratch, Step, swap_steps, sync_steps
from torch_lookahead._tensors import local_shards, same_placements, same_shapes
from torch_lookahead.pullback import (
    PullbackMode,
    momentum_buffers,
    momentum_keys_for,
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


class LookaheadOptions(TypedDict, total=False):
    """Keyword options of [Lookahead][torch_lookahead.Lookahead] that ``Ranger`` and
    ``DistributedLookahead`` pass through unchanged (a new option is added here once)."""

    pullback_momentum: PullbackMode
    slow_dtype: torch.dtype | None
    slow_device: str | torch.device | None
    check_finite: bool


def _held(
    group: dict[str, Any], where: int, state: Any, key: str, states: list[Any] | None = None
) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
    """The group's parameters whose state holds ``key``, those entries and the state dicts (given
    as ``states`` if known). Raises ``ValueError`` before anything changes unless every entry is
    a tensor of its parameter's shape (a parameter resized through ``.data``, a value assigned by
    hand)."""
    params = group["params"]
    if states is None:
        states = list(map(state.get, params, repeat(_NO_STATE)))
    held: list[Any] = list(map(dict.get, states, repeat(key)))
    if not all(map(operator.is_not, held, repeat(None))):
        present = list(map(operator.is_not, held, repeat(None)))
        params = list(compress(params, present))
        held = list(compress(held, present))
        states = list(compress(states, present))
    try:
        fits = same_shapes(held, params)
    except TypeError:  # an entry that is not a tensor
        fits = False
    if not fits:
        for p, value in zip(params, held, strict=True):
            if not isinstance(value, Tensor) or value.shape != p.shape:
                found = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)
                index = next(i for i, q in enumerate(group["params"]) if q is p)
                raise ValueError(
                    f"state[{key!r}] of parameter {index} in parameter group {where} must be a "
                    f"tensor of the parameter's shape {tuple(p.shape)}, got {found}; after "
                    "changing a parameter's shape, call reset_slow()"
                )
    return list(params), held, states


def _store(states: list[dict[str, Any]], key: str, values: list[Any]) -> None:
    list(map(dict.__setitem__, states, repeat(key), values))


def _drop(states: list[dict[str, Any]], key: str) -> None:
    list(map(dict.pop, states, repeat(key), repeat(None)))


def _copy(targets: list[Tensor], sources: list[Tensor]) -> None:
    if targets:
        torch._foreach_copy_(local_shards(targets), local_shards(sources))


def _zero(tensors: list[Tensor]) -> None:
    if tensors:
        torch._foreach_zero_(local_shards(tensors))


def _inner_step(
    optimizer: Optimizer,
    closure: Closure | None,
    kwargs: dict[str, Any],
    stepped: Callable[[], None],
) -> Any:
    """``optimizer.step(closure, **kwargs)`` with its own step hooks but not the global ones (the
    wrapper's ``step`` ran those), calling ``stepped()`` as soon as the inner step has returned,
    before its post-hooks. Where torch's decoration is missing or ``step`` was replaced on the
    instance, the plain call; an LR scheduler's wrapper on the instance only records the call."""
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


def _forwarded(name: str) -> Any:
    """A live view of the inner optimizer's attribute ``name``, read and written through."""
    return property(lambda self: getattr(self.optimizer, name), partial(_set_inner, name))


def _set_inner(name: str, self: Lookahead, value: Any) -> None:
    setattr(self.optimizer, name, value)


WRITTEN_IN_EVAL_MODE = "parameters were written in eval mode"


def _warn_if_written(groups: list[dict[str, Any]], versions: dict[Tensor, int]) -> None:
    """Warn once when train() is about to put the fast weights over values written into the
    parameters in eval mode (a model checkpoint loaded after an evaluation: the HF Trainer's
    ``load_best_model_at_end`` without ``LookaheadTrainer``). Nothing else changes."""
    params = [p for group in groups if group.get(EVAL_KEY, False) for p in group["params"]]
    written = sum(versions.pop(p, p._version) != p._version for p in params)
    if written:
        warnings.warn(
            f"Lookahead.train(): {written} {WRITTEN_IN_EVAL_MODE} (they held the slow weights; "
            "e.g. a model checkpoint was loaded after an evaluation), and train() now puts the "
            "fast weights back over them. To continue from the loaded weights, load them after "
            "train() and call reset_slow(); with the HF Trainer use LookaheadTrainer, which "
            "does so (docs/saving-and-export.md).",
            stacklevel=5,  # the caller of train(): _switch is wrapped by torch.no_grad
        )


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

    ``param_groups``, ``state`` and ``defaults`` are the inner optimizer's own; ``k``, ``alpha``
    and the counter live in each group, the slow weights in ``state[p]["lookahead_slow"]``
    (docs/design.md: the state table, and what every operation does in every state).

    Args:
        optimizer: the inner ("fast") optimizer, any ``torch.optim.Optimizer``.
        k: number of inner steps between two syncs (a positive int). Default: 5.
        alpha: slow-weights step size in [0, 1]. Default: 0.5.
        pullback_momentum: what the inner momentum does at a sync: ``"none"`` keeps it (default),
            ``"reset"`` zeroes it, ``"pullback"`` interpolates it like the weights
            (see ``torch_lookahead.pullback``).
        slow_dtype: floating dtype of the slow copies of parameters with a narrower floating dtype,
            e.g. ``torch.float32`` for bf16/fp16 models. Default: the parameter's dtype.
        slow_device: device that holds the slow copies (e.g. ``"cpu"``, in pinned memory; they are
            moved only at the sync). Default: the parameter's device.
        foreach: use the multi-tensor ``torch._foreach_*`` kernels for the sync and the exchange
            of ``eval()``/``train()``. Default (None): yes, on every device, unlike
            ``torch.optim``'s ``None`` on the CPU: there they are the faster ones for this update
            (docs/benchmarks.md).
        check_finite: at every sync, before anything changes, raise ``FloatingPointError`` naming
            the first parameter that is not finite, so that NaN or inf never reach the slow
            weights (one pass over the weights per sync). Default: False.

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
        k, alpha = check_k(k), check_alpha(alpha)
        flags = {"foreach": foreach, "check_finite": check_finite}
        options = check_options(optimizer, pullback_momentum, slow_dtype, slow_device, flags)
        self.pullback_momentum, self.slow_dtype, self.slow_device = options
        self.foreach, self.check_finite = foreach, check_finite
        self.optimizer = optimizer
        self._init_runtime()
        # New groups, also those added straight to the inner optimizer, inherit these defaults.
        optimizer.defaults.update({K_KEY: k, ALPHA_KEY: alpha, STEP_KEY: 0})
        self._check_groups()
        # Groups that carry values of their own (an earlier Lookahead, a checkpoint) keep them.
        self._adopt_group_values({K_KEY: k, ALPHA_KEY: alpha}, "the parameter groups'")
        warn_if_detoured(self.param_groups, self.state)
        for group in self.param_groups:
            group.pop(SYNCED_AT_KEY, None)

    def _init_runtime(self) -> None:  # not pickled; Optimizer.__init__ would copy the groups
        self._plan: Plan | None = None
        self._scratch: Scratch = {}
        self._eval_versions: dict[Tensor, int] = {}  # parameter -> its version after eval()
        Optimizer.__setstate__(self, {})

    param_groups = _forwarded("param_groups")
    state = _forwarded("state")
    defaults = _forwarded("defaults")

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

    @classmethod
    def wrap(
        cls,
        optimizer_class: type[Optimizer] | Callable[..., Optimizer],
        k: int = 5,
        alpha: float = 0.5,
        **lookahead_kwargs: Any,
    ) -> type[Lookahead]:
        """An optimizer class for APIs that build the optimizer from the parameters themselves.

        ``Lookahead.wrap(AdamW, k=5)(params, lr=1e-3)`` returns ``Lookahead(AdamW(params,
        lr=1e-3), k=5)``, a plain ``Lookahead``; the class is a subclass of ``Lookahead``, as
        ``ZeroRedundancyOptimizer``, the HF Trainer and DeepSpeed expect.
        """
        if not callable(optimizer_class):
            raise TypeError(
                f"optimizer_class must be an optimizer class or factory, got {optimizer_class!r}"
            )
        k, alpha = check_k(k), check_alpha(alpha)
        try:
            inspect.signature(cls).bind(None, k, alpha, **lookahead_kwargs)
        except TypeError as error:
            raise TypeError(f"{cls.__name__}.wrap: {error}") from None

        def build(_wrapped_class: type, params: Any, **kwargs: Any) -> Lookahead:
            return cls(optimizer_class(params, **kwargs), k=k, alpha=alpha, **lookahead_kwargs)

        name = f"{cls.__name__}{getattr(optimizer_class, '__name__', 'Optimizer')}"
        inner = name[len(cls.__name__) :]
        namespace = {
            "__new__": build,
            "__module__": cls.__module__,
            "__qualname__": name,
            "__doc__": f"``{name}(params, **kwargs)`` is ``{cls.__name__}({inner}"
            f"(params, **kwargs), k={k}, alpha={alpha})``.",
            "inner_class": optimizer_class,
            "wrap_kwargs": {"k": k, "alpha": alpha, **lookahead_kwargs},
        }
        return type(name, (cls,), namespace)

    # ------------------------------------------------------------------ checks and bookkeeping
    def _check_groups(self) -> None:
        """Validate every group's ``k``, ``alpha`` and counter (users and schedulers may change
        them, groups may be added to the inner optimizer) and give groups the keys they lack;
        everything is checked before any group is written."""
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
                where = f"param_groups[{index}][{key!r}]" if key in group else f"defaults[{key!r}]"
                update[key] = check(group.get(key, self.defaults.get(key)), where)
            name = f"param_groups[{index}][{STEP_KEY!r}]"
            update[STEP_KEY] = check_step_count(group.get(STEP_KEY, 0), name)
            updates.append((group, update))
        for group, update in updates:
            group.update(update)

    def _adopt_group_values(self, before: dict[str, Any], whose: str) -> None:
        """Make ``defaults`` report the groups' k and alpha where all groups agree, with a warning
        where they differ from ``before`` (the constructor's, or those in place before a load)."""
        for key in (K_KEY, ALPHA_KEY):
            values = {group[key] for group in self.param_groups}
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
        """Finish the operation an exception interrupted, if any (docs/design.md)."""
        if self._plan is not None:
            self._plan.run()
            self._plan = None

    def _run(self, steps: list[PlanStep]) -> None:
        """Run an operation's steps; kept as the pending operation until they have all run."""
        self._finish()
        self._plan = Plan(steps)
        self._finish()

    def _sync_overdue(self) -> None:
        """Complete the sync of every group at k or more (a step stopped between its inner step
        and its sync, or a lowered ``lookahead_k``), as ``step()`` and ``sync()`` do first."""
        overdue = [group for group in self.param_groups if group[STEP_KEY] >= group[K_KEY]]
        if overdue:
            self.outer_step(overdue)

    def _index(self, group: dict[str, Any]) -> int:
        return next(i for i, g in enumerate(self.param_groups) if g is group)

    def _slow_placement(self, p: Tensor) -> tuple[torch.device, torch.dtype]:
        dtype, wanted = p.dtype, self.slow_dtype
        if wanted is not None and p.is_floating_point() and dtype.itemsize < wanted.itemsize:
            dtype = wanted
        return (p.device if self.slow_device is None else self.slow_device), dtype

    def _new_slow_copy(self, p: Tensor, source: Tensor) -> Tensor:
        """A fresh slow copy for parameter ``p`` holding ``source``, placed as configured."""
        device, dtype = self._slow_placement(p)
        with torch.inference_mode(False), torch.no_grad():
            if hasattr(p, "to_local"):  # a DTensor (FSDP2)
                if self.slow_device is not None:
                    raise ValueError("slow_device is not supported for DTensor (FSDP2) parameters")
                return source.detach().to(dtype=dtype, copy=True)
            pin = device.type == "cpu" and p.device.type == "cuda"
            return torch.empty_like(p, dtype=dtype, device=device, pin_memory=pin).copy_(source)

    def _placed(
        self, params: list[Tensor], slows: list[Tensor], states: list[dict[str, Any]]
    ) -> tuple[list[Tensor], list[Step]]:
        """The slow copies placed as this optimizer wants them (after ``model.double()``, or a
        checkpoint of another ``slow_dtype``): new ones allocated now, and the step storing them."""
        if self.slow_dtype is None and self.slow_device is None and same_placements(params, slows):
            return slows, []
        moved = [i for i, p in enumerate(params) if _placement(slows[i]) != self._slow_placement(p)]
        if not moved:
            return slows, []
        slows = list(slows)
        for i in moved:
            slows[i] = self._new_slow_copy(params[i], slows[i])
        return slows, [
            partial(_store, [states[i] for i in moved], SLOW_KEY, [slows[i] for i in moved])
        ]

    def _place_slow_copies(self, params: list[Tensor], states: list[dict[str, Any]]) -> None:
        """A step of ``train()``: re-place the slow copies the exchange gave back."""
        for store in self._placed(params, [s[SLOW_KEY] for s in states], states)[1]:
            store()

    # ------------------------------------------------------------------ the step
    def step(self, closure: Closure | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """One inner step; after every ``lookahead_k``-th inner step of a group, sync that group.

        The closure, if any, runs once per inner evaluation; the inner step's return value (the
        loss) is returned. After an exception from a step post-hook or from the sync, the next
        ``step()`` completes the sync first, without a second inner step (docs/design.md).
        """
        self._finish()
        self._require_train_mode("step()")
        self._check_groups()
        self._sync_overdue()
        groups, state = self.param_groups, self.state
        missing: list[Tensor] = []
        for index, group in enumerate(groups):
            params = group["params"]
            states = list(map(state.get, params, repeat(_NO_STATE)))
            slows = list(map(dict.get, states, repeat(SLOW_KEY)))
            if not all(map(operator.is_not, slows, repeat(None))):
                missing.extend(compress(params, map(operator.is_, slows, repeat(None))))
            if group[STEP_KEY] + 1 >= group[K_KEY]:  # a slow copy that cannot sync raises now
                _held(group, index, state, SLOW_KEY, states)
        captured: list[tuple[Tensor, Tensor]] = []

        def capture() -> None:  # phi_0: the weights before their first update
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
        """Called at the end of every ``step()``, inside it (for subclasses; nothing here).

        Subclasses extend the step here rather than by overriding ``step``: torch decorates each
        optimizer class's ``step`` with the step hooks, so ``super().step()`` would run them twice.
        """

    def cycle_start(self, group: dict[str, Any]) -> int:
        """The counter ``group`` gets after ``sync()`` or ``reset_slow()``: 0 here. Subclasses
        return another phase (streaming fragments keep theirs)."""
        return 0

    def slow_pairs(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The group's parameters that have slow copies, and those copies, in group order (train
        mode). Raises ``ValueError`` for a slow copy that is not a tensor of its parameter's shape."""
        params, slows, _ = _held(group, self._index(group), self.state, SLOW_KEY)
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
        """The outer step of ``groups``, for every parameter with a slow copy (Algorithm 1)::

            slow <- slow + alpha * (fast - slow);  fast <- slow;  the momentum policy

        then each group's counter restarts (at 0, or at ``restart(group)``). Subclasses override
        it to replace the local rule (e.g. by an exchange across workers) and call it for the
        local part. Every check and allocation comes first; the next operation finishes it after
        an exception.
        """
        if self.check_finite:
            self.require_finite(groups)
        state, mode = self.state, self.pullback_momentum
        keys = (momentum_keys_for(self.optimizer) or ()) if mode != "none" else ()
        steps: list[PlanStep] = []
        for group in groups:
            params, slows, states = _held(group, self._index(group), state, SLOW_KEY)
            slows, store = self._placed(params, slows, states)
            steps += store
            fast, slow = list(params), list(slows)
            dicts, buffers, names = momentum_buffers(params, state, keys) if keys else ([], [], [])
            if mode == "pullback":  # the same rule, with the momentum as fast and its slow copy
                slow_keys = list(map(slow_momentum_key, names))
                held: list[Any] = list(map(dict.get, dicts, slow_keys))
                new = [i for i, h in enumerate(held) if not isinstance(h, Tensor)]
                with torch.inference_mode(False):
                    for i in new:  # zeros at first, allocated before anything changes
                        held[i] = torch.zeros_like(buffers[i])
                steps += [partial(dicts[i].__setitem__, slow_keys[i], held[i]) for i in new]
                fast, slow = fast + buffers, slow + held
            foreach = self.foreach is not False
            steps += sync_steps(fast, slow, group[ALPHA_KEY], self._scratch, foreach=foreach)
            if mode == "reset":
                steps.append(partial(_zero, buffers))
        counters = [0 if restart is None else restart(group) for group in groups]
        steps.append(partial(_store, groups, STEP_KEY, counters))
        self._run(steps)

    @torch.no_grad()
    def sync(self) -> None:
        """Take an outer step now, in every group, and restart the k-step cycles.

        This changes the training trajectory (it is an extra outer step); use it, for example,
        to end training on a sync before a final evaluation or export.
        """
        if self._plan is not None and self._plan.owner == "sync":
            self._finish()  # called again after an exception: finish that sync, take no other
            return
        self._finish()
        self._require_train_mode("sync()")
        self._check_groups()
        self._sync_overdue()  # so that sync() after a step stopped before its sync is step(); sync()
        try:
            self.outer_step(self.param_groups, self.cycle_start)
        finally:
            if self._plan is not None:  # interrupted: the next sync() only finishes it
                self._plan.owner = "sync"

    @torch.no_grad()
    def reset_slow(self) -> None:
        """Re-capture the slow weights from the current parameters and restart the k-step cycles.

        Use it after model surgery or after loading new weights into a model mid-training.
        Slow momentum copies of the ``"pullback"`` policy restart at zero.
        """
        self._finish()
        self._require_train_mode("reset_slow()")
        self._check_groups()
        state, groups = self.state, self.param_groups
        keys = list(map(slow_momentum_key, momentum_keys_for(self.optimizer) or ()))
        steps: list[PlanStep] = []
        for group in groups:
            params = [
                p for p in group["params"] if state.get(p, _NO_STATE).get(SLOW_KEY) is not None
            ]
            states = [state[p] for p in params]
            slows = [param_state[SLOW_KEY] for param_state in states]
            kept = [
                isinstance(s, Tensor)
                and s.shape == p.shape
                and _placement(s) == self._slow_placement(p)
                for p, s in zip(params, slows, strict=True)
            ]
            fresh = [not keep for keep in kept]  # resized or misplaced: a new copy
            new = [self._new_slow_copy(p, p) for p in compress(params, fresh)]
            steps.append(partial(_store, list(compress(states, fresh)), SLOW_KEY, new))
            steps.append(partial(_copy, list(compress(slows, kept)), list(compress(params, kept))))
            buffers = [s[key] for s in states for key in keys if isinstance(s.get(key), Tensor)]
            steps.append(partial(_zero, buffers))
        steps.append(partial(_store, groups, STEP_KEY, [self.cycle_start(g) for g in groups]))
        self._run(steps)

    # ------------------------------------------------------------------ slow weights in eval mode
    @torch.no_grad()
    def _switch(self, to_eval: bool, groups: list[dict[str, Any]]) -> None:
        """Put the slow weights into the parameters of ``groups`` (``to_eval``) or the fast ones
        back. A slow copy of the parameter's placement trades values with it and is renamed
        ``lookahead_fast``; one of another placement stays, and the fast weights go to a new
        ``lookahead_fast`` (docs/design.md)."""
        if not to_eval:
            _warn_if_written(groups, self._eval_versions)
        self._finish()
        groups = [group for group in groups if group.get(EVAL_KEY, False) != to_eval]
        if not groups:
            return
        key = SLOW_KEY if to_eval else FAST_KEY
        params: list[Tensor] = []
        held: list[Tensor] = []
        states: list[dict[str, Any]] = []
        for group in groups:
            group_params, group_held, group_states = _held(
                group, self._index(group), self.state, key
            )
            params += group_params
            held += group_held
            states += group_states
        if to_eval:  # swapped where the slow copy has the parameter's placement
            swapped = [True] * len(params)
            if not same_placements(params, held):
                swapped = list(map(operator.eq, map(_placement, params), map(_placement, held)))
        else:  # swapped where the parameter holds the slow weights (no lookahead_slow kept)
            swapped = list(map(operator.not_, map(operator.contains, states, repeat(SLOW_KEY))))
        steps: list[PlanStep] = []
        copied_params: list[Tensor] = []
        copied_held: list[Tensor] = []
        copied_states: list[dict[str, Any]] = []
        if not all(swapped):
            copied = list(map(operator.not_, swapped))
            copied_params, params = list(compress(params, copied)), list(compress(params, swapped))
            copied_held, held = list(compress(held, copied)), list(compress(held, swapped))
            copied_states, states = list(compress(states, copied)), list(compress(states, swapped))
        if to_eval:
            with torch.inference_mode(False):
                stashes = [torch.empty_like(p) for p in copied_params]
            steps.append(partial(_copy, stashes, copied_params))
        steps.append(partial(_copy, copied_params, copied_held))
        foreach = self.foreach is not False
        steps += swap_steps(params, held, self._scratch, foreach=foreach)
        steps.append(partial(_store, states, FAST_KEY if to_eval else SLOW_KEY, held))
        steps.append(partial(_drop, states, key))  # the rename, in two steps
        if to_eval:
            steps.append(partial(_store, copied_states, FAST_KEY, stashes))
        else:
            steps.append(partial(_drop, copied_states, FAST_KEY))
            if self.slow_dtype is not None or self.slow_device is not None:
                steps.append(partial(self._place_slow_copies, params, states))
        steps.append(partial(_store, groups, EVAL_KEY, [to_eval] * len(groups)))
        self._run(steps)
        if to_eval:  # what train() compares with, to see a parameter written in eval mode
            self._eval_versions.update((p, p._version) for p in chain(params, copied_params))

    def eval(self) -> None:
        """Put the slow weights into the parameters (idempotent). ``step()`` raises until ``train()``.

        Nothing is allocated after the first call except for slow copies of another dtype or
        device. The HF Trainer and Accelerate call ``eval()``/``train()`` on their own.
        """
        self._switch(True, self.param_groups)

    def train(self) -> None:
        """Put the fast weights back into the parameters (idempotent)."""
        self._switch(False, self.param_groups)

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Context manager: the parameters hold the slow weights inside, the fast weights after.

        Safe to nest: the groups it switched, and only those, switch back, also on an exception.
        """
        switched = [group for group in self.param_groups if not group.get(EVAL_KEY, False)]
        self._switch(True, switched)
        try:
            yield
        finally:
            self._switch(False, switched)

    @torch.no_grad()
    def slow_parameters(self) -> list[Tensor]:
        """Copies of the slow weights, in the parameters' dtype and device, in param-group order.

        ``[p for g in opt.param_groups for p in g["params"]]`` is the matching parameter order;
        [load_slow_parameters][torch_lookahead.load_slow_parameters] copies them into a model.
        """
        self._finish()
        values = []
        for group in self.param_groups:
            for p in group["params"]:
                slow = self.state.get(p, _NO_STATE).get(SLOW_KEY)
                # No lookahead_slow: not updated yet, or (eval mode) the parameter holds them.
                source = slow if isinstance(slow, Tensor) else p
                values.append(source.detach().to(dtype=p.dtype, device=p.device, copy=True))
        return values

    def eval_state_dict(
        self, state_dict: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[tuple[Tensor, Tensor]]]:
        """A state dict as ``eval()`` would have written it, and the slow weights for the model.

        ``state_dict`` (default: ``self.state_dict()``) is this optimizer's, taken now. Returned:
        the eval form (docs/design.md) and the (parameter, slow weights) pairs that the model's
        saved state must hold. Nothing live changes; groups in eval mode are left as they are.
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
        checked = {
            key: check(param_group[key], key) for key, check in GROUP_CHECKS if key in param_group
        }
        param_group.update(checked)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (standard format; slow weights in per-parameter state).

        Each saved group also records ``lookahead_synced_at``, so that a load can warn about a
        detour through a plain optimizer. The wrapper's state-dict hooks run around the inner's.
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

        The checkpoint's ``lookahead_k``, ``lookahead_alpha`` and counters win (with a warning
        where they differ); slow copies follow this optimizer's ``slow_dtype``/``slow_device``. A
        checkpoint that does not fit raises ``ValueError``/``TypeError`` and changes nothing;
        docs/checkpoints.md covers plain-optimizer checkpoints and detours. Raises in eval mode.
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
        warn_if_detoured(state_dict["param_groups"], state_dict["state"])
        before = {K_KEY: self.defaults.get(K_KEY), ALPHA_KEY: self.defaults.get(ALPHA_KEY)}
        # Optimizer.load_state_dict casts state to the parameter's dtype and device; slow copies
        # follow slow_dtype/slow_device instead, made before anything is loaded.
        placed = [
            (p, self._new_slow_copy(p, saved_slow))
            for p, saved_slow in saved_slows
            if _placement(p) != self._slow_placement(p)
        ]
        self.optimizer.load_state_dict(state_dict)
        for p, slow in placed:
            self.state[p][SLOW_KEY] = slow
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
        names = ("optimizer", "pullback_momentum", "slow_dtype", "slow_device", "foreach")
        return {name: getattr(self, name) for name in (*names, "check_finite")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        texts = []
        for key in (K_KEY, ALPHA_KEY):
            values = sorted({g.get(key) for g in self.param_groups}, key=str)
            values = values or [self.defaults.get(key)]
            texts.append(values[0] if len(values) == 1 else values)
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return (
            f"Lookahead(k={texts[0]}, alpha={texts[1]}, pullback_momentum={self.pullback_momentum!r},\n"
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
