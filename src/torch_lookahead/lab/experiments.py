"""Which runs an experiment consists of: pure functions from the user's choices to ``RunConfig``
lists, the parsers of the command line's lists and ranges, and the demo's plan."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch_lookahead.lab.runner import RunConfig, make_config
from torch_lookahead.lab.tasks import TaskSettings

__all__ = [
    "DEMO",
    "DEMO_QUICK",
    "DemoPlan",
    "compare_configs",
    "k_alpha_configs",
    "lr_sweep_configs",
    "parse_float_list",
    "parse_int_list",
    "parse_lr_range",
    "parse_name_list",
]


def parse_lr_range(text: str, name: str = "lr") -> list[float]:
    """``"1e-4:1e-1:7"``: 7 learning rates log-spaced from 1e-4 to 1e-1, both included; or a
    comma-separated list ``"0.01,0.1"``."""
    if ":" not in text:
        values = parse_float_list(text, name)
    else:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(
                f"{name} must be LOW:HIGH:COUNT or a comma-separated list, got {text!r}"
            )
        try:
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(
                f"{name} must be LOW:HIGH:COUNT with numbers LOW < HIGH and an integer COUNT, "
                f"got {text!r}"
            ) from None
        if not (0 < low < high and math.isfinite(high)) or count < 2:
            raise ValueError(f"{name} needs 0 < LOW < HIGH and COUNT >= 2, got {text!r}")
        ratio = math.log(high / low) / (count - 1)
        values = [float(f"{low * math.exp(ratio * i):.6g}") for i in range(count)]
    if any(not (math.isfinite(v) and v > 0) for v in values):
        raise ValueError(f"{name} values must be positive and finite, got {text!r}")
    return values


def parse_float_list(text: str, name: str) -> list[float]:
    """``"0.5,0.8"`` -> [0.5, 0.8]."""
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(
            f"{name} must be a comma-separated list of numbers, got {text!r}"
        ) from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


def parse_int_list(text: str, name: str) -> list[int]:
    """``"5,10,20"`` -> [5, 10, 20]."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(
            f"{name} must be a comma-separated list of integers, got {text!r}"
        ) from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


def parse_name_list(text: str, name: str) -> list[str]:
    """``"adamw, sgd"`` -> ["adamw", "sgd"] (duplicates dropped)."""
    values = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


def compare_configs(
    task: str,
    inners: Sequence[str],
    seeds: int,
    settings: TaskSettings,
    *,
    k: int = 5,
    alpha: float = 0.5,
    lrs: Mapping[str, float] | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
) -> list[RunConfig]:
    """Each inner optimizer, plain and in Lookahead(k, alpha), over seeds 0..seeds-1."""
    if seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds}")
    configs = []
    for inner in inners:
        lr = (lrs or {}).get(inner)
        for seed in range(seeds):
            for pair in ((None, None), (k, alpha)):
                configs.append(
                    make_config(
                        task, inner, seed=seed, settings=settings, lr=lr, k=pair[0],
                        alpha=pair[1], data_dir=data_dir, device=device,
                    )
                )  # fmt: skip
    return configs


def lr_sweep_configs(
    task: str,
    lrs_by_inner: Mapping[str, Sequence[float]],
    seeds: int,
    settings: TaskSettings,
    *,
    k: int = 5,
    alpha: float = 0.5,
    data_dir: str | None = None,
    device: str = "cpu",
) -> list[RunConfig]:
    """Plain and Lookahead(k, alpha) at every learning rate of every inner optimizer."""
    configs = []
    for inner, lrs in lrs_by_inner.items():
        for lr in lrs:
            configs += compare_configs(
                task, [inner], seeds, settings, k=k, alpha=alpha, lrs={inner: lr},
                data_dir=data_dir, device=device,
            )  # fmt: skip
    return configs


def k_alpha_configs(
    task: str,
    inner: str,
    ks: Sequence[int],
    alphas: Sequence[float],
    seeds: int,
    settings: TaskSettings,
    *,
    lr: float | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
) -> list[RunConfig]:
    """The inner optimizer alone, then Lookahead at every (k, alpha) of the grid."""
    configs = []
    for seed in range(seeds):
        for pair in [(None, None)] + [(k, alpha) for k in ks for alpha in alphas]:
            configs.append(
                make_config(
                    task, inner, seed=seed, settings=settings, lr=lr, k=pair[0], alpha=pair[1],
                    data_dir=data_dir, device=device,
                )
            )  # fmt: skip
    return configs


@dataclass(frozen=True)
class DemoPlan:
    """What ``torch-lookahead demo`` runs: the comparison, a learning-rate sweep (multiples of
    each optimizer's default learning rate), a (k, alpha) grid and the NQM check."""

    task: str
    inners: tuple[str, ...]
    seeds: int
    k: int
    alpha: float
    lr_factors: tuple[float, ...]
    sweep_seeds: int
    grid_inner: str
    grid_ks: tuple[int, ...]
    grid_alphas: tuple[float, ...]
    nqm_lrs: tuple[float, ...]
    nqm_chains: int
    nqm_burn_in_steps: int
    nqm_measured_steps: int


DEMO = DemoPlan(
    task="digits",
    inners=("sgd", "adamw", "radam"),
    seeds=3,
    k=5,
    alpha=0.5,
    lr_factors=(1 / 9, 1 / 3, 1.0, 3.0, 9.0),
    sweep_seeds=2,
    grid_inner="sgd",
    grid_ks=(5, 10, 20),
    grid_alphas=(0.3, 0.5, 0.8),
    nqm_lrs=(0.1, 0.2, 0.4, 0.8, 1.2, 1.6, 1.9),
    nqm_chains=500,
    nqm_burn_in_steps=1000,
    nqm_measured_steps=2000,
)

DEMO_QUICK = DemoPlan(
    task="digits",
    inners=("sgd", "adamw"),
    seeds=2,
    k=5,
    alpha=0.5,
    lr_factors=(1 / 3, 1.0, 3.0),
    sweep_seeds=1,
    grid_inner="sgd",
    grid_ks=(5, 10),
    grid_alphas=(0.5, 0.8),
    nqm_lrs=(0.2, 0.8, 1.6),
    nqm_chains=200,
    nqm_burn_in_steps=400,
    nqm_measured_steps=400,
)
