"""A stateful property test of the Lookahead core: every public operation, in any order.

A hypothesis ``RuleBasedStateMachine`` drives one Lookahead (the *subject*) through the public
API only: ``step`` with and without a closure, ``zero_grad``, ``eval``/``train``,
``slow_weights()``, ``sync``, ``reset_slow``, checkpoints (``state_dict`` -> ``torch.save`` ->
``torch.load(weights_only=True)`` -> ``load_state_dict``, into the same optimizer or into a fresh
one over fresh parameters, in train or eval mode, with another ``slow_dtype``), edits of
``lookahead_k``/``lookahead_alpha`` (also bad ones), ``add_param_group``, state clears and
replacements, evaluation under ``torch.inference_mode()``, and failures injected at a torch call
inside an operation (a ``RuntimeError`` or a real SIGINT).

Two oracles, checked after every rule:

* a *twin*: a second Lookahead of the same configuration, fed the same gradients, that only
  trains (no faults, no checkpoints, no evaluation); the subject's fast weights, slow weights,
  inner state and counters must equal the twin's bit for bit, in every dtype;
* with float64 parameters, ``tests.reference.Algorithm1``, a plainly written float64 model of the
  paper's Algorithm 1 with its own instance of the inner optimizer class, to 1e-12.

What an operation must do when it fails is the issue 21 contract: the exception raised is the
injected one, and *finishing* the operation gives the result of one uninterrupted call. Finishing
is calling it again for ``eval()``, ``train()``, ``sync()``, ``reset_slow()`` and
``load_state_dict()``; for ``slow_weights()``, returning to the mode it was entered in
(``train()`` or ``eval()``); for a ``step()`` whose inner step ran, the next ``step()`` (which
completes the sync without repeating the inner step) or ``sync()`` (which completes it and then
takes its own outer step in every group, so that the result is that of ``step(); sync()``). Every other error must be a ``ValueError``/``TypeError``
(bad ``k``/``alpha``) or the ``RuntimeError`` that docs/evaluation.md documents for ``step()``,
``sync()``, ``reset_slow()`` and ``load_state_dict()`` in eval mode.

``make test`` runs a few examples of each machine; ``-m slow`` runs many more.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from torch import Tensor
from torch.overrides import TorchFunctionMode

from tests._slow import slow_weights_of
from tests.reference import Algorithm1
from torch_lookahead import AdaBound, Lookahead, NovoGrad

TOLERANCE = 1e-12
BIG = 140_000  # elements: float64 parameters of more than a few CPU cache blocks of the sync
MAX_GROUPS = 3

# inner optimizer: (constructor over a list of groups, its momentum entry)
INNER: dict[str, tuple[Callable[[list[dict[str, Any]]], torch.optim.Optimizer], str]] = {
    "sgd": (lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9), "momentum_buffer"),
    "adamw": (lambda groups: torch.optim.AdamW(groups, lr=0.02, weight_decay=0.01), "exp_avg"),
    "novograd": (lambda groups: NovoGrad(groups, lr=0.02, weight_decay=0.01), "exp_avg"),
    "adabound": (lambda groups: AdaBound(groups, lr=0.01), "exp_avg"),
}
SHAPES = [(3,), (2, 3), (1,), (4, 2)]
ALPHAS = [0.5, 0.25, 0.8, 1.0, 0.0]

# Calls that only read metadata: an interrupt may arrive there, an error from torch may not.
_METADATA = {
    "numel", "dim", "size", "element_size", "is_contiguous", "data_ptr", "stride",
    "storage_offset", "untyped_storage", "is_floating_point", "is_complex", "nelement",
    "get_device", "is_pinned", "is_inference", "__len__", "__hash__", "__torch_function__",
}  # fmt: skip


class InjectedError(RuntimeError):
    """What the injector raises (a torch error such as an out-of-memory)."""


@dataclass(frozen=True)
class Config:
    optimizer: str
    pullback: str
    k: int
    alpha: float
    dtype: torch.dtype
    slow_dtype: torch.dtype | None
    shapes: tuple[tuple[tuple[int, ...], ...], ...]
    seed: int


@dataclass(frozen=True)
class Fault:
    kind: str  # "error" or "interrupt"
    at: int  # which counted torch call fails, modulo the calls the operation makes


def configs(dtypes: list[torch.dtype], big: bool) -> st.SearchStrategy[Config]:
    """Configurations; with ``big``, a quarter of them has a parameter of ``BIG`` elements."""
    group = st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3).map(tuple)
    shapes = st.tuples(
        st.lists(group, min_size=1, max_size=2).map(tuple),
        st.sampled_from([False, False, False, True] if big else [False]),
    ).map(lambda s: ((*s[0][0], (BIG,)), *s[0][1:]) if s[1] else s[0])
    return st.builds(
        Config,
        optimizer=st.sampled_from(sorted(INNER)),
        pullback=st.sampled_from(["none", "reset", "pullback"]),
        k=st.integers(1, 4),
        alpha=st.sampled_from(ALPHAS[:3]),
        dtype=st.sampled_from(dtypes),
        slow_dtype=st.sampled_from([None, torch.float32]),
        shapes=shapes,
        seed=st.integers(0, 2**16),
    )


faults = st.none() | st.builds(
    Fault, kind=st.sampled_from(["error", "interrupt"]), at=st.integers(0, 10**6)
)
grad_seeds = st.integers(0, 2**16)


class Injector(TorchFunctionMode):
    """Counts the torch calls an operation makes and fails the ``fail_at``-th of them.

    An ``"interrupt"`` is a real SIGINT (a Ctrl-C), so that code deferring signals meets what
    it was written for; an ``"error"`` is an ``InjectedError`` raised instead of the call.
    Calls made inside the inner optimizer's own step are not counted (``armed`` is off there).
    """

    def __init__(self, fail_at: int | None, kind: str | None) -> None:
        super().__init__()
        self.fail_at, self.kind = fail_at, kind
        self.calls = 0
        self.armed = True
        self.fired: BaseException | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        # autograd's mode switches are not failure points (a no_grad() that could not restore the
        # mode would be torch's fault, not an operation's): they are neither counted nor failed
        if self.armed and name not in ("__get__", "__set__", "_set_grad_enabled"):
            self.calls += 1
            if self.calls == self.fail_at and (self.kind == "interrupt" or name not in _METADATA):
                self._fail(name)
        return func(*args, **(kwargs or {}))

    def _fail(self, name: str) -> None:
        if self.kind == "error":
            self.fired = InjectedError(f"injected at call {self.calls} ({name})")
            raise self.fired
        self.fired = KeyboardInterrupt()
        if threading.current_thread() is threading.main_thread():
            signal.raise_signal(signal.SIGINT)
        else:  # signals reach the main thread only
            raise self.fired


def _is_injected(error: BaseException, injector: Injector) -> bool:
    if injector.fired is None:
        return False
    if isinstance(injector.fired, KeyboardInterrupt):
        return isinstance(error, KeyboardInterrupt)
    seen: BaseException | None = error
    while seen is not None:
        if seen is injector.fired:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _call_plainly(name: str, operation: Callable[[], Any], fault: Fault | None) -> bool:
    operation()
    return False


def _roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _state_entries(state: dict[str, Any]) -> dict[str, Any]:
    """The inner optimizer's own entries of a parameter's state."""
    return {key: value for key, value in state.items() if not key.startswith("lookahead")}


class LookaheadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.injector: Injector | None = None
        self.inner_ran = False
        self.mode = "train"

    # ------------------------------------------------------------------ set-up
    def _build(self, config: Config) -> None:
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        values = [
            [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in group]
            for group in config.shapes
        ]
        self.params = [[self._parameter(v) for v in group] for group in values]
        self.twin_params = [[self._parameter(v) for v in group] for group in values]
        self.opt = self._hook(self._lookahead(self.params, config.slow_dtype))
        self.twin = self._lookahead(self.twin_params, config.slow_dtype)
        self.model: Algorithm1 | None = None
        if config.dtype == torch.float64:
            make_inner, key = INNER[config.optimizer]
            self.model = Algorithm1(make_inner, config.pullback, key)
            for group in values:
                self.model.add_group(group, config.k, config.alpha)

    def _parameter(self, value: Tensor) -> torch.nn.Parameter:
        return torch.nn.Parameter(value.to(self.config.dtype, copy=True))

    def _lookahead(
        self, params: list[list[torch.nn.Parameter]], slow_dtype: torch.dtype | None
    ) -> Lookahead:
        make_inner, _ = INNER[self.config.optimizer]
        inner = make_inner([{"params": list(group)} for group in params])
        return Lookahead(
            inner,
            k=self.config.k,
            alpha=self.config.alpha,
            pullback_momentum=self.config.pullback,  # type: ignore[arg-type]
            slow_dtype=slow_dtype,
        )

    def _hook(self, opt: Lookahead) -> Lookahead:
        """Tell the injector when the inner optimizer's own step runs (torch's public hooks)."""

        def before(*_: Any) -> None:
            if self.injector is not None:
                self.injector.armed = False

        def after(*_: Any) -> None:
            self.inner_ran = True
            if self.injector is not None:
                self.injector.armed = True

        opt.optimizer.register_step_pre_hook(before)
        opt.optimizer.register_step_post_hook(after)
        return opt

    @property
    def positions(self) -> list[tuple[int, int]]:
        return [(g, i) for g, group in enumerate(self.params) for i in range(len(group))]

    # ------------------------------------------------------------------ calling the subject
    def _call(self, name: str, operation: Callable[[], Any], fault: Fault | None = None) -> bool:
        """Run ``operation`` on the subject; True if it raised the injected fault."""
        if fault is None:
            injector = Injector(None, None)
        else:
            known = self.calls.get(name) or 20
            injector = Injector(1 + fault.at % known, fault.kind)
        self.injector = injector
        grad_mode = torch.is_grad_enabled()
        try:
            with injector:
                operation()
        except BaseException as error:
            if _is_injected(error, injector):
                return True
            raise
        finally:
            self.injector = None
            if fault is None:
                self.calls[name] = max(self.calls.get(name, 0), injector.calls)
            # an interrupted operation leaves the caller's autograd mode as it was
            assert torch.is_grad_enabled() == grad_mode, f"{name} changed the grad mode"
        return False

    def _call_and_finish(
        self, name: str, operation: Callable[[], Any], fault: Fault | None
    ) -> None:
        """Run ``operation``; if the injected fault interrupted it, finish it by calling it again."""
        if self._call(name, operation, fault):
            self._call(name, operation)

    def _grads(self, seed: int, missing: frozenset[int]) -> list[list[Tensor | None]]:
        generator = torch.Generator().manual_seed(seed)
        grads: list[list[Tensor | None]] = []
        for g, group in enumerate(self.params):
            grads.append([])
            for i, p in enumerate(group):
                grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
                flat = self.positions.index((g, i))
                grads[-1].append(None if flat in missing else grad)
        return grads

    def _set_grads(self, params: list[list[torch.nn.Parameter]], grads: Any) -> None:
        for group, group_grads in zip(params, grads, strict=True):
            for p, grad in zip(group, group_grads, strict=True):
                p.grad = None if grad is None else grad.to(p.dtype)

    def _step(
        self,
        opt: Lookahead,
        params: list[list[torch.nn.Parameter]],
        grads: Any,
        how: str,
    ) -> None:
        if how == "backward":
            self._set_grads(params, grads)
        self._call_step(opt, params, grads, how, None)

    def _call_step(
        self,
        opt: Lookahead,
        params: list[list[torch.nn.Parameter]],
        grads: Any,
        how: str,
        fault: Fault | None,
    ) -> bool:
        """``opt.step()`` (with a closure that sets ``grads``, or on the gradients set)."""
        call = self._call if opt is self.opt else _call_plainly
        if how != "closure":
            return call("step", opt.step, fault)
        calls = []

        def closure() -> float:
            calls.append(1)
            self._set_grads(params, grads)
            return 1.5

        def step_with_closure() -> None:
            assert opt.step(closure) == 1.5
            assert len(calls) == 1

        return call("step", step_with_closure, fault)

    # ------------------------------------------------------------------ training
    @precondition(lambda self: self.mode == "train")
    @rule(
        seed=grad_seeds,
        missing=st.frozensets(st.integers(0, 7), max_size=2),
        how=st.sampled_from(["backward", "closure", "reuse"]),
        fault=faults,
        finish=st.sampled_from(["step", "sync"]),
        next_seed=grad_seeds,
        then=st.integers(0, 3),
    )
    def step(
        self,
        seed: int,
        missing: frozenset[int],
        how: str,
        fault: Fault | None,
        finish: str,
        next_seed: int,
        then: int,
    ) -> None:
        """A step (which may fail and be finished), then ``then`` plain steps."""
        grads = self._grads(seed, missing) if how != "reuse" else None
        self.inner_ran = False
        if how == "backward":
            self._set_grads(self.params, grads)
        failed = self._call_step(self.opt, self.params, grads, how, fault)
        if not failed or self.inner_ran:
            self._step(self.twin, self.twin_params, grads, how)
            if self.model is not None:
                if grads is not None:
                    self.model.set_grads(grads)
                self.model.step()
        if failed and (finish == "step" or not self.inner_ran):
            self._plain_step(next_seed)  # what failed before the inner step is just retried
        elif failed:
            # sync() completes the failed step's sync, then takes its own outer step everywhere
            self._call("sync", self.opt.sync)
            self.twin.sync()
            if self.model is not None:
                self.model.sync_all()
        for extra in range(then):
            self._plain_step(next_seed + 1 + extra)

    def _plain_step(self, seed: int) -> None:
        grads = self._grads(seed, frozenset())
        self._step(self.opt, self.params, grads, "backward")
        self._step(self.twin, self.twin_params, grads, "backward")
        if self.model is not None:
            self.model.set_grads(grads)
            self.model.step()

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none: bool) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)
        self.twin.zero_grad(set_to_none=set_to_none)
        if self.model is not None:
            self.model.zero_grad(set_to_none)

    @precondition(lambda self: self.mode == "train")
    @rule(operation=st.sampled_from(["sync", "reset_slow"]), fault=faults)
    def sync_or_reset_slow(self, operation: str, fault: Fault | None) -> None:
        self._call_and_finish(operation, getattr(self.opt, operation), fault)
        getattr(self.twin, operation)()
        if self.model is not None:
            self.model.sync_all() if operation == "sync" else self.model.reset_slow()

    # ------------------------------------------------------------------ evaluation
    @rule(to_eval=st.booleans(), fault=faults)
    def eval_or_train(self, to_eval: bool, fault: Fault | None) -> None:
        name = "eval" if to_eval else "train"
        self._call_and_finish(name, getattr(self.opt, name), fault)
        self.mode = self._evaluated() if to_eval else name

    def _evaluated(self) -> str:
        """The mode eval() leaves: eval where some parameter has slow weights to put in (a group
        without them holds them already and stays in train mode, docs/design.md)."""
        return "eval" if any("lookahead_slow" in s for s in self.twin.state.values()) else "train"

    @rule(how=st.sampled_from(["plain", "nested", "raising"]), fault=faults)
    def slow_weights(self, how: str, fault: Fault | None) -> None:
        """Evaluate on the slow weights; finishing a failed one is returning to the mode it began in."""
        mode = self.mode

        def evaluate() -> None:
            with contextlib.suppress(LookupError), self.opt.slow_weights():
                self.mode = "eval"
                self.check()
                if how == "nested":
                    with self.opt.slow_weights():
                        pass
                    self.check()
                if how == "raising":
                    raise LookupError("the body failed")

        if self._call("slow_weights", evaluate, fault):
            self._call(mode, self.opt.train if mode == "train" else self.opt.eval)
        self.mode = mode

    @rule(how=st.sampled_from(["slow_weights", "eval", "train"]))
    def inference_mode_evaluation(self, how: str) -> None:
        with torch.inference_mode():
            if how == "slow_weights":
                with self.opt.slow_weights():
                    sum(p.sum() for group in self.params for p in group)
            elif how == "eval":
                self.opt.eval()
                self.mode = self._evaluated()
            else:
                self.opt.train()
                self.mode = "train"

    @precondition(lambda self: self.mode == "eval")
    @rule(operation=st.sampled_from(["step", "sync", "reset_slow", "load_state_dict"]))
    def refused_in_eval_mode(self, operation: str) -> None:
        self.inner_ran = False
        calls: dict[str, Callable[[], Any]] = {
            "step": self.opt.step,
            "sync": self.opt.sync,
            "reset_slow": self.opt.reset_slow,
            "load_state_dict": lambda: self.opt.load_state_dict(self.opt.state_dict()),
        }
        with pytest.raises(RuntimeError, match="eval"):
            calls[operation]()
        assert not self.inner_ran

    # ------------------------------------------------------------------ checkpoints
    @rule(
        into=st.sampled_from(["same", "fresh"]),
        slow_dtype=st.sampled_from([None, torch.float32]),
        model_first=st.booleans(),
        fault=faults,
    )
    def checkpoint(
        self, into: str, slow_dtype: torch.dtype | None, model_first: bool, fault: Fault | None
    ) -> None:
        saved = _roundtrip(
            {
                "model": [[p.detach().clone() for p in group] for group in self.params],
                "optimizer": self.opt.state_dict(),
            }
        )
        if into == "same":
            slow_dtype = self.config.slow_dtype
            if self.mode == "eval":
                self.opt.train()  # a load in eval mode is refused (docs/checkpoints.md)
            opt, params = self.opt, self.params
        else:
            params = [[self._parameter(torch.zeros(p.shape)) for p in g] for g in self.params]
            opt = self._hook(self._lookahead(params, slow_dtype))
        if model_first or into == "same":
            self._load_model(params, saved["model"])

        def load() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.load_state_dict(saved["optimizer"])

        self.opt = opt
        self._call_and_finish("load_state_dict", load, fault)
        if not (model_first or into == "same"):
            self._load_model(params, saved["model"])
        if into == "fresh":
            for twin_param in (p for group in self.twin_params for p in group):
                twin_param.grad = None  # the resumed run computes its gradients anew
            if self.model is not None:
                self.model.zero_grad(set_to_none=True)
        self.params = params
        if slow_dtype != self.config.slow_dtype:
            self.config = replace(self.config, slow_dtype=slow_dtype)
            if self.config.dtype.itemsize < 4:  # the twin's trajectory changes with it
                state = _roundtrip(self.twin.state_dict())
                self.twin = self._lookahead(self.twin_params, slow_dtype)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.twin.load_state_dict(state)

    @staticmethod
    def _load_model(params: list[list[torch.nn.Parameter]], values: list[list[Tensor]]) -> None:
        with torch.no_grad():
            for group, group_values in zip(params, values, strict=True):
                for p, value in zip(group, group_values, strict=True):
                    p.copy_(value)

    # ------------------------------------------------------------------ editing groups and state
    @rule(
        group=st.integers(0, MAX_GROUPS - 1),
        k=st.none() | st.integers(1, 4),
        alpha=st.none() | st.sampled_from(ALPHAS),
    )
    def edit_group(self, group: int, k: int | None, alpha: float | None) -> None:
        g = group % len(self.params)
        for opt in (self.opt, self.twin):
            if k is not None:
                opt.param_groups[g]["lookahead_k"] = k
            if alpha is not None:
                opt.param_groups[g]["lookahead_alpha"] = alpha
        if self.model is not None:
            self.model.k[g] = k if k is not None else self.model.k[g]
            self.model.alpha[g] = alpha if alpha is not None else self.model.alpha[g]

    @precondition(lambda self: self.mode == "train")
    @rule(
        group=st.integers(0, MAX_GROUPS - 1),
        key=st.sampled_from(["lookahead_k", "lookahead_alpha"]),
        bad=st.sampled_from([0, -1, 2.5, "3", 1.5, -0.25, float("nan"), None]),
        seed=grad_seeds,
    )
    def bad_edit_is_refused_before_anything_changes(
        self, group: int, key: str, bad: Any, seed: int
    ) -> None:
        g = group % len(self.params)
        if key == "lookahead_alpha" and bad in (0,):
            bad = 2  # 0 is a valid alpha
        if key == "lookahead_k" and bad == 1.5:
            bad = 0
        good = self.opt.param_groups[g][key]
        self.opt.param_groups[g][key] = bad
        grads = self._grads(seed, frozenset())
        self._set_grads(self.params, grads)
        self._set_grads(self.twin_params, grads)
        if self.model is not None:
            self.model.set_grads(grads)
        self.inner_ran = False
        with pytest.raises((ValueError, TypeError), match=key):
            self._call("step", self.opt.step)
        assert not self.inner_ran
        self.opt.param_groups[g][key] = good
        self.check()

    @rule(
        shape=st.sampled_from(SHAPES),
        k=st.integers(1, 4),
        alpha=st.sampled_from(ALPHAS),
        seed=grad_seeds,
    )
    def add_param_group(self, shape: tuple[int, ...], k: int, alpha: float, seed: int) -> None:
        if len(self.params) >= MAX_GROUPS:
            return
        value = torch.randn(
            shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        for opt, params in ((self.opt, self.params), (self.twin, self.twin_params)):
            p = self._parameter(value)
            opt.add_param_group({"params": [p], "lookahead_k": k, "lookahead_alpha": alpha})
            params.append([p])
        if self.model is not None:
            self.model.add_group([value], k, alpha)

    @precondition(lambda self: self.mode == "train")
    @rule(position=st.integers(0, 20), how=st.sampled_from(["clear", "replace"]))
    def clear_state(self, position: int, how: str) -> None:
        g, i = self.positions[position % len(self.positions)]
        for opt, params in ((self.opt, self.params), (self.twin, self.twin_params)):
            if how == "clear":
                opt.state[params[g][i]].clear()
            else:
                opt.state[params[g][i]] = {}
        if self.model is not None:
            self.model.clear_state(g, i)

    # ------------------------------------------------------------------ the oracles
    @invariant()
    def check(self) -> None:
        """No training state lost: the subject holds what the twin and the model hold."""
        if not hasattr(self, "opt"):
            return
        injector = self.injector
        armed = injector is not None and injector.armed
        if injector is not None:
            injector.armed = False  # the checks' own torch calls are not the subject's
        try:
            self._check()
        finally:
            if injector is not None:
                injector.armed = armed

    def _check(self) -> None:
        slow = slow_weights_of(self.opt)
        twin_slow = slow_weights_of(self.twin)
        assert len(slow) == len(twin_slow) == len(self.positions)
        for flat, (g, i) in enumerate(self.positions):
            where = f"group {g}, parameter {i}, {self.mode} mode"
            p, q = self.params[g][i].detach(), self.twin_params[g][i].detach()
            expected = q if self.mode == "train" else twin_slow[flat]
            assert torch.equal(p, expected), f"parameter differs from the twin's ({where})"
            assert torch.equal(slow[flat], twin_slow[flat]), f"slow weights differ ({where})"
            state = _state_entries(self.opt.state.get(self.params[g][i], {}))
            twin_state = _state_entries(self.twin.state.get(self.twin_params[g][i], {}))
            assert state.keys() == twin_state.keys(), where
            for key, value in state.items():
                if isinstance(value, Tensor):
                    assert torch.equal(value, twin_state[key]), f"state {key!r} ({where})"
                else:
                    assert value == twin_state[key], f"state {key!r} ({where})"
            if self.model is None:
                continue
            model_param = self.model.fast(g, i) if self.mode == "train" else self.model.slow(g, i)
            _close(p, model_param, f"parameter vs Algorithm 1 ({where})")
            _close(slow[flat], self.model.slow(g, i), f"slow weights vs Algorithm 1 ({where})")
            model_state = _state_entries(self.model.inner_state(g, i))
            assert state.keys() == model_state.keys(), where
            for key, value in state.items():
                if isinstance(value, Tensor):
                    _close(value, model_state[key], f"state {key!r} vs Algorithm 1 ({where})")
        for g, (group, twin_group) in enumerate(
            zip(self.opt.param_groups, self.twin.param_groups, strict=True)
        ):
            for key in ("lookahead_k", "lookahead_alpha", "lookahead_step"):
                assert group[key] == twin_group[key], f"{key} of group {g}"
            if self.model is not None:
                assert group["lookahead_step"] == self.model.count[g], f"counter of group {g}"

    def teardown(self) -> None:
        self.injector = None


def _close(actual: Tensor, expected: Any, what: str) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    if actual.numel() == 0:
        return
    difference = float((actual - expected).abs().max())
    scale = 1.0 + float(expected.abs().max())
    assert difference <= TOLERANCE * scale, f"{what}: largest difference {difference:.3g}"


def machine(dtypes: list[torch.dtype], big: bool) -> type[LookaheadMachine]:
    """The machine over configurations of these parameter dtypes."""

    class Machine(LookaheadMachine):
        @initialize(config=configs(dtypes, big))
        def build(self, config: Config) -> None:
            self._build(config)

    return Machine


FLOAT64 = [torch.float64]  # both oracles: the twin bit for bit, and Algorithm 1 to 1e-12
LOW_PRECISION = [torch.float32, torch.bfloat16]  # the twin; bf16 with and without fp32 slow copies
MACHINES = {
    "float64": machine(FLOAT64, big=False),
    "low-precision": machine(LOW_PRECISION, big=False),
    "float64-big": machine(FLOAT64, big=True),
    "low-precision-big": machine(LOW_PRECISION, big=True),
}


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.mark.parametrize("dtypes", ["float64", "low-precision"])
def test_every_sequence_of_operations_keeps_the_training_state(dtypes: str) -> None:
    run_state_machine_as_test(MACHINES[dtypes], settings=_settings(examples=100, steps=30))


@pytest.mark.slow
@pytest.mark.parametrize("dtypes", ["float64-big", "low-precision-big"])
def test_every_sequence_of_operations_keeps_the_training_state_deeply(dtypes: str) -> None:
    run_state_machine_as_test(MACHINES[dtypes], settings=_settings(examples=400, steps=50))
