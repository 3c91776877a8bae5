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


class Algorithm1:
    """Algorithm 1 in float64, with the operations a user applies between steps.

    The state is what the paper and README.md ("The algorithm") describe: per parameter group a
    period ``k``, a step size ``alpha`` and the number of inner steps since the group's last sync;
    per parameter the fast weights ``theta`` (updated by an independent instance of the inner
    optimizer class, on the model's own copies) and the slow weights ``phi``, which start at the
    parameter's value before its first update (``None`` until then). ``momentum_key`` names the
    inner momentum entry the ``"reset"`` and ``"pullback"`` modes act on; the slow momentum of
    ``"pullback"`` starts at zero.

    Documented edges it follows: a group whose counter has reached its ``k`` when a step begins
    (``k`` was lowered mid-cycle) is synced first (README.md, behaviour notes); ``reset_slow()``
    re-captures the slow weights of the parameters that have them and restarts every cycle, with
    the slow momentum at zero; clearing a parameter's state drops its inner state and its slow
    weights, captured again at its next update.
    """

    def __init__(
        self,
        make_inner: Callable[[list[dict[str, object]]], torch.optim.Optimizer],
        mode: str = "none",
        momentum_key: str | None = None,
    ) -> None:
        self.theta: list[list[Tensor]] = []
        self.phi: list[list[Tensor | None]] = []
        self.slow_momentum: list[list[Tensor | None]] = []
        self.k: list[int] = []
        self.alpha: list[float] = []
        self.count: list[int] = []
        self.mode = mode
        self.momentum_key = momentum_key
        self._make_inner = make_inner
        self.inner: torch.optim.Optimizer | None = None

    def add_group(self, values: Sequence[Tensor], k: int, alpha: float) -> None:
        theta = [v.detach().to(torch.float64).clone().requires_grad_(True) for v in values]
        if self.inner is None:
            self.inner = self._make_inner([{"params": theta}])
        else:
            self.inner.add_param_group({"params": theta})
        self.theta.append(theta)
        self.phi.append([None] * len(theta))
        self.slow_momentum.append([None] * len(theta))
        self.k.append(k)
        self.alpha.append(alpha)
        self.count.append(0)

    def set_grads(self, grads: Sequence[Sequence[Tensor | None]]) -> None:
        for thetas, group_grads in zip(self.theta, grads, strict=True):
            for theta, grad in zip(thetas, group_grads, strict=True):
                theta.grad = None if grad is None else grad.to(torch.float64).clone()

    def zero_grad(self, set_to_none: bool) -> None:
        for theta in (t for thetas in self.theta for t in thetas):
            if set_to_none:
                theta.grad = None
            elif theta.grad is not None:
                theta.grad.zero_()

    def step(self) -> list[int]:
        """One inner step on the gradients set; returns the groups synced at its end."""
        assert self.inner is not None
        for g in range(len(self.theta)):
            if self.count[g] >= self.k[g]:
                self.sync(g)
        for g, thetas in enumerate(self.theta):
            for i, theta in enumerate(thetas):
                if theta.grad is not None and self.phi[g][i] is None:
                    self.phi[g][i] = theta.detach().clone()
        self.inner.step()
        due = []
        for g in range(len(self.theta)):
            self.count[g] += 1
            if self.count[g] >= self.k[g]:
                self.sync(g)
                due.append(g)
        return due

    def sync(self, g: int) -> None:
        """phi <- phi + alpha*(theta - phi); theta <- phi; then the momentum policy."""
        assert self.inner is not None
        alpha = self.alpha[g]
        with torch.no_grad():
            for i, theta in enumerate(self.theta[g]):
                phi = self.phi[g][i]
                if phi is None:
                    continue
                phi = phi + alpha * (theta.detach() - phi)
                self.phi[g][i] = phi
                theta.copy_(phi)
                if self.mode == "none":
                    continue
                assert self.momentum_key is not None
                buffer = self.inner.state[theta].get(self.momentum_key)
                if not isinstance(buffer, Tensor):
                    continue
                if self.mode == "reset":
                    buffer.zero_()
                    continue
                slow = self.slow_momentum[g][i]
                if slow is None:
                    slow = torch.zeros_like(buffer)
                buffer.copy_(alpha * buffer + (1 - alpha) * slow)
                self.slow_momentum[g][i] = buffer.clone()
        self.count[g] = 0

    def sync_all(self) -> None:
        for g in range(len(self.theta)):
            self.sync(g)

    def reset_slow(self) -> None:
        for g, thetas in enumerate(self.theta):
            for i, theta in enumerate(thetas):
                if self.phi[g][i] is not None:
                    self.phi[g][i] = theta.detach().clone()
                self.slow_momentum[g][i] = None
            self.count[g] = 0

    def clear_state(self, g: int, i: int) -> None:
        assert self.inner is not None
        self.inner.state[self.theta[g][i]].clear()
        self.phi[g][i] = None
        self.slow_momentum[g][i] = None

    def fast(self, g: int, i: int) -> Tensor:
        return self.theta[g][i].detach()

    def slow(self, g: int, i: int) -> Tensor:
        """The slow weights; a parameter never updated is its own slow weights."""
        phi = self.phi[g][i]
        return self.theta[g][i].detach() if phi is None else phi

    def inner_state(self, g: int, i: int) -> dict[str, object]:
        assert self.inner is not None
        return dict(self.inner.state.get(self.theta[g][i], {}))
