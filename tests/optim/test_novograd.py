"""NovoGrad against its float64 oracle (algorithms.md 3.3), and its promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_lookahead.optim import NovoGrad

from . import reference_optim as ref
from .helpers import (
    Problem,
    assert_close,
    assert_for_loop_and_foreach_agree,
    assert_matches_oracle,
    problems,
)

flags = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([1e-3, 0.05, 0.5]),
        "betas": st.sampled_from([(0.95, 0.98), (0.9, 0.5), (0.0, 0.0)]),
        "weight_decay": st.sampled_from([0.0, 0.1]),
        "grad_averaging": st.booleans(),
        "amsgrad": st.booleans(),
        "decoupled_weight_decay": st.booleans(),
        "maximize": st.booleans(),
        "foreach": st.booleans(),
    }
)


def oracle(problem: Problem, lrs: list[float], kwargs: dict) -> list[np.ndarray]:
    sign = -1.0 if kwargs["maximize"] else 1.0
    return ref.novograd(
        problem.params0,
        [[sign * g for g in step] for step in problem.grads],
        lrs,
        b1=kwargs["betas"][0],
        b2=kwargs["betas"][1],
        wd=kwargs["weight_decay"],
        grad_averaging=kwargs["grad_averaging"],
        amsgrad=kwargs["amsgrad"],
        decoupled=kwargs["decoupled_weight_decay"],
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=40, deadline=None)
@given(data=st.data(), kwargs=flags, decay_after=st.sampled_from([None, 2]))
def test_matches_oracle(data: st.DataObject, kwargs: dict, decay_after: int | None, dtype) -> None:
    problem = data.draw(problems(dtype))
    assert_matches_oracle(
        NovoGrad, kwargs, lambda lrs: oracle(problem, lrs, kwargs), problem, dtype, decay_after
    )


@settings(max_examples=20, deadline=None)
@given(data=st.data(), kwargs=flags)
def test_for_loop_and_foreach_agree(data: st.DataObject, kwargs: dict) -> None:
    assert_for_loop_and_foreach_agree(NovoGrad, kwargs, data.draw(problems(torch.float64)))


def test_parameters_without_gradient_keep_their_own_history() -> None:
    """A layer whose gradient is None on some steps is skipped there (its v starts later)."""
    rng = np.random.default_rng(0)
    w0 = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal((3, 2)), rng.standard_normal(4)] for _ in range(6)]
    for foreach in (False, True):
        params = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
        optimizer = NovoGrad(params, lr=0.1, weight_decay=0.01, foreach=foreach)
        for step, (g0, g1) in enumerate(grads):
            params[0].grad = torch.from_numpy(g0)
            params[1].grad = torch.from_numpy(g1) if step % 2 else None
            optimizer.step()
        expected_0 = ref.novograd([w0[0]], [[g[0]] for g in grads], [0.1] * 6, wd=0.01)
        expected_1 = ref.novograd([w0[1]], [[g[1]] for g in grads[1::2]], [0.1] * 3, wd=0.01)
        assert_close([p.detach().numpy() for p in params], expected_0 + expected_1, torch.float64)


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_gradient_on_the_first_step_gives_no_nan(foreach: bool) -> None:
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    optimizer = NovoGrad(params, lr=0.1, weight_decay=0.1, foreach=foreach)
    for grad_value in (0.0, 0.0, 1.0):
        for p in params:
            p.grad = torch.full_like(p, grad_value)
        optimizer.step()
        assert all(torch.isfinite(p).all() for p in params)
    expected = ref.novograd(
        [np.ones(3), np.ones((2, 2))],
        [[np.full(3, v), np.full((2, 2), v)] for v in (0.0, 0.0, 1.0)],
        [0.1] * 3,
        wd=0.1,
    )
    assert_close([p.detach().double().numpy() for p in params], expected, torch.float32)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_is_one_tensor_plus_scalars(amsgrad: bool) -> None:
    """Memory: a tensor the size of the parameter, and one scalar per layer (two with amsgrad)."""
    params = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(7))]
    optimizer = NovoGrad(params, amsgrad=amsgrad)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    for p in params:
        state = optimizer.state[p]
        expected_keys = {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())
        assert set(state) == expected_keys
        assert state["exp_avg"].shape == p.shape
        assert state["exp_avg_sq"].dim() == 0
        assert sum(t.numel() for t in state.values()) == p.numel() + len(expected_keys) - 1
