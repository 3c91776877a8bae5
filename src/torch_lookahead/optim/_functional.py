"""Pieces shared by the NovoGrad and AdaBound kernels and classes.

Validation of hyper-parameters, lazy per-parameter step counters, the choice between the
for-loop and the multi-tensor (``torch._foreach_*``) implementations, and the cache blocking
that makes the multi-tensor implementation fast on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

__all__ = [
    "CPU_BLOCK_NUMEL",
    "assign_",
    "cache_blocks",
    "check_betas",
    "check_float",
    "check_foreach",
    "default_to_foreach",
    "group_by_device_and_dtype",
    "increment_steps_",
    "new_step_counter",
    "raise_sparse",
    "setdefault_flags",
    "step_value",
    "view_as_real_",
]

#: On CPU the multi-tensor kernels run over blocks of consecutive tensors holding at most this
#: many elements, so that what a block touches (parameters, gradients, state, temporaries: a few
#: MiB) stays in the CPU cache from the first ``_foreach`` op of the block to the last, instead of
#: streaming every list through memory once per op. Measured best among 2**14..2**22 on both
#: benchmark problems. One block per device/dtype bucket on accelerators.
CPU_BLOCK_NUMEL = 1 << 18


def check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> float:
    """Return ``value`` as a float if it lies in the interval, else raise a ValueError naming it."""
    if isinstance(value, Tensor) or not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}: {value!r}")
    number = float(value)
    above = number >= low if low_inclusive else number > low
    below = True
    if high is not None:
        below = number <= high if high_inclusive else number < high
    if not (above and below):
        left = "[" if low_inclusive else "("
        right = ("]" if high_inclusive else ")") if high is not None else ")"
        upper = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{low:g}, {upper}{right}, got {value!r}")
    return number


def check_betas(betas: object) -> tuple[float, float]:
    """Validate ``betas``: a pair of floats in [0, 1)."""
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) of floats in [0, 1), got {betas!r}")
    beta1 = check_float("betas[0]", betas[0], low=0.0, high=1.0)
    beta2 = check_float("betas[1]", betas[1], low=0.0, high=1.0)
    return beta1, beta2


def check_foreach(foreach: object) -> None:
    """``foreach`` is None (pick), True or False."""
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"foreach must be None, True or False, got {foreach!r}")


def raise_sparse(optimizer_name: str) -> None:
    """Reject sparse gradients, which the kernels cannot update."""
    raise RuntimeError(
        f"{optimizer_name} does not support sparse gradients; use torch.optim.SparseAdam for "
        "sparse embeddings (e.g. nn.Embedding(sparse=True)), or dense gradients"
    )


def new_step_counter() -> Tensor:
    """A fresh per-parameter step count, kept on the CPU as torch.optim does when not capturable."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(0.0, dtype=dtype)


def step_value(step: Tensor) -> float | Tensor:
    """The step count as a Python number in eager mode; the tensor itself while compiling."""
    if torch.compiler.is_compiling():
        return step
    return step.item()


def default_to_foreach(params: Sequence[Tensor], differentiable: bool) -> bool:
    """Whether ``foreach=None`` means the multi-tensor implementation.

    torch.optim turns it on for accelerators only; here the CPU is included too, because the
    kernels are cache-blocked on CPU (see :data:`CPU_BLOCK_NUMEL`) and there they beat the
    for-loop implementation at every size measured (benchmarks/bench_optimizers.py).
    """
    if differentiable:
        return False
    devices = {*_get_foreach_kernels_supported_devices(), "cpu"}
    return all(type(p) in (Tensor, torch.nn.Parameter) and p.device.type in devices for p in params)


def group_by_device_and_dtype(
    tensorlists: list[list[Tensor]],
) -> Iterator[list[list[Tensor]]]:
    """Yield the parallel lists restricted to each (device, dtype) of the first list, in order.

    One pass over the first list only: torch's own grouping inspects every tensor of every
    list, which costs more than a whole small-tensor step.
    """
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensorlists[0]):
        buckets.setdefault((tensor.device, tensor.dtype), []).append(index)
    if len(buckets) == 1:
        yield [list(tensors) for tensors in tensorlists]
        return
    for indices in buckets.values():
        yield [[tensors[i] for i in indices] for tensors in tensorlists]


def increment_steps_(steps: list[Tensor]) -> None:
    """``step += 1`` for every per-parameter step count."""
    if steps and steps[0].is_cpu and not torch.compiler.is_compiling():
        # A tensor scalar wrapped once is much faster than a Python 1 wrapped per tensor.
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1.0)


def cache_blocks(params: Sequence[Tensor]) -> Iterator[slice]:
    """Split ``range(len(params))`` into consecutive slices for the multi-tensor kernels.

    On CPU a slice holds at most :data:`CPU_BLOCK_NUMEL` elements (a larger tensor gets a
    slice to itself); elsewhere there is one slice covering everything.
    """
    if not params or params[0].device.type != "cpu":
        yield slice(0, len(params))
        return
    start = 0
    block_numel = 0
    for index, param in enumerate(params):
        numel = param.numel()
        if index > start and block_numel + numel > CPU_BLOCK_NUMEL:
            yield slice(start, index)
            start, block_numel = index, 0
        block_numel += numel
    yield slice(start, len(params))


def assign_(target: Tensor, value: Tensor) -> None:
    """``target.copy_(value)`` for 0-dim state such as a layer's second moment.

    While compiling it is written as ``_foreach_copy_``: torch.compile (2.13) drops in-place
    updates of 0-dim float64 CPU inputs, ``copy_`` included, but keeps this one. In eager mode
    plain ``copy_`` also works on DTensors, which have no ``_foreach_copy_`` strategy.
    """
    if torch.compiler.is_compiling():
        torch._foreach_copy_([target], [value])
    else:
        target.copy_(value)


def view_as_real_(*tensorlists: list[Tensor]) -> None:
    """Replace complex tensors by their real views (..., 2), in place in every list.

    A complex parameter is then optimised as the pair (real, imaginary) of real parameters.
    """
    for position in range(len(tensorlists[0])):
        if torch.is_complex(tensorlists[0][position]):
            for tensors in tensorlists:
                tensors[position] = torch.view_as_real(tensors[position])


def setdefault_flags(optimizer: Optimizer, flags: dict[str, Any]) -> None:
    """Back-fill flags missing from an older pickled optimizer, and tensor step counts."""
    for name, value in flags.items():
        optimizer.defaults.setdefault(name, value)
    for group in optimizer.param_groups:
        for name, value in flags.items():
            group.setdefault(name, value)
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state and not torch.is_tensor(state["step"]):
                counter = new_step_counter()
                counter.fill_(float(state["step"]))
                state["step"] = counter
