"""The outer momentum step against a plainly written float64 reference (no processes needed)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from torch_lookahead.distributed import momentum_outer_step_

pytestmark = pytest.mark.distributed


def reference_outer_step(
    mean_fast: torch.Tensor,
    slow: torch.Tensor,
    buffer: torch.Tensor,
    alpha: float,
    mu: float,
    nesterov: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SlowMo heavy ball / DiLoCo Nesterov on the pseudo-gradient; returns (slow, buffer)."""
    delta = slow - mean_fast
    buffer = mu * buffer + delta
    step = delta + mu * buffer if nesterov else buffer
    return slow - alpha * step, buffer


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shapes=st.lists(st.sampled_from([(3,), (2, 5), (4, 1, 2), ()]), min_size=1, max_size=4),
    alpha=st.floats(0.0, 1.0),
    mu=st.floats(0.0, 0.99),
    nesterov=st.booleans(),
    foreach=st.booleans(),
    fast_dtype=st.sampled_from([torch.float64, torch.float32]),
    rounds=st.integers(1, 3),
)
def test_momentum_outer_step_matches_reference(
    seed: int,
    shapes: list[tuple[int, ...]],
    alpha: float,
    mu: float,
    nesterov: bool,
    foreach: bool,
    fast_dtype: torch.dtype,
    rounds: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    slow = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    buffers = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    expected_slow = [s.clone() for s in slow]
    expected_buffers = [b.clone() for b in buffers]
    for _ in range(rounds):
        fast = [
            torch.randn(s, generator=generator, dtype=torch.float64).to(fast_dtype) for s in shapes
        ]
        for i, f in enumerate(fast):
            expected_slow[i], expected_buffers[i] = reference_outer_step(
                f.double(), expected_slow[i], expected_buffers[i], alpha, mu, nesterov
            )
        momentum_outer_step_(
            fast, slow, buffers, alpha=alpha, outer_momentum=mu, nesterov=nesterov, foreach=foreach
        )
        for f, s in zip(fast, slow, strict=True):
            assert f.dtype == fast_dtype
            assert torch.equal(f, s.to(fast_dtype))  # fast <- slow
    for got, want in zip(slow + buffers, expected_slow + expected_buffers, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
