"""AdaBound against its float64 oracle (algorithms.md 4.3), and its promises."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_lookahead.optim import AdaBound

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
        "lr": st.sampled_from([1e-3, 0.05]),
        "betas": st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
        "final_lr": st.sampled_from([0.1, 0.01]),
        # gamma=0.5 closes the bounds within a few steps, so the clipping is exercised.
        "gamma": st.sampled_from([1e-3, 0.5]),
        "weight_decay": st.sampled_from([0.0, 0.1]),
        "amsbound": st.booleans(),
        "decoupled_weight_decay": st.booleans(),
        "maximize": st.booleans(),
        "foreach": st.booleans(),
    }
)


def oracle(problem: Problem, lrs: list[float], kwargs: dict) -> list[np.ndarray]:
    sign = -1.0 if kwargs["maximize"] else 1.0
    return [
        ref.adabound(
            x0,
            [sign * step[layer] for step in problem.grads],
            lrs,
            base_lr=kwargs["lr"],
            final_lr=kwargs["final_lr"],
            b1=kwargs["betas"][0],
            b2=kwargs["betas"][1],
            gamma=kwargs["gamma"],
            wd=kwargs["weight_decay"],
            wd_mode="adamw" if kwargs["decoupled_weight_decay"] else "l2",
            amsbound=kwargs["amsbound"],
        )
        for layer, x0 in enumerate(problem.params0)
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=40, deadline=None)
@given(data=st.data(), kwargs=flags, decay_after=st.sampled_from([None, 2]))
def test_matches_oracle(data: st.DataObject, kwargs: dict, decay_after: int | None, dtype) -> None:
    problem = data.draw(problems(dtype))
    assert_matches_oracle(
        AdaBound, kwargs, lambda lrs: oracle(problem, lrs, kwargs), problem, dtype, decay_after
    )


@settings(max_examples=20, deadline=None)
@given(data=st.data(), kwargs=flags)
def test_for_loop_and_foreach_agree(data: st.DataObject, kwargs: dict) -> None:
    assert_for_loop_and_foreach_agree(AdaBound, kwargs, data.draw(problems(torch.float64)))


@pytest.mark.parametrize("foreach", [False, True])
def test_parameters_at_different_steps_in_one_group(foreach: bool) -> None:
    """A parameter without gradient on some steps has its own step count (bias correction and
    bounds), also when it shares a multi-tensor block with parameters further along."""
    rng = np.random.default_rng(1)
    w0 = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal((3, 2)), rng.standard_normal(4)] for _ in range(6)]
    params = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    optimizer = AdaBound(params, lr=0.01, gamma=0.3, foreach=foreach)
    for step, (g0, g1) in enumerate(grads):
        params[0].grad = torch.from_numpy(g0)
        params[1].grad = torch.from_numpy(g1) if step % 2 else None
        optimizer.step()
    expected = [
        ref.adabound(w0[0], [g[0] for g in grads], [0.01] * 6, 0.01, gamma=0.3),
        ref.adabound(w0[1], [g[1] for g in grads[1::2]], [0.01] * 3, 0.01, gamma=0.3),
    ]
    assert_close([p.detach().numpy() for p in params], expected, torch.float64)


@pytest.mark.parametrize("foreach", [False, True])
def test_group_added_later_uses_its_own_initial_lr(foreach: bool) -> None:
    """The official code zips groups with the lrs captured at construction and skips the rest."""
    rng = np.random.default_rng(2)
    w0, w1 = rng.standard_normal(5), rng.standard_normal(3)
    grads = [(rng.standard_normal(5), rng.standard_normal(3)) for _ in range(6)]
    first, second = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(w1))
    optimizer = AdaBound([first], lr=0.01, gamma=0.2, foreach=foreach)
    optimizer.add_param_group({"params": [second], "lr": 0.002})
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.01, 0.002]
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    for g0, g1 in grads:
        first.grad, second.grad = torch.from_numpy(g0), torch.from_numpy(g1)
        optimizer.step()
        scheduler.step()
    lrs_first = [0.01] * 3 + [0.005] * 3
    lrs_second = [0.002] * 3 + [0.001] * 3
    expected_first = ref.adabound(w0, [g for g, _ in grads], lrs_first, 0.01, gamma=0.2)
    expected_second = ref.adabound(w1, [g for _, g in grads], lrs_second, 0.002, gamma=0.2)
    assert_close(
        [first.detach().numpy(), second.detach().numpy()],
        [expected_first, expected_second],
        torch.float64,
    )


def test_initial_lr_survives_a_checkpoint() -> None:
    """After a scheduler has lowered lr, a restored optimizer keeps scaling final_lr by the lr
    the run started with, not by the lr it was rebuilt with."""
    param = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    optimizer = AdaBound([param], lr=0.01)
    for group in optimizer.param_groups:
        group["lr"] = 0.001  # what a scheduler would have done
    param.grad = torch.randn_like(param)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored = AdaBound([torch.nn.Parameter(param.detach().clone())], lr=0.001)
    restored.load_state_dict(torch.load(buffer))
    assert restored.param_groups[0]["initial_lr"] == 0.01
    assert restored.param_groups[0]["lr"] == 0.001


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_lr_or_final_lr_freezes_the_weights_but_not_the_moments(foreach: bool) -> None:
    param = torch.nn.Parameter(torch.randn(6))
    before = param.detach().clone()
    optimizer = AdaBound([param], lr=0.1, final_lr=0.0, foreach=foreach)
    param.grad = torch.randn_like(param)
    optimizer.step()
    optimizer.param_groups[0].update(lr=0.0, final_lr=0.1)
    optimizer.step()
    assert torch.equal(param.detach(), before)
    assert optimizer.state[param]["step"].item() == 2
    assert optimizer.state[param]["exp_avg"].abs().sum() > 0
