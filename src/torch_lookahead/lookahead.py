"""The Lookahead wrapper. docs/design.md is its specification: the state table, what every
operation does in every state, the plans and the checkpoint form."""

from __future__ import annotations

import contextlib
import inspect
import operator
import textwrap
import warnings
from collections.abc import Callable, Collection, Iterator
from functools import partial
from itertools import chain, compress, islice, repeat
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
    check_alpha,
    check_k,
    check_loadable,
    check_options,
)
from torch_lookahead._sync import Plan, PlanStep, Scratch, swap_steps, sync_steps
from torch_lookahead._tensors import local_shards, same_placements, same_shapes
from torch_lookahead.pullback import PullbackMode, momentum_keys_for, slow_momentum_key

__all__ = [
    "ALPHA_KEY",
    "EVAL_KEY",
    "FAST_KEY",
    "K_KEY",
    "SLOW_KEY",
    "STEP_KEY",
    "Lookahead",
    "LookaheadOptions",
]

Closure = Callable[[], Any]
_NO_STATE: dict[str, Any] = {}  # stands for a parameter without state; never written
_placement = operator.attrgetter("device", "dtype")
_dtype_of = operator.attrgetter("dtype")
WRITTEN_IN_EVAL_MODE = "parameters were written in eval mode"


class LookaheadOptions(TypedDict, total=False):
    """Keyword options of ``Lookahead`` that ``Ranger`` and ``DistributedLookahead`` forward."""

    pullback_momentum: PullbackMode
    slow_dtype: torch.dtype | None


def _store(dicts: list[dict[str, Any]], key: str, values: list[Any]) -> None:
    setitem = dict.__setitem__ if torch.compiler.is_compiling() else operator.setitem  # faster
    list(map(setitem, dicts, repeat(key), values))


def _drop(dicts: list[dict[str, Any]], key: str) -> None:
    list(map(dict.pop, dicts, repeat(key), repeat(None)))


def _present(params: list[Tensor], states: Collection[dict[str, Any]], key: str) -> list[list[Any]]:
    """The parameters whose state holds ``key`` (even as None, a bad entry), the entries, the states."""
    held = list(map(dict.get, states, repeat(key)))
    if all(map(operator.is_not, held, repeat(None))):
        return [list(params), held, list(states)]
    present = list(map(operator.contains, states, repeat(key)))
    return [list(compress(x, present)) for x in (params, held, states)]


def _each(kernel: str, *lists: list[Tensor]) -> None:
    """The kernel ``torch.<kernel>`` over the local shards of ``lists``, if they are not empty."""
    if lists[0]:
        getattr(torch, kernel)(*map(local_shards, lists))


def _inner_step(optimizer: Optimizer, kwargs: dict[str, Any], stepped: Closure) -> Any:
    """``optimizer.step(**kwargs)`` with its own step hooks, not the global ones (ours ran them);
    ``stepped()`` runs before its post-hooks. The plain call where torch's decoration is missing
    or ``step`` was replaced on the instance (an LR scheduler's wrapper only records the call)."""
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


def _forwarded(n: str) -> Any:
    """A live view of the inner optimizer's attribute ``n``, read and written through."""
    return property(lambda s: getattr(s.optimizer, n), lambda s, v: setattr(s.optimizer, n, v))


_version_of = operator.attrgetter("_version")


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

    ``alpha=1`` is the inner optimizer, ``alpha=0`` keeps the weights at the slow copy. The inner
    optimizer's ``param_groups``, ``state`` and ``defaults`` are this one's: ``k``, ``alpha`` and
    the counter live in each group, the slow weights in ``state[p]["lookahead_slow"]``.

    Args:
        optimizer: the inner ("fast") optimizer, any ``torch.optim.Optimizer``.
        k: number of inner steps between two syncs (a positive int). Default: 5.
        alpha: slow-weights step size in [0, 1]. Default: 0.5.
        pullback_momentum: the inner momentum at a sync: ``"none"`` keeps it (default),
            ``"reset"`` zeroes it, ``"pullback"`` interpolates it like the weights (see
            ``torch_lookahead.pullback``).
        slow_dtype: floating dtype of the slow copies of parameters with a narrower floating dtype,
            e.g. ``torch.float32`` for bf16/fp16 models. Default: the parameter's dtype.

    Example:
        >>> opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-3), k=5, alpha=0.5)
        >>> with opt.slow_weights():  # evaluate on the slow weights
        ...     _ = model(batch)
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
    ) -> None:
        if isinstance(optimizer, Lookahead) or not isinstance(optimizer, Optimizer):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer and not already a Lookahead (Lookahead "
                f"in Lookahead would change the rule), got {type(optimizer).__name__}"
            )
        k, alpha = check_k(k), check_alpha(alpha)
        self.pullback_momentum, self.slow_dtype = check_options(
            optimizer, pullback_momentum, slow_dtype
        )
        self.optimizer = optimizer
        self._init_runtime()
        ours = {K_KEY: k, ALPHA_KEY: alpha, STEP_KEY: 0}  # groups' own values (a checkpoint's) win
        self._check_groups({**optimizer.defaults, **ours})  # a refusal changes nothing, then:
        optimizer.defaults.update(ours)  # new groups, also those added to the inner, inherit them
        self._adopt_group_values({K_KEY: k, ALPHA_KEY: alpha}, "the parameter groups'")

    def _init_runtime(self) -> None:  # not pickled; Optimizer.__init__ would copy the groups
        self._plan: Plan | None = None
        self._scratch: Scratch = {}
        # id(group) -> (group, the parameters eval() put the slow weights into, their versions)
        self._eval_versions: dict[int, tuple[dict[str, Any], list[Tensor], list[int]]] = {}
        Optimizer.__setstate__(self, {})

    param_groups = _forwarded("param_groups")
    state = _forwarded("state")
    defaults = _forwarded("defaults")

    @property
    def in_eval_mode(self) -> bool:
        """Whether the parameters of any group hold the slow weights (after ``eval()``, or an
        eval-form checkpoint loaded): ``step()``, ``sync()``, ``reset_slow()`` and loads raise."""
        return any(group.get(EVAL_KEY, False) for group in self.param_groups)

    @classmethod
    def wrap(
        cls,
        optimizer_class: type[Optimizer] | Callable[..., Optimizer],
        k: int = 5,
        alpha: float = 0.5,
        **lookahead_kwargs: Any,
    ) -> type[Lookahead]:
        """An optimizer class for APIs that build the optimizer from the parameters themselves:
        ``Lookahead.wrap(AdamW, k=5)(params, lr=1e-3)`` is ``Lookahead(AdamW(params, lr=1e-3),
        k=5)``, and the class subclasses ``Lookahead`` (as ZeroRedundancyOptimizer expects)."""
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

        inner = getattr(optimizer_class, "__name__", "Optimizer")
        name = f"{cls.__name__}{inner}"
        namespace = {
            "__new__": build,
            "__module__": cls.__module__,
            "__doc__": f"``{name}(params, **kwargs)`` is ``{cls.__name__}({inner}"
            f"(params, **kwargs), k={k}, alpha={alpha})``.",
        }
        return type(name, (cls,), namespace)

    def _check_groups(self, defaults: dict[str, Any] | None = None) -> None:
        """Check every group's ``k``, ``alpha`` and counter (users and schedulers may change them)
        and fill in those missing from ``defaults`` (new groups); all checked before any write."""
        updates: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for index, group in enumerate(self.param_groups):
            k, alpha, steps = group.get(K_KEY), group.get(ALPHA_KEY), group.get(STEP_KEY)
            counts = type(k) is int and k >= 1 and type(steps) is int and steps >= 0
            if counts and type(alpha) is float and 0.0 <= alpha <= 1.0:
                continue
            update: dict[str, Any] = {}
            for key, check in GROUP_CHECKS:
                where = f"param_groups[{index}][{key!r}]" if key in group else f"defaults[{key!r}]"
                update[key] = check(group.get(key, (defaults or self.defaults).get(key, 0)), where)
            updates.append((group, update))
        for group, update in updates:
            group.update(update)

    def _adopt_group_values(self, before: dict[str, Any], whose: str) -> None:
        """Make ``defaults`` report the groups' k and alpha where all groups agree, with a warning
        where they differ from ``before`` (the constructor's, or those in place before a load)."""
        values = {key: {group[key] for group in self.param_groups} for key in (K_KEY, ALPHA_KEY)}
        self.defaults.update(agreed := {key: v.pop() for key, v in values.items() if len(v) == 1})
        for key, value in agreed.items():
            if value != before[key]:  # last: under warnings as errors, the rest is done
                warnings.warn(
                    f"{whose} {key}={value} replaces this optimizer's {before[key]} (values "
                    "in the parameter groups win, as their learning rates do)",
                    stacklevel=3,
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

    @torch.no_grad()
    def _begin(self, what: str, sync_overdue: bool = False) -> None:
        """Finish an interrupted operation, refuse eval mode, check the groups; ``sync_overdue``:
        sync the groups at k or more (due now, a step stopped before its sync, a lowered ``k``)."""
        self._finish()
        if self.in_eval_mode:
            raise RuntimeError(
                f"Lookahead.{what} needs train mode, but the parameters hold the slow weights (eval "
                "mode); call optimizer.train() first"
            )
        self._check_groups()
        if overdue := [g for g in self.param_groups if sync_overdue and g[STEP_KEY] >= g[K_KEY]]:
            self.outer_step(overdue)

    def _states(self, params: list[Tensor]) -> Collection[dict[str, Any]]:
        """Each parameter's state or ``_NO_STATE``: no tensor hashed where the state lists ``params``."""
        state: dict[Tensor, dict[str, Any]] = self.state
        if len(state) == len(params) and all(map(operator.is_, state, params)):
            return state.values()
        return list(map(state.get, params, repeat(_NO_STATE)))

    def _held(
        self, group: dict[str, Any], key: str, check: bool = True
    ) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
        """The group's parameters whose state holds ``key``, those entries and the state dicts.
        ``ValueError`` (if ``check``) unless each entry is a tensor of its parameter's shape."""
        params, held, states = _present(group["params"], self._states(group["params"]), key)
        if not check or same_shapes(held, params):
            return params, held, states
        p, v = next(x for x in zip(params, held, strict=True) if not same_shapes(x[1:], x[:1]))
        index = next(i for i, q in enumerate(group["params"]) if q is p)
        where = next(i for i, g in enumerate(self.param_groups) if g is group)
        raise ValueError(
            f"state[{key!r}] of parameter {index} in parameter group {where} must be a tensor of "
            f"the parameter's shape {tuple(p.shape)}, got "
            f"{f'shape {tuple(v.shape)}' if isinstance(v, Tensor) else repr(v)}; "
            + ("call reset_slow()" if key == SLOW_KEY else "delete it to keep the parameter as is")
        )

    def _slow_placement(self, p: Tensor) -> tuple[torch.device, torch.dtype]:
        wanted = self.slow_dtype or p.dtype
        widen = p.is_floating_point() and p.dtype.itemsize < wanted.itemsize
        return p.device, (wanted if widen else p.dtype)

    def _new_slow_copy(self, p: Tensor, source: Tensor) -> Tensor:
        """A new slow copy of parameter ``p`` holding ``source``, in the slow dtype."""
        with torch.inference_mode(False):  # usable outside it later; p's layout, not source's
            return torch.empty_like(p, dtype=self._slow_placement(p)[1]).copy_(source.detach())

    def step(self, closure: Closure | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """One inner step (its return value is returned); after every ``lookahead_k``-th inner
        step of a group, sync that group. After an exception from a step post-hook or the sync, the
        next ``step()`` completes the sync first, without a second inner step (docs/design.md)."""
        self._begin("step()", sync_overdue=True)
        groups, state = self.param_groups, self.state
        every = list(chain.from_iterable(group["params"] for group in groups))
        states = self._states(every)
        missing: list[Tensor] = []  # parameters without a slow copy, found at C speed
        if not all(map(operator.contains, states, repeat(SLOW_KEY))):
            missing = [p for p, s in zip(every, states, strict=True) if SLOW_KEY not in s]
        for group in groups:
            if group[STEP_KEY] + 1 >= group[K_KEY]:  # a slow copy that cannot sync raises now
                self._held(group, SLOW_KEY)
        captured: list[tuple[Tensor, Tensor]] = []

        def capture() -> None:  # phi_0: the weights before their first update, captured once
            new = [p for p in missing if p.grad is not None]  # nothing has changed yet
            if new and (sparse := [p for p in new if p.layout != torch.strided]):
                raise TypeError(f"Lookahead needs strided parameters, got a {sparse[0].layout} one")
            captured.extend((p, self._new_slow_copy(p, p)) for p in new)
            missing.clear()

        def stepped() -> None:  # counted first; as soon as the inner step returns (docs/design.md)
            for group in groups:
                group[STEP_KEY] += 1
            # Stored only now: some inner optimizers create their state only if state[p] is empty.
            _store([state[p] for p, _ in captured], SLOW_KEY, [slow for _, slow in captured])

        def capturing_closure() -> Any:  # its first call comes before any parameter changes
            loss = closure()  # type: ignore[misc]
            capture()
            return loss

        if closure is None:
            capture()
        else:
            kwargs = {"closure": capturing_closure, **kwargs}
        loss = _inner_step(self.optimizer, kwargs, stepped)
        if any(group[STEP_KEY] >= group[K_KEY] for group in groups):  # only where one syncs
            self._begin("step() (its sync, after the inner step)", sync_overdue=True)
        self.after_step()
        return loss

    def after_step(self) -> None:
        """Called at the end of every ``step()``, inside it; nothing here. Subclasses extend the
        step here: ``super().step()`` would run torch's step hooks twice."""

    def cycle_start(self, group: dict[str, Any]) -> int:
        """The counter ``group`` gets after ``sync()``, ``reset_slow()`` or the load of a plain
        inner-optimizer checkpoint: 0 here (streaming fragments of a subclass keep their phase)."""
        return 0

    def slow_pairs(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The group's parameters that have slow copies, and those copies (train mode);
        ``ValueError`` for a slow copy that is not a tensor of its parameter's shape."""
        return self._held(group, SLOW_KEY)[:2]

    def outer_step(
        self, groups: list[dict[str, Any]], restart: Callable[[dict[str, Any]], int] | None = None
    ) -> None:
        """The outer step of ``groups``, for every parameter with a slow copy (Algorithm 1)::

            slow <- slow + alpha * (fast - slow);  fast <- slow;  the momentum policy

        then each group's counter restarts at 0 (or ``restart(group)``). Subclasses override it to
        replace the local rule and call it for the local part."""
        mode = self.pullback_momentum
        keys = (momentum_keys_for(self.optimizer) or ()) if mode != "none" else ()
        steps: list[PlanStep] = []
        for group in groups:
            params, slows, states = self._held(group, SLOW_KEY)
            placed = self._placed(params, slows)
            if placed is not slows:
                steps.append(partial(_store, states, SLOW_KEY, placed))
            found = [(d, key, slow_momentum_key(key)) for d in states for key in keys]
            found = [f for f in found if isinstance(f[0].get(f[1]), Tensor)]  # momentum buffers
            buffers, fast, slow, by = [d[key] for d, key, _ in found], list(params), placed, 1
            if mode == "pullback":  # the same rule, with the momentum as fast and its slow copy
                held: list[Any] = [d.get(slow_key) for d, _, slow_key in found]
                new = [i for i, h in enumerate(held) if not isinstance(h, Tensor)]
                with torch.inference_mode(False):
                    for i in new:  # zeros at first, allocated before anything changes
                        held[i] = torch.zeros_like(buffers[i])
                steps += [partial(found[i][0].__setitem__, found[i][2], held[i]) for i in new]
                fast, slow, by = fast + buffers, slow + held, 2  # momentum pairs: any placement
            steps += sync_steps(fast, slow, group[ALPHA_KEY], self._scratch, by)
            if mode == "reset":
                steps.append(partial(_each, "_foreach_zero_", buffers))
        counters = [0 if restart is None else restart(group) for group in groups]
        steps.append(partial(_store, groups, STEP_KEY, counters))
        self._run(steps)

    def _placed(self, params: list[Tensor], slows: list[Any], fresh: bool = False) -> list[Tensor]:
        """``slows``, with new copies (allocated now) where one is not a tensor of its parameter's
        shape in the slow dtype (after ``model.double()``, a ``train()``, a checkpoint of another
        ``slow_dtype``, model surgery), holding the old one (the parameter if ``fresh``)."""
        if not fresh and self.slow_dtype is None and same_placements(params, slows):
            return slows
        return [
            s
            if isinstance(s, Tensor) and s.shape == p.shape and _placement(s) == w
            else self._new_slow_copy(p, p if fresh else s)
            for p, s, w in zip(params, slows, map(self._slow_placement, params), strict=True)
        ]

    @torch.no_grad()
    def sync(self) -> None:
        """Take an outer step now, in every group, and restart the k-step cycles (an extra outer
        step: e.g. to end training on a sync before a final evaluation or export)."""
        if self._plan is not None and self._plan.owner == "sync":
            self._finish()  # called again after an exception: finish that sync, take no other
            return
        self._begin("sync()", sync_overdue=True)  # a step stopped before its sync: step(); sync()
        try:
            self.outer_step(self.param_groups, self.cycle_start)
        finally:
            if self._plan is not None:  # interrupted: the next sync() only finishes it
                self._plan.owner = "sync"

    def reset_slow(self) -> None:
        """Restart the slow weights from the current parameters, and the k-step cycles, after model
        surgery or new weights loaded mid-training (docs/design.md); slow momentum restarts at 0."""
        self._begin("reset_slow()")
        groups = self.param_groups
        keys = list(map(slow_momentum_key, momentum_keys_for(self.optimizer) or ()))
        steps: list[PlanStep] = []
        for group in groups:
            params, slows, states = self._held(group, SLOW_KEY, check=False)
            placed = self._placed(params, slows, fresh=True)  # new copies hold the parameters
            buffers = [s[key] for s in states for key in keys if isinstance(s.get(key), Tensor)]
            steps.append(partial(_store, states, SLOW_KEY, placed))
            steps.append(partial(_each, "_foreach_copy_", placed, params))
            steps.append(partial(_each, "_foreach_zero_", buffers))
        steps.append(partial(_store, groups, STEP_KEY, [self.cycle_start(g) for g in groups]))
        self._run(steps)

    def _switch(self, to_eval: bool, groups: list[dict[str, Any]]) -> None:
        """Put the slow weights into the parameters of ``groups`` (``to_eval``) or the fast ones
        back: a slow copy of the parameter's dtype trades values with it (docs/design.md)."""
        self._finish()  # first: an interrupted eval() records the versions as its last steps
        if not to_eval:
            self._warn_if_written(groups)
        groups = [group for group in groups if group.get(EVAL_KEY, False) != to_eval]
        if not groups:
            return
        key = SLOW_KEY if to_eval else FAST_KEY
        entries = iter(self._states(list(chain.from_iterable(g["params"] for g in groups))))
        found = [_present(g["params"], [*islice(entries, len(g["params"]))], key) for g in groups]
        every = [[*chain(*x)] for x in zip(*found, strict=True)] if found[1:] else found[0]
        shapes = same_shapes(every[1], every[0])
        for group in groups if shapes is None else ():
            self._held(group, key)  # raises the ValueError that names the entry
        if to_eval:  # swapped where the slow copy has the parameter's dtype
            swapped = list(map(operator.is_, map(_dtype_of, every[0]), map(_dtype_of, every[1])))
        else:  # swapped where the parameter holds the slow weights (none kept)
            swapped = list(map(operator.not_, map(operator.contains, every[2], repeat(SLOW_KEY))))
        copied = [] if all(swapped) else list(map(operator.not_, swapped))  # empty: all swapped
        params, held, states = [list(compress(x, swapped)) if copied else x for x in every]
        copied_params, copied_held, copied_states = [list(compress(x, copied)) for x in every]
        with torch.inference_mode(False):  # eval(): new lookahead_fast copies where not swapped
            stashes = [torch.empty_like(p) for p in copied_params] if to_eval else []
        steps: list[PlanStep] = [partial(_each, "_foreach_copy_", stashes, copied_params)]
        steps.append(partial(_each, "_foreach_copy_", copied_params, copied_held))
        steps += swap_steps(params, held, self._scratch, shapes if params is every[0] else None)
        steps.append(partial(_store, states, FAST_KEY if to_eval else SLOW_KEY, held))
        steps.append(partial(_drop, states if to_eval else every[2], key))  # the rename, two steps
        store = partial(_store, copied_states, FAST_KEY, stashes)  # eval(): of other dtypes
        steps += [store, partial(self._record_versions, groups, found)] if to_eval else []
        # A group without slow copies holds its slow weights (none updated yet): it stays in T.
        steps.append(partial(_store, groups, EVAL_KEY, [to_eval and bool(f[0]) for f in found]))
        self._run(steps)

    def _record_versions(self, groups: list[dict[str, Any]], found: list[list[Any]]) -> None:
        """What train() compares with (a step of eval(), also when the next call finishes it)."""
        for group, (params, _, _) in zip(groups, found, strict=True):
            if params:  # a group without slow copies stays in T: nothing for train() to compare
                self._eval_versions[id(group)] = (group, params, list(map(_version_of, params)))

    def _warn_if_written(self, groups: list[dict[str, Any]]) -> None:
        """Warn once when train() puts the fast weights over values written into the parameters in
        eval mode (e.g. the HF Trainer's ``load_best_model_at_end``); records are kept per group."""
        written = 0
        for group in groups:
            record = self._eval_versions.pop(id(group), None) if group.get(EVAL_KEY) else None
            if record is not None and record[0] is group:
                written += sum(map(operator.ne, record[2], map(_version_of, record[1])))
        if written:
            warnings.warn(
                f"Lookahead.train(): {written} {WRITTEN_IN_EVAL_MODE} (e.g. a model checkpoint "
                "loaded after an evaluation) and now get the fast weights back. To continue from "
                "the loaded weights, load them after train() and call reset_slow(); with the HF "
                "Trainer, LookaheadTrainer does so (docs/saving-and-export.md).",
                stacklevel=4,  # the caller of train()
            )

    def eval(self) -> None:
        """Put the slow weights into the parameters (idempotent; docs/evaluation.md); ``step()`` raises."""
        self._switch(True, self.param_groups)

    def train(self) -> None:
        """Put the fast weights back into the parameters (idempotent)."""
        self._switch(False, self.param_groups)

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Context manager: the parameters hold the slow weights inside, the fast weights after.
        Nests: the groups it switched, and only those, switch back, also on an exception (also one
        that interrupts the switch in: the block is then left as it was entered)."""
        self._finish()  # an interrupted eval()/train() first, then the groups in train mode
        switched = [group for group in self.param_groups if not group.get(EVAL_KEY, False)]
        try:
            self._switch(True, switched)
            yield
        finally:
            self._switch(False, switched)

    def eval_state_dict(
        self, state_dict: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[tuple[Tensor, Tensor]]]:
        """``state_dict`` (default: ``self.state_dict()``, taken now) in the eval form that
        ``eval()`` would have written, and the (parameter, slow weights) pairs the model's saved
        state must hold (docs/design.md). Nothing live changes; groups in eval mode stay as they are."""
        self._finish()
        saved = self.state_dict() if state_dict is None else state_dict
        saved_state = dict(saved["state"])
        pairs: list[tuple[Tensor, Tensor]] = []
        flags = [bool(group.get(EVAL_KEY)) for group in self.param_groups]  # as eval() flags
        both = zip(self.param_groups, saved["param_groups"], strict=True)
        for index, (group, saved_group) in enumerate(both):
            for p, key in zip(group["params"], saved_group["params"], strict=True):
                slow = self.state.get(p, _NO_STATE).get(SLOW_KEY)
                if group.get(EVAL_KEY) or not isinstance(slow, Tensor) or key not in saved_state:
                    continue
                flags[index] = True  # a group with slow copies (one without stays in T)
                entry = saved_state[key] = {**saved_state[key], FAST_KEY: p.detach()}
                if _placement(slow) == _placement(p):
                    del entry[SLOW_KEY]
                pairs.append((p, slow.to(device=p.device, dtype=p.dtype)))  # slow itself if it fits
        groups = [{**g, EVAL_KEY: f} for g, f in zip(saved["param_groups"], flags, strict=True)]
        return {**saved, "state": saved_state, "param_groups": groups}, pairs

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (see ``torch.optim.Optimizer.zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; ``lookahead_k``/``lookahead_alpha`` may be given per group."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        for key, check in GROUP_CHECKS:
            if key in param_group:
                param_group[key] = check(param_group[key], key)
        param_group.pop(EVAL_KEY, None)  # its parameters hold what they hold: the new group is in T
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (standard format; slow weights in per-parameter
        state); the wrapper's state-dict hooks run around the inner's."""
        self._finish()
        with contextlib.suppress(ValueError, TypeError):  # numpy k, alpha saved as int, float;
            self._check_groups()  # a bad value: refused by the next step, saved as it is
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.optimizer.state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this wrapper or of the plain inner optimizer (docs/checkpoints.md):
        its ``lookahead_k``, ``lookahead_alpha`` and counters win (with a warning where they differ;
        a group without a counter gets ``cycle_start``), slow copies get this ``slow_dtype``. One that
        does not fit raises ``ValueError``/``TypeError`` and changes nothing."""
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be an optimizer state dict (a dict), got {type(state_dict).__name__}"
            )
        self._begin("load_state_dict()")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        params, saved = check_loadable(state_dict, self.param_groups)
        before = {K_KEY: self.defaults.get(K_KEY), ALPHA_KEY: self.defaults.get(ALPHA_KEY)}
        placed = self._placed(params, saved)  # torch would cast them to the parameter's dtype
        counted = [STEP_KEY in saved_group for saved_group in state_dict["param_groups"]]
        self.optimizer.load_state_dict(state_dict)
        _store([self.state[p] for p in params], SLOW_KEY, placed)
        self._check_groups()
        for group in compress(self.param_groups, map(operator.not_, counted)):
            group[STEP_KEY] = self.cycle_start(group)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
        self._adopt_group_values(before, "the checkpoint's")  # a warning, once all is loaded

    def __getstate__(self) -> dict[str, Any]:
        # As Optimizer.__getstate__: no hooks; nor the `step` a scheduler put on the instance.
        self._finish()
        return {n: getattr(self, n) for n in ("optimizer", "pullback_momentum", "slow_dtype")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:  # the inner optimizer's repr shows each group's k and alpha
        k, alpha, pullback = self.defaults[K_KEY], self.defaults[ALPHA_KEY], self.pullback_momentum
        inner = textwrap.indent(repr(self.optimizer), "    ")
        return f"Lookahead(k={k}, alpha={alpha}, pullback_momentum={pullback!r},\n  optimizer=\n{inner}\n)"
