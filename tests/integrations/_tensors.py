"""Comparisons shared by the framework tests: runs must agree bit for bit, not approximately."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def parameters_of(model: nn.Module) -> list[Tensor]:
    """Detached copies of ``model.parameters()``, in order."""
    return [p.detach().clone() for p in model.parameters()]


def assert_same(actual: Sequence[Tensor], expected: Sequence[Tensor]) -> None:
    """The two tensor lists are equal element for element, exactly."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
