"""Validation of Lookahead's own arguments, shared by every entry point.

The constructor, ``add_param_group``, ``load_state_dict``, every ``step()`` (for values a user or
a scheduler changed in a group) and the lab's command line accept exactly the same values.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import cast

import torch
from torch.optim import Optimizer

from torch_lookahead.pullback import (
    PULLBACK_MODES,
    PullbackMode,
    momentum_keys_for,
    registered_momentum_classes,
)

__all__ = ["check_alpha", "check_k", "check_step_count"]


def check_k(value: object, name: str = "k") -> int:
    """Return ``value`` as an int if it is a positive integer (the inner steps per sync), else raise.

    ``bool`` and non-integral numbers (``2.5``, ``nan``, ``"5"``) raise ``TypeError``; integers below
    1 raise ``ValueError``.
    """
    try:
        number = operator.index(value) if not isinstance(value, bool) else None  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None:
        raise TypeError(
            f"{name} must be a positive int (the number of inner steps per sync), got {value!r}"
        )
    if number < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {number}")
    return int(number)


def check_alpha(value: object, name: str = "alpha") -> float:
    """Return ``value`` as a float if it is a real number in [0, 1] (the slow step size), else raise.

    Non-numbers (``None``, ``"0.5"``, tensors) raise ``TypeError``; ``nan``, ``inf`` and numbers
    outside [0, 1] raise ``ValueError``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in [0, 1] (the slow-weights step size), got {value!r}"
        )
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (the slow-weights step size), got {number}")
    return number


def check_step_count(value: object, name: str) -> int:
    """Return ``value`` as an int if it is a non-negative integer (a group's inner steps since its
    sync; numpy integers included, as for ``k``), else raise ``ValueError``."""
    try:
        number = -1 if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = -1
    if number < 0:
        raise ValueError(
            f"{name} must be a non-negative int (inner steps since the sync), got {value!r}"
        )
    return int(number)


def check_flag(name: str, value: object, *, optional: bool) -> bool | None:
    if not isinstance(value, bool) and not (optional and value is None):
        raise TypeError(
            f"{name} must be {'None or a bool' if optional else 'a bool'}, got {value!r}"
        )
    return value


def check_pullback(mode: object, optimizer: Optimizer) -> PullbackMode:
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


def check_slow_dtype(dtype: object) -> torch.dtype | None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"slow_dtype must be None or a floating-point torch.dtype, got {dtype!r}")
    return dtype


def check_slow_device(device: object) -> torch.device | None:
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
