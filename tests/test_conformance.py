"""The checklist torch.optim applies to its own optimizers, applied to every optimizer we ship.

One registry, ``CASES``, lists the optimizers under test: NovoGrad and AdaBound/AMSBound with each
of their flags, Ranger, ``Lookahead`` over SGD and AdamW in each implementation and pullback mode,
and ``DistributedLookahead`` on a single-rank gloo group. Every check below is one test function
parametrised over that registry, so a new optimizer or flag joins every check by adding one entry.
A case that cannot support a check says so in its ``unsupported`` table, with the reason; the
checks themselves never skip.

The checks are written from torch.optim's public behaviour (what ``torch.optim.SGD``/``AdamW`` do
with the same input), never by comparing against another library.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import torch_lookahead
import torch_lookahead.distributed
import torch_lookahead.optim
from torch_lookahead import Lookahead
from torch_lookahead.distributed import DistributedLookahead
from torch_lookahead.optim import AdaBound, NovoGrad, Ranger

# ----------------------------------------------------------------------------- the registry
#: Inner steps between two syncs of every Lookahead case; the checkpoint checks save after
#: ``STEPS_BEFORE_SAVE`` steps (mid-cycle) and run ``STEPS_AFTER_SAVE`` more (across two syncs).
K = 5
STEPS_BEFORE_SAVE = 3
STEPS_AFTER_SAVE = 7
SHAPES = ((3, 2), (4,), (2, 1, 2))

# Check names, as used in ``OptimizerCase.unsupported``.
COMPLEX = "complex"
TENSOR_LR = "tensor_lr"
ZERO_GRADIENTS = "zero_gradients"
FOREACH_PARITY = "foreach_parity"
NUMBER_STEP = "number_step"
CHECKS = frozenset({COMPLEX, TENSOR_LR, ZERO_GRADIENTS, FOREACH_PARITY, NUMBER_STEP})


@dataclass(frozen=True)
class ErrorInput:
    """Keyword arguments that ``make`` must refuse, with the exact exception and message."""

    description: str
    kwargs: dict[str, Any]
    error: type[Exception]
    message: str


@dataclass(frozen=True)
class OptimizerCase:
    """One optimizer configuration under test.

    ``make(params, **overrides)`` builds it over ``params`` (a list of tensors or of group dicts);
    ``overrides`` replace the case's own hyper-parameters. ``other_hyperparameters`` build a
    differently configured optimizer of the same kind (for loading a checkpoint into it, and for
    the group added mid-run; it must include ``lr``). ``implementations`` are two sets of overrides
    selecting implementations that must agree (for-loop against foreach or fused).
    ``unsupported`` maps a check name to the reason the case cannot take part in it.
    """

    id: str
    optimizer_class: type[Optimizer]
    make: Callable[..., Optimizer]
    other_hyperparameters: dict[str, Any]
    implementations: tuple[dict[str, Any], dict[str, Any]]
    errors: tuple[ErrorInput, ...]
    lr: float
    unsupported: dict[str, str] = field(default_factory=dict)
    distributed: bool = False

    def __post_init__(self) -> None:
        assert set(self.unsupported) <= CHECKS, self.unsupported
        assert "lr" in self.other_hyperparameters


def direct(optimizer_class: type[Optimizer], **kwargs: Any) -> Callable[..., Optimizer]:
    """``make`` for an optimizer that takes the parameters itself."""

    def make(params: Any, **overrides: Any) -> Optimizer:
        return optimizer_class(params, **{**kwargs, **overrides})

    return make


def wrapped(
    wrapper_class: type[Lookahead],
    inner_class: type[Optimizer],
    inner_kwargs: dict[str, Any],
    **wrapper_kwargs: Any,
) -> Callable[..., Optimizer]:
    """``make`` for ``wrapper_class(inner_class(params, **inner_kwargs), **wrapper_kwargs)``.

    An override goes to the wrapper when its constructor names it (``k``, ``alpha``, ...), else to
    the inner optimizer.
    """
    wrapper_arguments = frozenset(inspect.signature(wrapper_class).parameters) - {"optimizer"}

    def make(params: Any, **overrides: Any) -> Optimizer:
        inner_overrides = {k: v for k, v in overrides.items() if k not in wrapper_arguments}
        wrapper_overrides = {k: v for k, v in overrides.items() if k in wrapper_arguments}
        inner_arguments = {**inner_kwargs, **inner_overrides}
        arguments = {**wrapper_kwargs, **wrapper_overrides}
        return wrapper_class(inner_class(params, **inner_arguments), **arguments)

    return make


FOREACH_PAIR: tuple[dict[str, Any], dict[str, Any]] = ({"foreach": False}, {"foreach": True})


def lookahead_errors() -> tuple[ErrorInput, ...]:
    return (
        ErrorInput("k=0", {"k": 0}, ValueError, "k must be a positive int (>= 1), got 0"),
        ErrorInput(
            "k=2.5",
            {"k": 2.5},
            TypeError,
            "k must be a positive int (the number of inner steps per sync), got 2.5",
        ),
        ErrorInput(
            "alpha=1.5",
            {"alpha": 1.5},
            ValueError,
            "alpha must be in [0, 1] (the slow-weights step size), got 1.5",
        ),
        ErrorInput(
            "alpha=nan",
            {"alpha": math.nan},
            ValueError,
            "alpha must be in [0, 1] (the slow-weights step size), got nan",
        ),
    )


def torch_adam_errors() -> tuple[ErrorInput, ...]:
    """What torch's Adam family (AdamW) raises for bad hyper-parameters."""
    return (
        ErrorInput("negative lr", {"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ErrorInput(
            "beta1=1",
            {"betas": (1.0, 0.999)},
            ValueError,
            "Invalid beta parameter at index 0: 1.0",
        ),
        ErrorInput(
            "beta2=1.5",
            {"betas": (0.9, 1.5)},
            ValueError,
            "Invalid beta parameter at index 1: 1.5",
        ),
        ErrorInput("negative eps", {"eps": -1.0}, ValueError, "Invalid epsilon value: -1.0"),
        ErrorInput(
            "negative weight_decay",
            {"weight_decay": -0.5},
            ValueError,
            "Invalid weight_decay value: -0.5",
        ),
    )


def novograd_cases() -> list[OptimizerCase]:
    errors = (
        ErrorInput("negative lr", {"lr": -1.0}, ValueError, "lr must be in [0, inf), got -1.0"),
        ErrorInput(
            "beta1=1", {"betas": (1.0, 0.98)}, ValueError, "betas[0] must be in [0, 1), got 1.0"
        ),
        ErrorInput(
            "beta2=1.5", {"betas": (0.9, 1.5)}, ValueError, "betas[1] must be in [0, 1), got 1.5"
        ),
        ErrorInput(
            "betas not a pair",
            {"betas": 0.9},
            ValueError,
            "betas must be a pair (beta1, beta2) of floats in [0, 1), got 0.9",
        ),
        ErrorInput("eps=0", {"eps": 0.0}, ValueError, "eps must be in (0, inf), got 0.0"),
        ErrorInput(
            "negative weight_decay",
            {"weight_decay": -0.5},
            ValueError,
            "weight_decay must be in [0, inf), got -0.5",
        ),
    )
    decay = "the weight decay moves the weights without a gradient"
    no_step = "NovoGrad keeps no step count (its second moment starts at the first gradient's norm)"
    flags: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("", {}, {}),
        ("-for_loop", {"foreach": False}, {}),
        ("-foreach", {"foreach": True}, {}),
        ("-weight_decay", {"weight_decay": 0.125}, {ZERO_GRADIENTS: decay}),
        ("-grad_averaging", {"grad_averaging": True}, {}),
        ("-amsgrad", {"amsgrad": True}, {}),
        (
            "-decoupled_weight_decay",
            {"decoupled_weight_decay": True, "weight_decay": 0.125},
            {ZERO_GRADIENTS: decay},
        ),
        ("-maximize", {"maximize": True}, {}),
    ]
    return [
        OptimizerCase(
            id=f"NovoGrad{suffix}",
            optimizer_class=NovoGrad,
            make=direct(NovoGrad, lr=2**-4, **kwargs),
            lr=2**-4,
            other_hyperparameters={"lr": 0.25, "betas": (0.5, 0.75), "eps": 1e-3},
            implementations=FOREACH_PAIR,
            errors=errors,
            unsupported={NUMBER_STEP: no_step, **unsupported},
        )
        for suffix, kwargs, unsupported in flags
    ]


def checked_adam_errors() -> tuple[ErrorInput, ...]:
    """What AdaBound and Ranger raise for the hyper-parameters of Adam's family
    (``check_hyperparameters`` in src/torch_lookahead/optim/_functional.py)."""
    return (
        ErrorInput("negative lr", {"lr": -1.0}, ValueError, "lr must be in [0, inf), got -1.0"),
        ErrorInput(
            "beta1=1", {"betas": (1.0, 0.999)}, ValueError, "betas[0] must be in [0, 1), got 1.0"
        ),
        ErrorInput(
            "beta2=1.5", {"betas": (0.9, 1.5)}, ValueError, "betas[1] must be in [0, 1), got 1.5"
        ),
        ErrorInput("negative eps", {"eps": -1.0}, ValueError, "eps must be in [0, inf), got -1.0"),
        ErrorInput(
            "negative weight_decay",
            {"weight_decay": -0.5},
            ValueError,
            "weight_decay must be in [0, inf), got -0.5",
        ),
    )


def adabound_cases() -> list[OptimizerCase]:
    errors = (
        *checked_adam_errors(),
        ErrorInput(
            "negative final_lr",
            {"final_lr": -0.5},
            ValueError,
            "final_lr must be in [0, inf), got -0.5",
        ),
        ErrorInput("gamma=1", {"gamma": 1.0}, ValueError, "gamma must be in (0, 1), got 1.0"),
    )
    decay = "the weight decay moves the weights without a gradient"
    base = {"lr": 2**-5, "final_lr": 0.125, "gamma": 0.125}
    flags: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("AdaBound", {}, {}),
        ("AdaBound-for_loop", {"foreach": False}, {}),
        ("AdaBound-foreach", {"foreach": True}, {}),
        ("AdaBound-weight_decay", {"weight_decay": 0.125}, {ZERO_GRADIENTS: decay}),
        (
            "AdaBound-decoupled_weight_decay",
            {"decoupled_weight_decay": True, "weight_decay": 0.125},
            {ZERO_GRADIENTS: decay},
        ),
        ("AdaBound-maximize", {"maximize": True}, {}),
        ("AMSBound", {"amsbound": True}, {}),
        ("AMSBound-for_loop", {"amsbound": True, "foreach": False}, {}),
    ]
    return [
        OptimizerCase(
            id=name,
            optimizer_class=AdaBound,
            make=direct(AdaBound, **base, **kwargs),
            lr=base["lr"],
            other_hyperparameters={"lr": 0.25, "betas": (0.5, 0.75), "final_lr": 0.5, "gamma": 0.5},
            implementations=FOREACH_PAIR,
            errors=errors,
            unsupported=unsupported,
        )
        for name, kwargs, unsupported in flags
    ]


def ranger_cases() -> list[OptimizerCase]:
    base = {"lr": 2**-6, "k": K}
    other = {"lr": 0.25, "betas": (0.5, 0.75), "k": 3, "alpha": 0.25}
    return [
        OptimizerCase(
            id=name,
            optimizer_class=Ranger,
            make=direct(Ranger, **base, **kwargs),
            lr=base["lr"],
            other_hyperparameters=other,
            implementations=FOREACH_PAIR,
            errors=checked_adam_errors() + lookahead_errors(),
        )
        for name, kwargs in [
            ("Ranger", {}),
            ("Ranger-foreach", {"foreach": True}),
            ("Ranger-pullback", {"pullback_momentum": "pullback"}),
        ]
    ]


SGD_ERRORS = (
    ErrorInput("negative lr", {"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
    ErrorInput("negative momentum", {"momentum": -0.5}, ValueError, "Invalid momentum value: -0.5"),
    ErrorInput(
        "negative weight_decay",
        {"weight_decay": -0.5},
        ValueError,
        "Invalid weight_decay value: -0.5",
    ),
)


SGD_NO_STEP = "torch's SGD keeps no step count"


def lookahead_cases() -> list[OptimizerCase]:
    cases = []
    sgd_variants = {
        "momentum": {"momentum": 0.75},
        "nesterov": {"momentum": 0.75, "nesterov": True},
        "maximize": {"momentum": 0.75, "maximize": True},
    }
    for mode in ("none", "reset", "pullback"):
        for variant, kwargs in sgd_variants.items():
            for implementation, foreach in (("for_loop", False), ("foreach", True)):
                cases.append(
                    OptimizerCase(
                        id=f"Lookahead-SGD-{variant}-{implementation}-{mode}",
                        optimizer_class=Lookahead,
                        make=wrapped(
                            Lookahead,
                            torch.optim.SGD,
                            {"lr": 2**-4, "foreach": foreach, **kwargs},
                            k=K,
                            pullback_momentum=mode,
                        ),
                        lr=2**-4,
                        other_hyperparameters={"lr": 0.25, "momentum": 0.5, "k": 3, "alpha": 0.25},
                        implementations=FOREACH_PAIR,
                        errors=SGD_ERRORS + lookahead_errors(),
                        unsupported={NUMBER_STEP: SGD_NO_STEP},
                    )
                )
        for implementation, flags in (
            ("for_loop", {"foreach": False}),
            ("foreach", {"foreach": True}),
            ("fused", {"fused": True}),
        ):
            unsupported = {
                ZERO_GRADIENTS: "AdamW's decoupled weight decay moves the weights without a gradient"
            }
            if implementation == "foreach":
                unsupported[TENSOR_LR] = (
                    "torch's AdamW takes a tensor lr with foreach=True only when capturable=True, "
                    "which needs an accelerator"
                )
            if implementation == "fused":
                unsupported[COMPLEX] = "torch's fused AdamW takes floating-point parameters only"
            cases.append(
                OptimizerCase(
                    id=f"Lookahead-AdamW-{implementation}-{mode}",
                    optimizer_class=Lookahead,
                    make=wrapped(
                        Lookahead,
                        torch.optim.AdamW,
                        {"lr": 2**-6, "weight_decay": 2**-6, **flags},
                        k=K,
                        pullback_momentum=mode,
                    ),
                    lr=2**-6,
                    other_hyperparameters={"lr": 0.25, "betas": (0.5, 0.75), "k": 3, "alpha": 0.25},
                    implementations=(
                        ({"foreach": False, "fused": False}, {})
                        if implementation == "fused"
                        else FOREACH_PAIR
                    ),
                    errors=torch_adam_errors() + lookahead_errors(),
                    unsupported=unsupported,
                )
            )
    return cases


def distributed_cases() -> list[OptimizerCase]:
    outer_errors = (
        ErrorInput(
            "outer_momentum=1",
            {"outer_momentum": 1.0},
            ValueError,
            "outer_momentum must be in [0, 1), got 1.0",
        ),
        ErrorInput(
            "nesterov without outer momentum",
            {"outer_momentum": 0.0, "nesterov": True},
            ValueError,
            "nesterov=True needs outer_momentum > 0",
        ),
    )
    return [
        OptimizerCase(
            id="DistributedLookahead-SGD",
            optimizer_class=DistributedLookahead,
            make=wrapped(
                DistributedLookahead, torch.optim.SGD, {"lr": 2**-4, "momentum": 0.75}, k=K
            ),
            lr=2**-4,
            other_hyperparameters={"lr": 0.25, "momentum": 0.5, "k": 3, "alpha": 0.25},
            implementations=FOREACH_PAIR,
            errors=SGD_ERRORS + lookahead_errors() + outer_errors,
            unsupported={NUMBER_STEP: SGD_NO_STEP},
            distributed=True,
        ),
        OptimizerCase(
            id="DistributedLookahead-AdamW-outer_nesterov",
            optimizer_class=DistributedLookahead,
            make=wrapped(
                DistributedLookahead,
                torch.optim.AdamW,
                {"lr": 2**-6, "weight_decay": 2**-6},
                k=K,
                outer_momentum=0.5,
                nesterov=True,
            ),
            lr=2**-6,
            other_hyperparameters={"lr": 0.25, "betas": (0.5, 0.75), "k": 3, "alpha": 0.25},
            implementations=FOREACH_PAIR,
            errors=torch_adam_errors() + lookahead_errors() + outer_errors,
            unsupported={
                ZERO_GRADIENTS: "AdamW's decoupled weight decay moves the weights without a gradient"
            },
            distributed=True,
        ),
    ]


CASES: list[OptimizerCase] = (
    novograd_cases() + adabound_cases() + ranger_cases() + lookahead_cases() + distributed_cases()
)


def cases_for(check: str | None = None) -> list[Any]:
    """The registry as pytest parameters; cases that declare ``check`` unsupported are skipped
    with their declared reason."""
    params = []
    for case in CASES:
        marks = []
        if check is not None and check in case.unsupported:
            marks.append(pytest.mark.skip(reason=f"{case.id}: {case.unsupported[check]}"))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def error_inputs() -> list[Any]:
    return [
        pytest.param(case, bad, id=f"{case.id}-{bad.description}")
        for case in CASES
        for bad in case.errors
    ]


@pytest.fixture(scope="module")
def single_rank_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The default process group: one rank over gloo, in this process, for DistributedLookahead."""
    if dist.is_initialized():
        assert dist.get_world_size() == 1
        yield
        return
    store = dist.FileStore(str(tmp_path_factory.mktemp("gloo") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest) -> OptimizerCase:
    """The case under test (indirectly parametrised), with a process group when it needs one."""
    optimizer_case: OptimizerCase = request.param
    if optimizer_case.distributed:
        request.getfixturevalue("single_rank_group")
    return optimizer_case


over_cases = pytest.mark.parametrize("case", cases_for(), indirect=True)


def over_cases_supporting(check: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", cases_for(check), indirect=True)


# ----------------------------------------------------------------------------- problems
def make_params(
    shapes: tuple[tuple[int, ...], ...] = SHAPES, seed: int = 0, dtype: torch.dtype = torch.float64
) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in shapes
    ]


def clone_params(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def gradients(params: list[Tensor], step: int, stream: int = 0, scale: float = 1.0) -> list[Tensor]:
    """The gradients of step ``step``: a function of the step, the stream and the shapes only."""
    generator = torch.Generator().manual_seed(1_000_003 * stream + step)
    return [
        scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).detach() for p in params
    ]


def drive(
    optimizer: Optimizer,
    params: list[torch.nn.Parameter],
    steps: range,
    stream: int = 0,
    sign: float = 1.0,
) -> None:
    """Give ``params`` the gradients of each step of ``steps`` and step the optimizer."""
    for step in steps:
        for p, grad in zip(params, gradients(params, step, stream), strict=True):
            p.grad = sign * grad
        optimizer.step()


def assert_same(actual: list[Tensor], expected: list[Tensor]) -> None:
    """Bit for bit."""
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.dtype == e.dtype and a.shape == e.shape, index
        assert torch.equal(a.detach(), e.detach()), (
            f"tensor {index} differs by {(a.detach() - e.detach()).abs().max().item():.3g}"
        )


def assert_close(actual: list[Tensor], expected: list[Tensor], tolerance: float = 1e-12) -> None:
    """Equal up to float64 rounding."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e.detach(), rtol=tolerance, atol=tolerance)


def assert_state_dicts_equal(actual: Any, expected: Any, where: str = "state_dict") -> None:
    """The same structure, the same non-tensor values and bit-identical tensors."""
    if isinstance(expected, Tensor):
        assert isinstance(actual, Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(expected), f"{where}: keys {set(actual) ^ set(expected)}"
        for key, value in expected.items():
            assert_state_dicts_equal(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_state_dicts_equal(a, e, f"{where}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), where
    else:
        assert actual == expected and type(actual) is type(expected), where


def state_tensors(optimizer: Optimizer) -> list[Tensor]:
    return [
        value
        for param_state in optimizer.state.values()
        for value in param_state.values()
        if isinstance(value, Tensor)
    ]


def inner_of(optimizer: Optimizer) -> Optimizer | None:
    """The inner optimizer of a Lookahead (or subclass), None for a plain optimizer."""
    return optimizer.optimizer if isinstance(optimizer, Lookahead) else None


def hyperparameters(optimizer: Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


# ----------------------------------------------------------------------------- the registry
def test_registry_covers_every_optimizer_the_package_ships() -> None:
    shipped = {
        value
        for module in (torch_lookahead, torch_lookahead.optim, torch_lookahead.distributed)
        for value in (getattr(module, name) for name in module.__all__)
        if isinstance(value, type)
        and issubclass(value, Optimizer)
        and value.__module__.startswith("torch_lookahead")
    }
    assert shipped == {NovoGrad, AdaBound, Ranger, Lookahead, DistributedLookahead}
    assert shipped <= {case.optimizer_class for case in CASES}
    assert len({case.id for case in CASES}) == len(CASES)


@over_cases
def test_builds_the_declared_optimizer_class(case: OptimizerCase) -> None:
    optimizer = case.make(make_params())
    assert type(optimizer) is case.optimizer_class
    assert isinstance(optimizer, Optimizer)
    assert optimizer.param_groups[0]["lr"] == case.lr
    assert f"lr: {case.lr}" in repr(optimizer)


# ----------------------------------------------------------------------------- state_dict
@over_cases
def test_state_dict_is_deterministic(case: OptimizerCase) -> None:
    """Two optimizers built and stepped alike save equal state dicts, and a state dict loaded
    into a fresh optimizer is saved back unchanged."""
    runs = []
    for _ in range(2):
        params = make_params()
        optimizer = case.make(params)
        drive(optimizer, params, range(STEPS_BEFORE_SAVE))
        runs.append(optimizer)
    first = runs[0].state_dict()
    assert_state_dicts_equal(runs[1].state_dict(), first)
    assert_state_dicts_equal(runs[0].state_dict(), first)  # saving changes nothing

    fresh = case.make(make_params(seed=1))
    fresh.load_state_dict(copy.deepcopy(first))
    assert_state_dicts_equal(fresh.state_dict(), first)


@over_cases
def test_state_dict_round_trip_through_weights_only_load(case: OptimizerCase) -> None:
    """Save mid-run (mid-cycle for Lookahead), ``torch.load(weights_only=True)``, load into a fresh
    optimizer built with other hyper-parameters: the saved ones win and both runs continue bit for
    bit alike."""
    params = make_params()
    optimizer = case.make(params)
    drive(optimizer, params, range(STEPS_BEFORE_SAVE))

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed_params = clone_params(params)
    resumed = case.make(resumed_params, **case.other_hyperparameters)
    assert hyperparameters(resumed) != hyperparameters(optimizer)
    with warnings.catch_warnings():
        # Saying that the checkpoint's values replace the constructor's is allowed (torch is silent).
        warnings.simplefilter("ignore", UserWarning)
        resumed.load_state_dict(checkpoint)
    assert hyperparameters(resumed) == hyperparameters(optimizer)

    steps = range(STEPS_BEFORE_SAVE, STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE)
    drive(optimizer, params, steps)
    drive(resumed, resumed_params, steps)
    assert_same(resumed_params, params)
    assert_state_dicts_equal(resumed.state_dict(), optimizer.state_dict())


@over_cases
def test_deepcopy_continues_identically_and_shares_no_tensors(case: OptimizerCase) -> None:
    params = make_params()
    optimizer = case.make(params)
    drive(optimizer, params, range(STEPS_BEFORE_SAVE))
    clone = copy.deepcopy(optimizer)

    assert type(clone) is type(optimizer)
    assert {k for k in vars(clone) if not k.startswith("_")} == {
        k for k in vars(optimizer) if not k.startswith("_")
    }
    clone_params_ = [p for group in clone.param_groups for p in group["params"]]
    original = {t.untyped_storage().data_ptr() for t in [*params, *state_tensors(optimizer)]}
    copied = {t.untyped_storage().data_ptr() for t in [*clone_params_, *state_tensors(clone)]}
    assert not original & copied
    assert_state_dicts_equal(clone.state_dict(), optimizer.state_dict())

    steps = range(STEPS_BEFORE_SAVE, STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE)
    drive(optimizer, params, steps)
    drive(clone, clone_params_, steps)
    assert_same(clone_params_, params)
    assert_state_dicts_equal(clone.state_dict(), optimizer.state_dict())


# ----------------------------------------------------------------------------- older checkpoints
#: Group entries that versions after an optimizer's first added, which a checkpoint of that first
#: version therefore lacks: torch's own test_optim deletes the same ones
#: (``OptimizerInfo.not_og_supported_flags``), and NovoGrad's and AdaBound's own options.
LATER_FLAGS = (
    "foreach",
    "differentiable",
    "maximize",
    "capturable",
    "fused",
    "amsgrad",
    "decoupled_weight_decay",
    "grad_averaging",
)


def resume_and_drive(
    case: OptimizerCase, saved_params: list[torch.nn.Parameter], checkpoint: dict[str, Any]
) -> tuple[list[torch.nn.Parameter], Optimizer]:
    """A fresh optimizer of ``case`` on copies of ``saved_params``, loaded with ``checkpoint`` and
    driven through the steps after the save."""
    params = clone_params(saved_params)
    optimizer = case.make(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # as in the round trip above
        optimizer.load_state_dict(copy.deepcopy(checkpoint))
    drive(optimizer, params, range(STEPS_BEFORE_SAVE, STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE))
    return params, optimizer


def saved_mid_run(case: OptimizerCase) -> tuple[list[torch.nn.Parameter], Optimizer]:
    """Copies of the parameters after ``STEPS_BEFORE_SAVE`` steps, and the optimizer stepped so."""
    params = make_params()
    optimizer = case.make(params)
    drive(optimizer, params, range(STEPS_BEFORE_SAVE))
    return clone_params(params), optimizer


@over_cases
def test_a_group_saved_before_a_flag_existed_loads_with_the_flags_default(
    case: OptimizerCase,
) -> None:
    """Each later flag deleted from every saved group (one at a time): the checkpoint loads, the
    group gets the flag's default (the value a group built without the argument has) and the
    run continues bit for bit as from the checkpoint with that default written in."""
    saved_params, optimizer = saved_mid_run(case)
    saved = optimizer.state_dict()
    holder = inner_of(optimizer) or optimizer  # the optimizer whose groups these are
    default_group = type(holder)(make_params(), lr=case.lr).param_groups[0]
    flags = [flag for flag in LATER_FLAGS if flag in saved["param_groups"][0]]
    assert flags, f"{case.id}: no later flag in {sorted(saved['param_groups'][0])}"
    for flag in flags:
        older = copy.deepcopy(saved)
        explicit = copy.deepcopy(saved)
        for older_group, explicit_group in zip(
            older["param_groups"], explicit["param_groups"], strict=True
        ):
            del older_group[flag]
            explicit_group[flag] = default_group[flag]
        params, resumed = resume_and_drive(case, saved_params, older)
        expected_params, expected = resume_and_drive(case, saved_params, explicit)
        assert_same(params, expected_params)
        if type(holder).__module__.startswith("torch_lookahead"):
            # torch's own optimizers fill in what their __setstate__ says (SGD: fused=False for
            # the constructor's None, the same implementation): that is torch's contract.
            assert [g[flag] for g in hyperparameters(resumed)] == [
                g[flag] for g in hyperparameters(expected)
            ], flag
        resumed_dict, expected_dict = resumed.state_dict(), expected.state_dict()
        for group in [*resumed_dict["param_groups"], *expected_dict["param_groups"]]:
            del group[flag]
        assert_state_dicts_equal(resumed_dict, expected_dict, f"state_dict without {flag!r}")


@over_cases_supporting(NUMBER_STEP)
@pytest.mark.parametrize("number", [int, float])
def test_a_step_count_saved_as_a_python_number_loads_and_steps_like_a_tensor(
    case: OptimizerCase, number: type[int] | type[float]
) -> None:
    """The per-parameter ``step`` saved as an int or a float (older torch; torch-optimizer's
    AdaBound): the checkpoint loads and the run continues bit for bit as from the tensor step,
    state included."""
    saved_params, optimizer = saved_mid_run(case)
    saved = optimizer.state_dict()
    older = copy.deepcopy(saved)
    converted = 0
    for param_state in older["state"].values():
        if isinstance(param_state.get("step"), Tensor):
            param_state["step"] = number(param_state["step"].item())
            converted += 1
    assert converted, f"{case.id}: no per-parameter step in the state (declare {NUMBER_STEP})"
    params, resumed = resume_and_drive(case, saved_params, older)
    expected_params, expected = resume_and_drive(case, saved_params, saved)
    assert_same(params, expected_params)
    assert_state_dicts_equal(resumed.state_dict(), expected.state_dict())


# ----------------------------------------------------------------------------- hooks
@over_cases
def test_instance_step_hooks_fire_once_per_step(case: OptimizerCase) -> None:
    """Hooks on the optimizer see it once per ``step()``; hooks on a wrapper's inner optimizer
    see the inner optimizer once per step, between the wrapper's."""
    params = make_params()
    optimizer = case.make(params)
    inner = inner_of(optimizer)
    events: list[tuple[str, int]] = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(opt: Optimizer, args: Any, kwargs: Any, *rest: Any) -> None:
            events.append((name, id(opt)))

        return hook

    handles = [
        optimizer.register_step_pre_hook(recorder("pre")),
        optimizer.register_step_post_hook(recorder("post")),
    ]
    expected_step = [("pre", id(optimizer))]
    if inner is not None:
        handles.append(inner.register_step_pre_hook(recorder("inner pre")))
        handles.append(inner.register_step_post_hook(recorder("inner post")))
        expected_step += [("inner pre", id(inner)), ("inner post", id(inner))]
    expected_step.append(("post", id(optimizer)))

    n_steps = K + 1  # across a sync
    drive(optimizer, params, range(n_steps))
    assert events == expected_step * n_steps

    for handle in handles:
        handle.remove()
    events.clear()
    drive(optimizer, params, range(n_steps, n_steps + 1))
    assert events == []


@over_cases
def test_global_step_hooks_fire_once_per_step_with_the_optimizer_stepped(
    case: OptimizerCase,
) -> None:
    """``register_optimizer_step_pre_hook``/``_post_hook`` fire exactly once per user ``step()``
    and see the optimizer the user stepped (the wrapper, not its inner optimizer), in torch's
    order around the instance hooks."""
    params = make_params()
    optimizer = case.make(params)
    events: list[tuple[str, str]] = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
            events.append((name, type(opt).__name__ if opt is not optimizer else "the optimizer"))

        return hook

    optimizer.register_step_pre_hook(recorder("pre"))
    optimizer.register_step_post_hook(recorder("post"))
    global_handles = [
        register_optimizer_step_pre_hook(recorder("global pre")),
        register_optimizer_step_post_hook(recorder("global post")),
    ]
    n_steps = K + 1
    try:
        drive(optimizer, params, range(n_steps))
    finally:
        for handle in global_handles:
            handle.remove()
    expected_step = [
        ("global pre", "the optimizer"),
        ("pre", "the optimizer"),
        ("post", "the optimizer"),
        ("global post", "the optimizer"),
    ]
    assert events == expected_step * n_steps


@over_cases
def test_state_dict_hooks_fire_once_per_call_and_their_results_are_used(
    case: OptimizerCase,
) -> None:
    params = make_params()
    optimizer = case.make(params)
    drive(optimizer, params, range(STEPS_BEFORE_SAVE))
    inner = inner_of(optimizer)
    events: list[str] = []

    def on_save_pre(opt: Optimizer) -> None:
        assert opt is optimizer
        events.append("save pre")

    def on_save_post(opt: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        assert opt is optimizer
        events.append("save post")
        state_dict["param_groups"][0]["hooked"] = "saved"
        return state_dict

    def on_load_pre(opt: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        assert opt is optimizer
        events.append("load pre")
        state_dict = copy.copy(state_dict)
        state_dict["param_groups"] = [dict(g) for g in state_dict["param_groups"]]
        state_dict["param_groups"][0]["lr"] = 0.125
        return state_dict

    def on_load_post(opt: Optimizer) -> None:
        assert opt is optimizer
        events.append("load post")

    optimizer.register_state_dict_pre_hook(on_save_pre)
    optimizer.register_state_dict_post_hook(on_save_post)
    optimizer.register_load_state_dict_pre_hook(on_load_pre)
    optimizer.register_load_state_dict_post_hook(on_load_post)
    if inner is not None:
        inner.register_state_dict_pre_hook(lambda o: events.append("inner save pre"))
        inner.register_state_dict_post_hook(lambda o, sd: events.append("inner save post"))
        inner.register_load_state_dict_pre_hook(lambda o, sd: events.append("inner load pre"))
        inner.register_load_state_dict_post_hook(lambda o: events.append("inner load post"))
    inner_save = ["inner save pre", "inner save post"] if inner is not None else []
    inner_load = ["inner load pre", "inner load post"] if inner is not None else []

    state_dict = optimizer.state_dict()
    assert events == ["save pre", *inner_save, "save post"]
    assert state_dict["param_groups"][0]["hooked"] == "saved"

    events.clear()
    optimizer.load_state_dict(state_dict)
    assert events == ["load pre", *inner_load, "load post"]
    assert optimizer.param_groups[0]["lr"] == 0.125  # what the pre-hook returned was loaded
    assert optimizer.param_groups[0]["hooked"] == "saved"


# ----------------------------------------------------------------------------- param groups
@over_cases
def test_add_param_group_mid_run_optimises_the_new_group_on_its_own(case: OptimizerCase) -> None:
    """A group added after some steps follows the trajectory of an optimizer over that group
    alone, started at the same time (its own step counts, its own Lookahead cycle), and the
    first group is not disturbed."""
    first = make_params(seed=0)
    added = make_params(((5,), (2, 2)), seed=1)
    first_alone, added_alone = clone_params(first), clone_params(added)
    added_lr = case.other_hyperparameters["lr"]

    optimizer = case.make(first)
    drive(optimizer, first, range(STEPS_BEFORE_SAVE), stream=0)
    optimizer.add_param_group({"params": added, "lr": added_lr})
    assert optimizer.param_groups[1]["lr"] == added_lr
    for step in range(STEPS_BEFORE_SAVE, STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE):
        for params, stream in ((first, 0), (added, 1)):
            for p, grad in zip(params, gradients(params, step, stream), strict=True):
                p.grad = grad
        optimizer.step()

    reference_first = case.make(first_alone)
    drive(reference_first, first_alone, range(STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE), stream=0)
    reference_added = case.make(added_alone, lr=added_lr)
    drive(
        reference_added,
        added_alone,
        range(STEPS_BEFORE_SAVE, STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE),
        stream=1,
    )
    added_start = make_params(((5,), (2, 2)), seed=1)
    assert not any(torch.equal(p, q) for p, q in zip(added, added_start, strict=True))
    assert_same(first, first_alone)
    assert_same(added, added_alone)
    if isinstance(optimizer, Lookahead):  # each group counts its own steps towards its sync
        steps = [group["lookahead_step"] for group in optimizer.param_groups]
        assert steps == [(STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE) % K, STEPS_AFTER_SAVE % K]


# ----------------------------------------------------------------------------- maximize
@over_cases
def test_maximize_equals_minimising_the_negated_objective(case: OptimizerCase) -> None:
    runs = []
    for maximize, sign in ((True, 1.0), (False, -1.0)):
        params = make_params()
        optimizer = case.make(params, maximize=maximize)
        assert all(group["maximize"] is maximize for group in optimizer.param_groups)
        drive(optimizer, params, range(K + 2), sign=sign)
        runs.append(params)
    assert_close(*runs)
    assert not torch.equal(runs[0][0], make_params()[0])


# ----------------------------------------------------------------------------- implementations
@over_cases_supporting(FOREACH_PARITY)
@settings(max_examples=4, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4
    ),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    n_steps=st.integers(1, 2 * K + 1),
)
def test_implementations_agree_in_float64(
    case: OptimizerCase, shapes: list[tuple[int, ...]], seed: int, scale: float, n_steps: int
) -> None:
    """The for-loop and the foreach (or fused) implementations give the same trajectory."""
    runs = []
    for overrides in case.implementations:
        params = make_params(tuple(shapes), seed=seed)
        optimizer = case.make(params, **overrides)
        for step in range(n_steps):
            for p, grad in zip(params, gradients(params, step, seed, scale), strict=True):
                p.grad = grad
            optimizer.step()
        runs.append((params, optimizer))
    (loop_params, loop), (other_params, other) = runs
    assert_close(other_params, loop_params)
    for p, q in zip(loop_params, other_params, strict=True):
        for key, value in loop.state[p].items():
            if isinstance(value, Tensor):
                assert_close([other.state[q][key].to(value.dtype)], [value])


@over_cases_supporting(COMPLEX)
def test_complex_parameters_follow_their_real_view(case: OptimizerCase) -> None:
    """A complex parameter (next to a real one in the same group) moves as its
    ``torch.view_as_real`` view does as a real parameter."""
    generator = torch.Generator().manual_seed(5)
    complex_start = torch.randn(3, 2, dtype=torch.complex128, generator=generator)
    real_start = torch.randn(4, dtype=torch.float64, generator=generator)
    complex_params = [torch.nn.Parameter(complex_start.clone()), torch.nn.Parameter(real_start)]
    view_params = [
        torch.nn.Parameter(torch.view_as_real(complex_start).clone()),
        torch.nn.Parameter(real_start.clone()),
    ]
    complex_opt = case.make(complex_params)
    view_opt = case.make(view_params)
    for step in range(2 * K + 1):
        complex_grad, real_grad = gradients(complex_params, step)
        # Copies: an optimizer may write into p.grad (torch's foreach SGD with nesterov does).
        complex_params[0].grad, complex_params[1].grad = complex_grad, real_grad
        view_params[0].grad = torch.view_as_real(complex_grad).clone()
        view_params[1].grad = real_grad.clone()
        complex_opt.step()
        view_opt.step()
    assert_close(
        [torch.view_as_real(complex_params[0].detach()), complex_params[1]],
        list(view_params),
    )
    assert not torch.equal(complex_params[0].detach(), complex_start)


@over_cases_supporting(TENSOR_LR)
def test_tensor_lr_gives_the_float_lr_trajectory(case: OptimizerCase) -> None:
    """A 0-dim tensor lr (of the same value) is accepted and gives the float lr's result."""
    runs = []
    # In the parameters' dtype: torch's own optimizers compute with a float32 tensor lr in float32.
    for lr in (case.lr, torch.tensor(case.lr, dtype=torch.float64)):
        params = make_params()
        optimizer = case.make(params, lr=lr)
        drive(optimizer, params, range(K + 2))
        runs.append(params)
    assert_close(runs[1], runs[0])


# ----------------------------------------------------------------------------- the step
def quadratic_loss(params: list[torch.nn.Parameter]) -> Tensor:
    targets = make_params(tuple(tuple(p.shape) for p in params), seed=9)
    loss = torch.zeros((), dtype=torch.float64)
    for weight, (p, target) in enumerate(zip(params, targets, strict=True), start=1):
        loss = loss + 0.5 * weight * (p - target.detach()).pow(2).sum()
    return loss


@over_cases
def test_closure_runs_once_per_step_and_its_loss_is_returned(case: OptimizerCase) -> None:
    with_closure, without_closure = make_params(), make_params()
    optimizer = case.make(with_closure)
    reference = case.make(without_closure)
    calls: list[Tensor] = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = quadratic_loss(with_closure)
        loss.backward()
        calls.append(loss)
        return loss

    for _ in range(K + 1):
        calls.clear()
        returned = optimizer.step(closure)
        assert len(calls) == 1 and returned is calls[0]

        reference.zero_grad()
        quadratic_loss(without_closure).backward()
        reference.step()
    assert_same(with_closure, without_closure)


@over_cases
def test_step_without_gradients_changes_no_parameter(case: OptimizerCase) -> None:
    params = make_params()
    start = clone_params(params)
    optimizer = case.make(params)
    for _ in range(K + 1):
        optimizer.step()
    assert_same(params, start)


@over_cases
def test_step_emits_no_warning(case: OptimizerCase) -> None:
    """Like torch.optim's own optimizers, a plain step warns about nothing (a warning that a
    user's code did not cause becomes an error under ``-W error``)."""
    params = make_params()
    optimizer = case.make(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drive(optimizer, params, range(K + 1))
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


@over_cases_supporting(ZERO_GRADIENTS)
def test_zero_gradients_leave_the_parameters_unchanged(case: OptimizerCase) -> None:
    params = make_params()
    start = clone_params(params)
    optimizer = case.make(params)
    for _ in range(2 * K + 1):
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    assert_same(params, start)


@over_cases
def test_zero_grad(case: OptimizerCase) -> None:
    params = make_params()
    optimizer = case.make(params)
    drive(optimizer, params, range(1))
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)
    for p, grad in zip(params, gradients(params, 1), strict=True):
        p.grad = grad
    kept = [p.grad for p in params]
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is g and not p.grad.any() for p, g in zip(params, kept, strict=True))


# ----------------------------------------------------------------------------- LR schedulers
SCHEDULERS: dict[str, Callable[[Optimizer], torch.optim.lr_scheduler.LRScheduler]] = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "LambdaLR": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (1 + epoch)),
}


@over_cases
@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
def test_lr_scheduler_changes_the_lr_the_step_uses(
    case: OptimizerCase, scheduler_name: str
) -> None:
    """A scheduler on the optimizer steps without warnings, changes ``group["lr"]``, and the
    trajectory is the one of the same lrs set by hand."""
    n_steps = 2 * K
    scheduled_params = make_params()
    optimizer = case.make(scheduled_params)
    lrs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheduler = SCHEDULERS[scheduler_name](optimizer)
        for step in range(n_steps):
            lrs.append(optimizer.param_groups[0]["lr"])
            drive(optimizer, scheduled_params, range(step, step + 1))
            scheduler.step()
    # torch's own deprecation notices are not the scheduler's business (test_step_emits_no_warning
    # checks what a step emits)
    relevant = [
        w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))
    ]
    assert [str(w.message) for w in relevant] == []
    assert len(set(lrs)) > 1 and lrs[0] == case.lr

    manual_params = make_params()
    manual = case.make(manual_params)
    for step, lr in enumerate(lrs):
        for group in manual.param_groups:
            group["lr"] = lr
        drive(manual, manual_params, range(step, step + 1))
    assert_same(scheduled_params, manual_params)

    constant_params = make_params()
    drive(case.make(constant_params), constant_params, range(n_steps))
    assert not all(
        torch.equal(a, b) for a, b in zip(constant_params, scheduled_params, strict=True)
    )


# ----------------------------------------------------------------------------- error inputs
def torch_error(build: Callable[[], Any]) -> tuple[type[Exception], str]:
    """The exception type and message that ``build`` (made with torch.optim.SGD) raises."""
    with pytest.raises(Exception) as info:
        build()
    return type(info.value), str(info.value)


def assert_raises_exactly(error: type[Exception], message: str, build: Callable[[], Any]) -> None:
    with pytest.raises(Exception) as info:
        build()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value) == message


@pytest.mark.parametrize(("case", "bad"), error_inputs(), indirect=["case"])
def test_bad_hyperparameters_raise_the_exact_error(case: OptimizerCase, bad: ErrorInput) -> None:
    assert_raises_exactly(bad.error, bad.message, lambda: case.make(make_params(), **bad.kwargs))


def a_parameter_in_two_groups() -> list[dict[str, Any]]:
    param, other = make_params(((2,), (2,)))
    return [{"params": [param]}, {"params": [param, other]}]


def named_and_unnamed_parameters() -> list[Any]:
    param, other = make_params(((2,), (2,)))
    return [("weight", param), other]


#: Malformed ``params``, built afresh for each use.
BAD_PARAMS: dict[str, Callable[[], Any]] = {
    "None": lambda: None,
    "a single tensor": lambda: make_params(((2,),))[0],
    "a parameter in two groups": a_parameter_in_two_groups,
    "named and unnamed parameters mixed": named_and_unnamed_parameters,
}


@over_cases
@pytest.mark.parametrize("bad_params", list(BAD_PARAMS))
def test_bad_params_raise_torchs_own_error(case: OptimizerCase, bad_params: str) -> None:
    """What torch.optim raises for malformed ``params``, with torch's type and message."""
    build_params = BAD_PARAMS[bad_params]
    error, message = torch_error(lambda: torch.optim.SGD(build_params(), lr=0.1))
    assert_raises_exactly(error, message, lambda: case.make(build_params()))


@over_cases_supporting(TENSOR_LR)
def test_tensor_lr_with_more_than_one_element_is_refused_like_torch(case: OptimizerCase) -> None:
    lr = torch.tensor([0.1, 0.1])
    error, message = torch_error(lambda: torch.optim.SGD(make_params(), lr=lr))
    assert_raises_exactly(error, message, lambda: case.make(make_params(), lr=lr))


@over_cases
def test_duplicate_parameters_in_a_group_warn_like_torch(case: OptimizerCase) -> None:
    param = make_params(((2,),))[0]
    with pytest.warns(UserWarning) as expected:
        torch.optim.SGD([param, param], lr=0.1)
    with pytest.warns(UserWarning) as caught:
        case.make([param, param])
    assert [str(w.message) for w in caught] == [str(w.message) for w in expected]
