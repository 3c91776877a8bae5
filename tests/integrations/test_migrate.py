"""Checkpoints of timm's and pytorch_optimizer's Lookahead, converted, continue the same trajectory.

Each test trains with the other library, saves mid-cycle, continues there (the target), and
continues instead with torch-lookahead from the converted checkpoint. float64 keeps the rounding
differences between the libraries' interpolation formulas far below the tolerance.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from tests._slow import slow_weights_of
from tests.integrations._tensors import parameters_of
from torch_lookahead import Lookahead
from torch_lookahead.integrations.migrate import (
    convert_pytorch_optimizer_state_dict,
    convert_timm_state_dict,
)

K, ALPHA = 3, 0.5
STEPS_BEFORE, STEPS_AFTER = 4, 5  # saved mid-cycle; two syncs after the resume


def _timm_lookahead_class() -> Any:
    """timm's Lookahead. ``import timm`` needs torchvision, its lookahead module only torch."""
    try:
        from timm.optim.lookahead import Lookahead as TimmLookahead
    except ImportError:
        try:
            distribution = importlib.metadata.distribution("timm")
        except importlib.metadata.PackageNotFoundError:
            pytest.skip("timm is not installed")
        path = distribution.locate_file("timm/optim/lookahead.py")
        spec = importlib.util.spec_from_file_location("_timm_lookahead", str(path))
        if spec is None or spec.loader is None:
            pytest.skip("timm's lookahead module cannot be loaded")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.Lookahead
    return TimmLookahead


def _model(frozen: str = "") -> nn.Module:
    """``frozen``: "bias", one parameter without gradients; "layer", the first layer's two."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[0].bias.requires_grad_(not frozen)
    model[0].weight.requires_grad_(frozen != "layer")
    return model


def _train(model: nn.Module, optimizer: Optimizer, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _saved(state_dict: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint file gives back (also checks the other format survives weights_only)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


def _continue_with_torch_lookahead(
    params_at_save: list[Tensor],
    inner: Callable[[Any], Optimizer],
    converted: dict[str, Any],
    pullback_momentum: str = "none",
) -> tuple[list[Tensor], list[Tensor]]:
    model = _model()
    with torch.no_grad():
        for p, saved in zip(model.parameters(), params_at_save, strict=True):
            p.copy_(saved)
    optimizer = Lookahead(
        inner(model.parameters()), k=K, alpha=ALPHA, pullback_momentum=pullback_momentum
    )
    optimizer.load_state_dict(converted)
    if optimizer.in_eval_mode:  # written during evaluation: train() as clear_and_load_backup()
        optimizer.train()
    _train(model, optimizer, STEPS_AFTER)
    return parameters_of(model), slow_weights_of(optimizer)


def _assert_close(actual: list[Tensor], expected: list[Tensor]) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def _plain_sgd(params: Any) -> Optimizer:
    return torch.optim.SGD(params, lr=0.1)  # keeps no state


def _sgd(params: Any) -> Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _adam(params: Any) -> Optimizer:
    return torch.optim.Adam(params, lr=0.01)


def _adam_two_groups(params: Any) -> Optimizer:
    params = list(params)  # the first layer's, then the last layer's
    return torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=0.01)


def _sgdp(params: Any) -> Optimizer:
    """pytorch_optimizer's SGDP: momentum 0 and a 'dampening' key as SGD's, but it keeps state."""
    sgdp = getattr(pytest.importorskip("pytorch_optimizer"), "SGDP", None)
    if sgdp is None:
        pytest.skip("pytorch_optimizer has no SGDP")
    return sgdp(params, lr=0.1)  # type: ignore[no-any-return]


@pytest.mark.parametrize("inner", [_sgd, _adam], ids=["sgd-momentum", "adam"])
def test_timm_checkpoint_continues_on_the_timm_trajectory(
    inner: Callable[[Any], Optimizer],
) -> None:
    timm_lookahead = _timm_lookahead_class()
    model = _model()
    optimizer = timm_lookahead(inner(model.parameters()), alpha=ALPHA, k=K)
    _train(model, optimizer, STEPS_BEFORE)
    checkpoint = _saved(optimizer.state_dict())
    params_at_save = parameters_of(model)
    _train(model, optimizer, STEPS_AFTER)
    inner_state = optimizer._base_optimizer.state  # timm keeps its slow weights there
    expected_slow = [
        inner_state[p]["lookahead_slow_buff"] for g in optimizer.param_groups for p in g["params"]
    ]

    converted = convert_timm_state_dict(checkpoint)
    assert converted["param_groups"][0]["lookahead_step"] == STEPS_BEFORE % K
    params, slow = _continue_with_torch_lookahead(params_at_save, inner, converted)

    _assert_close(params, parameters_of(model))
    _assert_close(slow, expected_slow)


@pytest.mark.parametrize("evaluating", [False, True], ids=["training", "evaluating"])
@pytest.mark.parametrize(
    ("inner", "pullback_momentum", "frozen"),
    [
        (_plain_sgd, "none", ""),
        (_plain_sgd, "none", "bias"),
        (_sgd, "none", ""),
        (_sgd, "pullback", ""),
        (_adam, "none", ""),
        (_adam, "none", "bias"),
        (_adam_two_groups, "none", "layer"),
        (_sgdp, "none", ""),
        (_sgdp, "none", "bias"),
    ],
    ids=[
        "sgd",
        "sgd-frozen",
        "sgd-momentum",
        "sgd-pullback",
        "adam",
        "adam-frozen",
        "adam-group-frozen",
        "sgdp",
        "sgdp-frozen",
    ],
)
def test_pytorch_optimizer_checkpoint_continues_on_its_trajectory(
    inner: Callable[[Any], Optimizer], pullback_momentum: str, frozen: str, evaluating: bool
) -> None:
    """Saved mid-cycle, while training or evaluating (between backup_and_load_cache() and
    clear_and_load_backup(): the model holds the slow weights); frozen: parameters without
    gradients until the save, so without inner state where the optimizer keeps state (Adam, SGDP;
    "layer": a whole group of them), and updated after it."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    model = _model(frozen)
    optimizer = pytorch_optimizer.Lookahead(
        inner(model.parameters()), k=K, alpha=ALPHA, pullback_momentum=pullback_momentum
    )
    _train(model, optimizer, STEPS_BEFORE)
    if evaluating:
        optimizer.backup_and_load_cache()
    checkpoint = _saved(optimizer.state_dict())
    params_at_save = parameters_of(model)
    if evaluating:
        optimizer.clear_and_load_backup()
    model.requires_grad_(True)
    _train(model, optimizer, STEPS_AFTER)
    expected_slow = [
        optimizer.state[p]["slow_params"] for g in optimizer.param_groups for p in g["params"]
    ]

    converted = convert_pytorch_optimizer_state_dict(checkpoint, k=K, alpha=ALPHA)
    assert converted["param_groups"][0]["lookahead_step"] == STEPS_BEFORE % K
    params, slow = _continue_with_torch_lookahead(
        params_at_save, inner, converted, pullback_momentum
    )

    _assert_close(params, parameters_of(model))
    _assert_close(slow, expected_slow)


def _timm_format_state_dict() -> dict[str, Any]:
    slow = torch.zeros(2)
    return {
        "state": {0: {"momentum_buffer": torch.ones(2), "lookahead_slow_buff": slow}},
        "param_groups": [
            {
                "lr": 0.1,
                "lookahead_k": 4,
                "lookahead_alpha": 0.5,
                "lookahead_step": 10,
                "params": [0],
            }
        ],
    }


def test_timm_conversion_renames_the_slow_weights_and_counts_from_the_last_sync() -> None:
    original = _timm_format_state_dict()
    untouched = copy.deepcopy(original)

    converted = convert_timm_state_dict(original)

    assert converted["param_groups"][0]["lookahead_step"] == 10 % 4
    assert set(converted["state"][0]) == {"momentum_buffer", "lookahead_slow"}
    assert converted["state"][0]["lookahead_slow"] is original["state"][0]["lookahead_slow_buff"]
    # The input is left as it was.
    assert original["param_groups"] == untouched["param_groups"]
    assert set(original["state"][0]) == set(untouched["state"][0])


def test_timm_conversion_rejects_other_state_dicts() -> None:
    plain = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="lookahead_k"):
        convert_timm_state_dict(plain)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        convert_timm_state_dict({"lookahead_state": {}, "base_optimizer": plain})


def test_pytorch_optimizer_conversion_validates_its_arguments() -> None:
    plain = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="'lookahead_state' and 'base_optimizer'"):
        convert_pytorch_optimizer_state_dict(plain, k=K, alpha=ALPHA)
    po_format = {"lookahead_state": {(0, 5): {}}, "base_optimizer": plain}
    with pytest.raises(ValueError, match=r"\(0, 5\) names no parameter"):
        convert_pytorch_optimizer_state_dict(po_format, k=K, alpha=ALPHA)
    with pytest.raises(ValueError, match="k must be a positive int"):
        convert_pytorch_optimizer_state_dict(po_format, k=0, alpha=ALPHA)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        convert_pytorch_optimizer_state_dict(po_format, k=K, alpha=1.5)


def _po_format_state_dict() -> dict[str, Any]:
    """pytorch_optimizer's layout over SGD with momentum: two parameters, one step into the cycle."""
    return {
        "lookahead_state": {(0, i): {"slow_params": torch.zeros(2)} for i in range(2)},
        "base_optimizer": {
            "state": {i: {"momentum_buffer": torch.ones(2)} for i in range(2)},
            "param_groups": [
                {"lr": 0.1, "momentum": 0.9, "dampening": 0, "counter": 1, "params": [0, 1]}
            ],
        },
    }


def _timm_group(state_dict: dict[str, Any]) -> dict[str, Any]:
    return state_dict["param_groups"][0]  # type: ignore[no-any-return]


def _po_group(state_dict: dict[str, Any]) -> dict[str, Any]:
    return state_dict["base_optimizer"]["param_groups"][0]  # type: ignore[no-any-return]


def _po_move(state_dict: dict[str, Any], key: object) -> None:
    state_dict["lookahead_state"][key] = state_dict["lookahead_state"].pop((0, 1))


_COUNTER = r"\['counter'\] must be a non-negative int"
_STEP = r"\['lookahead_step'\] must be a non-negative int"
_KEYS = "keys must be .group index, parameter index. pairs of non-negative ints"
_MALFORMED_TIMM: list[tuple[str, Callable[[dict[str, Any]], object], type[Exception], str]] = [
    ("step-negative", lambda s: _timm_group(s).update(lookahead_step=-1), ValueError, _STEP),
    ("step-bool", lambda s: _timm_group(s).update(lookahead_step=True), TypeError, _STEP),
    ("step-str", lambda s: _timm_group(s).update(lookahead_step="8"), TypeError, _STEP),
    ("step-float", lambda s: _timm_group(s).update(lookahead_step=7.9), TypeError, _STEP),
    ("step-none", lambda s: _timm_group(s).update(lookahead_step=None), TypeError, _STEP),
    (
        "k-zero",
        lambda s: _timm_group(s).update(lookahead_k=0),
        ValueError,
        r"'lookahead_k'\] must be a positive",
    ),
    (
        "alpha-2",
        lambda s: _timm_group(s).update(lookahead_alpha=2.0),
        ValueError,
        r"'lookahead_alpha'\] must be in",
    ),
    ("entry-list", lambda s: s["state"].update({0: [1]}), TypeError, r"\['state'\]\[0\] must be a"),
    ("group-str", lambda s: s["param_groups"].insert(0, "x"), TypeError, r"\[0\] must be a dict"),
    (
        "params-int",
        lambda s: _timm_group(s).update(params=0),
        TypeError,
        "'params'.* must be a list",
    ),
    ("state-list", lambda s: s.update(state=[]), ValueError, "'state' and 'param_groups'"),
    ("groups-dict", lambda s: s.update(param_groups={}), ValueError, "'state' and 'param_groups'"),
]


_MALFORMED_PO: list[tuple[str, Callable[[dict[str, Any]], object], type[Exception], str]] = [
    ("counter-negative", lambda s: _po_group(s).update(counter=-1), ValueError, _COUNTER),
    ("counter-bool", lambda s: _po_group(s).update(counter=True), TypeError, _COUNTER),
    ("counter-float", lambda s: _po_group(s).update(counter=1.0), TypeError, _COUNTER),
    ("counter-str", lambda s: _po_group(s).update(counter="1"), TypeError, _COUNTER),
    ("counter-k", lambda s: _po_group(s).update(counter=K), ValueError, "k=3 passed is likely not"),
    ("counter-above-k", lambda s: _po_group(s).update(counter=7), ValueError, "is 7, but"),
    ("key-negative", lambda s: _po_move(s, (0, -1)), ValueError, _KEYS),
    ("key-bool", lambda s: _po_move(s, (False, 1)), ValueError, _KEYS),
    ("key-int", lambda s: _po_move(s, 1), ValueError, _KEYS),
    ("key-triple", lambda s: _po_move(s, (0, 1, 0)), ValueError, _KEYS),
    ("key-index", lambda s: _po_move(s, (0, 2)), ValueError, r"\(0, 2\) names no parameter"),
    ("key-group", lambda s: _po_move(s, (1, 0)), ValueError, r"\(1, 0\) names no parameter"),
    ("lookahead-list", lambda s: s.update(lookahead_state=[]), TypeError, "must be a dict keyed"),
    (
        "entry-list",
        lambda s: s["lookahead_state"].update({(0, 0): []}),
        TypeError,
        r"\['lookahead_state'\]\[\(0, 0\)\] must be a dict",
    ),
    (
        "slow-missing",
        lambda s: s["lookahead_state"][(0, 0)].clear(),
        TypeError,
        "'slow_params'. must be a tensor",
    ),
    (
        "slow-list",
        lambda s: s["lookahead_state"][(0, 0)].update(slow_params=[0.0, 0.0]),
        TypeError,
        r"\[\(0, 0\)\]\['slow_params'\] must be a tensor",
    ),
    (
        "slow-momentum-none",
        lambda s: s["lookahead_state"][(0, 0)].update(slow_momentum=None),
        TypeError,
        "'slow_momentum'.* must be a tensor",
    ),
    (
        "backup-partial",  # written during evaluation, but one parameter lacks its fast weights
        lambda s: s["lookahead_state"][(0, 0)].update(backup_params=torch.zeros(2)),
        TypeError,
        r"\[\(0, 1\)\]\['backup_params'\] must be a tensor",
    ),
    (
        "inner-entry",
        lambda s: s["base_optimizer"]["state"].update({0: None}),
        TypeError,
        r"\['base_optimizer'\]\['state'\]\[0\] must be a dict",
    ),
    (
        "inner-missing",
        lambda s: s.update(base_optimizer=None),
        ValueError,
        r"\['base_optimizer'\] must be an optimizer state dict",
    ),
]


def _convert_po(state_dict: dict[str, Any]) -> dict[str, Any]:
    return convert_pytorch_optimizer_state_dict(state_dict, k=K, alpha=ALPHA)


_MALFORMED = [
    (f"timm-{name}", _timm_format_state_dict, convert_timm_state_dict, *case)
    for name, *case in _MALFORMED_TIMM
] + [(f"po-{name}", _po_format_state_dict, _convert_po, *case) for name, *case in _MALFORMED_PO]


@pytest.mark.parametrize(
    ("make", "convert", "mutate", "error", "match"),
    [case[1:] for case in _MALFORMED],
    ids=[case[0] for case in _MALFORMED],
)
def test_conversion_names_what_is_malformed(
    make: Callable[[], dict[str, Any]],
    convert: Callable[[dict[str, Any]], dict[str, Any]],
    mutate: Callable[[dict[str, Any]], object],
    error: type[Exception],
    match: str,
) -> None:
    """One bad entry each: the converter raises, naming the entry and what it accepts."""
    state_dict = make()
    assert convert(state_dict)  # well formed
    mutate(state_dict)
    with pytest.raises(error, match=match):
        convert(state_dict)
