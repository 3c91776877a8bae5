"""Float64 numpy oracles for the optimizers, written plainly from the update rules that
docs/optimizers.md states (and the papers and torch documentation it cites).

Each takes the initial weights and the whole sequence of gradients (and learning rates, so that
a scheduler's changes can be replayed) and returns the final weights. ``maximize`` is not an
argument: maximizing is minimizing with the gradients negated, so callers pass ``-g``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Array = np.ndarray


def novograd(
    layers0: Sequence[Array],
    grads: Sequence[Sequence[Array]],
    lrs: Sequence[float],
    b1: float = 0.95,
    b2: float = 0.98,
    eps: float = 1e-8,
    wd: float = 0.0,
    grad_averaging: bool = False,
    amsgrad: bool = False,
    decoupled: bool = False,
) -> list[Array]:
    """NovoGrad with NVIDIA NeMo's semantics (Ginsburg et al., arXiv:1905.11286): eps outside
    the square root, decay inside the momentum, ``1 - b1`` from the first step with averaging.

    layers0: one array per layer; grads[t][l]: gradient of layer l at step t+1; lrs[t]: lr then.
    """
    out = []
    for layer, w in enumerate(layers0):
        w = np.array(w, dtype=np.float64)
        m = np.zeros_like(w)
        v = None
        vmax = 0.0
        for t, step_grads in enumerate(grads):
            lr = lrs[t]
            g = np.array(step_grads[layer], dtype=np.float64)
            n2 = float(np.sum(g * g))
            v = n2 if v is None else b2 * v + (1 - b2) * n2  # layer-wise scalar second moment
            vmax = max(vmax, v)
            u = g / (np.sqrt(vmax if amsgrad else v) + eps)
            if wd and decoupled:
                w = w * (1 - lr * wd)
            elif wd:
                u = u + wd * w  # decay after normalisation, inside the momentum
            c = (1 - b1) if grad_averaging else 1.0
            m = b1 * m + c * u
            w = w - lr * m
        out.append(w)
    return out


def adabound(
    x0: Array,
    grads: Sequence[Array],
    lrs: Sequence[float],
    base_lr: float,
    final_lr: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.999,
    gamma: float = 1e-3,
    eps: float = 1e-8,
    wd: float = 0.0,
    wd_mode: str = "l2",
    amsbound: bool = False,
) -> Array:
    """AdaBound as the official code (Luolc/AdaBound) computes it (Luo et al., ICLR 2019).

    lrs[t-1]: the group lr at step t; base_lr: the lr at construction.

    wd_mode: 'l2' (AdaBound) or 'adamw' (``decoupled_weight_decay=True``).
    """
    x = np.array(x0, dtype=np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    vmax = np.zeros_like(x)
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        g = np.array(g, dtype=np.float64)
        if wd and wd_mode == "l2":
            g = g + wd * x
        if wd and wd_mode == "adamw":
            x = x * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        fl = final_lr * lr / base_lr  # scheduler-scaled final lr
        lo, hi = fl * (1 - 1 / (gamma * t + 1)), fl * (1 + 1 / (gamma * t))
        upd = np.clip(step / (np.sqrt(vmax if amsbound else v) + eps), lo, hi) * m
        x = x - upd
    return x


def radam_step(
    lr: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    wd: float = 0.0,
    decoupled: bool = False,
) -> Callable[[Array, Array, dict[str, Any]], tuple[Array, dict[str, Any]]]:
    """RAdam as torch.optim.RAdam documents it (rectified when rho_t > 5, an SGD-with-momentum
    step before), as one step ``(x, g, state) -> (x, state)`` for use inside :func:`lookahead`."""
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def step(x: Array, g: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
        t = state.get("t", 0) + 1
        m = state.get("m", np.zeros_like(x))
        v = state.get("v", np.zeros_like(x))
        rho = rho_inf - 2.0 * t * b2**t / (1.0 - b2**t)
        if wd and decoupled:
            x = x * (1.0 - lr * wd)
        elif wd:
            g = g + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        if rho > 5.0:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            x = x - lr * r * m_hat * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
        else:
            x = x - lr * m_hat
        return x, {"t": t, "m": m, "v": v}

    return step


def lookahead(
    x0: Array,
    grads: Sequence[Array],
    inner_step: Callable[[Array, Array, dict[str, Any]], tuple[Array, dict[str, Any]]],
    k: int,
    alpha: float,
) -> tuple[Array, Array]:
    """Lookahead's Algorithm 1 (Zhang et al., arXiv:1907.08610), inner state kept at the sync,
    over precomputed gradients. Returns (fast, slow)."""
    phi = np.array(x0, dtype=np.float64)
    theta = phi.copy()
    state: dict[str, Any] = {}
    for t, g in enumerate(grads, start=1):
        theta, state = inner_step(theta, np.array(g, dtype=np.float64), state)
        if t % k == 0:  # sync after inner steps k, 2k, ...
            phi = phi + alpha * (theta - phi)
            theta = phi.copy()
    return theta, phi
