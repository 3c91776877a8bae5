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


def quantize_reference(values: Tensor, compression: str, block: int = 1024) -> Tensor:
    """What one encoding keeps of float32 ``values`` (1-D, for int8 a whole number of blocks).

    bfloat16: round to nearest even. int8: per block of ``block`` values, scale = max |x| / 127
    (1 for an all-zero block), q = round(x / scale) clipped to [-127, 127], value = q * scale.
    """
    assert values.dtype == torch.float32
    if compression == "bfloat16":
        return values.to(torch.bfloat16).float()
    out = torch.empty_like(values)
    for start in range(0, values.numel(), block):
        piece = values[start : start + block]
        scale = piece.abs().max() / 127.0
        if scale == 0:
            scale = torch.tensor(1.0)
        out[start : start + block] = torch.round(piece / scale).clamp(-127, 127) * scale
    return out


def compressed_mean_reference(
    slow: Sequence[Tensor], fasts: Sequence[Sequence[Tensor]], compression: str
) -> list[Tensor]:
    """The mean of the workers' weights as the compressed exchange defines it, written plainly.

    Each worker's delta ``slow - fast`` (rounded to float32, flattened; for int8 each tensor
    zero-padded to whole blocks of 1024 so that no block holds two tensors; the whole zero-padded
    so that it cuts into W equal chunks, for int8 of whole blocks) is encoded; chunk j of the mean
    is the float32 sum over the workers, in order, of their decoded chunk j, divided by W and
    encoded again. The mean weights are ``slow - decoded mean``.
    """
    workers = len(fasts)
    block = 1024 if compression == "int8" else 1
    unit = workers * block
    sizes = [s.numel() for s in slow]
    spans = [-(-n // block) * block for n in sizes]
    starts = [sum(spans[:i]) for i in range(len(spans))]
    padded = max(unit, -(-sum(spans) // unit) * unit)
    chunk = padded // workers
    deltas = []
    for fast in fasts:
        flat = torch.zeros(padded, dtype=torch.float32)
        for s, f, start in zip(slow, fast, starts, strict=True):
            flat[start : start + s.numel()] = (s - f).reshape(-1).float()
        deltas.append(flat)
    mean = torch.zeros(padded, dtype=torch.float32)
    for j in range(workers):
        total = torch.zeros(chunk, dtype=torch.float32)
        for flat in deltas:
            total = total + quantize_reference(flat[j * chunk : (j + 1) * chunk], compression)
        mean[j * chunk : (j + 1) * chunk] = quantize_reference(total / workers, compression)
    return [
        s - mean[start : start + s.numel()].reshape(s.shape).to(s.dtype)
        for s, start in zip(slow, starts, strict=True)
    ]


def reference_streaming(
    x0: Sequence[Tensor],
    grad_fns: Sequence[GradFn],
    n_steps: int,
    *,
    lr: float,
    inner_momentum: float,
    k: int,
    alpha: float,
    offsets: Sequence[int],
    sync_delay: int = 0,
    compression: str | None = None,
    outer_momentum: float = 0.0,
    nesterov: bool = False,
) -> tuple[list[list[Tensor]], list[Tensor]]:
    """Streaming, delayed and compressed syncs; returns (fast, slow).

    Tensor i syncs after the inner steps t with t % k == offsets[i] % k: the workers' mean
    (exact, or :func:`compressed_mean_reference` over the tensors due at that step, in order) is
    taken at t; after step t + sync_delay the slow weights take the outer step on it
    (``slow_i <- slow_i + alpha*(mean_i - slow_i)``, or with outer momentum
    ``u <- mu*u + (slow - mean); slow <- slow - alpha*u``, Nesterov
    ``slow <- slow - alpha*((slow - mean) + mu*u)``) and each worker's
    ``x_i <- slow_i + (x_i - x_i at t)``.
    """
    workers = len(grad_fns)
    slow = [x.double().clone() for x in x0]
    fast = [[x.clone() for x in slow] for _ in range(workers)]
    buffers: list[list[Tensor] | None] = [None] * workers
    momentum = [torch.zeros_like(x) for x in slow]
    pending: dict[int, tuple[int, Tensor, list[Tensor]]] = {}  # i -> (apply at, mean, launch)
    for t in range(1, n_steps + 1):
        for r in range(workers):
            grads = grad_fns[r](fast[r])
            previous = buffers[r]
            if previous is None:
                buffers[r] = [g.clone() for g in grads]
            else:
                buffers[r] = [inner_momentum * b + g for b, g in zip(previous, grads, strict=True)]
            fast[r] = [x - lr * b for x, b in zip(fast[r], buffers[r], strict=True)]
        due = [i for i in range(len(slow)) if t % k == offsets[i] % k]
        if due:
            if compression is None:
                means = [sum(fast[r][i] for r in range(workers)) / workers for i in due]
            else:
                means = compressed_mean_reference(
                    [slow[i] for i in due],
                    [[fast[r][i] for i in due] for r in range(workers)],
                    compression,
                )
            for i, mean in zip(due, means, strict=True):
                pending[i] = (t + sync_delay, mean, [fast[r][i].clone() for r in range(workers)])
        for i, (apply_at, mean, launch) in list(pending.items()):
            if apply_at != t:
                continue
            del pending[i]
            if outer_momentum == 0.0:
                slow[i] = slow[i] + alpha * (mean - slow[i])
            else:
                delta = slow[i] - mean
                momentum[i] = outer_momentum * momentum[i] + delta
                step = delta + outer_momentum * momentum[i] if nesterov else momentum[i]
                slow[i] = slow[i] - alpha * step
            for r in range(workers):
                fast[r][i] = slow[i] + (fast[r][i] - launch[r])
    return fast, slow
