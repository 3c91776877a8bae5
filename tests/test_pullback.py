"""Inner-optimizer momentum at the sync: "none" (the paper keeps it), "reset" and "pullback"."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import quadratic_problem, reference_lookahead
from torch_lookahead import Lookahead, register_momentum_keys
from torch_lookahead.pullback import momentum_keys_for

FAMILIES = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "momentum_buffer"),
    "adam": (lambda p: torch.optim.Adam(p, lr=0.05), "exp_avg"),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.01), "exp_avg"),
    "nadam": (lambda p: torch.optim.NAdam(p, lr=0.05), "exp_avg"),
    "radam": (lambda p: torch.optim.RAdam(p, lr=0.05), "exp_avg"),
    "adamax": (lambda p: torch.optim.Adamax(p, lr=0.05), "exp_avg"),
}


@settings(max_examples=15, deadline=None)
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    mode=st.sampled_from(["none", "reset", "pullback"]),
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 5),
    alpha=st.floats(0.0, 1.0),
    n_steps=st.integers(1, 17),
)
def test_matches_the_float64_oracle(family, mode, seed, k, alpha, n_steps) -> None:
    make_inner, key = FAMILIES[family]
    x0, grad_fn = quadratic_problem(seed, [(3,), (2, 2)])
    params = [torch.nn.Parameter(x.clone()) for x in x0]
    opt = Lookahead(make_inner(params), k=k, alpha=alpha, pullback_momentum=mode)
    for _ in range(n_steps):
        for p, g in zip(params, grad_fn([q.detach() for q in params]), strict=True):
            p.grad = g.clone()
        opt.step()
    fast, slow = reference_lookahead(
        x0, grad_fn, n_steps, make_inner, k, alpha, mode=mode, momentum_key=key
    )
    for p, f, s in zip(params, fast, slow, strict=True):
        torch.testing.assert_close(p.detach(), f, rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["lookahead_slow"], s, rtol=0, atol=1e-12)


def test_pullback_slow_momentum_is_a_copy_not_an_alias() -> None:
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Lookahead(
        torch.optim.SGD([p], lr=0.1, momentum=0.9), k=2, alpha=0.5, pullback_momentum="pullback"
    )
    for _ in range(4):
        p.grad = p.detach().clone()
        opt.step()
    state = opt.state[p]
    assert state["lookahead_slow_momentum_buffer"].data_ptr() != state["momentum_buffer"].data_ptr()
    assert torch.equal(state["lookahead_slow_momentum_buffer"], state["momentum_buffer"])


def test_modes_add_no_key_the_inner_optimizer_does_not_own() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = Lookahead(torch.optim.Adam([p], lr=0.1), k=1, pullback_momentum="reset")
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq", "lookahead_slow"}
    assert not opt.state[p]["exp_avg"].any()
    assert opt.state[p]["exp_avg_sq"].all()  # only the momentum is reset


def test_stability_example_none_diverges_pullback_converges() -> None:
    """Worked by hand: lr=1, momentum 0.99, k=5, alpha=0.5, curvature 0.42."""
    magnitudes = {}
    for mode in ("none", "pullback"):
        p = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        opt = Lookahead(
            torch.optim.SGD([p], lr=1.0, momentum=0.99), k=5, alpha=0.5, pullback_momentum=mode
        )
        trace = []
        for t in range(1, 10_001):
            p.grad = 0.42 * p.detach()
            opt.step()
            if t % 5000 == 0:
                trace.append(abs(p.item()))
        magnitudes[mode] = trace
    assert magnitudes["none"][1] > 5 * magnitudes["none"][0]  # growing: spectral radius > 1
    assert magnitudes["pullback"][1] < 1e-12


def test_unknown_optimizer_needs_registration() -> None:
    class MyMomentumSGD(torch.optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    velocity = state.setdefault("velocity", torch.zeros_like(p))
                    velocity.mul_(0.9).add_(p.grad)
                    p.sub_(group["lr"] * velocity)

    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="register_momentum_keys"):
        Lookahead(MyMomentumSGD([p]), pullback_momentum="reset")
    register_momentum_keys(MyMomentumSGD, ["velocity"])
    assert momentum_keys_for(MyMomentumSGD([p])) == ("velocity",)
    opt = Lookahead(MyMomentumSGD([p]), k=1, pullback_momentum="reset")
    p.grad = torch.ones(2)
    opt.step()
    assert not opt.state[p]["velocity"].any()
    with pytest.raises(TypeError, match=r"subclass of torch\.optim\.Optimizer"):
        register_momentum_keys(int, ["x"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        register_momentum_keys(MyMomentumSGD, [])
