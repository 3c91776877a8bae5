"""Validation of Lookahead's own hyper-parameters, shared by every entry point.

The constructor, ``add_param_group``, ``load_state_dict``, every ``step()`` (for values a user or
a scheduler changed in a group) and the lab's command line all accept exactly the same values:
``k`` a positive int, ``alpha`` a real number in [0, 1].
"""

from __future__ import annotations

import math
import numbers
import operator

__all__ = ["check_alpha", "check_k", "check_step_count"]


def check_k(value: object, name: str = "k") -> int:
    """Return ``value`` as an int if it is a positive integer (the inner steps per sync), else raise.

    ``bool`` and non-integral numbers (``2.5``, ``nan``, ``"5"``) raise ``TypeError``; integers below
    1 raise ``ValueError``.
    """
    if isinstance(value, bool):
        raise TypeError(
            f"{name} must be a positive int (the number of inner steps per sync), got {value!r}"
        )
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be a positive int (the number of inner steps per sync), got {value!r}"
        ) from None
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
