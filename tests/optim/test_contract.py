"""The torch.optim conventions for NovoGrad and AdaBound that tests/test_conformance.py does not
check for every optimizer: validation of every hyper-parameter (constructor and
``add_param_group``), sparse and never-modified gradients, mixed dtypes, the flat state,
``torch.compile`` and the momentum registered for Lookahead's pullback."""

from __future__ import annotations

import re

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from torch_lookahead.lookahead import Lookahead
from torch_lookahead.pullback import momentum_keys_for

from .cases import CASES_BY_NAME

OPTIMIZERS = {name: (case.optimizer_class, case.kwargs) for name, case in CASES_BY_NAME.items()}
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
INF, NAN = float("inf"), float("nan")
#: Beyond the exact messages of the conformance module: types, non-finite values, the
#: AdaBound-specific ranges, and the same refusal from ``add_param_group``.
BAD_ARGUMENTS = [
    ("NovoGrad", {"lr": "0.1"}, TypeError, "lr"),
    ("NovoGrad", {"lr": INF}, ValueError, "lr"),
    ("NovoGrad", {"lr": NAN}, ValueError, "lr"),
    ("NovoGrad", {"eps": INF}, ValueError, "eps"),
    ("NovoGrad", {"weight_decay": INF}, ValueError, "weight_decay"),
    ("NovoGrad", {"betas": (0.9, -0.1)}, ValueError, "betas[1]"),
    ("NovoGrad", {"betas": (0.9, NAN)}, ValueError, "betas[1]"),
    ("NovoGrad", {"foreach": "yes"}, ValueError, "foreach"),
    ("AdaBound", {"lr": 0.0}, ValueError, "adabound_base_lr"),
    ("AdaBound", {"lr": INF}, ValueError, "lr"),
    ("AdaBound", {"lr": torch.tensor(INF)}, ValueError, "lr"),
    ("AdaBound", {"final_lr": INF}, ValueError, "final_lr"),
    ("AdaBound", {"eps": INF}, ValueError, "eps"),
    ("AdaBound", {"weight_decay": INF}, ValueError, "weight_decay"),
    ("AdaBound", {"weight_decay": NAN}, ValueError, "weight_decay"),
    ("AdaBound", {"gamma": 0.0}, ValueError, "gamma"),
    ("AdaBound", {"gamma": NAN}, ValueError, "gamma"),
    ("AdaBound", {"betas": (0.9, 1.0)}, ValueError, "betas[1]"),
]


@pytest.mark.parametrize(("name", "kwargs", "error", "argument"), BAD_ARGUMENTS)
def test_invalid_hyperparameters_are_rejected_by_name(name, kwargs, error, argument) -> None:
    cls = OPTIMIZERS[name][0]
    with pytest.raises(error, match="^" + re.escape(argument)):
        cls(make_params(), **kwargs)
    optimizer = cls(make_params())
    with pytest.raises(error, match="^" + re.escape(argument)):
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


# ----------------------------------------------------------------------------- dtypes
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


def replace_entry(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    state = optimizer.state[params[1]]
    state["exp_avg"] = torch.full_like(state["exp_avg"], 0.25)


def replace_entry_data(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    # The entry stays the same Python object, its storage is another one.
    state = optimizer.state[params[1]]
    state["exp_avg"].data = torch.full_like(state["exp_avg"], 0.25)


def write_entry_in_place(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]
) -> None:
    optimizer.state[params[0]]["exp_avg"].mul_(0.5)


def clear_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    optimizer.state[params[1]].clear()


def replace_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    optimizer.state[params[2]] = {}


def delete_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    del optimizer.state[params[0]]


def reload(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    optimizer.load_state_dict(optimizer.state_dict())


def add_group(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    extra = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=params[0].dtype))
    params.append(extra)
    optimizer.add_param_group({"params": [extra], "lr": 0.03})


def replace_parameter(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    # A new Parameter in the old one's place (as when a layer is rebuilt): it starts afresh.
    params[1] = torch.nn.Parameter(params[1].detach() * 0.5)
    optimizer.param_groups[0]["params"][1] = params[1]


def replace_parameter_data(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]
) -> None:
    params[0].data = params[0].detach() * 0.5


def drop_a_gradient(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    params[2].grad = None


def move_parameters_between_groups(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]
) -> None:
    moved = optimizer.param_groups[0]["params"].pop(0)
    optimizer.add_param_group({"params": [moved], "lr": 0.02})


#: Every way the torch.optim API (and the tensors it holds) lets a user change groups and state
#: between two steps; each runs after the second step.
CHANGES = {
    change.__name__: change
    for change in (
        replace_entry,
        replace_entry_data,
        write_entry_in_place,
        clear_state,
        replace_state,
        delete_state,
        reload,
        add_group,
        replace_parameter,
        replace_parameter_data,
        drop_a_gradient,
        move_parameters_between_groups,
    )
}


@optimizer_names
@pytest.mark.parametrize("change", list(CHANGES))
def test_the_flat_state_follows_every_change_of_groups_and_state(name: str, change: str) -> None:
    """The multi-tensor step over flat buffers (foreach=True) against the for-loop step, which
    keeps nothing between steps: after each change the two runs stay equal to float64
    rounding, state included. A change the flat state missed would let the buffers and the
    state entries the user sees part ways."""
    cls, kwargs = OPTIMIZERS[name]
    runs = []
    for foreach in (False, True):
        params = make_params()
        optimizer = cls(params, foreach=foreach, **kwargs)
        for step in range(5):
            if step == 2:
                CHANGES[change](optimizer, params)
            for p in params:
                p.grad = None
            set_grads(
                [p for p in params if not (change == "drop_a_gradient" and p is params[2])], step
            )
            optimizer.step()
        runs.append((params, optimizer))
    (loop_params, loop), (flat_params, flat) = runs
    assert len(loop_params) == len(flat_params)
    for p, q in zip(loop_params, flat_params, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-13, atol=1e-13)
        assert set(flat.state[q]) == set(loop.state[p])
        for key, value in loop.state[p].items():
            torch.testing.assert_close(flat.state[q][key], value, rtol=1e-13, atol=0)


@optimizer_names
def test_running_maximum_turned_on_mid_run(name: str) -> None:
    """``amsgrad``/``amsbound`` set in the group after some steps: the running maximum starts
    from the second moment of the step before, in every implementation (the flat state is
    rebuilt with the new entry)."""
    cls, _ = OPTIMIZERS[name]
    flag = CASES_BY_NAME[name].running_max_flag
    runs = []
    for foreach in (False, True):
        params = make_params()
        optimizer = cls(params, lr=0.05, foreach=foreach)
        for step in range(5):
            if step == 2:
                optimizer.param_groups[0][flag] = True
                before = [optimizer.state[p]["exp_avg_sq"].clone() for p in params]
            set_grads(params, step)
            optimizer.step()
            if step == 2:
                for p, second_moment in zip(params, before, strict=True):
                    state = optimizer.state[p]
                    expected = torch.maximum(second_moment, state["exp_avg_sq"])
                    assert torch.equal(state["max_exp_avg_sq"], expected)
        runs.append((params, optimizer))
    (loop_params, loop), (foreach_params, foreach_optimizer) = runs
    for p, q in zip(loop_params, foreach_params, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-13, atol=1e-13)
        for key, value in loop.state[p].items():
            torch.testing.assert_close(foreach_optimizer.state[q][key], value, rtol=1e-13, atol=0)


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


@optimizer_names
def test_compiled_step_with_a_tensor_lr_is_not_recompiled_when_the_lr_changes(name: str) -> None:
    """The point of a Tensor lr: a scheduler changes its value (down to 0, where AdaBound's
    bounds close) and the compiled step reads it, matching eager steps at the same lrs."""
    if name == "AdaBound" and torch.__version__ < "2.9":
        pytest.skip(
            "a compiled AdaBound step with a Tensor lr needs torch 2.9 (docs/getting-started.md): "
            "torch 2.6 to 2.8 fail in _foreach_addcdiv_ with the 0-dim step size"
        )
    cls, kwargs = OPTIMIZERS[name]
    eager_params, compiled_params = make_params(), make_params()
    eager = cls(eager_params, **kwargs)
    lr = torch.tensor(kwargs["lr"], dtype=torch.float64)
    compiled = cls(compiled_params, **{**kwargs, "lr": lr})
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled_step = torch.compile(compiled.step, backend=counter)
    lrs = [kwargs["lr"], kwargs["lr"], 0.5 * kwargs["lr"], 0.0, 0.25 * kwargs["lr"]]
    for step, step_lr in enumerate(lrs):
        if step == 2:
            frames = counter.frame_count  # the first steps compile the state's creation too
        lr.fill_(step_lr)
        eager.param_groups[0]["lr"] = step_lr
        set_grads(eager_params, step)
        set_grads(compiled_params, step)
        eager.step()
        compiled_step()
    assert counter.frame_count == frames
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
