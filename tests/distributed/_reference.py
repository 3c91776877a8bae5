"""Plainly written float64 references for Lookahead across workers (SlowMo, Wang et al. 2020; DiLoCo, Douillard et al. 2023).

Nothing here shares code with the package. Each worker runs heavy-ball SGD in torch's form
(``buf <- g`` at the first step, then ``buf <- mu*buf + g``; ``x <- x - lr*buf``) on its own
gradient function; every ``k`` steps the workers' weights are averaged and the slow weights step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

GradFn = Callable[[list[Tensor]], list[Tensor]]


def quadratic_worker(seed: int, shapes: Sequence[tuple[int, ...]]) -> tuple[list[Tensor], GradFn]:
    """Worker ``seed``'s data: a random convex quadratic per tensor, and a random start point.

    loss = sum_i 0.5 * ||a_i * (x_i - c_i)||^2, so grad_i = a_i^2 * (x_i - c_i).
    """
    generator = torch.Generator().manual_seed(seed)
    curvature = [torch.rand(s, generator=generator, dtype=torch.float64) + 0.5 for s in shapes]
    centre = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    start = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]

    def grad_fn(xs: list[Tensor]) -> list[Tensor]:
        return [a * a * (x.double() - c) for a, c, x in zip(curvature, centre, xs, strict=True)]

    return start, grad_fn


def reference_across_workers(
    x0: Sequence[Tensor],
    grad_fns: Sequence[GradFn],
    n_steps: int,
    *,
    lr: float,
    inner_momentum: float,
    k: int,
    alpha: float,
    outer_momentum: float = 0.0,
    nesterov: bool = False,
) -> tuple[list[list[Tensor]], list[Tensor], list[Tensor]]:
    """Returns (each worker's fast weights, slow weights, outer momentum buffer) after n_steps.

    outer_momentum == 0: Lookahead on the mean, ``slow <- slow + alpha*(mean - slow)``.
    Heavy ball: SlowMo (Wang et al., 2020) with base learning rate ``lr``:
        ``u <- beta*u + (slow - mean)/lr; slow <- slow - alpha*lr*u``; the returned buffer is lr*u.
    Nesterov: DiLoCo's outer SGD (5.2): ``u <- mu*u + delta; slow <- slow - alpha*(delta + mu*u)``.
    """
    workers = len(grad_fns)
    slow = [x.double().clone() for x in x0]
    u = [torch.zeros_like(x) for x in slow]
    fast = [[x.clone() for x in slow] for _ in range(workers)]
    buffers: list[list[Tensor] | None] = [None] * workers
    for t in range(1, n_steps + 1):
        for r in range(workers):
            grads = grad_fns[r](fast[r])
            previous = buffers[r]
            if previous is None:
                buffers[r] = [g.clone() for g in grads]
            else:
                buffers[r] = [inner_momentum * b + g for b, g in zip(previous, grads, strict=True)]
            fast[r] = [x - lr * b for x, b in zip(fast[r], buffers[r], strict=True)]
        if t % k == 0:
            mean = [sum(fast[r][i] for r in range(workers)) / workers for i in range(len(slow))]
            for i in range(len(slow)):
                if outer_momentum == 0.0:
                    slow[i] = slow[i] + alpha * (mean[i] - slow[i])
                elif not nesterov:
                    u[i] = outer_momentum * u[i] + (slow[i] - mean[i]) / lr
                    slow[i] = slow[i] - alpha * lr * u[i]
                else:
                    delta = slow[i] - mean[i]
                    u[i] = outer_momentum * u[i] + delta
                    slow[i] = slow[i] - alpha * (delta + outer_momentum * u[i])
            fast = [[x.clone() for x in slow] for _ in range(workers)]
    if outer_momentum != 0.0 and not nesterov:
        u = [lr * b for b in u]
    return fast, slow, u
