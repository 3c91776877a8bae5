"""The torch.optim conventions, for every optimizer of torch_lookahead.optim."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from torch_lookahead.lookahead import Lookahead
from torch_lookahead.optim import AdaBound, NovoGrad
from torch_lookahead.pullback import momentum_keys_for

OPTIMIZERS = {
    "NovoGrad": (NovoGrad, {"lr": 0.05, "weight_decay": 0.01, "amsgrad": True}),
    "AdaBound": (AdaBound, {"lr": 0.01, "weight_decay": 0.01, "amsbound": True, "gamma": 0.1}),
}
optimizer_names = pytest.mark.parametrize("name", list(OPTIMIZERS))


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes]


def set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)


# ----------------------------------------------------------------------------- validation
BAD_ARGUMENTS = [
    ("NovoGrad", {"lr": -1.0}, ValueError, "lr"),
    ("NovoGrad", {"lr": "0.1"}, TypeError, "lr"),
    ("NovoGrad", {"lr": torch.tensor(0.1)}, TypeError, "lr"),
    ("NovoGrad", {"betas": (1.0, 0.98)}, ValueError, "betas[0]"),
    ("NovoGrad", {"betas": (0.9, -0.1)}, ValueError, "betas[1]"),
    ("NovoGrad", {"betas": 0.9}, ValueError, "betas"),
    ("NovoGrad", {"eps": 0.0}, ValueError, "eps"),
    ("NovoGrad", {"weight_decay": -0.1}, ValueError, "weight_decay"),
    ("NovoGrad", {"foreach": "yes"}, ValueError, "foreach"),
    ("AdaBound", {"lr": 0.0}, ValueError, "initial_lr"),
    ("AdaBound", {"final_lr": -0.1}, ValueError, "final_lr"),
    ("AdaBound", {"gamma": 0.0}, ValueError, "gamma"),
    ("AdaBound", {"gamma": 1.0}, ValueError, "gamma"),
    ("AdaBound", {"eps": -1e-8}, ValueError, "eps"),
    ("AdaBound", {"betas": (0.9, 1.0)}, ValueError, "betas[1]"),
    ("AdaBound", {"weight_decay": float("nan")}, ValueError, "weight_decay"),
]


@pytest.mark.parametrize(("name", "kwargs", "error", "argument"), BAD_ARGUMENTS)
def test_invalid_hyperparameters_are_rejected_by_name(name, kwargs, error, argument) -> None:
    cls = OPTIMIZERS[name][0]
    with pytest.raises(error, match=argument.replace("[", r"\[").replace("]", r"\]")):
        cls(make_params(), **kwargs)
    optimizer = cls(make_params())
    with pytest.raises(error, match=argument.replace("[", r"\[").replace("]", r"\]")):
        optimizer.add_param_group({"params": make_params(seed=1), **kwargs})
    assert len(optimizer.param_groups) == 1


@optimizer_names
def test_sparse_gradients_are_rejected(name: str) -> None:
    cls, _ = OPTIMIZERS[name]
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        cls(embedding.parameters()).step()


@optimizer_names
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("extra", [{}, {"maximize": True, "decoupled_weight_decay": True}])
def test_never_mutates_the_gradient(name: str, foreach: bool, extra: dict) -> None:
    cls, kwargs = OPTIMIZERS[name]
    params = make_params()
    optimizer = cls(params, foreach=foreach, **{**kwargs, **extra})
    for step in range(2):
        set_grads(params, step)
        grads = [p.grad.clone() for p in params]
        optimizer.step()
        for p, g in zip(params, grads, strict=True):
            assert torch.equal(p.grad, g)


# ----------------------------------------------------------------------------- checkpoints
@optimizer_names
@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_resumes_bit_for_bit(name: str, foreach: bool) -> None:
    cls, kwargs = OPTIMIZERS[name]
    params = make_params()
    optimizer = cls(params, foreach=foreach, **kwargs)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for step in range(3):
        set_grads(params, step)
        optimizer.step()
        scheduler.step()

    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = cls(resumed_params, foreach=foreach, **kwargs)
    resumed_scheduler = torch.optim.lr_scheduler.StepLR(resumed, step_size=2, gamma=0.5)
    resumed.load_state_dict(checkpoint["optimizer"])
    resumed_scheduler.load_state_dict(checkpoint["scheduler"])

    for step in range(3, 7):
        for run_params, run_optimizer, run_scheduler in (
            (params, optimizer, scheduler),
            (resumed_params, resumed, resumed_scheduler),
        ):
            set_grads(run_params, step)
            run_optimizer.step()
            run_scheduler.step()
    for original, copy_ in zip(params, resumed_params, strict=True):
        assert torch.equal(original, copy_)
        for key, value in optimizer.state[original].items():
            assert torch.equal(value, resumed.state[copy_][key]), key


@optimizer_names
def test_pickle_and_deepcopy_keep_working(name: str) -> None:
    cls, kwargs = OPTIMIZERS[name]
    params = make_params()
    optimizer = cls(params, **kwargs)
    set_grads(params, 0)
    optimizer.step()
    for clone in (pickle.loads(pickle.dumps(optimizer)), copy.deepcopy(optimizer)):
        assert clone.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        assert len(clone.state) == len(params)


@optimizer_names
def test_setstate_backfills_flags_of_older_pickles(name: str) -> None:
    cls, _ = OPTIMIZERS[name]
    optimizer = cls(make_params())
    state = optimizer.__getstate__()
    for group in state["param_groups"]:
        for flag in ("maximize", "foreach", "decoupled_weight_decay", "differentiable"):
            del group[flag]
        group.pop("initial_lr", None)
    del state["defaults"]["differentiable"]
    restored = cls.__new__(cls)
    restored.__setstate__(state)
    set_grads(restored.param_groups[0]["params"], 0)
    restored.step()  # step() reads defaults["differentiable"]
    group = restored.param_groups[0]
    assert group["maximize"] is False and group["foreach"] is None
    assert group["decoupled_weight_decay"] is False and group["differentiable"] is False
    if name == "AdaBound":
        assert group["initial_lr"] == group["lr"]


# ----------------------------------------------------------------------------- dtypes
@optimizer_names
@pytest.mark.parametrize("foreach", [False, True])
def test_complex_parameters_are_optimised_as_real_pairs(name: str, foreach: bool) -> None:
    cls, kwargs = OPTIMIZERS[name]
    generator = torch.Generator().manual_seed(3)
    complex_param = torch.nn.Parameter(
        torch.randn(3, 2, dtype=torch.complex128, generator=generator)
    )
    real_param = torch.nn.Parameter(torch.view_as_real(complex_param.detach()).clone())
    complex_opt = cls([complex_param], foreach=foreach, **kwargs)
    real_opt = cls([real_param], foreach=foreach, **kwargs)
    for _ in range(4):
        grad = torch.randn(3, 2, dtype=torch.complex128, generator=generator)
        complex_param.grad, real_param.grad = grad, torch.view_as_real(grad).clone()
        complex_opt.step()
        real_opt.step()
    torch.testing.assert_close(torch.view_as_real(complex_param.detach()), real_param.detach())


@optimizer_names
def test_mixed_dtypes_in_one_group(name: str) -> None:
    """The multi-tensor path buckets by dtype and agrees with the for-loop path."""
    cls, kwargs = OPTIMIZERS[name]
    results = []
    for foreach in (False, True):
        params = make_params() + make_params(torch.float32, seed=1)
        optimizer = cls(params, foreach=foreach, **kwargs)
        for step in range(3):
            set_grads(params, step)
            optimizer.step()
        results.append(params)
    for loop_param, foreach_param in zip(*results, strict=True):
        torch.testing.assert_close(foreach_param, loop_param)


# ----------------------------------------------------------------------------- flat state
def storage_of(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@optimizer_names
def test_foreach_keeps_the_state_of_a_group_in_one_buffer_per_entry(name: str) -> None:
    cls, kwargs = OPTIMIZERS[name]
    params = make_params()
    optimizer = cls(params, foreach=True, **kwargs)
    set_grads(params, 0)
    optimizer.step()
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        storages = {storage_of(optimizer.state[p][key]) for p in params}
        assert len(storages) == 1, key
        for p in params:
            entry = optimizer.state[p][key]
            assert entry.shape in (p.shape, torch.Size())
    loop = cls(make_params(), foreach=False, **kwargs)
    set_grads(loop.param_groups[0]["params"], 0)
    loop.step()
    assert len({storage_of(s["exp_avg"]) for s in loop.state.values()}) == len(params)


@optimizer_names
def test_state_replaced_from_outside_is_used(name: str) -> None:
    """The flat layout is rebuilt from the current state entries whenever they were replaced."""
    cls, kwargs = OPTIMIZERS[name]
    runs = []
    for foreach in (False, True):
        params = make_params()
        optimizer = cls(params, foreach=foreach, **kwargs)
        for step in range(4):
            set_grads(params, step)
            optimizer.step()
            if step == 1:
                state = optimizer.state[params[1]]
                state["exp_avg"] = torch.full_like(state["exp_avg"], 0.25)
            if step == 2:
                optimizer.load_state_dict(optimizer.state_dict())
        runs.append(params)
    for loop_param, foreach_param in zip(*runs, strict=True):
        torch.testing.assert_close(foreach_param, loop_param, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- torch.compile
@optimizer_names
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_step_matches_eager(name: str, backend: str) -> None:
    cls, kwargs = OPTIMIZERS[name]
    eager_params, compiled_params = make_params(), make_params()
    eager = cls(eager_params, **kwargs)
    compiled = cls(compiled_params, **kwargs)
    torch._dynamo.reset()
    compiled_step = torch.compile(compiled.step, backend=backend)
    for step in range(4):
        set_grads(eager_params, step)
        set_grads(compiled_params, step)
        eager.step()
        compiled_step()
    for a, b in zip(eager_params, compiled_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- with Lookahead
@optimizer_names
def test_momentum_is_registered_for_pullback(name: str) -> None:
    cls, kwargs = OPTIMIZERS[name]
    params = make_params()
    inner = cls(params, **kwargs)
    assert momentum_keys_for(inner) == ("exp_avg",)
    optimizer = Lookahead(inner, k=2, alpha=0.5, pullback_momentum="reset")
    for step in range(2):
        set_grads(params, step)
        optimizer.step()
    for p in params:  # just synced: the momentum was reset, the rest of the state kept
        assert torch.count_nonzero(inner.state[p]["exp_avg"]) == 0
        assert torch.count_nonzero(inner.state[p]["exp_avg_sq"]) > 0
