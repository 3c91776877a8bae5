"""create_optimizer / list_optimizers: one table of names, and the lookahead_ prefix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from torch_lookahead.lookahead import Lookahead
from torch_lookahead.optim import AdaBound, NovoGrad, Ranger, create_optimizer, list_optimizers

EXPECTED_CLASSES = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "novograd": NovoGrad,
    "adabound": AdaBound,
    "amsbound": AdaBound,
    "ranger": Ranger,
}


def test_names() -> None:
    names = list_optimizers()
    assert names == sorted(names)
    assert set(EXPECTED_CLASSES) <= set(names)
    prefixed = {n for n in names if n.startswith("lookahead_")}
    assert prefixed == {f"lookahead_{n}" for n in EXPECTED_CLASSES if n != "ranger"}


@pytest.mark.parametrize("name", list_optimizers())
def test_every_name_builds_an_optimizer_that_steps(name: str) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = create_optimizer(name, model, lr=1e-2)
    base = name.removeprefix("lookahead_")
    if name.startswith("lookahead_"):
        assert isinstance(optimizer, Lookahead)
        assert type(optimizer.optimizer) is EXPECTED_CLASSES[base]
    else:
        assert type(optimizer) is EXPECTED_CLASSES[base]
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_defaults_implied_by_a_name_can_be_overridden() -> None:
    params = torch.nn.Linear(2, 2).parameters
    assert create_optimizer("momentum", params()).param_groups[0]["momentum"] == 0.9
    assert create_optimizer("momentum", params(), momentum=0.5).param_groups[0]["momentum"] == 0.5
    assert create_optimizer("amsbound", params()).param_groups[0]["amsbound"] is True
    group = create_optimizer("nesterov", params()).param_groups[0]
    assert group["nesterov"] is True


def test_lookahead_arguments_reach_lookahead() -> None:
    optimizer = create_optimizer(
        "LookAhead_NovoGrad",
        torch.nn.Linear(2, 2),
        lr=0.05,
        lookahead={"k": 7, "alpha": 0.25, "pullback_momentum": "reset"},
    )
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.optimizer, NovoGrad)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["lookahead_k"], group["lookahead_alpha"]) == (0.05, 7, 0.25)
    assert optimizer.pullback_momentum == "reset"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamx'.*adabound, adam, adamw"):
        create_optimizer("adamx", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already is Lookahead over RAdam"):
        create_optimizer("lookahead_ranger", torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="name must be a str"):
        create_optimizer(torch.optim.SGD, torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_lookahead_arguments_need_the_prefix() -> None:
    with pytest.raises(ValueError, match="only valid for names starting with 'lookahead_'"):
        create_optimizer("adamw", torch.nn.Linear(2, 2), lookahead={"k": 5})
    with pytest.raises(TypeError, match="lookahead must be a mapping"):
        create_optimizer("lookahead_adamw", torch.nn.Linear(2, 2), lookahead=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "lookahead"),
    [
        ("ranger", {"k": 3, "alpha": 0.25}),
        ("lookahead_ranger", {"k": 3}),
        ("lookahead_ranger", None),
    ],
)
def test_a_refused_ranger_call_names_one_that_works(
    name: str, lookahead: dict[str, int] | None
) -> None:
    """Ranger already is Lookahead(RAdam): the message gives the call that builds it instead."""
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="already is Lookahead over RAdam") as raised:
        create_optimizer(name, model, lookahead=lookahead)
    call = re.search(r"create_optimizer\(.*?\)", str(raised.value))
    assert call is not None
    optimizer = eval(call.group(), {"create_optimizer": create_optimizer, "params": model})
    assert isinstance(optimizer, Ranger)
    for key, value in (lookahead or {}).items():
        assert optimizer.param_groups[0][f"lookahead_{key}"] == value


def test_the_optimizers_page_examples_run() -> None:
    """docs/optimizers.md's Python blocks (its asserts included) run as written."""
    page = Path(__file__).resolve().parents[2] / "docs" / "optimizers.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
