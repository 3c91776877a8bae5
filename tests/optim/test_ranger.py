"""Ranger = Lookahead over torch.optim.RAdam, against the float64 oracles (Zhang et al. 2019, Algorithm 1; torch.optim.RAdam's documented rule)."""

from __future__ import annotations

import collections
import io
import pickle
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_lookahead.lookahead import Lookahead
from torch_lookahead.optim import RAdam, Ranger

from . import reference_optim as ref
from .helpers import assert_close, problems, replay


def test_radam_is_torch_radam() -> None:
    assert RAdam is torch.optim.RAdam


def test_ranger_is_an_optimizer_and_a_lookahead_built_from_params() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = Ranger(model.parameters(), lr=1e-2, k=4, alpha=0.4)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert isinstance(optimizer, Lookahead)
    assert isinstance(optimizer.optimizer, torch.optim.RAdam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-2, (0.95, 0.999), 1e-5)
    assert (group["lookahead_k"], group["lookahead_alpha"]) == (4, 0.4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    k=st.integers(1, 4),
    alpha=st.sampled_from([0.3, 0.5, 1.0]),
    weight_decay=st.sampled_from([0.0, 0.1]),
    decoupled=st.booleans(),
)
def test_matches_lookahead_over_radam_oracle(
    data, k, alpha, weight_decay, decoupled, dtype
) -> None:
    problem = data.draw(problems(dtype, max_steps=12))
    kwargs = {"lr": 0.05, "weight_decay": weight_decay, "decoupled_weight_decay": decoupled}
    actual, _, _ = replay(lambda p: Ranger(p, k=k, alpha=alpha, **kwargs), problem, dtype)
    inner = ref.radam_step(
        lr=0.05, b1=0.95, b2=0.999, eps=1e-5, wd=weight_decay, decoupled=decoupled
    )
    expected = [
        ref.lookahead(x0, [step[layer] for step in problem.grads], inner, k, alpha)[0]
        for layer, x0 in enumerate(problem.params0)
    ]
    assert_close(actual, expected, dtype, f"Ranger k={k} alpha={alpha} {kwargs}")


def test_checkpoint_round_trip_resumes_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=generator)) for _ in range(2)]
    optimizer = Ranger(params, lr=1e-2, k=3, pullback_momentum="pullback")

    def step(run_params: list[torch.nn.Parameter], run_optimizer: Ranger, index: int) -> None:
        grad_generator = torch.Generator().manual_seed(100 + index)
        for p in run_params:
            p.grad = torch.randn(p.shape, generator=grad_generator)
        run_optimizer.step()

    for index in range(4):  # one sync done, one inner step into the next period
        step(params, optimizer, index)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = Ranger(resumed_params, lr=1e-2, k=3, pullback_momentum="pullback")
    resumed.load_state_dict(torch.load(buffer))
    for index in range(4, 9):
        step(params, optimizer, index)
        step(resumed_params, resumed, index)
    for original, copy_ in zip(params, resumed_params, strict=True):
        assert torch.equal(original, copy_)
        for key, value in optimizer.state[original].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed.state[copy_][key]))
    restored = pickle.loads(pickle.dumps(optimizer))
    assert isinstance(restored, Ranger) and restored.param_groups[0]["lookahead_k"] == 3


def test_ranger_works_where_an_optimizer_class_is_expected() -> None:
    """APIs that take an optimizer class build it as cls(params, **kwargs)."""
    model = torch.nn.Linear(2, 1)

    def build(
        optimizer_class: type[torch.optim.Optimizer], **kwargs: float
    ) -> torch.optim.Optimizer:
        return optimizer_class(model.parameters(), **kwargs)

    optimizer = build(Ranger, lr=1e-3)
    model(torch.ones(1, 2)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"lr": INF}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"lr": torch.tensor(NAN)}, ValueError, "lr"),
        ({"eps": INF}, ValueError, "eps"),
        ({"weight_decay": INF}, ValueError, "weight_decay"),
        ({"betas": (0.9, 0.99, 0.5)}, ValueError, "betas"),
        ({"betas": (0.9, NAN)}, ValueError, "betas[1]"),
        ({"foreach": "yes"}, ValueError, "foreach"),
    ],
)
def test_invalid_hyperparameters_are_rejected_by_name(kwargs, error, argument) -> None:
    """The validation of NovoGrad and AdaBound, which torch.optim.RAdam does not do."""
    with pytest.raises(error, match="^" + re.escape(argument)):
        Ranger([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_numpy_hyperparameters_are_python_numbers_for_radam() -> None:
    optimizer = Ranger(
        [torch.nn.Parameter(torch.zeros(2))],
        lr=np.float32(0.5),
        betas=(np.float32(0.9), 0.99),
        eps=np.array(1e-6),
        weight_decay=np.float64(0.1),
    )
    group = optimizer.param_groups[0]
    values = (group["lr"], *group["betas"], group["eps"], group["weight_decay"])
    assert values == (float(np.float32(0.5)), float(np.float32(0.9)), 0.99, 1e-6, 0.1)
    assert all(type(value) is float for value in values)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"betas": (torch.tensor(0.95), torch.tensor(0.999))},
        {"eps": torch.tensor(1e-5)},
        {"weight_decay": torch.tensor(0.1)},
        {"lr": torch.tensor(1e-2)},
        {"foreach": np.bool_(True)},
        {"foreach": np.bool_(False), "capturable": False, "differentiable": False},
        {"decoupled_weight_decay": True, "weight_decay": 0.1},
        {"betas": collections.UserList([0.95, 0.999])},  # as a config's list (Hydra's ListConfig)
        {"betas": torch.tensor([0.95, 0.999])},
        {"betas": np.array([0.95, 0.999])},
    ],
    ids=[
        "tensor-betas", "tensor-eps", "tensor-wd", "tensor-lr", "np-bool", "flags", "decoupled",
        "sequence-betas", "tensor-pair-betas", "array-betas",
    ],
)  # fmt: skip
def test_what_radam_takes_ranger_takes_and_steps_as_radam(kwargs) -> None:
    """Ranger refuses only what RAdam would misuse: what RAdam takes, it takes and steps with."""
    runs = []
    for make in (
        lambda ps: Lookahead(RAdam(ps, **{"betas": (0.95, 0.999), "eps": 1e-5, **kwargs}), k=6),
        lambda ps: Ranger(ps, **kwargs),
    ):
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        optimizer = make(params)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, step + 1.0)
            optimizer.step()
        runs.append(params)
    for p, q in zip(*runs, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("values", "error", "argument"),
    [
        ({"lr": INF}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"eps": -1.0}, ValueError, "eps"),
        ({"eps": torch.tensor(NAN)}, ValueError, "eps"),
        ({"weight_decay": torch.ones(2)}, ValueError, "Tensor weight_decay"),
        ({"betas": (0.9, 0.9, 0.9)}, ValueError, "betas"),
        ({"betas": (torch.tensor(1.0), 0.99)}, ValueError, "betas[0]"),
        ({"foreach": "yes"}, ValueError, "foreach"),
    ],
)
@pytest.mark.parametrize("path", ["constructor", "group", "add_param_group"])
def test_every_group_is_validated(values, error, argument, path: str) -> None:
    """The constructor's arguments, groups given as dicts and groups added later alike."""
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(error, match="^" + re.escape(argument)):
        if path == "constructor":
            Ranger([param], **values)
        elif path == "group":
            Ranger([{"params": [param], **values}])
        else:
            Ranger([torch.nn.Parameter(torch.zeros(1))]).add_param_group(
                {"params": [param], **values}
            )


@pytest.mark.parametrize("path", ["group", "add_param_group"])
def test_numpy_values_of_groups_are_python_numbers(path: str) -> None:
    """A group's numpy numbers are stored as Python numbers: the checkpoint loads with
    torch.load(weights_only=True)."""
    param = torch.nn.Parameter(torch.zeros(2))
    group = {"params": [param], "lr": np.float64(1e-3), "betas": (np.float32(0.9), 0.99)}
    group["foreach"] = np.bool_(False)
    if path == "group":
        optimizer = Ranger([group])
    else:
        optimizer = Ranger([torch.nn.Parameter(torch.zeros(1))])
        optimizer.add_param_group(group)
    saved = optimizer.param_groups[-1]
    assert (type(saved["lr"]), type(saved["betas"][0]), saved["foreach"]) == (float, float, False)
    param.grad = torch.ones(2)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["param_groups"][-1]["lr"] == 1e-3
