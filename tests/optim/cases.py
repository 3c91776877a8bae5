"""The registry of the optimizers under test: class, float64 oracle and flags to draw from.

Every test of a promise that NovoGrad and AdaBound share is parametrised over :data:`CASES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from torch.optim import Optimizer

from torch_lookahead.optim import AdaBound, NovoGrad

from . import reference_optim as ref

Oracle = Callable[[list[np.ndarray], list[list[np.ndarray]], list[float], dict], list[np.ndarray]]


@dataclass(frozen=True)
class Case:
    """An optimizer under test.

    ``oracle(params0, grads, lrs, kwargs)`` gives the final weights of every layer after the
    steps ``grads[t][layer]`` taken at learning rates ``lrs[t]`` with the constructor's
    ``kwargs``; ``flags`` draws such kwargs; ``kwargs`` is one fixed choice with every state
    entry present (for the contract tests); ``running_max_flag`` turns on the running maximum of
    the second moment.
    """

    name: str
    optimizer_class: Callable[..., Optimizer]
    oracle: Oracle
    flags: st.SearchStrategy[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    running_max_flag: str = "amsgrad"

    def __str__(self) -> str:
        return self.name


def signed(grads: list[list[np.ndarray]], kwargs: dict) -> list[list[np.ndarray]]:
    """Maximizing is minimizing with the gradients negated."""
    sign = -1.0 if kwargs.get("maximize") else 1.0
    return [[sign * g for g in step] for step in grads]


def novograd_oracle(
    params0: list[np.ndarray], grads: list[list[np.ndarray]], lrs: list[float], kwargs: dict
) -> list[np.ndarray]:
    betas = kwargs.get("betas", (0.95, 0.98))
    return ref.novograd(
        params0,
        signed(grads, kwargs),
        lrs,
        b1=betas[0],
        b2=betas[1],
        wd=kwargs.get("weight_decay", 0.0),
        grad_averaging=kwargs.get("grad_averaging", False),
        amsgrad=kwargs.get("amsgrad", False),
        decoupled=kwargs.get("decoupled_weight_decay", False),
    )


def adabound_oracle(
    params0: list[np.ndarray], grads: list[list[np.ndarray]], lrs: list[float], kwargs: dict
) -> list[np.ndarray]:
    betas = kwargs.get("betas", (0.9, 0.999))
    return [
        ref.adabound(
            x0,
            [step[layer] for step in signed(grads, kwargs)],
            lrs,
            base_lr=float(kwargs.get("lr", 1e-3)),
            final_lr=kwargs.get("final_lr", 0.1),
            b1=betas[0],
            b2=betas[1],
            gamma=kwargs.get("gamma", 1e-3),
            wd=kwargs.get("weight_decay", 0.0),
            wd_mode="adamw" if kwargs.get("decoupled_weight_decay") else "l2",
            amsbound=kwargs.get("amsbound", False),
        )
        for layer, x0 in enumerate(params0)
    ]


CASES = [
    Case(
        "NovoGrad",
        NovoGrad,
        novograd_oracle,
        st.fixed_dictionaries(
            {
                "lr": st.sampled_from([1e-3, 0.05, 0.5]),
                "betas": st.sampled_from([(0.95, 0.98), (0.9, 0.5), (0.0, 0.0)]),
                "weight_decay": st.sampled_from([0.0, 0.1]),
                "grad_averaging": st.booleans(),
                "amsgrad": st.booleans(),
                "decoupled_weight_decay": st.booleans(),
                "maximize": st.booleans(),
                "foreach": st.sampled_from([False, True, None]),
            }
        ),
        {"lr": 0.05, "weight_decay": 0.01, "amsgrad": True},
    ),
    Case(
        "AdaBound",
        AdaBound,
        adabound_oracle,
        st.fixed_dictionaries(
            {
                "lr": st.sampled_from([1e-3, 0.05]),
                "betas": st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
                "final_lr": st.sampled_from([0.1, 0.01]),
                # gamma=0.5 closes the bounds within a few steps, so the clipping is exercised.
                "gamma": st.sampled_from([1e-3, 0.5]),
                "weight_decay": st.sampled_from([0.0, 0.1]),
                "amsbound": st.booleans(),
                "decoupled_weight_decay": st.booleans(),
                "maximize": st.booleans(),
                "foreach": st.sampled_from([False, True, None]),
            }
        ),
        {"lr": 0.01, "weight_decay": 0.01, "amsbound": True, "gamma": 0.1},
        running_max_flag="amsbound",
    ),
]
CASES_BY_NAME = {case.name: case for case in CASES}

#: ``@each_case`` parametrises a test over the registry with an argument ``case``.
each_case = pytest.mark.parametrize("case", CASES, ids=str)
