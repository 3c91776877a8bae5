"""Pieces shared by the NovoGrad and AdaBound kernels and classes.

Validation of hyper-parameters, per-parameter step counters, the choice between the for-loop,
multi-tensor (``torch._foreach_*``) and flat-state implementations, and the CPU cache blocks of
the multi-tensor ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

from .._tensors import cache_blocks
from ._flat import FlatState

#: Bytes of parameters per block of the optimizers' CPU multi-tensor kernels: a block of
#: parameters, gradients, state and temporaries stays in the last-level cache.
OPTIMIZER_BLOCK_BYTES = 1024 * 1024

__all__ = [
    "FunctionalStep",
    "StateLists",
    "assign_",
    "blocks",
    "check_betas",
    "check_float",
    "check_foreach",
    "check_hyperparameters",
    "check_lr",
    "default_to_foreach",
    "increment_steps_",
    "new_step_counter",
    "python_number",
    "raise_sparse",
    "scalar",
    "step_value",
    "view_as_real_",
]


def check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
    tensor: bool = False,
) -> float:
    """Return ``value`` as a float if it is finite and in the interval, else raise naming it.
    With ``tensor``, a 1-element Tensor (where torch.optim and the kernels take one) is checked
    by the number it holds; which Tensors a step then accepts is torch's rule."""
    if tensor and isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        value = value.item()
    if isinstance(value, Tensor) or not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}: {value!r}")
    number = float(value)
    above = number >= low if low_inclusive else number > low
    below = math.isfinite(number)
    if high is not None:
        below = number <= high if high_inclusive else number < high
    if not (above and below):
        left = "[" if low_inclusive else "("
        right = ("]" if high_inclusive else ")") if high is not None else ")"
        upper = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{low:g}, {upper}{right}, got {value!r}")
    return number


def check_lr(
    group: dict[str, Any], key: str = "lr", *, positive: bool = False, meaning: str = ""
) -> None:
    """Validate ``group[key]``: a finite float, or a 1-element Tensor as torch.optim allows it.
    The error names ``key``, followed by ``meaning`` in parentheses when given."""
    name = f"{key} ({meaning})" if meaning else key
    check_float(name, group[key], low=0.0, low_inclusive=not positive, tensor=True)


def check_betas(betas: object, *, tensors: bool = False) -> None:
    """Validate ``betas``: a pair of floats in [0, 1) (1-element Tensors too with ``tensors``),
    given as any sequence of two (a tuple, a list, a config's list, a 2-element array)."""
    try:
        pair = list(betas)  # type: ignore[call-overload]
    except TypeError:
        pair = []
    if len(pair) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) of floats in [0, 1), got {betas!r}")
    for index, beta in enumerate(pair):
        check_float(f"betas[{index}]", beta, low=0.0, high=1.0, tensor=tensors)


def check_foreach(foreach: object) -> None:
    """``foreach`` is None (pick), True or False."""
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"foreach must be None, True or False, got {foreach!r}")


def check_hyperparameters(
    group: dict[str, Any], *, positive_eps: bool = False, tensors: bool = False
) -> None:
    """Validate the hyper-parameters of Adam's family in ``group``: ``lr``, ``betas``, ``eps``
    (``> 0`` with ``positive_eps``, else ``>= 0``), ``weight_decay`` and ``foreach``. ``lr``
    may be a 1-element Tensor; ``betas``, ``eps`` and ``weight_decay`` too with ``tensors``
    (torch.optim.RAdam takes them), their values checked as floats'."""
    check_lr(group)
    check_betas(group["betas"], tensors=tensors)
    eps_low = not positive_eps
    check_float("eps", group["eps"], low=0.0, low_inclusive=eps_low, tensor=tensors)
    check_float("weight_decay", group["weight_decay"], low=0.0, tensor=tensors)
    check_foreach(group["foreach"])


def python_number(value: Any) -> Any:
    """A numpy scalar or 0-dim array as the Python number it holds, element-wise in a tuple or
    list (``betas``); anything else as it is. torch.optim accepts numpy numbers as
    hyper-parameters; as Python numbers they also save with ``torch.save`` and load with
    ``torch.load(weights_only=True)``."""
    if type(value) in (tuple, list):
        return type(value)(python_number(item) for item in value)
    if not isinstance(value, Tensor) and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


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


def scalar(value: float | Tensor) -> Any:
    """A hyper-parameter for the kernels' scalar math, in float64 as Python's.

    A Tensor learning rate becomes a Python float in eager mode (one ``item()`` per step, as
    torch.optim's for-loop kernels do through their Python-number arguments), so that every
    implementation gives exactly the results of the same value given as a float; while compiling
    it stays a (float64) tensor, so that the compiled step reads its current value instead of
    recompiling for each new one.
    """
    if not isinstance(value, Tensor):
        return value
    if torch.compiler.is_compiling():
        return value.to(torch.float64).reshape(())
    return value.item()


def default_to_foreach(params: Sequence[Tensor]) -> bool:
    """Whether ``foreach=None`` means the multi-tensor implementation.

    torch.optim turns it on for accelerators only; here the CPU is included too, because the
    kernels are cache-blocked on CPU (see `blocks`), which makes them faster than the
    for-loop there (benchmarks/results/optimizers.md).
    """
    devices = {*_get_foreach_kernels_supported_devices(), "cpu"}
    return all(type(p) in (Tensor, torch.nn.Parameter) and p.device.type in devices for p in params)


def blocks(tensors: Sequence[Tensor]) -> Iterator[slice]:
    """Consecutive slices of ``tensors`` for the multi-tensor kernels: CPU lists are cut into
    blocks of `OPTIMIZER_BLOCK_BYTES` (a block's tensors stay in
    cache from its first op to its last), other devices take the whole list at once."""
    if tensors and tensors[0].device.type == "cpu":
        yield from cache_blocks(tensors, OPTIMIZER_BLOCK_BYTES)
    else:
        yield slice(0, len(tensors))


#: Parallel lists of per-parameter state, keyed by the name of the state entry.
StateLists = dict[str, list[Tensor]]


@dataclass(frozen=True)
class FunctionalStep:
    """A functional optimizer step: one step over parallel lists, updating them in place.

    Called as ``step(params, grads, state, hyperparameters, foreach=None, flat_state=None)``:
    ``state`` maps each state entry of the optimizer (``"exp_avg"``, ...) to the list of its
    tensors, parallel to ``params``; ``hyperparameters`` is the optimizer's NamedTuple of them.
    ``foreach`` picks the multi-tensor implementation (``None``: see `default_to_foreach`),
    which runs over ``flat_state``'s buffers when there is one (see
    `torch_lookahead.optim._flat`). While compiling the for-loop form is traced whatever
    ``foreach`` says: the compiler fuses the loop itself, and the for-loop form has no
    data-dependent Python code.
    """

    for_loop: Callable[[list[Tensor], list[Tensor], StateLists, Any], None]
    multi_tensor: Callable[[list[Tensor], list[Tensor], StateLists, Any], None]
    flat: Callable[[list[Tensor], list[Tensor], FlatState, Any], None]

    def __call__(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        state: StateLists,
        hyperparameters: Any,
        foreach: bool | None = None,
        flat_state: FlatState | None = None,
    ) -> None:
        if foreach is None:
            foreach = default_to_foreach(params)
        hyper = hyperparameters._replace(
            **{key: scalar(value) for key, value in hyperparameters._asdict().items()}
        )
        if not foreach or torch.compiler.is_compiling():
            self.for_loop(params, grads, state, hyper)
        elif flat_state is not None:
            self.flat(params, grads, flat_state, hyper)
        elif params:
            self.multi_tensor(params, grads, state, hyper)


def increment_steps_(steps: list[Tensor]) -> None:
    """``step += 1`` for every per-parameter step count."""
    if steps and steps[0].is_cpu and not torch.compiler.is_compiling():
        # A tensor scalar wrapped once is much faster than a Python 1 wrapped per tensor.
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1.0)


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
