"""Plainly written float64 references of Lookahead (paper Algorithm 1) for the tests.

Nothing here shares code with the package: the loop below is the paper's pseudo-code, written out
with ordinary tensor arithmetic, and the inner optimizer ``A`` is an independent instance of the
same torch optimizer class working on its own copy of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

GradFn = Callable[[list[Tensor]], list[Tensor]]


def quadratic_problem(
    seed: int, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype = torch.float64
):
    """A random convex quadratic per tensor: loss = sum_i 0.5*||A_i * (x_i - c_i)||^2.

    Returns (initial tensors, grad_fn) with grad_fn(list of tensors) -> list of gradients.
    """
    gen = torch.Generator().manual_seed(seed)
    curvature = [torch.rand(s, generator=gen, dtype=torch.float64) + 0.1 for s in shapes]
    centre = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    x0 = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]

    def grad_fn(xs: list[Tensor]) -> list[Tensor]:
        return [
            (a * (x.double() - c)).to(x.dtype)
            for a, c, x in zip(curvature, centre, xs, strict=True)
        ]

    return x0, grad_fn


def reference_lookahead(
    x0: Sequence[Tensor],
    grad_fn: GradFn,
    n_steps: int,
    make_inner: Callable[[list[Tensor]], torch.optim.Optimizer],
    k: int,
    alpha: float,
    mode: str = "none",
    momentum_key: str | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Algorithm 1: k inner steps of A, then phi <- phi + alpha*(theta - phi); theta <- phi.

    Returns (fast weights, slow weights) after ``n_steps`` inner steps.
    """
    theta = [x.detach().clone().requires_grad_(True) for x in x0]
    phi = [x.detach().clone() for x in x0]
    inner = make_inner(theta)
    slow_momentum: list[Tensor] | None = None
    for t in range(1, n_steps + 1):
        for param, grad in zip(theta, grad_fn([p.detach() for p in theta]), strict=True):
            param.grad = grad.clone()
        inner.step()
        if t % k == 0:
            with torch.no_grad():
                for i, param in enumerate(theta):
                    phi[i] = phi[i] + alpha * (param.detach() - phi[i])
                    param.copy_(phi[i])
                if mode != "none":
                    assert momentum_key is not None
                    buffers = [inner.state[p][momentum_key] for p in theta]
                    if mode == "reset":
                        for buffer in buffers:
                            buffer.zero_()
                    else:
                        if slow_momentum is None:
                            slow_momentum = [torch.zeros_like(b) for b in buffers]
                        for buffer, slow_buffer in zip(buffers, slow_momentum, strict=True):
                            buffer.copy_(alpha * buffer + (1 - alpha) * slow_buffer)
                            slow_buffer.copy_(buffer)
    return [p.detach() for p in theta], phi


def numpy_lookahead_sgd(
    x0: np.ndarray,
    grads: Callable[[np.ndarray], np.ndarray],
    n_steps: int,
    lr: float,
    k: int,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lookahead over plain SGD in numpy float64 (no torch at all)."""
    theta = np.array(x0, dtype=np.float64)
    phi = theta.copy()
    for t in range(1, n_steps + 1):
        theta = theta - lr * grads(theta)
        if t % k == 0:
            phi = phi + alpha * (theta - phi)
            theta = phi.copy()
    return theta, phi
