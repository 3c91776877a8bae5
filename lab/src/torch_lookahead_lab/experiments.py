"""Which jobs an experiment consists of, and running them.

Pure functions from the user's choices to ``RunConfig`` lists, the parsers of the command line's
lists and ranges, the plan of each command (``Experiment``: the demo, compare, sweep, nqm) and
``run_experiment``, which computes an experiment's jobs over a process pool and returns what
it measured."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch_lookahead_lab.nqm import NQMConfig, NQMPoint, NQMProblem, nqm_configs
from torch_lookahead_lab.runner import Job, RunConfig, RunResult, make_config, run_many_counted
from torch_lookahead_lab.stability import (
    STABILITY,
    STABILITY_QUICK,
    StabilityPlan,
    StabilityResults,
    stability_configs,
)
from torch_lookahead_lab.tasks import TaskSettings, get_task

__all__ = [
    "DEFAULT_LR_FACTORS",
    "DEMO",
    "DEMO_QUICK",
    "DemoPlan",
    "Experiment",
    "LabResults",
    "RunOptions",
    "StabilityExperiment",
    "compare_configs",
    "compare_experiment",
    "default_lr_grid",
    "demo_experiment",
    "k_alpha_configs",
    "lr_sweep_configs",
    "nqm_experiment",
    "parse_float_list",
    "parse_int_list",
    "parse_lr_range",
    "parse_name_list",
    "run_experiment",
    "stability_experiment",
    "sweep_experiment",
]

# A sweep's default learning rates: each optimizer's learning rate on the task times these.
DEFAULT_LR_FACTORS = (1 / 9, 1 / 3, 1.0, 3.0, 9.0)


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


def default_lr_grid(
    task: str, inners: Sequence[str], factors: Sequence[float] = DEFAULT_LR_FACTORS
) -> dict[str, list[float]]:
    """Each inner optimizer's learning rate on ``task`` times each of ``factors``."""
    spec = get_task(task)
    return {inner: [spec.learning_rate(inner) * f for f in factors] for inner in inners}


@dataclass
class LabResults:
    """What one command measured; any part may be empty."""

    title: str
    command: str
    task: str = ""
    headline_metric: str = "val_loss"
    higher_is_better: bool = False
    compare: list[RunResult] = field(default_factory=list)
    lr_sweep: list[RunResult] = field(default_factory=list)
    k_alpha: list[RunResult] = field(default_factory=list)
    nqm: list[NQMPoint] = field(default_factory=list)
    nqm_k: int = 5
    nqm_alpha: float = 0.5
    seconds: float = math.nan  # wall time of the command
    jobs: int = 0
    cached_jobs: int = 0  # jobs read back from the cache rather than computed
    quick: bool = False  # a --quick run: it checks the pipeline and is no evidence


@dataclass(frozen=True)
class RunOptions:
    """Where and how the runs of an experiment train, beyond their hyper-parameters."""

    data_dir: str | None = None
    device: str = "cpu"
    schedule: str | None = None  # None: the task's schedule
    unsafe_skip_checksums: bool = False


def _config(
    task: str,
    inner: str,
    seed: int,
    settings: TaskSettings,
    options: RunOptions,
    *,
    lr: float | None = None,
    k: int | None = None,
    alpha: float | None = None,
) -> RunConfig:
    return make_config(
        task, inner, seed=seed, settings=settings, lr=lr, k=k, alpha=alpha,
        data_dir=options.data_dir, device=options.device, schedule=options.schedule,
        unsafe_skip_checksums=options.unsafe_skip_checksums,
    )  # fmt: skip


def compare_configs(
    task: str,
    inners: Sequence[str],
    seeds: int,
    settings: TaskSettings,
    *,
    k: int = 5,
    alpha: float = 0.5,
    lrs: Mapping[str, float] | None = None,
    options: RunOptions = RunOptions(),
) -> list[RunConfig]:
    """Each inner optimizer, plain and in Lookahead(k, alpha), over seeds 0..seeds-1."""
    if seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds}")
    configs = []
    for inner in inners:
        lr = (lrs or {}).get(inner)
        for seed in range(seeds):
            configs.append(_config(task, inner, seed, settings, options, lr=lr))
            configs.append(_config(task, inner, seed, settings, options, lr=lr, k=k, alpha=alpha))
    return configs


def lr_sweep_configs(
    task: str,
    lrs_by_inner: Mapping[str, Sequence[float]],
    seeds: int,
    settings: TaskSettings,
    *,
    k: int = 5,
    alpha: float = 0.5,
    options: RunOptions = RunOptions(),
) -> list[RunConfig]:
    """Plain and Lookahead(k, alpha) at every learning rate of every inner optimizer."""
    configs = []
    for inner, lrs in lrs_by_inner.items():
        for lr in lrs:
            configs += compare_configs(
                task, [inner], seeds, settings, k=k, alpha=alpha, lrs={inner: lr}, options=options
            )
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
    options: RunOptions = RunOptions(),
) -> list[RunConfig]:
    """The inner optimizer alone, then Lookahead at every (k, alpha) of the grid."""
    if seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds}")
    configs = []
    for seed in range(seeds):
        configs.append(_config(task, inner, seed, settings, options, lr=lr))
        for k in ks:
            for alpha in alphas:
                configs.append(
                    _config(task, inner, seed, settings, options, lr=lr, k=k, alpha=alpha)
                )
    return configs


@dataclass(frozen=True)
class DemoPlan:
    """What ``torch-lookahead demo`` runs: the comparison (the paper's default protocol), a
    learning-rate sweep (multiples of each optimizer's learning rate on the task; it also gives
    the tuned protocol), a (k, alpha) grid and the NQM check."""

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
    inners=("sgd", "adamw"),
    seeds=5,
    k=5,
    alpha=0.5,
    lr_factors=DEFAULT_LR_FACTORS,
    sweep_seeds=3,
    grid_inner="sgd",
    grid_ks=(5, 10, 20),
    grid_alphas=(0.5, 0.8),
    nqm_lrs=(0.1, 0.2, 0.4, 0.8, 1.2, 1.6, 1.9),
    nqm_chains=400,
    nqm_burn_in_steps=1000,
    nqm_measured_steps=1500,
)

# Few steps and seeds: it checks that everything runs, and its verdicts mean nothing.
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
    nqm_chains=100,
    nqm_burn_in_steps=200,
    nqm_measured_steps=200,
)


@dataclass(frozen=True)
class Experiment:
    """The jobs of one command, by the part of the report they feed."""

    title: str
    task: str = ""
    compare: tuple[RunConfig, ...] = ()
    lr_sweep: tuple[RunConfig, ...] = ()
    k_alpha: tuple[RunConfig, ...] = ()
    nqm: tuple[NQMConfig, ...] = ()
    quick: bool = False  # a --quick run: it checks the pipeline and is no evidence

    def jobs(self) -> list[Job]:
        """Every distinct job, the NQM points first (each is longer than a training run, so the
        pool's workers finish together)."""
        ordered: list[Job] = [*self.nqm, *self.compare, *self.lr_sweep, *self.k_alpha]
        return list(dict.fromkeys(ordered))


@dataclass(frozen=True)
class StabilityExperiment:
    """The jobs of ``torch-lookahead stability``: every run of ``plan``."""

    plan: StabilityPlan

    @property
    def title(self) -> str:
        return "torch-lookahead stability" + (" (quick)" if self.plan.quick else "")

    @property
    def quick(self) -> bool:
        return self.plan.quick

    def jobs(self) -> list[Job]:
        return list(dict.fromkeys(stability_configs(self.plan)))


def stability_experiment(quick: bool = False) -> StabilityExperiment:
    """The stability experiment (``STABILITY``, or ``STABILITY_QUICK``)."""
    return StabilityExperiment(STABILITY_QUICK if quick else STABILITY)


def demo_experiment(quick: bool = False) -> Experiment:
    """The demo (``DEMO``, or ``DEMO_QUICK`` with the task's quick settings): the comparison, the
    learning-rate sweep, the (k, alpha) grid and the NQM check."""
    plan = DEMO_QUICK if quick else DEMO
    spec = get_task(plan.task)
    settings = spec.quick if quick else spec.full
    lr_grid = default_lr_grid(plan.task, plan.inners, plan.lr_factors)
    compare = compare_configs(
        plan.task, plan.inners, plan.seeds, settings, k=plan.k, alpha=plan.alpha
    )
    sweep = lr_sweep_configs(
        plan.task, lr_grid, plan.sweep_seeds, settings, k=plan.k, alpha=plan.alpha
    )
    grid = k_alpha_configs(
        plan.task, plan.grid_inner, plan.grid_ks, plan.grid_alphas, plan.sweep_seeds, settings
    )
    nqm = nqm_configs(
        NQMProblem.default(), plan.nqm_lrs, k=plan.k, alpha=plan.alpha, chains=plan.nqm_chains,
        burn_in_steps=plan.nqm_burn_in_steps, measured_steps=plan.nqm_measured_steps,
    )  # fmt: skip
    title = "torch-lookahead demo" + (" (quick)" if quick else "")
    return Experiment(
        title, plan.task, tuple(compare), tuple(sweep), tuple(grid), tuple(nqm), quick=quick
    )


def compare_experiment(
    task: str,
    inners: Sequence[str],
    seeds: int,
    settings: TaskSettings,
    *,
    k: int = 5,
    alpha: float = 0.5,
    options: RunOptions = RunOptions(),
    quick: bool = False,
) -> Experiment:
    """Each inner optimizer plain and in Lookahead(k, alpha), over seeds."""
    configs = compare_configs(task, inners, seeds, settings, k=k, alpha=alpha, options=options)
    title = f"torch-lookahead compare: {task}" + (" (quick)" if quick else "")
    return Experiment(title, task, compare=tuple(configs), quick=quick)


def sweep_experiment(
    task: str,
    inners: Sequence[str],
    seeds: int,
    settings: TaskSettings,
    *,
    lrs: Sequence[float] | None = None,
    ks: Sequence[int] = (5, 10, 20),
    alphas: Sequence[float] = (0.5, 0.8),
    options: RunOptions = RunOptions(),
    quick: bool = False,
) -> Experiment:
    """Learning-rate curves (plain and Lookahead with the first k and alpha) over ``lrs``
    (default: ``default_lr_grid``), and every (k, alpha) at the task's learning rate."""
    if not ks or not alphas:
        raise ValueError("ks and alphas must not be empty")
    lr_grid = default_lr_grid(task, inners) if lrs is None else {i: list(lrs) for i in inners}
    sweep = lr_sweep_configs(
        task, lr_grid, seeds, settings, k=ks[0], alpha=alphas[0], options=options
    )
    grid = [
        config
        for inner in inners
        for config in k_alpha_configs(task, inner, ks, alphas, seeds, settings, options=options)
    ]
    title = f"torch-lookahead sweep: {task}" + (" (quick)" if quick else "")
    return Experiment(title, task, lr_sweep=tuple(sweep), k_alpha=tuple(grid), quick=quick)


def nqm_experiment(
    lrs: Sequence[float],
    *,
    k: int = 5,
    alpha: float = 0.5,
    chains: int = 2000,
    burn_in_steps: int = 2000,
    measured_steps: int = 4000,
    quick: bool = False,
) -> Experiment:
    """The noisy quadratic model at each learning rate of ``lrs``."""
    configs = nqm_configs(
        NQMProblem.default(), lrs, k=k, alpha=alpha, chains=chains, burn_in_steps=burn_in_steps,
        measured_steps=measured_steps,
    )  # fmt: skip
    title = "torch-lookahead nqm" + (" (quick)" if quick else "")
    return Experiment(title, nqm=tuple(configs), quick=quick)


def run_experiment(
    experiment: Experiment | StabilityExperiment,
    cache_dir: Path | None,
    *,
    command: str,
    workers: int | None = None,
    on_result: Callable[[Any, bool], None] | None = None,
) -> LabResults | StabilityResults:
    """Compute every job of ``experiment`` (see ``run_many``) and gather what it measured, with
    the wall time it took: the results a report renders (``report.write_report``)."""
    started = time.perf_counter()
    jobs = experiment.jobs()
    results, cached = run_many_counted(jobs, cache_dir, workers=workers, on_result=on_result)
    seconds = time.perf_counter() - started
    if isinstance(experiment, StabilityExperiment):
        return StabilityResults(experiment.plan, command, list(results), seconds, len(jobs), cached)
    by_job = dict(zip(jobs, results, strict=True))
    spec = get_task(experiment.task) if experiment.task else None
    nqm = experiment.nqm
    return LabResults(
        title=experiment.title,
        command=command,
        task=experiment.task,
        headline_metric=spec.headline_metric if spec else "val_loss",
        higher_is_better=spec.higher_is_better if spec else False,
        compare=[by_job[c] for c in experiment.compare],
        lr_sweep=[by_job[c] for c in experiment.lr_sweep],
        k_alpha=[by_job[c] for c in experiment.k_alpha],
        nqm=[by_job[c] for c in nqm],
        nqm_k=nqm[0].k if nqm else 5,
        nqm_alpha=nqm[0].alpha if nqm else 0.5,
        seconds=seconds,
        jobs=len(jobs),
        cached_jobs=cached,
        quick=experiment.quick,
    )
