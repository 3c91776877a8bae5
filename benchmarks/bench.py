"""The benchmark harness: the cost of Lookahead, side by side with the inner optimizer and peers.

A development tool, not part of the installed package::

    python benchmarks/bench.py                    # every section on the three lists
    python benchmarks/bench.py --quick            # tiny shapes, 2 rounds: a smoke run
    python benchmarks/bench.py --sections step,stepwise,swap --shapes 1 --inner 3,2   # issue 21's row
    python benchmarks/bench.py --device cuda --dtype bfloat16 --inner 2   # on a GPU

Every section but ``swap`` runs on the same parameter lists (200 x 250,000 floats, 2,000 x 2,500
floats and the parameter list of GPT-2 small):

* **sync**: one outer step ``slow <- slow + alpha*(fast - slow); fast <- slow`` of every
  implementation against the memory floor, twice the time of one copy of the same bytes (the sync
  must read fast and slow and write both, a copy reads one and writes one).
* **step**: the step time of the inner optimizer alone, of ``torch_lookahead.Lookahead`` and of every
  installed peer's Lookahead (timm, pytorch_optimizer, torch-optimizer), on the same parameters and
  gradients, timed whole cycles of ``k`` steps at a time so that the sync is amortised as in
  training. The contenders take turns, one cycle each in a shuffled order; a cell is the median
  over turns of each cycle's ratio to the inner optimizer's cycle of the same turn. By default
  glibc is told to keep freed memory (``--heap``, see ``hold_freed_memory``).
* **stepwise**: the same turns, each step of a cycle timed on its own: the steps between syncs and
  the sync step apart.
* **swap**: ``eval()`` + ``train()`` of ``Lookahead(SGD)`` on 20,000 one-element parameters
  against one step, and the floor of an exchange through a scratch buffer: its three kernels per
  direction (``torch.cat`` into the buffer, two ``torch._foreach_copy_``) on the same tensors.
* **memory**: the allocator's events (``torch.profiler`` on the CPU, the caching allocator's
  statistics on CUDA): the peak of live bytes while the optimizer is built and stepped through two
  cycles, and the bytes allocated per step between syncs and by a sync step.

Only the public API of torch_lookahead is used. Nothing here asserts a timing: the numbers go to a
Markdown report. The committed reports are in benchmarks/results/; docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import importlib.util
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

COMMAND = "python benchmarks/bench.py"
SECTIONS = ("sync", "step", "stepwise", "swap", "memory")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OURS = "torch_lookahead"
# The slow copies that mixed precision keeps: `Lookahead(slow_dtype=torch.float32)`.
SLOW_DTYPE = torch.float32
MIB = float(1 << 20)


# ------------------------------------------------------------------------------------------------
# What is measured: parameter lists, inner optimizers, Lookahead implementations
# ------------------------------------------------------------------------------------------------


def gpt2_parameter_shapes(
    n_layer: int = 12, n_embd: int = 768, vocab_size: int = 50257, n_positions: int = 1024
) -> list[tuple[int, ...]]:
    """Shapes of the trainable tensors of a GPT-2 model (tied LM head), in module order.

    The defaults are GPT-2 small: 148 tensors, 124,439,808 parameters.
    """
    shapes: list[tuple[int, ...]] = [(vocab_size, n_embd), (n_positions, n_embd)]
    layer = [
        *[(n_embd,), (n_embd,)],  # ln_1 weight, bias
        *[(n_embd, 3 * n_embd), (3 * n_embd,)],  # attn.c_attn
        *[(n_embd, n_embd), (n_embd,)],  # attn.c_proj
        *[(n_embd,), (n_embd,)],  # ln_2
        *[(n_embd, 4 * n_embd), (4 * n_embd,)],  # mlp.c_fc
        *[(4 * n_embd, n_embd), (n_embd,)],  # mlp.c_proj
    ]
    shapes += layer * n_layer
    shapes += [(n_embd,), (n_embd,)]  # ln_f
    return shapes


@dataclass(frozen=True)
class ParameterList:
    """A named list of tensor shapes to benchmark on."""

    name: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(_numel(shape) for shape in self.shapes)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


FULL_SHAPES: tuple[ParameterList, ...] = (
    ParameterList("200 x 250,000", ((250_000,),) * 200),
    ParameterList("2,000 x 2,500", ((2_500,),) * 2_000),
    ParameterList("GPT-2 small", tuple(gpt2_parameter_shapes())),
)
# Same structure, small enough for a smoke run: few tensors / many tensors / a transformer's list.
QUICK_SHAPES: tuple[ParameterList, ...] = (
    ParameterList("8 x 25,000", ((25_000,),) * 8),
    ParameterList("200 x 250", ((250,),) * 200),
    ParameterList(
        "GPT-2 (2 layers, 64 wide)",
        tuple(gpt2_parameter_shapes(n_layer=2, n_embd=64, vocab_size=1000, n_positions=128)),
    ),
)

InnerFactory = Callable[[list[Tensor]], Optimizer]
INNER_OPTIMIZERS: dict[str, InnerFactory] = {
    "SGD momentum (foreach)": lambda params: torch.optim.SGD(
        params, lr=1e-3, momentum=0.9, foreach=True
    ),
    "AdamW (foreach)": lambda params: torch.optim.AdamW(params, lr=1e-4, foreach=True),
    "AdamW (fused)": lambda params: torch.optim.AdamW(params, lr=1e-4, fused=True),
    # No state at all: what a step costs beyond the inner one is Lookahead's alone.
    "SGD (foreach)": lambda params: torch.optim.SGD(params, lr=1e-4, foreach=True),
}

WrapperFactory = Callable[[Optimizer, int, float], Optimizer]


@dataclass(frozen=True)
class Contender:
    """A Lookahead implementation: how to wrap an inner optimizer, or why it is unavailable."""

    name: str
    version: str
    wrap: WrapperFactory | None
    unavailable: str | None = None
    # The implementation's own outer step on every group, for timing the sync alone.
    sync: Callable[[Optimizer], object] | None = None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _ours(slow_dtype: torch.dtype | None = None) -> Contender:
    from torch_lookahead import Lookahead

    def wrap(inner: Optimizer, k: int, alpha: float) -> Optimizer:
        return Lookahead(inner, k=k, alpha=alpha, slow_dtype=slow_dtype)

    def sync(optimizer: Optimizer) -> None:
        cast(Lookahead, optimizer).sync()

    name = OURS if slow_dtype is None else f"{OURS} ({str(slow_dtype).removeprefix('torch.')} slow)"
    return Contender(name, _version("torch-lookahead"), wrap, sync=sync)


def _timm_lookahead_class() -> Any:
    """timm's Lookahead class, or a string saying why it cannot be loaded.

    ``import timm`` imports torchvision (``timm.layers``) even though ``timm/optim/lookahead.py``
    needs only torch; where torchvision is missing, that one file is loaded on its own.
    """
    try:
        from timm.optim.lookahead import Lookahead as TimmLookahead

        return TimmLookahead
    except ImportError as error:
        try:
            distribution = importlib.metadata.distribution("timm")
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
        path = Path(str(distribution.locate_file("timm/optim/lookahead.py")))
        spec = importlib.util.spec_from_file_location("_bench_timm_lookahead", path)
        if not path.is_file() or spec is None or spec.loader is None:
            return f"cannot import ({error})"
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.Lookahead


def _timm() -> Contender:
    found = _timm_lookahead_class()
    if isinstance(found, str):
        return Contender("timm", _version("timm"), None, found)

    def wrap(inner: Optimizer, k: int, alpha: float) -> Optimizer:
        return found(inner, alpha=alpha, k=k)  # type: ignore[no-any-return]

    def sync(optimizer: Optimizer) -> None:
        optimizer.sync_lookahead()  # type: ignore[attr-defined]

    return Contender("timm", _version("timm"), wrap, sync=sync)


def _peer_from_module(
    name: str, distribution: str, module_name: str, sync_method: str = ""
) -> Contender:
    """A peer whose class is ``module_name.Lookahead``; ``sync_method(group)`` is its outer step."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        reason = "not installed" if error.name == module_name else f"cannot import ({error})"
        return Contender(name, "-", None, reason)
    peer_class = module.Lookahead

    def wrap(inner: Optimizer, k: int, alpha: float) -> Optimizer:
        return peer_class(inner, k=k, alpha=alpha)  # type: ignore[no-any-return]

    def sync(optimizer: Optimizer) -> None:
        for group in optimizer.param_groups:
            getattr(optimizer, sync_method)(group)

    return Contender(name, _version(distribution), wrap, sync=sync if sync_method else None)


def find_contenders(dtype: torch.dtype = torch.float32) -> list[Contender]:
    """torch_lookahead first (for low-precision parameters, also with float32 slow copies
    second), then every peer, each either usable or marked with the reason why not."""
    return [
        _ours(),
        *([_ours(SLOW_DTYPE)] if dtype != SLOW_DTYPE else []),
        _timm(),
        _peer_from_module("pytorch_optimizer", "pytorch_optimizer", "pytorch_optimizer", "update"),
        _peer_from_module("torch-optimizer", "torch-optimizer", "torch_optimizer", "_update"),
    ]


def make_parameters(
    shapes: Sequence[tuple[int, ...]],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> list[Tensor]:
    """Leaf parameters with fixed random gradients, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    params: list[Tensor] = []
    for shape in shapes:
        value = torch.randn(shape, generator=generator, dtype=torch.float32)
        param = torch.nn.Parameter(value.to(device=device, dtype=dtype))
        param.grad = (1e-3 * torch.randn(shape, generator=generator)).to(device=device, dtype=dtype)
        params.append(param)
    return params


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# What _seconds reads: wall time, or (``--clock thread``) the CPU time of the timing thread, which
# a busy shared machine does not inflate with the time the thread waits for a core.
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
_clock = CLOCKS["wall"]


def _seconds(run: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Time of ``calls`` back-to-back calls of ``run``, with the garbage collector paused."""
    gc.disable()
    try:
        _synchronize(device)
        start = _clock()
        for _ in range(calls):
            run()
        _synchronize(device)
        return _clock() - start
    finally:
        gc.enable()


def median_ratio(times: Sequence[float], references: Sequence[float], scale: float = 1.0) -> float:
    """Median over rounds of ``times[i] / (scale * references[i])``.

    Each time is divided by its reference of the same round, measured moments apart, so that the
    drift of a shared machine cancels; the ratio of the medians would not pair them.
    """
    if len(times) != len(references) or not times:
        raise ValueError(f"need as many references as times, got {len(references)}, {len(times)}")
    return statistics.median(t / (scale * r) for t, r in zip(times, references, strict=True))


# Written before every timed run of a cold-cache measurement (larger than any L3 or GPU L2 cache).
CACHE_EVICTION_BYTES = 256 << 20


def _interleaved_cold(
    runs: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of every run in every round: after one warm-up call each (first-touch page faults,
    lazy initialisation), every round times each run once, in an order rotated from round to round,
    each after writing ``CACHE_EVICTION_BYTES`` so that it starts with cold caches.

    Without the eviction the kernels that work on the benchmark's own (fast, slow) lists would find
    them in the cache after each other (a list of 2,000 small tensors nearly fits in L3), while
    each implementation's own slow copies come from memory.
    """
    for run in runs.values():
        run()
    evict = torch.empty(CACHE_EVICTION_BYTES // 4, dtype=torch.float32, device=device)
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        offset = round_index % len(names)
        for name in names[offset:] + names[:offset]:
            evict.fill_(float(round_index))
            samples[name].append(_seconds(runs[name], device))
    return samples


# ------------------------------------------------------------------------------------------------
# Sync against the memory floor
# ------------------------------------------------------------------------------------------------


def _unblocked_foreach_sync(fast: list[Tensor], slow: list[Tensor], alpha: float) -> None:
    """The textbook vectorised sync: one lerp over every tensor, then one copy over every tensor."""
    torch._foreach_lerp_(slow, fast, alpha)
    torch._foreach_copy_(fast, slow)


@dataclass(frozen=True)
class SyncResult:
    """Median seconds per sync of each kernel, and of the memory floor for the same tensors."""

    shape: ParameterList
    parameter_bytes: int
    floor_seconds: float
    kernel_seconds: dict[str, float]
    kernel_ratios: dict[str, float]  # median over rounds of (kernel time / its floor)
    # Floor measured on an implementation's own slow copies, by the name of its column.
    own_floor_seconds: dict[str, float] = field(default_factory=dict)


TEXTBOOK_KERNEL = "foreach lerp + copy, unblocked"


def _without_grad(
    sync: Callable[[Optimizer], object], optimizer: Optimizer
) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return sync(optimizer)

    return run


def own_slow_copies(optimizer: Optimizer, params: Sequence[Tensor]) -> list[Tensor] | None:
    """The slow copies a Lookahead keeps for ``params``, wherever its state holds them.

    Meant for a wrapper around a state-less inner optimizer (zero-lr SGD without momentum) after
    its first sync: each parameter's slow copy is then the one state tensor shaped like it that is
    not the parameter itself. Looks in ``optimizer.state`` and in the state of a wrapped
    ``optimizer``/``_base_optimizer``; None where some parameter has no such tensor of its dtype.
    """
    states = [optimizer.state]
    for attribute in ("optimizer", "_base_optimizer"):
        inner = getattr(optimizer, attribute, None)
        if isinstance(inner, Optimizer):
            states.append(inner.state)
    found: list[Tensor] = []
    for p in params:
        candidates = (
            value
            for state in states
            if p in state
            for value in state[p].values()
            if isinstance(value, Tensor)
            and value.shape == p.shape
            and value.dtype == p.dtype
            and value.data_ptr() != p.data_ptr()
        )
        slow = next(candidates, None)
        if slow is None:
            return None
        found.append(slow)
    return found


def measure_sync(
    shape: ParameterList,
    *,
    rounds: int,
    alpha: float = 0.5,
    device: torch.device | str = "cpu",
    fast_dtype: torch.dtype = torch.float32,
    slow_dtype: torch.dtype = torch.float32,
    contenders: Sequence[Contender] = (),
) -> SyncResult:
    """Time the outer step against the memory floor, interleaved over ``rounds`` rounds.

    Timed: an unblocked ``_foreach_lerp_`` + ``_foreach_copy_`` over the whole list (the textbook
    vectorised sync, where parameters and slow copies share a dtype), and the whole outer step of
    each contender that has one (``Lookahead.sync()`` and the peers' own methods, bookkeeping
    included), each wrapping a zero-lr SGD over the same tensors. The floor is twice one
    ``_foreach_copy_`` of the slow weights into the parameters; where their dtypes differ it is
    one copy of each into a spare of its own dtype (read both, write both, as the sync must). A
    contender's whole outer step is divided by the floor measured on its own slow copies where they
    share the parameters' dtype: the same bytes it reads and writes (where a buffer lies in memory
    moves the time of copying it, and each implementation allocates its own). Only public API of
    torch_lookahead is used, so that the harness measures any version of the core.
    """
    device = torch.device(device)
    params = make_parameters(shape.shapes, device=device, dtype=fast_dtype)
    fast = [p.detach() for p in params]
    slow = [(f.to(slow_dtype) + 0.1) for f in fast]

    kernels: dict[str, Callable[[], object]] = {}
    if fast_dtype == slow_dtype:
        kernels[TEXTBOOK_KERNEL] = lambda: _unblocked_foreach_sync(fast, slow, alpha)
    wrappers: dict[str, Optimizer] = {}
    for contender in contenders:
        if contender.wrap is None or contender.sync is None:
            continue
        wrapper = contender.wrap(torch.optim.SGD(params, lr=0.0), 1 << 30, alpha)
        wrapper.step()  # creates the slow copies where they are created at the first step
        kernels[contender.name] = _without_grad(contender.sync, wrapper)
        wrappers[contender.name] = wrapper

    if fast_dtype == slow_dtype:
        copies_per_floor = 2.0

        def copy() -> None:
            torch._foreach_copy_(fast, slow)
    else:
        copies_per_floor = 1.0
        fast_spare = [f.clone() for f in fast]
        slow_spare = [s_.clone() for s_ in slow]

        def copy() -> None:
            torch._foreach_copy_(fast, fast_spare)
            torch._foreach_copy_(slow, slow_spare)

    runs: dict[str, Callable[[], object]] = {"copy": copy, **kernels}
    floor_of = dict.fromkeys(kernels, "copy")
    for name, wrapper in wrappers.items():
        kernels[name]()  # a first sync: timm creates its slow copies there
        own = own_slow_copies(wrapper, params)
        if own is None:
            continue

        def own_copy(own: list[Tensor] = own) -> None:
            torch._foreach_copy_(fast, own)  # timed alone and doubled, as the shared floor is

        floor_of[name] = f"floor ({name})"
        runs[floor_of[name]] = own_copy
    samples = _interleaved_cold(runs, rounds, device)
    # An own floor is one copy of the same dtype: doubled, as two copies make a floor.
    ratios = {
        name: median_ratio(
            samples[name],
            samples[floor_of[name]],
            copies_per_floor if floor_of[name] == "copy" else 2.0,
        )
        for name in kernels
    }
    return SyncResult(
        shape=shape,
        parameter_bytes=sum(f.numel() * f.element_size() for f in fast),
        floor_seconds=copies_per_floor * statistics.median(samples["copy"]),
        kernel_seconds={name: statistics.median(samples[name]) for name in kernels},
        kernel_ratios=ratios,
        own_floor_seconds={
            name: 2.0 * statistics.median(samples[floor])
            for name, floor in floor_of.items()
            if floor != "copy"
        },
    )


# ------------------------------------------------------------------------------------------------
# Step time: inner optimizer alone against every Lookahead
# ------------------------------------------------------------------------------------------------

INNER_ALONE = "inner optimizer"
# The inner optimizer timed a second time in every round, as if it were a contender: how far its
# ratio is from 1 shows how much the machine's noise alone moves a cell.
CONTROL = "inner optimizer again (control)"


@dataclass(frozen=True)
class StepResult:
    """Median seconds per step of each contender and median per-turn ratio to the inner optimizer.

    ``ratios`` compare whole cycles of ``k`` steps. A step-by-step run (``stepwise``) also has, for
    every contender, the median per-turn ratio of its mean non-sync step (the first ``k - 1`` of a
    cycle) and of its sync step (the ``k``-th) to the inner optimizer's mean step of the same
    turn, and the median extra seconds of a non-sync step over the inner step.
    """

    shape: ParameterList
    inner: str
    seconds: dict[str, float]
    ratios: dict[str, float]
    unavailable: dict[str, str]
    regular_ratios: dict[str, float] = field(default_factory=dict)
    sync_ratios: dict[str, float] = field(default_factory=dict)
    regular_extra_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def stepwise(self) -> bool:
        return bool(self.regular_ratios)


def _builder(
    params: list[Tensor], inner: InnerFactory, wrap: WrapperFactory | None, k: int, alpha: float
) -> Callable[[], Optimizer]:
    def build() -> Optimizer:
        optimizer = inner(params)
        return optimizer if wrap is None else wrap(optimizer, k, alpha)

    return build


def sync_position(wrap: WrapperFactory, k: int) -> int:
    """Which step of a cycle (0 .. k-1) syncs, once a wrapper has run one warm-up cycle of ``k``.

    Implementations count differently (torch-optimizer syncs on the first step of a cycle, the
    others on the k-th), so it is found by running one: SGD with lr 1 on a constant gradient of 1
    moves the weight by exactly -1 on every step but the sync step.
    """
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.ones(1)
    optimizer = wrap(torch.optim.SGD([param], lr=1.0), k, 0.5)
    for _ in range(k):
        optimizer.step()
    moves = []
    for _ in range(k):
        before = param.item()
        optimizer.step()
        moves.append(param.item() - before)
    syncing = [index for index, move in enumerate(moves) if move != -1.0]
    if len(syncing) != 1:
        raise RuntimeError(f"expected one sync in a cycle of {k} steps, moves were {moves}")
    return syncing[0]


def measure_steps(
    shape: ParameterList,
    inner_name: str,
    contenders: Sequence[Contender],
    *,
    rounds: int,
    cycles: int,
    k: int = 5,
    alpha: float = 0.5,
    device: torch.device | str = "cpu",
    params: list[Tensor] | None = None,
    stepwise: bool = False,
) -> StepResult:
    """Seconds per step, timed one whole cycle of ``k`` steps at a time, for every contender.

    Each round builds every optimizer afresh on the same parameters and gradients (all of them
    at once: memory holds every contender's state), runs one warm-up cycle of each (lazy state,
    first sync), then times ``cycles`` cycles of each, interleaved: one cycle of every contender
    in turn, in an order shuffled for every turn (and for building). A cycle's ratio is its
    time over the inner optimizer's cycle in the same turn, moments apart, so that the machine's
    drift (it is shared) cancels; the result is the median over all turns. The inner optimizer
    runs twice per turn, the second time under ``CONTROL``: its ratio measures the noise.

    ``stepwise`` times each step of a cycle on its own instead; which of them syncs is found
    per implementation by `sync_position`.
    """
    device = torch.device(device)
    if params is None:
        params = make_parameters(shape.shapes, device=device)
    inner = INNER_OPTIMIZERS[inner_name]
    builders = {
        INNER_ALONE: _builder(params, inner, None, k, alpha),
        CONTROL: _builder(params, inner, None, k, alpha),
    }
    unavailable: dict[str, str] = {}
    # The position of the sync step in a timed cycle (the inner optimizer's: any, for symmetry).
    syncs_at = {INNER_ALONE: k - 1, CONTROL: k - 1}
    for contender in contenders:
        if contender.wrap is None:
            unavailable[contender.name] = contender.unavailable or "unavailable"
        else:
            builders[contender.name] = _builder(params, inner, contender.wrap, k, alpha)
            if stepwise:
                syncs_at[contender.name] = sync_position(contender.wrap, k)

    # Per contender, per turn: the seconds of each step of the cycle (stepwise), or the cycle's.
    turns: dict[str, list[list[float]]] = {name: [] for name in builders}
    # Shuffled, not rotated, orders: in a rotation every contender always follows the same one,
    # and what that one leaves in the cache (a sync's freshly written parameters, say) then
    # biases the cell for good.
    shuffler = random.Random(0)
    names = list(builders)
    for _ in range(rounds):
        shuffler.shuffle(names)
        optimizers = {name: builders[name]() for name in names}
        for optimizer in optimizers.values():
            for _ in range(k):
                optimizer.step()
        for _ in range(cycles):
            shuffler.shuffle(names)
            for name in names:
                step = optimizers[name].step
                if stepwise:
                    turns[name].append([_seconds(step, device) for _ in range(k)])
                else:
                    turns[name].append([_seconds(step, device, calls=k)])
        del optimizers
        gc.collect()  # whatever a reference cycle kept of this round's optimizer states
    cycle_seconds = {name: [sum(turn) / k for turn in values] for name, values in turns.items()}
    result = StepResult(
        shape=shape,
        inner=inner_name,
        seconds={name: statistics.median(values) for name, values in cycle_seconds.items()},
        ratios={
            name: median_ratio(values, cycle_seconds[INNER_ALONE])
            for name, values in cycle_seconds.items()
            if name != INNER_ALONE
        },
        unavailable=unavailable,
    )
    if not stepwise or k < 2:
        return result
    inner_step = cycle_seconds[INNER_ALONE]
    regular = {
        name: [
            statistics.fmean(turn[: syncs_at[name]] + turn[syncs_at[name] + 1 :]) for turn in values
        ]
        for name, values in turns.items()
    }
    at_sync = {name: [turn[syncs_at[name]] for turn in values] for name, values in turns.items()}
    measured = [name for name in turns if name != INNER_ALONE]
    return StepResult(
        shape=result.shape,
        inner=result.inner,
        seconds=result.seconds,
        ratios=result.ratios,
        unavailable=result.unavailable,
        regular_ratios={name: median_ratio(regular[name], inner_step) for name in measured},
        sync_ratios={name: median_ratio(at_sync[name], inner_step) for name in measured},
        regular_extra_seconds={
            name: statistics.median(r - i for r, i in zip(regular[name], inner_step, strict=True))
            for name in measured
        },
    )


# ------------------------------------------------------------------------------------------------
# eval() + train(): the swap of fast and slow weights, against a step
# ------------------------------------------------------------------------------------------------

#: The inner optimizer of the swap measurement: the cheapest step, so the ratio is the largest.
SWAP_INNER = "SGD (foreach)"
SWAP_SHAPES = ParameterList("20,000 x 1", ((1,),) * 20_000)
QUICK_SWAP_SHAPES = ParameterList("500 x 1", ((1,),) * 500)
SWAP = "eval() + train()"
INNER_STEP = "inner step"
LOOKAHEAD_STEP = "Lookahead step"
KERNELS = "kernels"


@dataclass(frozen=True)
class SwapResult:
    """Median seconds of ``eval()`` + ``train()``, of an inner step, of a Lookahead step (the
    mean over a cycle, sync included) and of the exchange's kernels alone, and the median
    per-round ratios of the swap, and of the kernels, to the inner step."""

    shape: ParameterList
    seconds: dict[str, float]
    per_inner_step: float
    per_lookahead_step: float
    kernels_per_inner_step: float


def exchange_kernels(a: Sequence[Tensor], b: Sequence[Tensor]) -> Callable[[], None]:
    """The floor of ``eval()`` + ``train()`` through a scratch buffer: per direction, the buffer
    <- ``a`` (one ``torch.cat``), ``a`` <- ``b``, ``b`` <- the buffer (``torch._foreach_copy_``),
    on 1-D tensors of one dtype, without any check or bookkeeping."""
    buffer = torch.empty(sum(t.numel() for t in a), device=a[0].device, dtype=a[0].dtype)
    held = list(torch.split(buffer, [t.numel() for t in a]))
    first, second = list(a), list(b)

    @torch.no_grad()
    def exchange() -> None:
        for _ in range(2):
            torch.cat(first, out=buffer)
            torch._foreach_copy_(first, second)
            torch._foreach_copy_(second, held)

    return exchange


def measure_swap(
    shape: ParameterList,
    *,
    rounds: int,
    k: int = 5,
    alpha: float = 0.5,
    device: torch.device | str = "cpu",
) -> SwapResult:
    """Time ``Lookahead.eval()`` followed by ``Lookahead.train()`` against one step.

    The Lookahead (over `SWAP_INNER`) has run one cycle, so its slow weights exist; a second inner
    optimizer of the same kind on the same parameters times the inner step. Every round times the
    swap pair once, one inner step and one Lookahead cycle of ``k`` steps, in a shuffled order; the
    ratios pair each swap with the steps of its round.
    """
    from torch_lookahead import Lookahead

    device = torch.device(device)
    params = make_parameters(shape.shapes, device=device)
    inner = INNER_OPTIMIZERS[SWAP_INNER]
    plain = inner(params)
    lookahead = Lookahead(inner(params), k=k, alpha=alpha)
    for _ in range(k):
        lookahead.step()
    plain.step()

    def swap() -> None:
        lookahead.eval()
        lookahead.train()

    runs: dict[str, Callable[[], object]] = {
        SWAP: swap,
        INNER_STEP: plain.step,
        LOOKAHEAD_STEP: lookahead.step,
        KERNELS: exchange_kernels(params, [p.detach().clone() for p in params]),
    }
    calls = {SWAP: 1, INNER_STEP: 1, LOOKAHEAD_STEP: k, KERNELS: 1}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    shuffler = random.Random(0)
    names = list(runs)
    for name in names:
        runs[name]()  # warm-up: the swap's scratch, lazily created
    for _ in range(k - 1):
        lookahead.step()  # back at the start of a cycle
    for _ in range(rounds):
        shuffler.shuffle(names)
        for name in names:
            samples[name].append(_seconds(runs[name], device, calls=calls[name]) / calls[name])
    return SwapResult(
        shape=shape,
        seconds={name: statistics.median(values) for name, values in samples.items()},
        per_inner_step=median_ratio(samples[SWAP], samples[INNER_STEP]),
        per_lookahead_step=median_ratio(samples[SWAP], samples[LOOKAHEAD_STEP]),
        kernels_per_inner_step=median_ratio(samples[KERNELS], samples[INNER_STEP]),
    )


# ------------------------------------------------------------------------------------------------
# Memory: allocator events
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2: Kineto logs two lines per profiler start/stop from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_allocations(run: Callable[[], object]) -> list[int]:
    """Signed sizes of the CPU allocations (+) and frees (-) made by ``run``, in order."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded,
    ):
        run()
    events = [e for e in recorded.profiler.kineto_results.events() if e.name() == "[memory]"]  # type: ignore[union-attr]
    events.sort(key=lambda e: e.start_ns())
    return [int(e.nbytes()) for e in events]


@dataclass(frozen=True)
class MemoryResult:
    """Bytes, from the allocator, for one optimizer over construction and 2k+1 steps."""

    peak_bytes: int  # highest live total above the level before construction
    between_syncs_bytes: int  # median bytes allocated by a step of the second cycle
    sync_step_bytes: int  # most bytes allocated by any step of the second cycle


def _second_cycle(allocated_per_step: Sequence[int], k: int) -> tuple[int, int]:
    """Median and largest bytes allocated by the steps ``k+2 .. 2k+1`` (the second cycle)."""
    second = allocated_per_step[k + 1 : 2 * k + 1]
    return int(statistics.median(second)), max(second)


def measure_memory(
    params: list[Tensor], inner: InnerFactory, wrap: WrapperFactory | None, *, k: int, alpha: float
) -> MemoryResult:
    """Record the allocator while an optimizer is built and stepped ``2k + 1`` times.

    On the CPU, construction and every step are profiled separately, so the allocations of each
    step are known and the running total across all of them gives the peak; on CUDA the caching
    allocator's statistics give both.
    """
    build = _builder(params, inner, wrap, k, alpha)
    if params[0].device.type == "cuda":
        return _cuda_memory(params[0].device, build, k)
    holder: list[Optimizer] = []
    per_phase = [_cpu_allocations(lambda: holder.append(build()))]
    for _ in range(2 * k + 1):
        per_phase.append(_cpu_allocations(holder[0].step))
    holder.clear()
    live, peak = 0, 0
    for phase in per_phase:
        for size in phase:
            live += size
            peak = max(peak, live)
    allocated = [sum(size for size in phase if size > 0) for phase in per_phase[1:]]
    between, at_sync = _second_cycle(allocated, k)
    return MemoryResult(peak_bytes=peak, between_syncs_bytes=between, sync_step_bytes=at_sync)


def _cuda_memory(device: torch.device, build: Callable[[], Optimizer], k: int) -> MemoryResult:
    def allocated() -> int:
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_stats(device)["allocated_bytes.all.allocated"])

    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    optimizer = build()
    per_step = []
    for _ in range(2 * k + 1):
        before = allocated()
        optimizer.step()
        per_step.append(allocated() - before)
    peak = torch.cuda.max_memory_allocated(device) - base
    del optimizer
    between, at_sync = _second_cycle(per_step, k)
    return MemoryResult(peak_bytes=peak, between_syncs_bytes=between, sync_step_bytes=at_sync)


# ------------------------------------------------------------------------------------------------
# Conditions of a run
# ------------------------------------------------------------------------------------------------


def describe_conditions(
    command: str,
    load_before: tuple[float, float, float],
    device: torch.device | str = "cpu",
    heap: str | None = None,
) -> list[str]:
    """Markdown bullet lines: the command, date, machine, software and load of a benchmark run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    machine = f"{cpu}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}"
    if torch.device(device).type == "cuda":
        machine += f"; GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    load_after = load_average()
    return [
        f"- Command: `{command}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine}",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}",
        *([f"- Heap: {heap}"] if heap is not None else []),
        f"- Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(the machine is shared; every figure is a median over interleaved rounds)",
    ]


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
HEAP_CHOICES = ("held", "system")


def hold_freed_memory() -> str:
    """Tell the C library's allocator to keep the memory a program frees; say what was done.

    By default glibc gives large freed blocks back to the kernel (``munmap``, or trimming the top
    of the heap), so a step that allocates and frees temporaries of the model's size (foreach
    AdamW on the CPU) takes a page fault on every 4 KiB page of them on every step. That cost
    belongs to the inner optimizer, is the same with every Lookahead, and its variance hides the
    differences between them (measured with ``--heap system``: docs/benchmarks.md). Keeping freed
    memory is what jemalloc or tcmalloc, which PyTorch's performance tuning guide suggests for CPU
    training, do by design. Only glibc can be told so (``mallopt``); elsewhere nothing changes.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system allocator (holding freed memory needs glibc)"
    libc = ctypes.CDLL(None)
    kept = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and libc.mallopt(_M_MMAP_MAX, 0) == 1
    if not kept:
        return "system allocator (glibc refused mallopt)"
    return "glibc told to keep freed memory (mallopt: no trimming, no mmap; `--heap system` not)"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def format_sync(results: Sequence[SyncResult], target: float) -> list[str]:
    kernels = list(dict.fromkeys(name for r in results for name in r.kernel_ratios))
    lines = [
        "### Sync against the memory floor",
        "",
        "Floor = 2 x one `_foreach_copy_` of the slow weights into the parameters (where their "
        "dtypes differ, one copy of each). Cells: median over rounds of time / floor. "
        f"`{TEXTBOOK_KERNEL}` is the two foreach kernels alone, on the benchmark's own slow "
        "copies; a column named after an implementation times its whole outer step, bookkeeping "
        "included, against the floor on its own slow copies (listed under the table).",
        "",
        "| parameters | tensors | parameter MiB | floor ms | "
        + " | ".join(f"{name} / floor" for name in kernels)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(kernels),
    ]
    for r in results:
        cells = [f"{r.kernel_ratios[n]:.2f}" if n in r.kernel_ratios else "-" for n in kernels]
        lines.append(
            f"| {r.shape.name} | {len(r.shape.shapes)} | {r.parameter_bytes / MIB:.0f} | "
            f"{r.floor_seconds * 1e3:.2f} | " + " | ".join(cells) + " |"
        )
    own_floors = [
        f"{r.shape.name}: "
        + ", ".join(f"{name} {seconds * 1e3:.2f}" for name, seconds in r.own_floor_seconds.items())
        for r in results
        if r.own_floor_seconds
    ]
    if own_floors:
        lines += [
            "",
            "Floors on each implementation's own slow copies, ms: " + "; ".join(own_floors),
        ]
    ours = [
        ratio for r in results for name, ratio in r.kernel_ratios.items() if name.startswith(OURS)
    ]
    if ours:
        verdict = "met" if max(ours) <= target else "NOT met"
        lines += [
            "",
            f"Target: `Lookahead.sync()` <= {target:.2f} x floor on every list: **{verdict}** "
            f"(worst {max(ours):.2f}).",
        ]
    return lines


def format_steps(
    results: Sequence[StepResult], contenders: Sequence[Contender], k: int, *, own: int = 1
) -> list[str]:
    """Markdown table of step-time ratios; the first ``own`` contenders are torch_lookahead's.

    One target line per contender of ours compares it with every peer (the contenders after
    ``own``).
    """
    names = [c.name for c in contenders]
    peers = names[own:]
    header = " | ".join(f"{c.name} {c.version}" for c in contenders)
    lines = [
        f"### Step time, k={k}: Lookahead(inner) / inner",
        "",
        "Cycles of k steps timed in turns, one cycle of each contender per turn in shuffled order; "
        "a cell is the median over turns of a cycle's time over the inner optimizer's cycle in the "
        "same turn. The control times the inner optimizer a second time in every turn: its "
        "distance from 1.000 is what noise alone does to a cell.",
        "",
        f"| parameters | inner optimizer | inner ms/step | {header} | control |",
        "|---|---|---:|" + "---:|" * (len(names) + 1),
    ]
    wins = dict.fromkeys(names[:own], 0)
    comparisons = dict.fromkeys(names[:own], 0)
    within_noise = dict.fromkeys(names[:own], 0)
    for r in results:
        cells = []
        for name in names:
            if name in r.unavailable:
                cells.append(r.unavailable[name])
                continue
            ratio = r.ratios[name]
            best = all(ratio <= r.ratios[other] for other in names if other in r.ratios)
            cells.append(f"**{ratio:.3f}**" if best else f"{ratio:.3f}")
        control = r.ratios.get(CONTROL)
        cells.append("-" if control is None else f"{control:.3f}")
        noise = 0.0 if control is None else abs(control - 1.0)
        for name in names[:own]:
            ours = r.ratios.get(name)
            for peer in peers:
                if ours is not None and peer in r.ratios:
                    comparisons[name] += 1
                    wins[name] += ours < r.ratios[peer]
                    within_noise[name] += ours >= r.ratios[peer] and ours - r.ratios[peer] <= noise
        lines.append(
            f"| {r.shape.name} | {r.inner} | {r.seconds[INNER_ALONE] * 1e3:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    for name in names[:own]:
        losses = comparisons[name] - wins[name]
        lines.append(
            f"Target: {name}'s ratio below every installed peer's: "
            f"**{wins[name]} of {comparisons[name]}** comparisons"
            + (
                f"; {within_noise[name]} of the other {losses} by no more than the row's control "
                "is away from 1.000 (within noise)."
                if losses
                else "."
            )
        )
    return lines


def format_stepwise(
    results: Sequence[StepResult], contenders: Sequence[Contender], k: int
) -> list[str]:
    """Markdown table of a step-by-step run: one row per contender and (parameters, inner)."""
    names = [CONTROL, *(c.name for c in contenders)]
    versions = {c.name: f"{c.name} {c.version}" for c in contenders}
    lines = [
        f"### Step by step, k={k}: each step timed on its own",
        "",
        "Per turn, every contender's k steps are timed one by one, in a shuffled order of "
        "contenders; one of them is the sync step (which one depends on the implementation and is "
        "found by running it), the others are the steps between syncs. Cells: medians over turns of the ratio to the inner optimizer's mean step of "
        "the same turn, and of the extra time of a step between syncs. The control is the inner "
        "optimizer timed a second time.",
        "",
        "| parameters | inner optimizer | inner ms/step | Lookahead | step between syncs / inner "
        "| extra ms per step between syncs | sync step / inner | cycle / inner |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for name in names:
            label = versions.get(name, name)
            head = f"| {r.shape.name} | {r.inner} | {r.seconds[INNER_ALONE] * 1e3:.3f} | {label} |"
            if name in r.unavailable:
                lines.append(f"{head} {r.unavailable[name]} | | | |")
            elif name in r.regular_ratios:
                lines.append(
                    f"{head} {r.regular_ratios[name]:.3f} | "
                    f"{r.regular_extra_seconds[name] * 1e3:+.3f} | "
                    f"{r.sync_ratios[name]:.3f} | {r.ratios[name]:.3f} |"
                )
    return lines


def format_swap(results: Sequence[SwapResult]) -> list[str]:
    lines = [
        f"### {SWAP} against one step",
        "",
        f"`Lookahead({SWAP_INNER})` after one cycle; every round times `eval()` then `train()`, "
        "one inner step, one Lookahead cycle (per step: the cycle over k, sync included) and "
        "the exchange's kernels alone (a `torch.cat` into a buffer and two `torch._foreach_copy_` "
        "per direction, no check), in shuffled order. Ratios: medians over rounds of the swap, or "
        "of the kernels, over the step of the same round.",
        "",
        f"| parameters | {SWAP} ms | inner step ms | Lookahead step ms | "
        f"{SWAP} / inner step | {SWAP} / Lookahead step | kernels / inner step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ms = {name: seconds * 1e3 for name, seconds in r.seconds.items()}
        lines.append(
            f"| {r.shape.name} | {ms[SWAP]:.1f} | {ms[INNER_STEP]:.1f} | "
            f"{ms[LOOKAHEAD_STEP]:.1f} | {r.per_inner_step:.2f} | {r.per_lookahead_step:.2f} | "
            f"{r.kernels_per_inner_step:.2f} |"
        )
    return lines


def format_memory(
    rows: Sequence[tuple[ParameterList, str, dict[str, MemoryResult]]],
    contenders: Sequence[Contender],
    parameter_element_bytes: int = 4,
) -> list[str]:
    names = [c.name for c in contenders if c.wrap is not None]
    lines = [
        "### Memory: construction and 2k+1 steps",
        "",
        "Cells: extra peak / allocated between syncs / allocated by a sync step. Extra peak = peak "
        "live bytes minus the inner optimizer's, in copies of the parameters (1.00 = exactly the "
        "slow weights). Allocated = bytes a step of the second cycle asks the allocator for, "
        "minus what the inner optimizer's step asks for: the median step and the largest.",
        "",
        "| parameters | inner optimizer | inner peak MiB | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for shape, inner_name, by_name in rows:
        parameter_bytes = shape.numel * parameter_element_bytes
        inner = by_name[INNER_ALONE]
        cells = []
        for name in names:
            result = by_name[name]
            extra = (result.peak_bytes - inner.peak_bytes) / parameter_bytes
            between = result.between_syncs_bytes - inner.between_syncs_bytes
            at_sync = result.sync_step_bytes - inner.sync_step_bytes
            cells.append(f"{extra:.2f} / {_bytes(between)} / {_bytes(at_sync)}")
        lines.append(
            f"| {shape.name} | {inner_name} | {inner.peak_bytes / MIB:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _bytes(count: int) -> str:
    if abs(count) < 1 << 20:
        return f"{count:+d} B"
    return f"{count / MIB:+.1f} MiB"


def emit_report(lines: Sequence[str], output: Path | None) -> str:
    """Join ``lines`` into a Markdown report, print it, and also write it to ``output`` if given."""
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report)
    return report


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        wrong = [item for item in chosen if item not in allowed]
        if wrong or not chosen:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(allowed)}; got {text!r}"
            )
        return chosen

    return parse


def _add_index_option(
    parser: argparse.ArgumentParser, option: str, what: str, labels: Sequence[str]
) -> None:
    indices = [str(i) for i in range(len(labels))]
    parser.add_argument(
        option,
        type=_choices(indices),
        default=indices,
        help=f"comma-separated indices into {what}: "
        + "; ".join(f"{i}={label}" for i, label in enumerate(labels)),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Time the Lookahead sync against the memory floor and the Lookahead step "
        "against the inner optimizer and every installed peer (timm, pytorch_optimizer, "
        "torch-optimizer); record their memory. Prints a Markdown report.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds (a smoke run)")
    parser.add_argument(
        "--sections",
        type=_choices(SECTIONS),
        default=list(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all)",
    )
    _add_index_option(parser, "--shapes", "the shape list", [s.name for s in FULL_SHAPES])
    _add_index_option(parser, "--inner", "the inner optimizers", list(INNER_OPTIMIZERS))
    parser.add_argument("--k", type=positive_int, default=5, help="sync every k steps (5)")
    parser.add_argument("--alpha", type=unit_interval, default=0.5, help="slow step size (0.5)")
    parser.add_argument("--rounds", type=positive_int, help="interleaved rounds (sync 15, step 5)")
    parser.add_argument(
        "--cycles", type=positive_int, help="timed cycles of k steps per round and contender (4)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch intra-op threads (1: a shared machine measures more steadily single-threaded)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="parameter dtype (float32); below float32 the sync kernels use float32 slow copies "
        "and Lookahead(slow_dtype=torch.float32) joins the contenders",
    )
    parser.add_argument(
        "--heap",
        choices=HEAP_CHOICES,
        default="held",
        help="held (default): tell glibc to keep freed memory, so that the inner optimizer's "
        "temporaries do not page-fault on every step; system: leave the allocator as it is",
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall (default), or thread: the CPU time of the timing thread (CPU device, one torch "
        "thread), which other work on a shared machine does not inflate",
    )
    parser.add_argument("--target", type=float, default=1.15, help="sync / floor target (1.15)")
    parser.add_argument("--output", type=Path, help="also write the report to this Markdown file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: not a torch device: {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu or cuda[:index], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available to torch {torch.__version__}")
    if args.clock == "thread" and (device.type != "cpu" or args.threads != 1):
        parser.error("--clock thread times one CPU thread: use it with --device cpu --threads 1")
    global _clock
    _clock = CLOCKS[args.clock]
    # Objects that exist now (torch, the peers' modules) are never garbage: keep them out of the
    # collections between rounds, which then take microseconds instead of a large fraction of a second.
    gc.freeze()
    try:
        return _run(args, argv, device)
    finally:
        gc.unfreeze()


def _progress(message: str) -> None:
    print(f"[bench {datetime.now(timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, argv: list[str], device: torch.device) -> int:
    torch.set_num_threads(args.threads)
    heap = hold_freed_memory() if args.heap == "held" else "system allocator"
    load_before = load_average()
    catalogue = QUICK_SHAPES if args.quick else FULL_SHAPES
    shapes = [catalogue[int(i)] for i in args.shapes]
    inner_names = [list(INNER_OPTIMIZERS)[int(i)] for i in args.inner]
    sync_rounds = args.rounds or (2 if args.quick else 15)
    step_rounds = args.rounds or (2 if args.quick else 5)
    cycles = args.cycles or (1 if args.quick else 4)
    dtype = DTYPES[args.dtype]
    k, alpha = args.k, args.alpha

    contenders = find_contenders(dtype)
    own = sum(c.name.startswith(OURS) for c in contenders)
    for contender in contenders:
        if contender.wrap is None:
            _progress(f"{contender.name}: {contender.unavailable}; skipped")

    sections: list[list[str]] = []
    if "sync" in args.sections:
        sync_results = []
        for shape in shapes:
            _progress(f"sync: {shape.name}")
            result = measure_sync(
                shape,
                rounds=sync_rounds,
                alpha=alpha,
                device=device,
                fast_dtype=dtype,
                slow_dtype=SLOW_DTYPE,
                contenders=contenders,
            )
            sync_results.append(result)
        sections.append(format_sync(sync_results, args.target))
    wanted = [name for name in ("step", "stepwise", "memory") if name in args.sections]
    if wanted:
        step_results: dict[str, list[StepResult]] = {"step": [], "stepwise": []}
        memory_rows: list[tuple[ParameterList, str, dict[str, MemoryResult]]] = []
        for shape in shapes:
            params = make_parameters(shape.shapes, device=device, dtype=dtype)
            for inner_name in inner_names:
                for mode in ("step", "stepwise"):
                    if mode not in args.sections:
                        continue
                    _progress(f"{mode}: {shape.name}, {inner_name}")
                    step_results[mode].append(
                        measure_steps(
                            shape,
                            inner_name,
                            contenders,
                            rounds=step_rounds,
                            cycles=cycles,
                            k=k,
                            alpha=alpha,
                            device=device,
                            params=params,
                            stepwise=mode == "stepwise",
                        )
                    )
                if "memory" in args.sections:
                    _progress(f"memory: {shape.name}, {inner_name}")
                    inner = INNER_OPTIMIZERS[inner_name]
                    by_name = {INNER_ALONE: measure_memory(params, inner, None, k=k, alpha=alpha)}
                    for contender in contenders:
                        if contender.wrap is not None:
                            by_name[contender.name] = measure_memory(
                                params, inner, contender.wrap, k=k, alpha=alpha
                            )
                    memory_rows.append((shape, inner_name, by_name))
            del params
        if step_results["step"]:
            sections.append(format_steps(step_results["step"], contenders, k, own=own))
        if step_results["stepwise"]:
            sections.append(format_stepwise(step_results["stepwise"], contenders, k))
        if memory_rows:
            element_bytes = torch.empty(0, dtype=dtype).element_size()
            sections.append(format_memory(memory_rows, contenders, element_bytes))
    if "swap" in args.sections:
        swap_shape = QUICK_SWAP_SHAPES if args.quick else SWAP_SHAPES
        _progress(f"swap: {swap_shape.name}")
        swap = measure_swap(swap_shape, rounds=step_rounds, k=k, alpha=alpha, device=device)
        sections.append(format_swap([swap]))

    command = " ".join([COMMAND, *argv])
    lines = [
        f"## {COMMAND}",
        "",
        *describe_conditions(command, load_before, device, heap=heap),
        *([f"- Parameters: {dtype}"] if dtype != torch.float32 else []),
    ]
    for section in sections:
        lines += ["", *section]
    emit_report(lines, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
