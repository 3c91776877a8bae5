"""The noisy quadratic model: closed forms against a plain float64 reference, and the simulation
of the real optimizers against the closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_lookahead_lab.experiments import demo_plan
from torch_lookahead_lab.nqm import (
    NQMProblem,
    expected_loss,
    nqm_grid,
    simulate_steady_state_loss,
    steady_state_variance_lookahead,
    steady_state_variance_sgd,
)

DEMO = demo_plan()


def reference_variance_sgd(a: float, s2: float, lr: float) -> float:
    """Iterate V <- (1 - lr a)^2 V + lr^2 a^2 s2 to its fixed point."""
    variance = 0.0
    for _ in range(20_000):
        variance = (1 - lr * a) ** 2 * variance + lr**2 * a**2 * s2
    return variance


def reference_variance_lookahead(a: float, s2: float, lr: float, k: int, alpha: float) -> float:
    """Iterate the slow weights' variance recursion of the paper to its fixed point."""
    b = 1 - lr * a
    noise = alpha**2 * lr**2 * a**2 * s2 * sum(b ** (2 * i) for i in range(k))
    variance = 0.0
    for _ in range(20_000):
        variance = (1 - alpha + alpha * b**k) ** 2 * variance + noise
    return variance


@settings(max_examples=40, deadline=None)
@given(
    a=st.floats(0.2, 2.0),
    s2=st.floats(0.1, 3.0),
    lr_fraction=st.floats(0.05, 0.95),
    k=st.integers(1, 12),
    alpha=st.floats(0.05, 1.0),  # below, the reference's iteration converges too slowly
)
def test_closed_forms_match_the_variance_recursions(
    a: float, s2: float, lr_fraction: float, k: int, alpha: float
) -> None:
    lr = lr_fraction * 2 / a
    curvature = torch.tensor([a], dtype=torch.float64)
    noise = torch.tensor([s2], dtype=torch.float64)
    sgd = float(steady_state_variance_sgd(curvature, noise, lr))
    lookahead = float(steady_state_variance_lookahead(curvature, noise, lr, k, alpha))
    np.testing.assert_allclose(sgd, reference_variance_sgd(a, s2, lr), rtol=1e-9)
    np.testing.assert_allclose(
        lookahead, reference_variance_lookahead(a, s2, lr, k, alpha), rtol=1e-9
    )
    assert lookahead <= sgd * (1 + 1e-12)
    if alpha < 1:
        assert lookahead < sgd


def test_slow_weights_that_never_move_have_no_variance() -> None:
    curvature = torch.tensor([0.3, 1.0, 1.9], dtype=torch.float64)
    variance = steady_state_variance_lookahead(
        curvature, torch.ones(3, dtype=torch.float64), 1.0, 5, 0.0
    )
    assert variance.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("a", "s2", "lr", "k", "alpha", "sgd", "lookahead"),
    [  # Monte-Carlo estimates made independently of this code (relative error below 1e-3)
        (1.0, 1.0, 0.5, 5, 0.5, 0.3333, 0.1134),
        (2.0, 0.5, 0.9, 10, 0.8, 4.500, 3.100),
        (0.3, 2.0, 1.0, 3, 0.2, 0.3529, 0.05073),
        (1.0, 1.0, 1.8, 5, 0.5, 9.000, 2.264),
    ],
)
def test_closed_forms_reproduce_the_reference_values(
    a: float, s2: float, lr: float, k: int, alpha: float, sgd: float, lookahead: float
) -> None:
    curvature = torch.tensor([a], dtype=torch.float64)
    noise = torch.tensor([s2], dtype=torch.float64)
    assert float(steady_state_variance_sgd(curvature, noise, lr)) == pytest.approx(sgd, rel=1e-3)
    assert float(steady_state_variance_lookahead(curvature, noise, lr, k, alpha)) == pytest.approx(
        lookahead, rel=1e-3
    )


def test_simulation_agrees_with_the_closed_form_within_3_percent_on_the_demo_grid() -> None:
    points = nqm_grid(
        NQMProblem.default(),
        DEMO.nqm_lrs,
        k=DEMO.k,
        alpha=DEMO.alpha,
        chains=DEMO.nqm_chains,
        burn_in_steps=DEMO.nqm_burn_in_steps,
        measured_steps=DEMO.nqm_measured_steps,
    )
    assert [p.lr for p in points] == list(DEMO.nqm_lrs)
    for point in points:
        sgd_error, lookahead_error = point.relative_errors(excess=True)
        assert sgd_error < 0.03, point
        assert lookahead_error < 0.03, point
        assert point.lookahead_simulated < point.sgd_simulated


def test_simulation_is_reproducible_and_depends_on_the_seed() -> None:
    problem = NQMProblem((1.0, 0.5), (1.0, 0.5))
    run = {"k": 5, "alpha": 0.5, "chains": 50, "burn_in_steps": 50, "measured_steps": 50}
    first = simulate_steady_state_loss(problem, 0.5, seed=3, **run)  # type: ignore[arg-type]
    assert first == simulate_steady_state_loss(problem, 0.5, seed=3, **run)  # type: ignore[arg-type]
    assert first != simulate_steady_state_loss(problem, 0.5, seed=4, **run)  # type: ignore[arg-type]


def test_expected_loss_at_the_optimum_is_the_noise_floor() -> None:
    curvature, noise = NQMProblem((2.0, 1.0), (0.5, 3.0)).tensors()
    assert expected_loss(curvature, noise, torch.zeros(2, dtype=torch.float64)) == 0.5 * (1 + 3)


@pytest.mark.parametrize("lr", [0.0, -0.1, 2.0, 5.0])
def test_learning_rates_without_a_steady_state_are_rejected(lr: float) -> None:
    with pytest.raises(ValueError, match="lr must lie in"):
        nqm_grid(NQMProblem.default(), [0.5, lr], chains=10)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"k": 0}, "k must be a positive int"), ({"alpha": 1.5}, r"alpha must be in \[0, 1\]")],
)
def test_lookaheads_hyper_parameters_are_checked_as_lookahead_checks_them(
    change: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        nqm_grid(NQMProblem.default(), [0.5], chains=10, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("curvatures", "noise"), [((), ()), ((1.0,), (1.0, 2.0)), ((-1.0,), (1.0,))]
)
def test_bad_problems_are_rejected(curvatures: tuple[float, ...], noise: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        NQMProblem(curvatures, noise)
