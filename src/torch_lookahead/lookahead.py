"""The Lookahead wrapper: bookkeeping, state and the ``torch.optim.Optimizer`` contract.

Everything the wrapper keeps lives in the inner optimizer's own structures, so every tool that
saves, moves, shards or proxies an optimizer sees it:

* per parameter group: ``lookahead_k``, ``lookahead_alpha``, ``lookahead_step`` (inner steps since
  the last sync) and, while evaluating, ``lookahead_eval_mode``;
* per parameter, in ``optimizer.state[p]``: ``lookahead_slow`` (the slow weights), the slow momentum
  copies of the ``"pullback"`` policy and, for mixed-precision slow copies in eval mode,
  ``lookahead_fast``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead import _sync
from torch_lookahead.pullback import (
    PULLBACK_MODES,
    PullbackMode,
    momentum_keys_for,
    registered_momentum_classes,
    slow_momentum_key,
)

__all__ = ["Lookahead", "load_slow_parameters"]

SLOW_KEY = "lookahead_slow"
FAST_STASH_KEY = "lookahead_fast"
K_KEY = "lookahead_k"
ALPHA_KEY = "lookahead_alpha"
STEP_KEY = "lookahead_step"
EVAL_KEY = "lookahead_eval_mode"

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)

Closure = Callable[[], Any]


def _validate_k(k: object, name: str = "k") -> int:
    if isinstance(k, bool):
        raise TypeError(
            f"{name} must be a positive int (the number of inner steps per sync), got {k!r}"
        )
    try:
        value = operator.index(k)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be a positive int (the number of inner steps per sync), got {k!r}"
        ) from None
    if value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value}")
    return int(value)


def _validate_alpha(alpha: object, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in [0, 1] (the slow-weights step size), got {alpha!r}"
        )
    value = float(alpha)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (the slow-weights step size), got {value}")
    return value


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
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"slow_device must name a device such as 'cpu', got {device!r}") from error


def _is_dtensor(t: Tensor) -> bool:
    return hasattr(t, "to_local")


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
    Lightning, Accelerate, the HF Trainer, DCP and ZeRO see one optimizer. The slow weights are kept
    in ``optimizer.state[p]["lookahead_slow"]``; ``k``, ``alpha`` and the step counter live in each
    parameter group (``lookahead_k``, ``lookahead_alpha``, ``lookahead_step``), so a group may carry
    its own values and a scheduler may change them.

    Args:
        optimizer: the inner ("fast") optimizer, any ``torch.optim.Optimizer``.
        k: number of inner steps between two syncs (a positive int). Default: 5.
        alpha: slow-weights step size in [0, 1]. Default: 0.5.
        pullback_momentum: what the inner momentum does at a sync: ``"none"`` keeps it (default),
            ``"reset"`` zeroes it, ``"pullback"`` interpolates it like the weights
            (see :mod:`torch_lookahead.pullback`).
        slow_dtype: floating dtype of the slow copies of parameters with a narrower floating dtype,
            e.g. ``torch.float32`` for bf16/fp16 models. Default: the parameter's dtype.
        slow_device: device that holds the slow copies (e.g. ``"cpu"`` to keep them off the
            accelerator, in pinned memory; they are moved only at the sync). Default: the
            parameter's device.
        foreach: use the vectorised ``torch._foreach_*`` kernels for the sync. Default (None): yes.
        compiled_sync: sync float32/float64 CPU parameters of at least 512 KiB with a kernel
            generated by ``torch.compile`` (inductor): one pass where the eager kernel makes a
            lerp and a copy; a whole sync measured 0.65-0.73 of the memory floor against
            0.80-0.86 on lists of large tensors (``docs/benchmarks.md``). Compiles once per
            dtype at the first sync (a few seconds; a C++ compiler is needed) and is used only
            if it reproduces the eager kernel bit for bit on probe tensors, so results never
            depend on this flag; anywhere it is unavailable the eager kernel runs, silently.
            Shorter tensors, other dtypes and devices take the eager kernel, and a sync traced
            inside a ``torch.compile``'d step is traced as without the flag. Default: False.

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
        compiled_sync: bool = False,
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
        k = _validate_k(k)
        alpha = _validate_alpha(alpha)
        if foreach is not None and not isinstance(foreach, bool):
            raise TypeError(f"foreach must be None or a bool, got {foreach!r}")
        if not isinstance(compiled_sync, bool):
            raise TypeError(f"compiled_sync must be a bool, got {compiled_sync!r}")
        self.optimizer = optimizer
        self.pullback_momentum = _validate_pullback(pullback_momentum, optimizer)
        self.slow_dtype = _validate_slow_dtype(slow_dtype)
        self.slow_device = _validate_slow_device(slow_device)
        self.foreach = foreach
        self.compiled_sync = compiled_sync
        self._init_runtime()
        # New groups, also those added straight to the inner optimizer, inherit these defaults.
        optimizer.defaults.update({K_KEY: k, ALPHA_KEY: alpha, STEP_KEY: 0})
        self._fill_group_defaults()

    def _fill_group_defaults(self) -> None:
        """Give every group the Lookahead keys it lacks and validate the ones it has."""
        for group in self.param_groups:
            group[K_KEY] = _validate_k(group.get(K_KEY, self.defaults[K_KEY]), K_KEY)
            group[ALPHA_KEY] = _validate_alpha(
                group.get(ALPHA_KEY, self.defaults[ALPHA_KEY]), ALPHA_KEY
            )
            group.setdefault(STEP_KEY, 0)

    def _init_runtime(self) -> None:
        """What ``Optimizer.__init__`` would create, minus a second copy of the parameter groups."""
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._swap_scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        # id(group) -> (group, ids of its params, its params without a slow copy yet).
        self._uncaptured: dict[int, tuple[dict[str, Any], list[int], list[Tensor]]] = {}
        # id(group) -> (group, ids of its params, state, its params with slow copies, the copies).
        self._slow_pairs_cache: dict[
            int, tuple[dict[str, Any], list[int], Any, list[Tensor], list[Tensor]]
        ] = {}
        self._patch_step_function()

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
        self._forget_parameter_lists()

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
        client optimizer expect; calling it returns a plain ``Lookahead``.
        """
        if not callable(optimizer_class):
            raise TypeError(
                f"optimizer_class must be an optimizer class or factory, got {optimizer_class!r}"
            )
        k = _validate_k(k)
        alpha = _validate_alpha(alpha)

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

    # ------------------------------------------------------------------ the step
    def step(self, closure: Closure | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """One inner step; after every ``lookahead_k``-th inner step of a group, sync that group.

        The closure, if any, runs exactly once per inner evaluation (through the inner optimizer)
        and the inner step's return value (the loss) is returned.
        """
        self._require_train_mode("step()")
        captured: list[tuple[Tensor, Tensor]] = []
        if closure is None:
            self._capture_initial_weights(captured)
            loss = self.optimizer.step(**kwargs)
        else:
            loss = self.optimizer.step(closure=self._capturing(closure, captured), **kwargs)
        self._store_initial_weights(captured)
        due = []
        for group in self.param_groups:
            group[STEP_KEY] = group.get(STEP_KEY, 0) + 1
            if group[STEP_KEY] >= group.get(K_KEY, self.defaults[K_KEY]):
                due.append(group)
        if due:
            with torch.no_grad():
                self._sync_groups(due)
        return loss

    def _capturing(self, closure: Closure, captured: list[tuple[Tensor, Tensor]]) -> Closure:
        """Wrap ``closure`` so the first evaluation records the weights it was computed at.

        The inner optimizer evaluates the closure before it changes any parameter, and only then
        is it known which parameters have gradients (LBFGS, for one, computes them inside step).
        """
        first_call = [True]

        def capturing_closure() -> Any:
            loss = closure()
            if first_call[0]:
                first_call[0] = False
                self._capture_initial_weights(captured)
            return loss

        return capturing_closure

    def _capture_initial_weights(self, captured: list[tuple[Tensor, Tensor]]) -> None:
        """Copy, before they are first updated, the parameters that have a gradient but no slow copy.

        Each group remembers which of its parameters still lack a slow copy, so that in the
        steady state a step checks a list of ids per group instead of every parameter.
        """
        state = self.state
        eager = not torch.compiler.is_compiling()
        with torch.no_grad():
            for group in self.param_groups:
                params = group["params"]
                ids = list(map(id, params)) if eager else []
                remembered = self._uncaptured.get(id(group)) if eager else None
                if remembered is not None and remembered[0] is group and remembered[1] == ids:
                    candidates = remembered[2]
                else:
                    candidates = params
                uncaptured = []
                for p in candidates:
                    param_state = state.get(p)
                    if param_state is not None and SLOW_KEY in param_state:
                        continue
                    uncaptured.append(p)  # checked again next step, also if this step fails
                    if p.grad is not None:
                        captured.append((p, self._new_slow_copy(p, p)))
                if eager:
                    self._uncaptured[id(group)] = (group, ids, uncaptured)

    def _store_initial_weights(self, captured: list[tuple[Tensor, Tensor]]) -> None:
        # Inserted only now, after the inner step created its own state (integration.md F2).
        if captured:
            self._slow_pairs_cache.clear()
        for p, slow in captured:
            param_state = self.state[p]
            param_state[SLOW_KEY] = slow
            if self.pullback_momentum == "pullback":
                for key in self._momentum_keys():
                    buffer = param_state.get(key)
                    if isinstance(buffer, Tensor):
                        param_state[slow_momentum_key(key)] = torch.zeros_like(buffer)

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

    def _forget_parameter_lists(self) -> None:
        """Drop the per-group lists kept between steps (after the state or the groups changed)."""
        self._uncaptured.clear()
        self._slow_pairs_cache.clear()

    def _slow_pairs(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The group's parameters that have slow copies, and those copies.

        Kept between syncs (a tensor's hash is a Python call, and a sync of thousands of small
        tensors would spend as long looking them up as computing); rebuilt when the group's
        parameters, the state object or any slow copy changes.
        """
        state = self.state
        params_now = group["params"]
        ids = list(map(id, params_now))
        cached = self._slow_pairs_cache.get(id(group))
        if cached is not None and cached[0] is group and cached[1] == ids and cached[2] is state:
            return cached[3], cached[4]
        params: list[Tensor] = []
        slows: list[Tensor] = []
        for p in params_now:
            param_state = state.get(p)
            slow = None if param_state is None else param_state.get(SLOW_KEY)
            if slow is not None:
                params.append(p)
                slows.append(slow)
        self._slow_pairs_cache[id(group)] = (group, ids, state, params, slows)
        return params, slows

    def _use_foreach(self) -> bool:
        return True if self.foreach is None else self.foreach

    def _sync_groups(self, groups: list[dict[str, Any]]) -> None:
        """Outer step for the groups whose cycle has ended (one call per step, so that subclasses
        can batch what the groups share, such as communication)."""
        for group in groups:
            self._sync_group(group)

    def _sync_group(self, group: dict[str, Any]) -> None:
        """Outer step for one group: slow <- slow + alpha*(fast - slow); fast <- slow; momentum policy."""
        alpha = group.get(ALPHA_KEY, self.defaults[ALPHA_KEY])
        params, slows = self._slow_pairs(group)
        state = self.state
        foreach = self._use_foreach()
        _sync.sync_(params, slows, alpha, foreach=foreach, compiled=self.compiled_sync)
        group[STEP_KEY] = 0
        if self.pullback_momentum == "none":
            return
        for key in self._momentum_keys():
            with_buffer = [p for p in params if isinstance(state[p].get(key), Tensor)]
            buffers = [state[p][key] for p in with_buffer]
            if self.pullback_momentum == "reset":
                for buffer in _sync.local_shards(buffers):
                    buffer.zero_()
                continue
            slow_key = slow_momentum_key(key)
            for p in with_buffer:
                if slow_key not in state[p]:
                    state[p][slow_key] = torch.zeros_like(state[p][key])
            slow_buffers = [state[p][slow_key] for p in with_buffer]
            # buf <- alpha*buf + (1-alpha)*slow_buf, then slow_buf <- buf (a copy).
            _sync.lerp_(buffers, slow_buffers, 1.0 - alpha, foreach=foreach)
            for slow_buffer, buffer in zip(
                _sync.local_shards(slow_buffers), _sync.local_shards(buffers), strict=True
            ):
                slow_buffer.copy_(buffer)

    @torch.no_grad()
    def sync(self) -> None:
        """Take an outer step now, in every group, and restart the k-step cycles.

        This changes the training trajectory (it is an extra outer step); use it, for example,
        to end training on a sync before a final evaluation or export.
        """
        self._require_train_mode("sync()")
        self._sync_groups(self.param_groups)

    @torch.no_grad()
    def reset_slow(self) -> None:
        """Re-capture the slow weights from the current parameters and restart the k-step cycles.

        Use it after model surgery or after loading new weights into a model mid-training.
        Slow momentum copies of the ``"pullback"`` policy restart at zero.
        """
        self._require_train_mode("reset_slow()")
        state = self.state
        for group in self.param_groups:
            for p in self._slow_pairs(group)[0]:
                param_state = state[p]
                param_state[SLOW_KEY] = self._new_slow_copy(p, p)
                for key in self._momentum_keys():
                    slow_buffer = param_state.get(slow_momentum_key(key))
                    if isinstance(slow_buffer, Tensor):
                        slow_buffer.zero_()
            group[STEP_KEY] = 0
        self._slow_pairs_cache.clear()

    # ------------------------------------------------------------------ slow weights in eval mode
    def _require_train_mode(self, what: str) -> None:
        if any(group.get(EVAL_KEY, False) for group in self.param_groups):
            raise RuntimeError(
                f"Lookahead.{what} was called in eval mode (the parameters hold the slow weights); "
                "call optimizer.train() first"
            )

    def _exchange(self, group: dict[str, Any], to_eval: bool) -> None:
        """Move the slow weights into the parameters (``to_eval``) or the fast weights back."""
        state = self.state
        params, slows = self._slow_pairs(group)
        swapped = [
            p for p, slow in zip(params, slows, strict=True) if _sync_placement_matches(p, slow)
        ]
        _sync.swap_(swapped, [state[p][SLOW_KEY] for p in swapped], self._swap_scratch)
        for p in params:
            if _sync_placement_matches(p, state[p][SLOW_KEY]):
                continue
            # Slow copies of another dtype/device cannot hold the fast weights without losing bits:
            # the fast weights wait in a buffer of their own, allocated once and reused.
            param_state = state[p]
            if to_eval:
                stash = param_state.get(FAST_STASH_KEY)
                if stash is None:
                    stash = param_state[FAST_STASH_KEY] = torch.empty_like(p)
                stash.copy_(p)
                p.copy_(param_state[SLOW_KEY])
            else:
                p.copy_(param_state[FAST_STASH_KEY])

    @torch.no_grad()
    def eval(self) -> None:
        """Put the slow weights into the parameters (idempotent). ``step()`` raises until ``train()``.

        The exchange is in place: parameter and slow copy swap values, so nothing is allocated
        after the first call. The HF Trainer and Accelerate call ``eval()``/``train()`` on their own.
        """
        for group in self.param_groups:
            if not group.get(EVAL_KEY, False):
                self._exchange(group, to_eval=True)
                group[EVAL_KEY] = True

    @torch.no_grad()
    def train(self) -> None:
        """Put the fast weights back into the parameters (idempotent)."""
        for group in self.param_groups:
            if group.get(EVAL_KEY, False):
                self._exchange(group, to_eval=False)
                group[EVAL_KEY] = False

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
        if param_state is None or SLOW_KEY not in param_state:
            return p  # not updated yet: its slow weights are its current value
        slow = param_state[SLOW_KEY]
        if group.get(EVAL_KEY, False) and _sync_placement_matches(p, slow):
            return p  # swapped: the parameter holds the slow weights
        return cast(Tensor, slow)

    @torch.no_grad()
    def slow_parameters(self) -> list[Tensor]:
        """Copies of the slow weights, in the parameters' dtype and device, in param-group order.

        ``[p for g in opt.param_groups for p in g["params"]]`` is the matching parameter order;
        :func:`load_slow_parameters` copies them into a model (e.g. to ship the slow model).
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
        if K_KEY in param_group:
            param_group[K_KEY] = _validate_k(param_group[K_KEY], K_KEY)
        if ALPHA_KEY in param_group:
            param_group[ALPHA_KEY] = _validate_alpha(param_group[ALPHA_KEY], ALPHA_KEY)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (standard format; slow weights in per-parameter state).

        State-dict hooks registered on the wrapper run around it.
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

        A plain inner-optimizer checkpoint starts the slow weights from the current weights at the
        next step. A checkpoint whose parameter groups do not match raises ``ValueError``.
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_lookahead = self._saved_lookahead_tensors(state_dict)
        self.optimizer.load_state_dict(state_dict)
        self._place_loaded_slow_copies(saved_lookahead)
        self._forget_parameter_lists()
        self._fill_group_defaults()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _saved_lookahead_tensors(self, state_dict: dict[str, Any]) -> list[tuple[Tensor, Tensor]]:
        """Check ``state_dict`` against the parameters; return (param, saved slow copy) pairs."""
        if (
            not isinstance(state_dict, dict)
            or "param_groups" not in state_dict
            or "state" not in state_dict
        ):
            raise ValueError(
                "state_dict must be an optimizer state dict with 'state' and 'param_groups'"
            )
        saved_groups = state_dict["param_groups"]
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(
                f"the checkpoint has {len(saved_groups)} parameter groups, this optimizer has {len(groups)}"
            )
        for index, (saved, current) in enumerate(zip(saved_groups, groups, strict=True)):
            if len(saved["params"]) != len(current["params"]):
                raise ValueError(
                    f"parameter group {index}: the checkpoint has {len(saved['params'])} parameters, "
                    f"this optimizer has {len(current['params'])}"
                )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
                strict=True,
            )
        )
        pairs: list[tuple[Tensor, Tensor]] = []
        for key, param_state in state_dict["state"].items():
            p = id_map.get(key)
            if p is None:
                raise ValueError(
                    f"the checkpoint has state for parameter {key!r}, which no group lists"
                )
            for name, value in param_state.items():
                if (
                    name.startswith("lookahead_")
                    and isinstance(value, Tensor)
                    and value.shape != p.shape
                ):
                    raise ValueError(
                        f"state {name!r} of parameter {key!r} has shape {tuple(value.shape)} in the "
                        f"checkpoint, but the parameter has shape {tuple(p.shape)}"
                    )
            slow = param_state.get(SLOW_KEY)
            if isinstance(slow, Tensor):
                pairs.append((p, slow))
        return pairs

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
        # Like Optimizer.__getstate__, hooks are not pickled; nor is the patched `step` a scheduler
        # may have put on the instance, nor the swap scratch space.
        return {
            "optimizer": self.optimizer,
            "pullback_momentum": self.pullback_momentum,
            "slow_dtype": self.slow_dtype,
            "slow_device": self.slow_device,
            "foreach": self.foreach,
            "compiled_sync": self.compiled_sync,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("compiled_sync", False)  # pickled before the option existed
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


def _sync_placement_matches(p: Tensor, slow: Tensor) -> bool:
    return p.dtype == slow.dtype and p.device == slow.device


@torch.no_grad()
def load_slow_parameters(
    params: Iterable[Tensor] | torch.nn.Module, slow: Sequence[Tensor]
) -> None:
    """Copy tensors from :meth:`Lookahead.slow_parameters` into ``params`` in place, in order.

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
