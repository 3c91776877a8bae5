"""The plumbing that NovoGrad and AdaBound share (optim/_base.py, optim/_flat.py): the flat state
holds the state's logical size whatever parameters step, a refused step changes nothing, and
numpy numbers are accepted as hyper-parameters as torch.optim accepts them."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from .cases import CASES_BY_NAME

OPTIMIZERS = {name: (case.optimizer_class, case.kwargs) for name, case in CASES_BY_NAME.items()}
optimizer_names = pytest.mark.parametrize("name", list(OPTIMIZERS))


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values()]


def logical_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for t in state_tensors(optimizer))


def reachable_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the distinct storages that the state entries keep alive."""
    storages = {t.untyped_storage().data_ptr(): t for t in state_tensors(optimizer)}
    return sum(t.untyped_storage().nbytes() for t in storages.values())


def saved_bytes(optimizer: torch.optim.Optimizer) -> int:
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    return buffer.tell()


#: Which of 16 parameters have a gradient at each step: freezing half the model after 3 steps,
#: a window of 8 rotating over them (MoE experts, layer drop), a single one (too few for a flat
#: state) before half of them.
SCENARIOS = {
    "freeze_half": lambda step: set(range(16)) if step < 3 else set(range(8)),
    "rotating": lambda step: {(step + j) % 16 for j in range(8)},
    "single_then_half": lambda step: (
        set(range(16)) if step < 3 else {5} if step < 6 else set(range(8))
    ),
}


def resumed(optimizer: torch.optim.Optimizer, how: str) -> torch.optim.Optimizer:
    """``optimizer`` after a load of its own state: none, from its ``state_dict()``, from a
    checkpoint read by ``torch.load`` (views of one shared storage per key), or a deepcopy."""
    if how == "deepcopy":
        return copy.deepcopy(optimizer)
    state_dict = optimizer.state_dict()
    if how == "torch.load":
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        state_dict = torch.load(buffer, weights_only=True)
    if how != "none":
        optimizer.load_state_dict(state_dict)
    return optimizer


def assert_flat_matches_the_loop(name: str, scenario: str, how: str = "none") -> None:
    """Run the for-loop and the flat step through ``scenario``, resumed (see `resumed`) after
    3 steps: the flat state keeps alive, and saves, its logical size, and matches the for-loop
    step bit for bit."""
    cls, kwargs = OPTIMIZERS[name]
    runs = []
    for foreach in (False, True):
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(32, 32, generator=generator)) for _ in range(16)]
        optimizer = cls(params, foreach=foreach, **kwargs)
        for step in range(12):
            if step == 3:
                optimizer = resumed(optimizer, how)
                params = [p for group in optimizer.param_groups for p in group["params"]]
            active = SCENARIOS[scenario](step)
            for index, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=generator) if index in active else None
            optimizer.step()
        runs.append((params, optimizer))
    (loop_params, loop), (flat_params, flat) = runs
    assert reachable_bytes(flat) == logical_bytes(flat) == logical_bytes(loop)
    assert saved_bytes(flat) <= saved_bytes(loop) + 1024
    for p, q in zip(loop_params, flat_params, strict=True):
        assert torch.equal(q, p)
        assert set(flat.state[q]) == set(loop.state[p])
        for key, value in loop.state[p].items():
            assert torch.equal(flat.state[q][key], value)


@optimizer_names
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_flat_state_holds_the_logical_size_when_the_stepping_set_changes(
    name: str, scenario: str
) -> None:
    """A rebuild of the flat state leaves no entry viewing the old buffers."""
    assert_flat_matches_the_loop(name, scenario)


@optimizer_names
@pytest.mark.parametrize("how", ["state_dict", "torch.load", "deepcopy"])
def test_flat_state_holds_the_logical_size_when_half_freezes_after_a_load(
    name: str, how: str
) -> None:
    """Entries loaded as views of a shared storage (the old flat buffers, or the one storage
    per key that ``torch.load`` reads) own their memory once their parameters stop stepping."""
    assert_flat_matches_the_loop(name, "freeze_half", how)


@optimizer_names
@pytest.mark.parametrize("foreach", [False, True])
def test_a_refused_step_changes_no_state(name: str, foreach: bool) -> None:
    """A sparse gradient in the last group refuses the step before any state is created or
    changed: neither the states of the groups before it, nor a running maximum turned on, nor
    the first state of a parameter that never stepped."""
    cls, kwargs = OPTIMIZERS[name]
    generator = torch.Generator().manual_seed(0)
    stepped = [torch.nn.Parameter(torch.randn(4, 3, generator=generator)) for _ in range(3)]
    fresh = torch.nn.Parameter(torch.randn(5, generator=generator))
    embedding = torch.nn.Embedding(4, 2, sparse=True)
    groups = [{"params": stepped}, {"params": [fresh, embedding.weight]}]
    optimizer = cls(
        groups, foreach=foreach, **{**kwargs, CASES_BY_NAME[name].running_max_flag: False}
    )
    for p in stepped:
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    before = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in stepped}
    weights = [p.detach().clone() for p in (*stepped, fresh)]

    optimizer.param_groups[0][CASES_BY_NAME[name].running_max_flag] = True
    fresh.grad = torch.ones_like(fresh)
    embedding(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()

    assert fresh not in optimizer.state and embedding.weight not in optimizer.state
    for p in stepped:
        assert set(optimizer.state[p]) == set(before[p])
        for key, value in before[p].items():
            assert torch.equal(optimizer.state[p][key], value)
    for p, weight in zip((*stepped, fresh), weights, strict=True):
        assert torch.equal(p, weight)


def numpy_kwargs(defaults: dict[str, object]) -> dict[str, object]:
    """Every float hyper-parameter as a numpy float32 scalar, ``eps`` as a 0-dim numpy array and
    ``betas`` as a pair of numpy scalars."""
    kwargs: dict[str, object] = {
        key: np.float32(value) for key, value in defaults.items() if type(value) is float
    }
    kwargs["eps"] = np.array(defaults["eps"])
    beta1, beta2 = defaults["betas"]  # type: ignore[misc]
    kwargs["betas"] = (np.float32(beta1), np.float64(beta2))
    return kwargs


@optimizer_names
def test_numpy_hyperparameters_are_accepted_as_python_numbers(name: str) -> None:
    """As torch.optim accepts them; the groups hold the Python numbers (which also load with
    ``weights_only=True``), and the steps are those of the same values given as Python floats."""
    cls, _ = OPTIMIZERS[name]
    kwargs = numpy_kwargs(cls([torch.zeros(1, requires_grad=True)]).defaults)
    floats = {
        key: tuple(float(b) for b in value) if key == "betas" else float(value)  # type: ignore[arg-type]
        for key, value in kwargs.items()
    }
    runs = []
    for given in (kwargs, floats):
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        optimizer = cls(params[:1], **given)
        optimizer.add_param_group({"params": params[1:], **given})
        for group in optimizer.param_groups:
            for key, value in floats.items():
                assert group[key] == value and type(group[key]) is type(value), key
            assert all(type(beta) is float for beta in group["betas"])
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, float(step + 1))
            optimizer.step()
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        buffer.seek(0)
        optimizer.load_state_dict(torch.load(buffer, weights_only=True))
        runs.append(params)
    for p, q in zip(*runs, strict=True):
        assert torch.equal(p, q)


@optimizer_names
@pytest.mark.parametrize("value", [True, np.bool_(True), np.array(True)])
def test_booleans_are_still_refused_as_hyperparameters(name: str, value: object) -> None:
    """In the constructor and in ``add_param_group``, which leaves the refused group as given."""
    cls, _ = OPTIMIZERS[name]
    with pytest.raises(TypeError, match=r"^weight_decay"):
        cls([torch.zeros(1, requires_grad=True)], weight_decay=value)
    optimizer = cls([torch.zeros(1, requires_grad=True)])
    group = {"params": [torch.zeros(1, requires_grad=True)], "weight_decay": value}
    with pytest.raises(TypeError, match=r"^weight_decay"):
        optimizer.add_param_group(group)
    assert group["weight_decay"] is value and "eps" not in group


def test_a_load_that_fails_while_it_is_made_leaves_the_optimizer_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """load_state_dict ends in __setstate__, which turns an int step into a tensor and gives
    shared-storage entries their own memory: all of it before the new state is installed, so an
    error there changes nothing (Lookahead finishes a load by loading again)."""
    from torch_lookahead.optim import AdaBound, _base

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = AdaBound(params, lr=0.01)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    for param_state in saved["state"].values():
        param_state["step"] = 3  # an older checkpoint's int step: made into a tensor on load
        param_state["exp_avg"] = param_state["exp_avg"] + 1.0
    before = copy.deepcopy(optimizer.state_dict())

    def failing() -> torch.Tensor:
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(_base, "new_step_counter", failing)
    with pytest.raises(RuntimeError, match="injected"):
        optimizer.load_state_dict(saved)
    after = optimizer.state_dict()
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value), (index, key)
