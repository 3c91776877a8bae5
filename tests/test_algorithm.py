"""Lookahead against paper Algorithm 1 (tests/reference.py) and its documented properties."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from tests.reference import numpy_lookahead_sgd, quadratic_problem, reference_lookahead
from torch_lookahead import Lookahead

INNER: dict[str, Callable[[list[Tensor]], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd_nesterov": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
}


def run_wrapper(x0, grad_fn, n_steps, make_inner, k, alpha, **kwargs):
    params = [torch.nn.Parameter(x.detach().clone()) for x in x0]
    opt = Lookahead(make_inner(params), k=k, alpha=alpha, **kwargs)
    for _ in range(n_steps):
        for p, g in zip(params, grad_fn([p.detach() for p in params]), strict=True):
            p.grad = g.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("name", sorted(INNER))
def test_matches_algorithm_1_for_each_inner_optimizer(name: str) -> None:
    x0, grad_fn = quadratic_problem(seed=3, shapes=[(5,), (3, 4), ()])
    k, alpha, n_steps = 4, 0.6, 23  # ends mid-cycle
    params, opt = run_wrapper(x0, grad_fn, n_steps, INNER[name], k, alpha)
    fast, slow = reference_lookahead(x0, grad_fn, n_steps, INNER[name], k, alpha)
    for p, f, s in zip(params, fast, slow, strict=True):
        torch.testing.assert_close(p.detach(), f, rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["lookahead_slow"], s, rtol=0, atol=1e-12)


def test_matches_algorithm_1_with_lbfgs_and_closure() -> None:
    x0, grad_fn = quadratic_problem(seed=5, shapes=[(4,), (2, 3)])
    k, alpha, n_steps = 3, 0.5, 7

    def make_closure(params):
        def closure():
            for p, g in zip(params, grad_fn([q.detach() for q in params]), strict=True):
                p.grad = g.clone()
            return sum(float((g * g).sum()) for g in grad_fn([q.detach() for q in params]))

        return closure

    params = [torch.nn.Parameter(x.clone()) for x in x0]
    opt = Lookahead(torch.optim.LBFGS(params, lr=0.5, max_iter=4), k=k, alpha=alpha)
    calls = [0]
    user_closure = make_closure(params)

    def counting_closure():
        calls[0] += 1
        return user_closure()

    for _ in range(n_steps):
        loss = opt.step(counting_closure)
        assert isinstance(loss, float)

    ref = [x.clone().requires_grad_(True) for x in x0]
    inner = torch.optim.LBFGS(ref, lr=0.5, max_iter=4)
    phi = [x.clone() for x in x0]
    ref_closure = make_closure(ref)
    for t in range(1, n_steps + 1):
        inner.step(ref_closure)
        if t % k == 0:
            with torch.no_grad():
                for i, p in enumerate(ref):
                    phi[i] = phi[i] + alpha * (p - phi[i])
                    p.copy_(phi[i])
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=1e-12)
    assert calls[0] >= n_steps  # LBFGS evaluates the closure at least once per step


def test_paper_trajectory_scalar() -> None:
    """A trajectory worked out by hand: theta0=0, SGD lr=1, gradient 1, k=3, alpha=0.5."""
    p = torch.nn.Parameter(torch.zeros(()))
    opt = Lookahead(torch.optim.SGD([p], lr=1.0), k=3, alpha=0.5)
    seen = []
    for _ in range(9):
        p.grad = torch.ones(())
        opt.step()
        seen.append(p.item())
    assert seen == [-1, -2, -1.5, -2.5, -3.5, -3, -4, -5, -4.5]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 7),
    alpha=st.floats(0.0, 1.0),
    lr=st.floats(0.01, 0.5),
    n_steps=st.integers(1, 30),
    size=st.integers(1, 6),
)
def test_sgd_matches_numpy_oracle(seed, k, alpha, lr, n_steps, size) -> None:
    rng = np.random.default_rng(seed)
    curvature = rng.uniform(0.1, 1.5, size)
    x0 = rng.normal(size=size)

    def grads(x):
        return curvature * x

    theta, phi = numpy_lookahead_sgd(x0, grads, n_steps, lr, k, alpha)
    p = torch.nn.Parameter(torch.tensor(x0))
    opt = Lookahead(torch.optim.SGD([p], lr=lr), k=k, alpha=alpha)
    c = torch.tensor(curvature)
    for _ in range(n_steps):
        p.grad = c * p.detach()
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), theta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(opt.state[p]["lookahead_slow"].numpy(), phi, rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 6), n_steps=st.integers(1, 25))
def test_alpha_one_is_the_inner_optimizer(seed, k, n_steps) -> None:
    x0, grad_fn = quadratic_problem(seed, [(3,), (2, 2)])
    params, _ = run_wrapper(x0, grad_fn, n_steps, INNER["adamw"], k, 1.0)
    plain = [torch.nn.Parameter(x.clone()) for x in x0]
    inner = INNER["adamw"](plain)
    for _ in range(n_steps):
        for p, g in zip(plain, grad_fn([q.detach() for q in plain]), strict=True):
            p.grad = g.clone()
        inner.step()
    for a, b in zip(params, plain, strict=True):
        assert torch.equal(a.detach(), b.detach())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(0.05, 1.0), n_steps=st.integers(1, 25))
def test_k_one_with_sgd_is_sgd_with_scaled_lr(seed, alpha, n_steps) -> None:
    x0, grad_fn = quadratic_problem(seed, [(4,)])
    params, _ = run_wrapper(x0, grad_fn, n_steps, lambda p: torch.optim.SGD(p, lr=0.3), 1, alpha)
    plain = [torch.nn.Parameter(x.clone()) for x in x0]
    inner = torch.optim.SGD(plain, lr=0.3 * alpha)
    for _ in range(n_steps):
        for p, g in zip(plain, grad_fn([q.detach() for q in plain]), strict=True):
            p.grad = g.clone()
        inner.step()
    torch.testing.assert_close(params[0].detach(), plain[0].detach(), rtol=0, atol=1e-12)


def test_alpha_zero_leaves_the_weights_at_the_slow_copy() -> None:
    x0, grad_fn = quadratic_problem(1, [(5,)])
    params, opt = run_wrapper(x0, grad_fn, 15, INNER["sgd_momentum"], 5, 0.0)
    assert torch.equal(params[0].detach(), x0[0])
    assert torch.equal(opt.state[params[0]]["lookahead_slow"], x0[0])


DTYPES = [torch.float64, torch.float32, torch.bfloat16]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 6),
    alpha=st.floats(0.0, 1.0),
    n_steps=st.integers(1, 20),
    shapes=st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=4),
    dtype=st.sampled_from(DTYPES),
)
def test_sync_invariants(seed, k, alpha, n_steps, shapes, dtype) -> None:
    """fast == slow right after each sync; slow constant between syncs; syncs after k, 2k, ..."""
    x0, grad_fn = quadratic_problem(seed, shapes, dtype=dtype)
    params = [torch.nn.Parameter(x.clone()) for x in x0]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1, momentum=0.5), k=k, alpha=alpha)
    previous_slow: list[Tensor] | None = None
    for t in range(1, n_steps + 1):
        for p, g in zip(params, grad_fn([q.detach() for q in params]), strict=True):
            p.grad = g
        before = [p.detach().clone() for p in params]
        opt.step()
        slow = [opt.state[p]["lookahead_slow"].clone() for p in params]
        if t == 1:
            for s, b in zip(slow, before, strict=True):
                assert torch.equal(s, b) or t % k == 0  # phi_0 = theta_0 (unless it synced already)
        if t % k == 0:
            for p, s in zip(params, slow, strict=True):
                assert torch.equal(p.detach(), s)
            assert opt.param_groups[0]["lookahead_step"] == 0
        else:
            if previous_slow is not None:
                for s, prev in zip(slow, previous_slow, strict=True):
                    assert torch.equal(s, prev)
            assert opt.param_groups[0]["lookahead_step"] == t % k
        previous_slow = slow


def test_slow_weights_are_captured_at_the_first_step_not_at_construction() -> None:
    model = torch.nn.Linear(3, 2)
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=2, alpha=0.5)
    assert len(opt.state) == 0
    pretrained = {name: torch.randn_like(t) for name, t in model.state_dict().items()}
    model.load_state_dict(pretrained)  # weights loaded after the optimizer was built
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert torch.equal(opt.state[model.weight]["lookahead_slow"], pretrained["weight"])


def test_every_parameter_with_a_slow_copy_is_synced_even_without_grad() -> None:
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = Lookahead(torch.optim.SGD([a, b], lr=1.0), k=2, alpha=0.5)
    a.grad = torch.ones(2)
    b.grad = torch.ones(2)
    opt.step()  # both have slow copies (zeros), both at -1
    opt.zero_grad()
    a.grad = torch.ones(2)  # b has no grad in the k-th step
    opt.step()
    assert torch.equal(a.detach(), torch.full((2,), -1.0))  # (0 + -2)/2
    assert torch.equal(b.detach(), torch.full((2,), -0.5))  # pulled back although grad is None


def test_parameters_never_updated_get_no_slow_copy() -> None:
    a = torch.nn.Parameter(torch.zeros(2))
    frozen = torch.nn.Parameter(torch.ones(2))
    opt = Lookahead(torch.optim.SGD([a, frozen], lr=1.0), k=1, alpha=0.5)
    for _ in range(3):
        a.grad = torch.ones(2)
        opt.step()
    assert frozen not in opt.state
    assert torch.equal(frozen.detach(), torch.ones(2))


def test_per_group_k_and_alpha() -> None:
    a = torch.nn.Parameter(torch.zeros(()))
    b = torch.nn.Parameter(torch.zeros(()))
    opt = Lookahead(torch.optim.SGD([{"params": [a]}], lr=1.0), k=2, alpha=0.5)
    opt.add_param_group({"params": [b], "lookahead_k": 3, "lookahead_alpha": 0.25})
    for _ in range(3):
        a.grad = torch.ones(())
        b.grad = torch.ones(())
        opt.step()
    # a: -1, -2 -> sync -1, then -2.  b: -1, -2, -3 -> sync 0 + 0.25*(-3) = -0.75
    assert a.item() == -2.0
    assert b.item() == -0.75


def test_a_parameter_unfrozen_later_gets_its_slow_copy_then() -> None:
    a = torch.nn.Parameter(torch.zeros(2))
    late = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    opt = Lookahead(torch.optim.SGD([a, late], lr=1.0), k=2, alpha=0.5)
    for _ in range(4):
        a.grad = torch.ones(2)
        opt.step()
    assert late not in opt.state
    late.requires_grad_(True)
    for _ in range(2):
        a.grad = torch.ones(2)
        late.grad = torch.ones(2)
        opt.step()
    assert torch.equal(opt.state[late]["lookahead_slow"], torch.zeros(2))  # (1 + -1)/2
    assert torch.equal(late.detach(), torch.zeros(2))


def test_parameters_replaced_in_a_group_get_slow_copies() -> None:
    """Frameworks (Accelerate FSDP2, DeepSpeed) rewrite group["params"] in place."""
    a = torch.nn.Parameter(torch.zeros(2))
    opt = Lookahead(torch.optim.SGD([a], lr=1.0), k=2, alpha=0.5)
    a.grad = torch.ones(2)
    opt.step()
    replacement = torch.nn.Parameter(torch.full((2,), 4.0))
    opt.param_groups[0]["params"][0] = replacement
    replacement.grad = torch.ones(2)
    opt.step()  # the k-th step: captured at 4, updated to 3, synced to 4 + (3 - 4)/2
    assert torch.equal(opt.state[replacement]["lookahead_slow"], torch.full((2,), 3.5))
    assert torch.equal(replacement.detach(), torch.full((2,), 3.5))
