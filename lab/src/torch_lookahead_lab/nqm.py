"""The noisy quadratic model (NQM) of Zhang et al. 2019, section 3: closed forms and simulation.

Per coordinate ``i`` the loss is ``1/2 * a_i * (x_i - c_i)^2`` with a fresh ``c_i ~ N(0, s_i)``
at every step, so the stochastic gradient is ``a_i * (x_i - c_i)``. The expected loss is::

    E[L(x)] = 1/2 * sum_i a_i * (E[x_i]^2 + V[x_i] + s_i)

At the steady state ``E[x] = 0`` and, with ``b_i = 1 - lr * a_i`` (stable when ``|b_i| < 1``)::

    V*_SGD = lr^2 a^2 s / (1 - b^2)
    V*_LA  = alpha^2 (1 - b^(2k)) / (alpha^2 (1 - b^(2k)) + 2 alpha (1 - alpha)(1 - b^k)) * V*_SGD

where ``V*_LA`` is the variance of the slow weights read at the synchronisation points
(Proposition 2 of the paper). The simulation runs many independent chains of the real
``torch.optim.SGD`` (wrapped in ``Lookahead`` for the second one) in float64 and averages
``sum_i a_i x_i^2`` over chains and over steady-state steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torch_lookahead import check_alpha, check_k
from torch_lookahead_lab.provenance import job_key
from torch_lookahead_lab.stats import t_difference

__all__ = [
    "NQMConfig",
    "NQMPoint",
    "NQMProblem",
    "expected_loss",
    "nqm_configs",
    "nqm_grid",
    "nqm_point",
    "simulate_chain_losses",
    "simulate_steady_state_loss",
    "steady_state_variance_lookahead",
    "steady_state_variance_sgd",
]


@dataclass(frozen=True)
class NQMProblem:
    """Diagonal curvatures ``a_i`` and gradient-noise variances ``s_i`` of the NQM."""

    curvatures: tuple[float, ...]
    noise_variances: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.curvatures) != len(self.noise_variances) or not self.curvatures:
            raise ValueError("curvatures and noise_variances must be non-empty and of equal length")
        if min(self.curvatures) <= 0 or min(self.noise_variances) < 0:
            raise ValueError("curvatures must be positive and noise_variances non-negative")

    @classmethod
    def default(cls, dimensions: int = 10) -> NQMProblem:
        """Curvatures log-spaced from 1 down to 0.1, noise variance equal to the curvature (the
        paper's choice of a noise covariance proportional to the Hessian)."""
        curvatures = tuple(10.0 ** (-i / (dimensions - 1)) for i in range(dimensions))
        return cls(curvatures, curvatures)

    def tensors(self) -> tuple[Tensor, Tensor]:
        return (
            torch.tensor(self.curvatures, dtype=torch.float64),
            torch.tensor(self.noise_variances, dtype=torch.float64),
        )

    def max_stable_lr(self) -> float:
        """SGD's steady state exists for ``0 < lr < 2 / max(a)``."""
        return 2.0 / max(self.curvatures)


def _check_lr(problem: NQMProblem, lr: float) -> None:
    if not 0.0 < lr < problem.max_stable_lr():
        raise ValueError(
            f"lr must lie in (0, {problem.max_stable_lr():g}) for a steady state, got {lr}"
        )


def steady_state_variance_sgd(curvature: Tensor, noise: Tensor, lr: float) -> Tensor:
    """``V*_SGD = lr^2 a^2 s / (1 - (1 - lr a)^2)`` per coordinate."""
    contraction = 1.0 - lr * curvature
    return lr**2 * curvature**2 * noise / (1.0 - contraction**2)


def steady_state_variance_lookahead(
    curvature: Tensor, noise: Tensor, lr: float, k: int, alpha: float
) -> Tensor:
    """Proposition 2: the slow weights' steady-state variance per coordinate (formula above,
    numerator and denominator divided by ``alpha`` so that ``alpha = 0`` gives 0: slow weights that
    never move have no variance)."""
    b = 1.0 - lr * curvature
    kept = alpha * (1.0 - b ** (2 * k))
    return (
        kept
        / (kept + 2.0 * (1.0 - alpha) * (1.0 - b**k))
        * (steady_state_variance_sgd(curvature, noise, lr))
    )


def expected_loss(curvature: Tensor, noise: Tensor, second_moment: Tensor) -> float:
    """``1/2 * sum_i a_i (E[x_i^2] + s_i)``, where ``E[x_i^2] = E[x_i]^2 + V[x_i]``."""
    return float(0.5 * (curvature * (second_moment + noise)).sum())


def simulate_steady_state_loss(
    problem: NQMProblem,
    lr: float,
    *,
    k: int | None = None,
    alpha: float | None = None,
    chains: int = 2000,
    burn_in_steps: int = 2000,
    measured_steps: int = 4000,
    seed: int = 0,
) -> float:
    """Monte-Carlo estimate of the steady-state expected loss of SGD (``k=None``) or of
    Lookahead(SGD): the mean over chains of ``simulate_chain_losses``."""
    return float(
        simulate_chain_losses(
            problem, lr, k=k, alpha=alpha, chains=chains, burn_in_steps=burn_in_steps,
            measured_steps=measured_steps, seed=seed,
        ).mean()
    )  # fmt: skip


def simulate_chain_losses(
    problem: NQMProblem,
    lr: float,
    *,
    k: int | None = None,
    alpha: float | None = None,
    chains: int = 2000,
    burn_in_steps: int = 2000,
    measured_steps: int = 4000,
    seed: int = 0,
) -> Tensor:
    """The steady-state expected loss of SGD (``k=None``) or of Lookahead(SGD) estimated by each
    of ``chains`` independent chains started at the optimum (a float64 tensor, one per chain).

    SGD is measured after every step; Lookahead after every synchronisation (steps divisible by
    ``k``), where the parameters equal the slow weights. The noise depends on ``seed`` only, so
    SGD and Lookahead with the same seed see the same noise chain by chain.
    """
    _check_lr(problem, lr)
    curvature, noise = problem.tensors()
    generator = torch.Generator().manual_seed(seed)
    position = torch.zeros(chains, curvature.numel(), dtype=torch.float64, requires_grad=True)
    inner = torch.optim.SGD([position], lr=lr)
    optimizer: torch.optim.Optimizer = inner
    every = 1
    if k is not None:
        if alpha is None:
            raise ValueError("alpha is required with k")
        from torch_lookahead import Lookahead

        optimizer = Lookahead(inner, k=k, alpha=alpha)
        every = k
    noise_scale = noise.sqrt()
    burn_in = math.ceil(burn_in_steps / every) * every
    total = torch.zeros(chains, dtype=torch.float64)
    count = 0
    for step in range(1, burn_in + measured_steps + 1):
        targets = (
            torch.randn(position.shape, generator=generator, dtype=torch.float64) * noise_scale
        )
        with torch.no_grad():
            position.grad = curvature * (position - targets)
        optimizer.step()
        if step > burn_in and step % every == 0:
            with torch.no_grad():
                total += (curvature * position.square()).sum(dim=1)
            count += 1
    return 0.5 * (total / count + (curvature * noise).sum())


@dataclass(frozen=True)
class NQMPoint:
    """Closed-form and simulated steady-state expected loss at one learning rate."""

    lr: float
    sgd_theory: float
    sgd_simulated: float
    lookahead_theory: float
    lookahead_simulated: float
    floor: float  # 1/2 sum a_i s_i: the loss at x = 0, which no optimizer goes below
    chains: int = 0
    # 95% interval of lookahead_simulated - sgd_simulated over chains (paired: same noise)
    difference_low: float = math.nan
    difference_high: float = math.nan

    def relative_errors(self, excess: bool = True) -> tuple[float, float]:
        """|simulated - theory| / theory for SGD and Lookahead; on the excess over ``floor``
        (the part the optimizer controls) when ``excess``."""
        shift = self.floor if excess else 0.0
        return (
            abs(self.sgd_simulated - self.sgd_theory) / (self.sgd_theory - shift),
            abs(self.lookahead_simulated - self.lookahead_theory) / (self.lookahead_theory - shift),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> NQMPoint:
        return cls(**payload)

    def variance_ratio(self, simulated: bool = True) -> float:
        """Lookahead's excess loss over SGD's: the weighted steady-state variance ratio."""
        if simulated:
            return (self.lookahead_simulated - self.floor) / (self.sgd_simulated - self.floor)
        return (self.lookahead_theory - self.floor) / (self.sgd_theory - self.floor)


@dataclass(frozen=True)
class NQMConfig:
    """One learning rate of the NQM check: everything that determines its ``NQMPoint``."""

    problem: NQMProblem
    lr: float
    k: int
    alpha: float
    chains: int
    burn_in_steps: int
    measured_steps: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_k(self.k)
        if check_alpha(self.alpha) == 0:
            raise ValueError(
                "alpha must be in (0, 1] for the noisy quadratic model: with alpha = 0 the slow "
                "weights never leave the optimum and there is no steady state to compare, got 0"
            )
        _check_lr(self.problem, self.lr)
        for name in ("chains", "burn_in_steps", "measured_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    def key(self) -> str:
        """A digest of the whole configuration and the torch version (the result cache's key)."""
        return job_key("nqm", dataclasses.asdict(self))


def nqm_point(config: NQMConfig) -> NQMPoint:
    """Closed form against simulation for SGD and Lookahead(SGD, k, alpha) at ``config.lr``."""
    curvature, noise = config.problem.tensors()
    simulate = {
        "chains": config.chains,
        "burn_in_steps": config.burn_in_steps,
        "measured_steps": config.measured_steps,
        "seed": config.seed,
    }
    lr, k, alpha = config.lr, config.k, config.alpha
    sgd = simulate_chain_losses(config.problem, lr, **simulate)
    lookahead = simulate_chain_losses(config.problem, lr, k=k, alpha=alpha, **simulate)
    interval = t_difference(sgd.tolist(), lookahead.tolist())
    return NQMPoint(
        lr=lr,
        sgd_theory=expected_loss(curvature, noise, steady_state_variance_sgd(curvature, noise, lr)),
        sgd_simulated=float(sgd.mean()),
        lookahead_theory=expected_loss(
            curvature, noise, steady_state_variance_lookahead(curvature, noise, lr, k, alpha)
        ),
        lookahead_simulated=float(lookahead.mean()),
        floor=expected_loss(curvature, noise, torch.zeros_like(curvature)),
        chains=config.chains,
        difference_low=interval.low,
        difference_high=interval.high,
    )


def nqm_configs(
    problem: NQMProblem,
    lrs: Sequence[float],
    *,
    k: int = 5,
    alpha: float = 0.5,
    chains: int = 2000,
    burn_in_steps: int = 2000,
    measured_steps: int = 4000,
    seed: int = 0,
) -> list[NQMConfig]:
    """One ``NQMConfig`` per learning rate (all validated before any is simulated)."""
    return [
        NQMConfig(problem, float(lr), k, alpha, chains, burn_in_steps, measured_steps, seed)
        for lr in lrs
    ]


def nqm_grid(
    problem: NQMProblem,
    lrs: Sequence[float],
    *,
    k: int = 5,
    alpha: float = 0.5,
    chains: int = 2000,
    burn_in_steps: int = 2000,
    measured_steps: int = 4000,
    seed: int = 0,
    on_point: Callable[[NQMPoint], None] | None = None,
) -> list[NQMPoint]:
    """``nqm_point`` at each ``lr`` in this process; ``on_point`` is called after each."""
    points = []
    for config in nqm_configs(
        problem, lrs, k=k, alpha=alpha, chains=chains, burn_in_steps=burn_in_steps,
        measured_steps=measured_steps, seed=seed,
    ):  # fmt: skip
        points.append(nqm_point(config))
        if on_point is not None:
            on_point(points[-1])
    return points
