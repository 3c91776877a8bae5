"""NovoGrad and AdaBound against their float64 oracles, and the promises of their docstrings.

The shared promises are parametrised over the registry of tests/optim/cases.py; the promises of
one optimizer only come last.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_lookahead import Lookahead
from torch_lookahead.optim import AdaBound, NovoGrad

from . import reference_optim as ref
from .cases import Case, each_case
from .helpers import (
    assert_close,
    assert_for_loop_and_foreach_agree,
    assert_matches_oracle,
    problems,
    replay,
)


@each_case
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=40, deadline=None)
@given(data=st.data(), decay_after=st.sampled_from([None, 2]))
def test_matches_oracle(
    case: Case, dtype: torch.dtype, data: st.DataObject, decay_after: int | None
) -> None:
    kwargs = data.draw(case.flags)
    problem = data.draw(problems(dtype))
    assert_matches_oracle(
        case.optimizer_class,
        kwargs,
        lambda lrs: case.oracle(problem.params0, problem.grads, lrs, kwargs),
        problem,
        dtype,
        decay_after,
    )


@each_case
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_for_loop_and_foreach_agree(case: Case, data: st.DataObject) -> None:
    kwargs = data.draw(case.flags)
    assert_for_loop_and_foreach_agree(
        case.optimizer_class, kwargs, data.draw(problems(torch.float64))
    )


@each_case
@pytest.mark.parametrize("foreach", [False, True])
def test_parameters_without_gradient_keep_their_own_history(case: Case, foreach: bool) -> None:
    """A layer whose gradient is None on some steps is skipped there: its state (and, for
    AdaBound, its step count, hence bias correction and bounds) starts later, also when it
    shares a multi-tensor block with layers further along."""
    rng = np.random.default_rng(0)
    w0 = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal((3, 2)), rng.standard_normal(4)] for _ in range(6)]
    kwargs = {"lr": 0.05, "weight_decay": 0.01, "foreach": foreach}
    params = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    optimizer = case.optimizer_class(params, **kwargs)
    for step, (g0, g1) in enumerate(grads):
        params[0].grad = torch.from_numpy(g0)
        params[1].grad = torch.from_numpy(g1) if step % 2 else None
        optimizer.step()
    expected = case.oracle([w0[0]], [[g[0]] for g in grads], [0.05] * 6, kwargs)
    expected += case.oracle([w0[1]], [[g[1]] for g in grads[1::2]], [0.05] * 3, kwargs)
    assert_close([p.detach().numpy() for p in params], expected, torch.float64)


# ----------------------------------------------------------------------------- Tensor lr
def final_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = [value for p in params for _, value in sorted(optimizer.state[p].items())]
    return [p.detach() for p in params] + state


@each_case
@pytest.mark.parametrize("lr_dtype", [torch.float64, torch.float32])
@settings(max_examples=15, deadline=None)
@given(data=st.data(), decay_after=st.sampled_from([None, 2]))
def test_tensor_lr_gives_the_results_of_its_value_as_a_float(
    case: Case, lr_dtype: torch.dtype, data: st.DataObject, decay_after: int | None
) -> None:
    """Bit for bit, also while a scheduler changes it (in place), and so the oracle's results.

    The float run is given the values the tensor held at each step (a scheduler computing in
    the tensor's dtype rounds differently from one computing with floats)."""
    kwargs = data.draw(case.flags)
    problem = data.draw(problems(torch.float64))
    lr = torch.tensor(kwargs["lr"], dtype=lr_dtype)
    initial_lr = lr.item()
    _, lrs, tensor_optimizer = replay(
        lambda p: case.optimizer_class(p, **{**kwargs, "lr": lr}),
        problem,
        torch.float64,
        decay_lr_after=decay_after,
    )
    assert tensor_optimizer.param_groups[0]["lr"] is lr  # the scheduler filled it in place
    _, _, float_optimizer = replay(
        lambda p: case.optimizer_class(p, **{**kwargs, "lr": initial_lr}),
        problem,
        torch.float64,
        lrs=lrs,
    )
    tensor_run, float_run = final_tensors(tensor_optimizer), final_tensors(float_optimizer)
    for tensor_result, float_result in zip(tensor_run, float_run, strict=True):
        assert torch.equal(tensor_result, float_result)
    expected = case.oracle(problem.params0, problem.grads, lrs, {**kwargs, "lr": initial_lr})
    assert_close([t.numpy() for t in tensor_run[: len(expected)]], expected, torch.float64)


@each_case
@pytest.mark.parametrize("foreach", [False, True, None])
def test_lr_may_switch_between_tensor_and_float_during_a_run(
    case: Case, foreach: bool | None
) -> None:
    """What a scheduler or a user writes into the group is used, whichever its type."""
    rng = np.random.default_rng(3)
    w0 = [rng.standard_normal((3, 2)), rng.standard_normal(5)]
    grads = [[rng.standard_normal((3, 2)), rng.standard_normal(5)] for _ in range(6)]
    lrs = [0.05, 0.02, 0.03, 0.01, 0.04, 0.0]
    params = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    optimizer = case.optimizer_class(params, lr=0.05, foreach=foreach)
    for step, step_grads in enumerate(grads):
        tensor_lr = torch.tensor(lrs[step], dtype=torch.float64)
        optimizer.param_groups[0]["lr"] = tensor_lr if step % 2 else lrs[step]
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.from_numpy(g)
        optimizer.step()
    expected = case.oracle(w0, grads, lrs, {"lr": 0.05})
    assert_close([p.detach().numpy() for p in params], expected, torch.float64)


@each_case
def test_tensor_lr_is_validated_like_a_float(case: Case) -> None:
    """1-element (of any shape, as torch.optim takes it), finite and in range, in the
    constructor and in add_param_group."""
    params = [torch.nn.Parameter(torch.randn(3))]
    cls = case.optimizer_class
    for foreach in (False, True, None):
        with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element$"):
            cls(params, lr=torch.tensor([0.01, 0.02]), foreach=foreach)
        for bad in (-0.1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match=r"^lr must be in \["):
                cls(params, lr=torch.tensor(bad), foreach=foreach)
    optimizer = cls(params, lr=torch.tensor([0.01]))
    with pytest.raises(ValueError, match=r"^lr must be in \["):
        optimizer.add_param_group(
            {"params": [torch.nn.Parameter(torch.randn(2))], "lr": torch.tensor(-1.0)}
        )
    assert len(optimizer.param_groups) == 1


def test_adabound_base_lr_of_a_tensor_lr_is_a_copy() -> None:
    """A scheduler fills the lr tensor in place: adabound_base_lr (what final_lr is scaled by) must
    not follow it."""
    param = torch.nn.Parameter(torch.randn(3))
    optimizer = AdaBound([param], lr=torch.tensor(0.01))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    param.grad = torch.randn(3)
    optimizer.step()
    scheduler.step()
    group = optimizer.param_groups[0]
    assert group["lr"].item() == pytest.approx(0.005)
    assert group["adabound_base_lr"].item() == pytest.approx(0.01)


@each_case
@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"betas": (0.9,)}, {"eps": float("nan")}])
def test_a_refused_group_is_left_as_it_was_given(case: Case, bad: dict) -> None:
    """add_param_group works on a copy until the group is accepted."""
    optimizer = case.optimizer_class([torch.nn.Parameter(torch.randn(3))], lr=0.01)
    group = {"params": [torch.nn.Parameter(torch.randn(2))], **bad}
    given = dict(group)
    with pytest.raises(ValueError):
        optimizer.add_param_group(group)
    assert group == given
    assert len(optimizer.param_groups) == 1


# ----------------------------------------------------------------------------- NovoGrad only
@pytest.mark.parametrize("foreach", [False, True])
def test_novograd_zero_gradient_on_the_first_step_gives_no_nan(foreach: bool) -> None:
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
def test_novograd_state_is_one_tensor_plus_scalars(amsgrad: bool) -> None:
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


# ----------------------------------------------------------------------------- AdaBound only
@pytest.mark.parametrize("foreach", [False, True])
def test_adabound_group_added_later_uses_its_own_base_lr(foreach: bool) -> None:
    """The official code zips groups with the lrs captured at construction and skips the rest."""
    rng = np.random.default_rng(2)
    w0, w1 = rng.standard_normal(5), rng.standard_normal(3)
    grads = [(rng.standard_normal(5), rng.standard_normal(3)) for _ in range(6)]
    first, second = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(w1))
    optimizer = AdaBound([first], lr=0.01, gamma=0.2, foreach=foreach)
    optimizer.add_param_group({"params": [second], "lr": 0.002})
    assert [g["adabound_base_lr"] for g in optimizer.param_groups] == [0.01, 0.002]
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


def test_adabound_base_lr_survives_a_checkpoint() -> None:
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
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.param_groups[0]["adabound_base_lr"] == 0.01
    assert restored.param_groups[0]["lr"] == 0.001


def test_adabound_explicit_base_lr_and_pickled_groups_of_earlier_versions() -> None:
    """add_param_group keeps an adabound_base_lr given with the group; a pickled optimizer whose
    groups have none (written before it existed) takes their initial_lr, as it computed then."""
    optimizer = AdaBound([torch.nn.Parameter(torch.randn(3))], lr=0.01)
    new_group = {"params": [torch.nn.Parameter(torch.randn(2))], "adabound_base_lr": 0.5}
    optimizer.add_param_group(new_group)
    assert [group["adabound_base_lr"] for group in optimizer.param_groups] == [0.01, 0.5]
    for group in optimizer.param_groups:
        group["initial_lr"] = group.pop("adabound_base_lr") * 2
    restored = pickle.loads(pickle.dumps(optimizer))
    assert [group["adabound_base_lr"] for group in restored.param_groups] == [0.02, 1.0]


def test_adabound_gamma0_is_not_a_schedules_own_base_lr() -> None:
    """Hand-written schedules keep the lr a stage starts from in group["base_lr"]: writing it
    leaves gamma_0, the lr final_lr is scaled by, at the lr the group was created with."""
    rng = np.random.default_rng(3)
    w0, grads = rng.standard_normal(6), [rng.standard_normal(6) for _ in range(4)]
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = AdaBound([param], lr=0.1, final_lr=0.1, gamma=0.5)
    for step, grad in enumerate(grads):
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"] = 0.1 if step < 2 else 0.01  # a stage restart
        param.grad = torch.from_numpy(grad)
        optimizer.step()
    assert optimizer.param_groups[0]["adabound_base_lr"] == 0.1
    expected = ref.adabound(w0, grads, [0.1, 0.1, 0.01, 0.01], 0.1, final_lr=0.1, gamma=0.5)
    assert_close([param.detach().numpy()], [expected], torch.float64)


@pytest.mark.parametrize("wrapped", [False, True])
def test_adabound_refuses_a_checkpoint_with_steps_counted_per_group(wrapped: bool) -> None:
    """pytorch_optimizer's AdaBound counts steps in the group, not per parameter: its state
    cannot be continued, and load_state_dict says so and changes nothing, also under
    Lookahead (a converted pytorch_optimizer Lookahead checkpoint)."""
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]

    def make(lr: float) -> torch.optim.Optimizer:
        inner = AdaBound(params, lr=lr)
        return Lookahead(inner, k=2) if wrapped else inner

    optimizer = make(0.01)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    saved = optimizer.state_dict()
    other = {
        "state": {
            i: {k: v for k, v in s.items() if k != "step"} for i, s in saved["state"].items()
        },
        "param_groups": [{**group, "step": 1} for group in saved["param_groups"]],
    }
    fresh = make(0.02)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=r"no per-parameter 'step'.*another AdaBound"):
        fresh.load_state_dict(other)
    assert fresh.state_dict() == before


def test_adabound_refuses_a_pytorch_optimizer_checkpoint() -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    theirs = pytorch_optimizer.AdaBound(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn(4)
    theirs.step()
    with pytest.raises(ValueError, match=r"no per-parameter 'step'"):
        AdaBound(params, lr=1e-3).load_state_dict(theirs.state_dict())


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.1),
    # Rewrites the groups' lr and initial_lr to max_lr / div_factor = 0.004 when it is created
    # (betas stay fixed, as the oracle has them).
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=12, cycle_momentum=False
    ),
}


def scheduled_run(
    make: Callable[[list[torch.nn.Parameter]], AdaBound],
    scheduler_name: str,
    grads: list[list[np.ndarray]],
    params: list[torch.nn.Parameter],
    start: int = 0,
    resume: tuple[dict, dict] | None = None,
) -> tuple[AdaBound, torch.optim.lr_scheduler.LRScheduler, list[float]]:
    """Steps ``start, ...`` of an AdaBound run under a scheduler (resumed from ``resume``, the
    optimizer's and the scheduler's state dicts); returns both and the lr of each step."""
    optimizer = make(params)
    scheduler = SCHEDULERS[scheduler_name](optimizer)
    if resume is not None:
        optimizer.load_state_dict(resume[0])
        scheduler.load_state_dict(resume[1])
    lrs = []
    for step_grads in grads[start:]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.from_numpy(g)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler, lrs


def adabound_problem(seed: int, steps: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    w0 = [rng.standard_normal(6), rng.standard_normal((2, 3))]
    return w0, [[rng.standard_normal(w.shape) for w in w0] for _ in range(steps)]


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
@pytest.mark.parametrize("foreach", [False, True])
def test_adabound_final_lr_is_scaled_by_the_constructor_lr_under_any_scheduler(
    scheduler_name: str, foreach: bool
) -> None:
    """gamma_0 is the lr the optimizer was built with (the official code's base_lrs), also
    when the scheduler rewrites the groups' initial_lr."""
    w0, grads = adabound_problem(5, 12)
    params = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    kwargs = {"lr": 0.1, "final_lr": 0.05, "gamma": 0.5, "foreach": foreach}
    _, _, lrs = scheduled_run(lambda p: AdaBound(p, **kwargs), scheduler_name, grads, params)
    expected = [
        ref.adabound(w, [g[layer] for g in grads], lrs, 0.1, final_lr=0.05, gamma=0.5)
        for layer, w in enumerate(w0)
    ]
    assert_close([p.detach().numpy() for p in params], expected, torch.float64)


@pytest.mark.parametrize(
    ("scheduler_name", "without_initial_lr"),
    [("StepLR", True), ("StepLR", False), ("OneCycleLR", False)],  # OneCycleLR needs it
)
def test_adabound_resumes_an_official_checkpoint_as_the_uninterrupted_run(
    scheduler_name: str, without_initial_lr: bool
) -> None:
    """The official code and torch-optimizer save neither base_lrs nor our flags, and an int
    step; rebuilt with the same arguments, they continue with base_lrs = the constructor's lr,
    whatever the lr (decayed) or initial_lr (a scheduler's, if one was attached from the start;
    rewritten by OneCycleLR) saved in the groups."""
    w0, grads = adabound_problem(6, 12)
    kwargs = {"lr": 0.1, "final_lr": 0.01, "gamma": 0.5}
    whole = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    _, _, whole_lrs = scheduled_run(lambda p: AdaBound(p, **kwargs), scheduler_name, grads, whole)
    first = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    optimizer, scheduler, _ = scheduled_run(
        lambda p: AdaBound(p, **kwargs), scheduler_name, grads[:7], first
    )
    ours = optimizer.state_dict()
    own_keys = {"maximize", "decoupled_weight_decay", "foreach", "differentiable"}
    own_keys.add("adabound_base_lr")
    if without_initial_lr:
        own_keys.add("initial_lr")
    official = {
        "state": {i: {**s, "step": int(s["step"].item())} for i, s in ours["state"].items()},
        "param_groups": [
            {key: value for key, value in group.items() if key not in own_keys}
            for group in ours["param_groups"]
        ],
    }
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    scheduled_run(
        lambda p: AdaBound(p, **kwargs),
        scheduler_name,
        grads,
        resumed,
        start=7,
        resume=(official, scheduler.state_dict()),
    )
    for whole_param, resumed_param in zip(whole, resumed, strict=True):
        assert torch.equal(whole_param, resumed_param)
    expected = [
        ref.adabound(w, [g[layer] for g in grads], whole_lrs, 0.1, final_lr=0.01, gamma=0.5)
        for layer, w in enumerate(w0)
    ]
    assert_close([p.detach().numpy() for p in resumed], expected, torch.float64)


@pytest.mark.parametrize("gamma", [1e-17, 5e-324])
@pytest.mark.parametrize("foreach", [False, True])
def test_adabound_tiny_gamma_has_a_lower_bound_of_zero(foreach: bool, gamma: float) -> None:
    """A tiny gamma is allowed: gamma * t + 1 rounds to 1, so eta_l = 0 and the clip has no
    lower limit (and, for the smallest float, eta_u = inf); the steps follow the rule (no
    division by eta_l)."""
    w0, grads = adabound_problem(7, 4)
    params = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    optimizer = AdaBound(params, lr=0.01, gamma=gamma, foreach=foreach)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.from_numpy(g)
        optimizer.step()
    expected = [
        ref.adabound(w, [g[layer] for g in grads], [0.01] * 4, 0.01, gamma=gamma)
        for layer, w in enumerate(w0)
    ]
    assert_close([p.detach().numpy() for p in params], expected, torch.float64)
    assert [optimizer.state[p]["step"].item() for p in params] == [4, 4]


@pytest.mark.parametrize("reshaped", [[0], [0, 1]])
@pytest.mark.parametrize("mode", [False, True, "compiled"])
def test_adabound_takes_a_step_saved_as_a_1_element_1d_tensor(
    reshaped: list[int], mode: bool | str
) -> None:
    """As torch's Adam does, on every path (foreach False, True, compiled), also with some
    steps 0-dim and some of shape [1], and for a 0-dim parameter. (float32: torch.compile
    drops in-place updates of 0-dim float64 CPU tensors, see ``_functional.assign_``.)"""
    rng = np.random.default_rng(8)
    shapes = [(), (2, 3)]
    w0 = [rng.standard_normal(s).astype(np.float32).astype(np.float64) for s in shapes]
    grads = [
        [rng.standard_normal(s).astype(np.float32).astype(np.float64) for s in shapes]
        for _ in range(3)
    ]
    params = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float32)) for w in w0]
    foreach = mode is True
    optimizer = AdaBound(params, lr=0.01, gamma=0.5, foreach=foreach)
    for p, g in zip(params, grads[0], strict=True):
        p.grad = torch.from_numpy(g).float()
    optimizer.step()
    saved = optimizer.state_dict()
    for index in reshaped:
        saved["state"][index]["step"] = saved["state"][index]["step"].reshape(1)
    resumed = AdaBound(params, lr=0.01, gamma=0.5, foreach=foreach)
    resumed.load_state_dict(saved)
    torch._dynamo.reset()
    step = torch.compile(resumed.step, backend="aot_eager") if mode == "compiled" else resumed.step
    for step_grads in grads[1:]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.from_numpy(g).float()
        step()
    expected = [
        ref.adabound(w, [g[layer] for g in grads], [0.01] * 3, 0.01, gamma=0.5)
        for layer, w in enumerate(w0)
    ]
    assert_close([p.detach().double().numpy() for p in params], expected, torch.float32)


@pytest.mark.parametrize("foreach", [False, True, None])
def test_adabound_zero_lr_or_final_lr_freezes_the_weights_but_not_the_moments(
    foreach: bool | None,
) -> None:
    """Both bounds are 0 there. Two parameters, so that foreach=True runs on the flat state."""
    rng = np.random.default_rng(4)
    w0 = [rng.standard_normal(6), rng.standard_normal((2, 3))]
    grads = [[rng.standard_normal(6), rng.standard_normal((2, 3))] for _ in range(3)]
    params = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    optimizer = AdaBound(params, lr=0.1, final_lr=0.0, foreach=foreach)
    for step, step_grads in enumerate(grads):
        if step == 1:
            optimizer.param_groups[0].update(lr=0.0, final_lr=0.1)
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.from_numpy(g)
        optimizer.step()
        for p, w in zip(params, w0, strict=True):
            assert torch.equal(p.detach(), torch.from_numpy(w))
    for p, layer in zip(params, range(2), strict=True):
        state = optimizer.state[p]
        assert state["step"].item() == 3
        # The moments went on: m_3 of the gradients seen.
        expected_m = np.zeros_like(w0[layer])
        for step_grads in grads:
            expected_m = 0.9 * expected_m + 0.1 * step_grads[layer]
        np.testing.assert_allclose(state["exp_avg"].numpy(), expected_m, rtol=1e-12, atol=0)
