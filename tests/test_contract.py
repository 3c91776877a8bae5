"""Lookahead as a first-class torch.optim.Optimizer (what schedulers, GradScaler, checkpoints, compile and frameworks rely on)."""

from __future__ import annotations

import copy
import inspect
import pickle
import warnings

import pytest
import torch

from torch_lookahead import Lookahead


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def train_steps(model, opt, n, seed=0, scaler=None):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 4, generator=gen)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


# ---------------------------------------------------------------- A. identity, construction
def test_is_an_optimizer_with_live_views() -> None:
    model = make_model()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = Lookahead(inner, k=5, alpha=0.5)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups
    assert opt.state is inner.state
    assert opt.defaults is inner.defaults
    assert opt.defaults["lookahead_k"] == 5 and "betas" in opt.defaults
    new_groups = list(inner.param_groups)
    opt.param_groups = new_groups  # frameworks assign param_groups (DeepSpeed, Accelerate)
    assert inner.param_groups is new_groups


def test_repr_shows_inner_and_hyper_parameters() -> None:
    opt = Lookahead(torch.optim.SGD(make_model().parameters(), lr=0.1), k=7, alpha=0.25)
    text = repr(opt)
    assert "k=7" in text and "alpha=0.25" in text and "SGD" in text


def test_deepcopy_and_pickle_keep_working() -> None:
    model = make_model()
    opt = Lookahead(torch.optim.Adam(model.parameters(), lr=1e-2), k=3)
    train_steps(model, opt, 4)
    clone = copy.deepcopy((model, opt))
    model2, opt2 = clone
    train_steps(model, opt, 5, seed=1)
    train_steps(model2, opt2, 5, seed=1)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    restored = pickle.loads(pickle.dumps(opt))
    assert isinstance(restored, Lookahead)
    assert restored.param_groups[0]["lookahead_k"] == 3
    fired = []
    restored.register_step_post_hook(lambda *a: fired.append(1))
    for p in restored.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    restored.step()
    assert fired == [1]


def test_wrap_returns_an_optimizer_class_that_builds_from_params() -> None:
    wrapped = Lookahead.wrap(torch.optim.AdamW, k=4, alpha=0.7)
    assert isinstance(wrapped, type) and issubclass(wrapped, torch.optim.Optimizer)
    opt = wrapped(make_model().parameters(), lr=1e-3, weight_decay=0.1)
    assert type(opt) is Lookahead and isinstance(opt.optimizer, torch.optim.AdamW)
    assert opt.param_groups[0]["lookahead_k"] == 4
    assert opt.param_groups[0]["lookahead_alpha"] == 0.7
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert wrapped.__name__ == "LookaheadAdamW"
    assert pickle.loads(pickle.dumps(opt)).param_groups[0]["lookahead_k"] == 4
    with pytest.raises(ValueError, match="k must"):
        Lookahead.wrap(torch.optim.AdamW, k=0)
    with pytest.raises(TypeError, match="optimizer_class"):
        Lookahead.wrap("adamw")  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"k": 0}, ValueError, "k must"),
        ({"k": -3}, ValueError, "k must"),
        ({"k": 2.5}, TypeError, "k must"),
        ({"k": True}, TypeError, "k must"),
        ({"k": "5"}, TypeError, "k must"),
        ({"alpha": 1.5}, ValueError, "alpha must"),
        ({"alpha": -0.1}, ValueError, "alpha must"),
        ({"alpha": float("nan")}, ValueError, "alpha must"),
        ({"alpha": "0.5"}, TypeError, "alpha must"),
        ({"pullback_momentum": "sometimes"}, ValueError, "pullback_momentum must be one of"),
        ({"slow_dtype": torch.int32}, TypeError, "slow_dtype"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, words) -> None:
    with pytest.raises(error, match=words):
        Lookahead(torch.optim.SGD(make_model().parameters(), lr=0.1), **kwargs)


def test_bad_optimizer_arguments() -> None:
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        Lookahead(object())  # type: ignore[arg-type]
    inner = Lookahead(torch.optim.SGD(make_model().parameters(), lr=0.1))
    with pytest.raises(TypeError, match="already a Lookahead"):
        Lookahead(inner)
    with pytest.raises(ValueError, match="known classes"):
        Lookahead(torch.optim.Adagrad(make_model().parameters()), pullback_momentum="reset")


def test_numpy_scalars_are_stored_as_python_numbers() -> None:
    np = pytest.importorskip("numpy")
    opt = Lookahead(
        torch.optim.SGD(make_model().parameters(), lr=0.1), k=np.int64(4), alpha=np.float64(0.5)
    )
    assert type(opt.param_groups[0]["lookahead_k"]) is int
    assert type(opt.param_groups[0]["lookahead_alpha"]) is float


def test_bad_per_group_values_are_rejected() -> None:
    opt = Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.raises(ValueError, match="lookahead_alpha"):
        opt.add_param_group(
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lookahead_alpha": 2.0}
        )
    with pytest.raises(ValueError, match="lookahead_k"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lookahead_k": 0})


# ---------------------------------------------------------------- B. param groups
def test_groups_added_directly_to_the_inner_optimizer_work() -> None:
    a = torch.nn.Parameter(torch.zeros(()))
    b = torch.nn.Parameter(torch.zeros(()))
    inner = torch.optim.SGD([a], lr=1.0)
    opt = Lookahead(inner, k=2, alpha=0.5)
    inner.add_param_group({"params": [b]})
    assert inner.param_groups[1]["lookahead_k"] == 2
    for _ in range(2):
        a.grad = torch.ones(())
        b.grad = torch.ones(())
        opt.step()
    assert a.item() == b.item() == -1.0


def test_empty_param_groups_are_tolerated() -> None:
    opt = Lookahead(torch.optim.SGD([{"params": []}], lr=0.1), k=2)
    opt.step()
    opt.step()
    assert opt.param_groups[0]["lookahead_step"] == 0


def test_zero_grad_signature_and_effect() -> None:
    model = make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1))
    assert "set_to_none" in inspect.signature(opt.zero_grad).parameters
    model(torch.randn(2, 4)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- C. step contract
def test_closure_runs_once_and_its_loss_is_returned() -> None:
    model = make_model()
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2), k=2)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = model(torch.ones(3, 4)).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure=closure)
    assert len(calls) == 1 and isinstance(loss, torch.Tensor)
    assert all("lookahead_slow" in opt.state[p] for p in model.parameters())


def test_step_forwards_extra_keyword_arguments() -> None:
    class KwargOptimizer(torch.optim.SGD):
        seen: dict

        def step(self, closure=None, **kwargs):  # type: ignore[override]
            self.seen = kwargs
            return super().step(closure)

    inner = KwargOptimizer([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt = Lookahead(inner)
    opt.step(closure=None, scale=2)
    assert inner.seen == {"scale": 2}


# ---------------------------------------------------------------- hooks
def test_step_and_state_dict_hooks_registered_on_the_wrapper_fire() -> None:
    model = make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=2)
    events: list[str] = []
    opt.register_step_pre_hook(lambda o, a, kw: events.append("pre"))
    opt.register_step_post_hook(lambda o, a, kw: events.append("post"))
    opt.register_state_dict_pre_hook(lambda o: events.append("sd_pre"))

    def sd_post(o, sd):
        events.append("sd_post")
        sd["param_groups"][0]["note"] = "hooked"
        return sd

    opt.register_state_dict_post_hook(sd_post)
    opt.register_load_state_dict_pre_hook(lambda o, sd: events.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: events.append("load_post"))
    train_steps(model, opt, 1)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["note"] == "hooked"
    opt.load_state_dict(sd)
    assert events == ["pre", "post", "sd_pre", "sd_post", "load_pre", "load_post"]


# ---------------------------------------------------------------- D. LR schedulers
def test_scheduler_on_the_wrapper_drives_the_inner_optimizer_across_load_state_dict() -> None:
    model = make_model()
    inner = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    opt = Lookahead(inner, k=3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "step() overridden" / order warnings
        train_steps(model, opt, 1)
        sched.step()
    assert inner.param_groups[0]["lr"] == 0.5
    opt.load_state_dict(opt.state_dict())
    train_steps(model, opt, 1)
    sched.step()
    assert inner.param_groups[0]["lr"] == 0.25
    assert opt.param_groups is inner.param_groups


def test_one_cycle_and_cyclic_lr_with_momentum_cycling() -> None:
    model = make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=2)
    cyclic = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=True
    )
    momenta = []
    for _ in range(4):
        train_steps(model, opt, 1)
        cyclic.step()
        momenta.append(opt.optimizer.param_groups[0]["momentum"])
    assert len(set(momenta)) > 1

    model = make_model()
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=0.1), k=2)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=6)
    lrs, betas = [], []
    for _ in range(5):
        train_steps(model, opt, 1)
        one_cycle.step()
        lrs.append(opt.optimizer.param_groups[0]["lr"])
        betas.append(opt.optimizer.param_groups[0]["betas"][0])
    assert len(set(lrs)) > 1 and len(set(betas)) > 1


# ---------------------------------------------------------------- E. GradScaler
@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_skipped_step_does_not_advance_the_counter(fused: bool) -> None:
    model = make_model()
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused), k=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    train_steps(model, opt, 2, scaler=scaler)
    assert opt.param_groups[0]["lookahead_step"] == 2
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss = model(torch.randn(4, 4)).pow(2).mean()
    scaler.scale(loss).backward()
    next(iter(model.parameters())).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert opt.param_groups[0]["lookahead_step"] == 2  # skipped: not counted
    assert opt.optimizer.state[next(iter(model.parameters()))]["step"].item() == 2
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)
    train_steps(model, opt, 1, scaler=scaler)
    assert opt.param_groups[0]["lookahead_step"] == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_wrapper_does_not_advertise_amp_scaling() -> None:
    opt = Lookahead(torch.optim.AdamW(make_model().parameters(), fused=True))
    assert not getattr(opt, "_step_supports_amp_scaling", False)


# ---------------------------------------------------------------- H. torch.compile
@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_step_matches_eager_without_recompiling_every_step(backend: str) -> None:
    torch._dynamo.reset()
    model_eager, model_compiled = make_model(1), make_model(1)
    opt_eager = Lookahead(torch.optim.Adam(model_eager.parameters(), lr=1e-2), k=3, alpha=0.5)
    opt_compiled = Lookahead(torch.optim.Adam(model_compiled.parameters(), lr=1e-2), k=3, alpha=0.5)

    @torch.compile(backend=backend, fullgraph=False)
    def compiled_step():
        opt_compiled.step()

    from torch._dynamo.utils import counters

    counters.clear()
    gen = torch.Generator().manual_seed(0)
    n_steps = 12
    for _ in range(n_steps):
        x = torch.randn(8, 4, generator=gen)
        for model in (model_eager, model_compiled):
            model.zero_grad()
            model(x).pow(2).mean().backward()
        opt_eager.step()
        compiled_step()
    for a, b in zip(model_eager.parameters(), model_compiled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Two variants at most for the sync decision, plus the lazy-state warm-up: not one per step.
    assert 0 < counters["stats"]["unique_graphs"] <= 8


def test_groups_of_the_inner_optimizer_may_carry_their_own_k_and_alpha() -> None:
    a = torch.nn.Parameter(torch.zeros(1))
    b = torch.nn.Parameter(torch.zeros(1))
    inner = torch.optim.SGD([{"params": [a], "lookahead_alpha": 0.8}, {"params": [b]}], lr=0.1)
    opt = Lookahead(inner, k=3, alpha=0.5)
    assert [g["lookahead_alpha"] for g in opt.param_groups] == [0.8, 0.5]
    assert [g["lookahead_k"] for g in opt.param_groups] == [3, 3]
    with pytest.raises(ValueError, match="lookahead_k"):
        Lookahead(torch.optim.SGD([{"params": [a], "lookahead_k": 0}], lr=0.1))
