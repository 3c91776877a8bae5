"""Which jobs an experiment consists of, and running them.

Pure functions from the user's choices to ``RunConfig`` lists, the parsers of the command line's
lists and ranges, the plan of each command (``Experiment``: the demo, compare, sweep, nqm) and
``run_experiment``, which computes an experiment's jobs over a process pool and returns what
it measured."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch_lookahead_lab.claims import fmt, select_per_method, selection_edge
from torch_lookahead_lab.confirmatory import (
    ConfirmatoryPlan,
    ConfirmatoryResults,
    confirmatory_plan,
    edge_search,
    first_round,
)
from torch_lookahead_lab.metrics import SettingSummary, setting_of, summarize
from torch_lookahead_lab.nqm import NQMConfig, NQMPoint, NQMProblem, nqm_configs
from torch_lookahead_lab.plans import Plan, load_plan, plan_from_mapping, plan_settings
from torch_lookahead_lab.runner import Job, RunConfig, RunResult, make_config, run_many_counted
from torch_lookahead_lab.stability import (
    STABILITY,
    STABILITY_QUICK,
    StabilityPlan,
    StabilityResults,
    stability_configs,
)
from torch_lookahead_lab.tasks import TaskSettings, check_schedule, get_task

__all__ = [
    "DEFAULT_LR_FACTORS",
    "ConfirmatoryExperiment",
    "DemoPlan",
    "Experiment",
    "LabResults",
    "RunOptions",
    "StabilityExperiment",
    "compare_configs",
    "compare_experiment",
    "confirmatory_experiment",
    "default_lr_grid",
    "demo_experiment",
    "demo_plan",
    "grid_factor",
    "k_alpha_configs",
    "lr_sweep_configs",
    "nqm_experiment",
    "parse_float_list",
    "parse_int_list",
    "parse_lr_range",
    "parse_name_list",
    "planned_compare_experiment",
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
    """What one command measured; any part may be empty.

    ``compare``: each inner optimizer plain and in Lookahead at the task's learning rate;
    ``rescaled``: each inner optimizer plain at alpha x its learning rate; ``lr_sweep``: the
    learning-rate sweep (on the selection seeds, when the plan has them); ``tuning``: the tuned
    protocol's trials, when its plan declares them apart from the sweep (each method's own
    space, grid extensions included); ``tuned``: each method at the setting the sweep (or the
    trials) selected, on the comparison seeds; ``k_alpha``: the (k, alpha) grid;
    ``schedule_compare``: the default-protocol comparison under the plan's other schedules."""

    title: str
    command: str
    task: str = ""
    headline_metric: str = "val_loss"
    higher_is_better: bool = False
    compare: list[RunResult] = field(default_factory=list)
    rescaled: list[RunResult] = field(default_factory=list)
    lr_sweep: list[RunResult] = field(default_factory=list)
    tuned: list[RunResult] = field(default_factory=list)
    k_alpha: list[RunResult] = field(default_factory=list)
    tuning: list[RunResult] = field(default_factory=list)
    schedule_compare: list[RunResult] = field(default_factory=list)
    nqm: list[NQMPoint] = field(default_factory=list)
    nqm_k: int = 5
    nqm_alpha: float = 0.5
    seconds: float = math.nan  # wall time of the command
    started_at: str = ""  # when the command started and finished, UTC, ISO 8601
    finished_at: str = ""
    jobs: int = 0
    # Jobs read back from the cache rather than computed; None: not recorded (a report
    # re-rendered from a results.json written before it recorded them).
    cached_jobs: int | None = 0
    quick: bool = False  # a --quick run: it checks the pipeline and is no evidence
    plan: Plan | None = None
    seed_offset: int = 0


@dataclass(frozen=True)
class RunOptions:
    """Where and how the runs of an experiment train, beyond their hyper-parameters."""

    data_dir: str | None = None
    device: str = "cpu"
    schedule: str | None = None  # None: the task's schedule
    unsafe_skip_checksums: bool = False
    # Measure the task's test split at each run's ends (``RunConfig.evaluate_test``).
    evaluate_test: bool = False


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
        unsafe_skip_checksums=options.unsafe_skip_checksums, evaluate_test=options.evaluate_test,
    )  # fmt: skip


def seed_list(seeds: int | Sequence[int]) -> tuple[int, ...]:
    """``n`` -> seeds 0..n-1; a sequence of seeds as it is."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {seeds}")
        return tuple(range(seeds))
    if not seeds or any(seed < 0 for seed in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
    return tuple(seeds)


def compare_configs(
    task: str,
    inners: Sequence[str],
    seeds: int | Sequence[int],
    settings: TaskSettings,
    *,
    k: int = 5,
    alpha: float = 0.5,
    lrs: Mapping[str, float] | None = None,
    options: RunOptions = RunOptions(),
) -> list[RunConfig]:
    """Each inner optimizer, plain and in Lookahead(k, alpha), over seeds 0..seeds-1."""
    configs = []
    for inner in inners:
        lr = (lrs or {}).get(inner)
        for seed in seed_list(seeds):
            configs.append(_config(task, inner, seed, settings, options, lr=lr))
            configs.append(_config(task, inner, seed, settings, options, lr=lr, k=k, alpha=alpha))
    return configs


def lr_sweep_configs(
    task: str,
    lrs_by_inner: Mapping[str, Sequence[float]],
    seeds: int | Sequence[int],
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
    seeds: int | Sequence[int],
    settings: TaskSettings,
    *,
    lr: float | None = None,
    options: RunOptions = RunOptions(),
) -> list[RunConfig]:
    """The inner optimizer alone, then Lookahead at every (k, alpha) of the grid."""
    configs = []
    for seed in seed_list(seeds):
        configs.append(_config(task, inner, seed, settings, options, lr=lr))
        for k in ks:
            for alpha in alphas:
                configs.append(
                    _config(task, inner, seed, settings, options, lr=lr, k=k, alpha=alpha)
                )
    return configs


@dataclass(frozen=True)
class DemoPlan:
    """What ``torch-lookahead demo`` runs, read from its committed plan (``plans/demo.json``):
    on the comparison seeds, each inner optimizer plain, in Lookahead(k, alpha) and plain at
    alpha x lr (the effective-learning-rate arm), every (k, alpha) of the grid; on the
    selection seeds, a learning-rate sweep that picks each method's learning rate on the
    validation split; the tuned protocol's trials (``tuning_trials``: Lookahead's points of
    (lr factor, k, alpha), as many as ``lr_factors``, the plain inner optimizer's being the
    sweep's), extended by ``extension_factor`` at most ``max_extensions`` times per method
    where the selected learning rate is at the edge, the selected settings then compared on the
    comparison seeds, on the test split; the default-protocol comparison under each of
    ``other_schedules``; and the NQM check."""

    task: str
    inners: tuple[str, ...]
    k: int
    alpha: float
    comparison_seeds: tuple[int, ...]
    selection_seeds: tuple[int, ...]
    lr_factors: tuple[float, ...]
    selection_metric: str
    selection_tie: float
    grid_inner: str
    grid_ks: tuple[int, ...]
    grid_alphas: tuple[float, ...]
    tuning_trials: tuple[tuple[float, int, float], ...]
    extension_factor: float
    max_extensions: int
    other_schedules: tuple[str, ...]
    nqm_lrs: tuple[float, ...]
    nqm_chains: int
    nqm_burn_in_steps: int
    nqm_measured_steps: int
    plan: Plan
    quick: bool = False
    seed_offset: int = 0

    @property
    def seeds(self) -> int:
        return len(self.comparison_seeds)


def _seed_range(entry: Mapping[str, int], offset: int) -> tuple[int, ...]:
    return tuple(range(entry["first"] + offset, entry["first"] + offset + entry["count"]))


def demo_plan(quick: bool = False, seed_offset: int = 0) -> DemoPlan:
    """The demo's committed plan (its ``quick`` part over it for a quick run), every seed
    moved by ``seed_offset`` (a confirmatory rerun on fresh seeds)."""
    if seed_offset < 0:
        raise ValueError(f"seed_offset must be a non-negative integer, got {seed_offset}")
    plan = load_plan("demo")
    data = plan_settings(plan, quick)
    grid, nqm = data["grid"], data["nqm"]
    lr_factors = tuple(float(f) for f in data["lr_factors"])
    trials, extension = _tuning_trials(data["tuning"], lr_factors)
    schedules = tuple(check_schedule(s) for s in data["schedules"]["factor"])
    task_schedule = get_task(data["task"]).schedule
    if schedules[0] != task_schedule:
        raise ValueError(
            f"the plan's schedules.factor must start with the task's schedule "
            f"{task_schedule!r}, got {list(schedules)}"
        )
    return DemoPlan(
        task=data["task"],
        inners=tuple(data["inners"]),
        k=int(data["k"]),
        alpha=float(data["alpha"]),
        comparison_seeds=_seed_range(data["comparison_seeds"], seed_offset),
        selection_seeds=_seed_range(data["selection_seeds"], seed_offset),
        lr_factors=lr_factors,
        selection_metric=data["selection"]["metric"],
        selection_tie=float(data["selection"]["tie"]),
        grid_inner=grid["inner"],
        grid_ks=tuple(int(k) for k in grid["ks"]),
        grid_alphas=tuple(float(a) for a in grid["alphas"]),
        tuning_trials=trials,
        extension_factor=float(extension["factor"]),
        max_extensions=int(extension["max"]),
        other_schedules=schedules[1:],
        nqm_lrs=tuple(float(lr) for lr in nqm["lrs"]),
        nqm_chains=int(nqm["chains"]),
        nqm_burn_in_steps=int(nqm["burn_in_steps"]),
        nqm_measured_steps=int(nqm["measured_steps"]),
        plan=plan,
        quick=quick,
        seed_offset=seed_offset,
    )


def _tuning_trials(
    tuning: Mapping[str, Any], lr_factors: Sequence[float]
) -> tuple[tuple[tuple[float, int, float], ...], Mapping[str, Any]]:
    """Lookahead's trials of the tuned protocol, (lr factor, k, alpha), and the extension rule.
    Equal trials: as many as the plain inner optimizer's (one per learning-rate factor)."""
    trials = tuple(
        (float(t["lr_factor"]), int(t["k"]), float(t["alpha"])) for t in tuning["lookahead"]
    )
    if len(trials) != len(lr_factors):
        raise ValueError(
            f"tuning.lookahead must have as many trials as lr_factors (equal trials per "
            f"method): {len(trials)} against {len(lr_factors)}"
        )
    extension = tuning["extension"]
    if not (float(extension["factor"]) > 1 and int(extension["max"]) >= 0):
        raise ValueError(
            f"tuning.extension needs a factor above 1 and a non-negative max, got {extension}"
        )
    return trials, extension


@dataclass(frozen=True)
class Experiment:
    """The jobs of one command, by the part of the report they feed. ``tuned_seeds``: after
    the other jobs, each method is run again at the learning rate the sweep selected
    (``tuned_configs``), on these seeds."""

    title: str
    task: str = ""
    compare: tuple[RunConfig, ...] = ()
    rescaled: tuple[RunConfig, ...] = ()
    lr_sweep: tuple[RunConfig, ...] = ()
    k_alpha: tuple[RunConfig, ...] = ()
    tuning: tuple[RunConfig, ...] = ()
    schedule_compare: tuple[RunConfig, ...] = ()
    nqm: tuple[NQMConfig, ...] = ()
    quick: bool = False  # a --quick run: it checks the pipeline and is no evidence
    plan: Plan | None = None
    seed_offset: int = 0
    tuned_seeds: tuple[int, ...] = ()
    selection_metric: str = ""
    selection_tie: float = 0.0
    extension_factor: float = 3.0
    max_extensions: int = 0  # grid extensions per method of the tuned protocol's trials

    def jobs(self) -> list[Job]:
        """Every distinct job of the first stage, the NQM points first (each is longer than a
        training run, so the pool's workers finish together)."""
        ordered: list[Job] = [
            *self.nqm, *self.compare, *self.rescaled, *self.lr_sweep, *self.tuning,
            *self.k_alpha, *self.schedule_compare,
        ]  # fmt: skip
        return list(dict.fromkeys(ordered))

    @property
    def later_jobs(self) -> int:
        """The most jobs the later stages can add: the grid extensions (one trial per method
        and extension on the seeds of the trials), then two methods per inner optimizer on
        ``tuned_seeds``."""
        trials = self.tuning or self.lr_sweep
        methods = len({(c.inner, c.uses_lookahead) for c in trials})
        extensions = methods * self.max_extensions * len({c.seed for c in trials})
        inners = dict.fromkeys(c.inner for c in self.lr_sweep)
        return extensions + 2 * len(inners) * len(self.tuned_seeds)

    def _selected(
        self, trials: Sequence[RunResult]
    ) -> list[tuple[SettingSummary, list[SettingSummary]]]:
        """Per method: the setting the plan's rule selects (``claims.best_lr`` with its metric
        and tie rule) and the method's trials."""
        return select_per_method(summarize(trials), self.selection_metric, tie=self.selection_tie)

    def tuned_configs(self, trials: Sequence[RunResult]) -> list[RunConfig]:
        """Each method at the setting its trials selected, on ``tuned_seeds``."""
        return [
            dataclasses.replace(chosen.setting, seed=seed)
            for chosen, _ in self._selected(trials)
            for seed in self.tuned_seeds
        ]

    def extension_configs(self, trials: Sequence[RunResult]) -> list[RunConfig]:
        """The grid-extension rule: each method whose selected learning rate is the largest
        (smallest) of its trials (the tuned protocol's, else the sweep's), and that has had
        fewer than ``max_extensions`` extensions, gets one trial at that learning rate times
        (divided by) ``extension_factor``, with the selected setting's k and alpha, on the
        trials' seeds. Empty when every selected learning rate is interior or out of
        extensions.

        It never proposes a learning rate the method already has, so each non-empty answer
        adds a trial beyond the design to a method, and a loop that runs the answer until it is
        empty ends after at most ``max_extensions`` rounds."""
        designed = {setting_of(c) for c in self.tuning or self.lr_sweep}
        configs = []
        for chosen, group in self._selected(trials):
            edge = selection_edge(chosen, group)
            extended = sum(s.setting not in designed for s in group)
            if edge is None or extended >= self.max_extensions:
                continue
            factor = self.extension_factor if edge == "largest" else 1 / self.extension_factor
            lr = chosen.setting.lr * factor
            if any(math.isclose(lr, s.setting.lr) for s in group):
                continue
            setting = dataclasses.replace(chosen.setting, lr=lr)
            configs += [dataclasses.replace(setting, seed=seed) for seed in chosen.seeds]
        return configs


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
    """The stability pilot (``STABILITY``, or ``STABILITY_QUICK``)."""
    return StabilityExperiment(STABILITY_QUICK if quick else STABILITY)


@dataclass(frozen=True)
class ConfirmatoryExperiment:
    """The jobs of ``torch-lookahead stability --confirmatory``: the runs of its plan that decide
    each seed's edge, round by round (``confirmatory.edge_search``)."""

    plan: ConfirmatoryPlan
    later_what = "as the edge search goes down the grid"

    @property
    def title(self) -> str:
        return "torch-lookahead stability --confirmatory" + (" (quick)" if self.quick else "")

    @property
    def quick(self) -> bool:
        return self.plan.quick

    def jobs(self) -> list[Job]:
        """The first round: the reference run and every series at the grid's largest lr."""
        return list(first_round(self.plan))

    @property
    def later_jobs(self) -> int:
        """The most runs the later rounds can add: every smaller learning rate of every series."""
        return (len(self.jobs()) - 1) * (len(self.plan.lrs) - 1)


def confirmatory_experiment(quick: bool = False, seed_offset: int = 0) -> ConfirmatoryExperiment:
    """The confirmatory stability study of its committed plan (``plans/stability.json``)."""
    return ConfirmatoryExperiment(confirmatory_plan(quick, seed_offset))


def demo_experiment(quick: bool = False, seed_offset: int = 0) -> Experiment:
    """The demo of its committed plan (``demo_plan``)."""
    plan = demo_plan(quick, seed_offset)
    spec = get_task(plan.task)
    settings = spec.quick if quick else spec.full
    seeds = plan.comparison_seeds
    compare = compare_configs(plan.task, plan.inners, seeds, settings, k=plan.k, alpha=plan.alpha)
    rescaled = [
        config
        for inner in plan.inners
        for config in compare_configs(
            plan.task, [inner], seeds, settings, k=plan.k, alpha=plan.alpha,
            lrs={inner: plan.alpha * spec.learning_rate(inner)},
        )
        if not config.uses_lookahead
    ]  # fmt: skip
    lr_grid = default_lr_grid(plan.task, plan.inners, plan.lr_factors)
    sweep = lr_sweep_configs(
        plan.task, lr_grid, plan.selection_seeds, settings, k=plan.k, alpha=plan.alpha
    )
    grid = k_alpha_configs(
        plan.task, plan.grid_inner, plan.grid_ks, plan.grid_alphas, seeds, settings
    )
    # The tuned protocol's trials: the plain inner optimizer's are the sweep's; Lookahead's are
    # the plan's points of (lr factor, k, alpha), as many.
    tuning = [c for c in sweep if not c.uses_lookahead] + [
        _config(
            plan.task, inner, seed, settings, RunOptions(), lr=factor * spec.learning_rate(inner),
            k=k, alpha=alpha,
        )
        for inner in plan.inners
        for factor, k, alpha in plan.tuning_trials
        for seed in plan.selection_seeds
    ]  # fmt: skip
    schedule_compare = [
        config
        for schedule in plan.other_schedules
        for config in compare_configs(
            plan.task, plan.inners, seeds, settings, k=plan.k, alpha=plan.alpha,
            options=RunOptions(schedule=schedule),
        )
    ]  # fmt: skip
    nqm = nqm_configs(
        NQMProblem.default(), plan.nqm_lrs, k=plan.k, alpha=plan.alpha, chains=plan.nqm_chains,
        burn_in_steps=plan.nqm_burn_in_steps, measured_steps=plan.nqm_measured_steps,
    )  # fmt: skip
    title = "torch-lookahead demo" + (" (quick)" if quick else "")
    return Experiment(
        title, plan.task, tuple(compare), tuple(rescaled), tuple(sweep), tuple(grid),
        tuple(tuning), tuple(schedule_compare), tuple(nqm), quick=quick, plan=plan.plan,
        seed_offset=seed_offset, tuned_seeds=seeds, selection_metric=plan.selection_metric,
        selection_tie=plan.selection_tie, extension_factor=plan.extension_factor,
        max_extensions=plan.max_extensions,
    )  # fmt: skip


def _flag_plan(name: str, flags: Mapping[str, Any], claims: Mapping[str, Any]) -> Plan:
    """The plan a command's flags make: exploratory (written with the run, not before it)."""
    return plan_from_mapping(name, {"status": "exploratory", **flags, "claims": dict(claims)})


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
    seed_offset: int = 0,
) -> Experiment:
    """Each inner optimizer plain and in Lookahead(k, alpha), over ``seeds`` seeds from
    ``seed_offset``."""
    seed_tuple = tuple(range(seed_offset, seed_offset + seeds))
    configs = compare_configs(task, inners, seed_tuple, settings, k=k, alpha=alpha, options=options)
    spec = get_task(task)
    endpoint = spec.test_metric or spec.headline_metric
    plan = _flag_plan(
        "compare",
        {"task": task, "inners": list(inners), "seeds": list(seed_tuple), "k": k, "alpha": alpha,
         "steps": settings.steps, "schedule": options.schedule or spec.schedule},
        {"final_default": {"role": "primary", "endpoint": endpoint,
                           "sesoi": _default_sesoi(endpoint)},
         "seed_variance": {"role": "descriptive", "endpoint": endpoint, "sesoi": 2.0}},
    )  # fmt: skip
    title = f"torch-lookahead compare: {task}" + (" (quick)" if quick else "")
    return Experiment(
        title, task, compare=tuple(configs), quick=quick, plan=plan, seed_offset=seed_offset
    )


def planned_compare_experiment(
    name: str,
    *,
    options: RunOptions = RunOptions(),
    quick: bool = False,
    seed_offset: int = 0,
) -> Experiment:
    """``compare`` by the committed plan ``plans/<name>.json`` (its ``quick`` part over it for a
    quick run): its task, inner optimizers, k, alpha, schedule and comparison seeds, every seed
    moved by ``seed_offset``; the test split measured where the task has one at the runs'
    ends. ``options`` gives where the runs train (its schedule must be the plan's or None)."""
    if seed_offset < 0:
        raise ValueError(f"seed_offset must be a non-negative integer, got {seed_offset}")
    plan = load_plan(name)
    if plan.data.get("command") != "compare":
        raise ValueError(f"plan {name!r} is not a plan of the compare command")
    data = plan_settings(plan, quick)
    spec = get_task(data["task"])
    settings = spec.quick if quick else spec.full
    if not quick and settings.steps != data["steps"]:
        raise ValueError(
            f"plan {name!r} fixes {data['steps']} steps, the task's runs have {settings.steps}"
        )
    if options.schedule not in (None, data["schedule"]):
        raise ValueError(f"plan {name!r} fixes the schedule {data['schedule']!r}")
    options = dataclasses.replace(
        options, schedule=data["schedule"], evaluate_test=spec.test_at_ends
    )
    seeds = _seed_range(data["comparison_seeds"], seed_offset)
    configs = compare_configs(
        spec.name, data["inners"], seeds, settings, k=int(data["k"]), alpha=float(data["alpha"]),
        options=options,
    )  # fmt: skip
    title = f"torch-lookahead compare: {spec.name}" + (" (quick)" if quick else "")
    return Experiment(
        title, spec.name, compare=tuple(configs), quick=quick, plan=plan, seed_offset=seed_offset
    )


def _default_sesoi(metric: str) -> float:
    """The SESOI a flag-made plan declares: 0.01 of accuracy, 0.02 bits or nats of a loss."""
    return 0.01 if metric.endswith("accuracy") else 0.02


# The sweep's selection rule, as its plan states it (``claims.best_lr`` with a tie of 0.0).
SWEEP_SELECTION_RULE = (
    "the best mean final validation metric over the sweep's seeds; means equal within 1e-9 "
    "(far below one image) are ties, broken by the lower mean final validation loss, then the "
    "smaller learning rate"
)
# What the sweep's plan does with an edge, extended or not (part of its rule).
SWEEP_EDGE_VERDICTS = (
    "Where a selected learning rate is at the edge of its method's learning rates, the tuned "
    "case of its inner optimizer gets no verdict; where a seed's width within robustness_delta "
    "of its method's best reaches the edge of the method's learning rates, the width is "
    "censored and the robustness case gets no verdict; the report says why and gives each "
    "method's count of learning rates"
)
# The sweep's grid-extension rule, as its plan states it.
SWEEP_EXTENSION_RULE = (
    "if a method's selected learning rate (the selection rule's, over the sweep's seeds) is the "
    "largest (smallest) of its learning rates, it gets one more at that learning rate times "
    "(divided by) the factor, the grid's own spacing, on the same seeds, and the selection is "
    "made again over all its learning rates; at most max extensions per method. Extensions "
    "follow the selected (mean) optimum only: a seed's width that reaches an edge extends "
    f"nothing. {SWEEP_EDGE_VERDICTS}"
)
# The rule of a sweep's plan whose grid cannot be extended (max 0, or one learning rate).
SWEEP_NO_EXTENSION_RULE = f"the plan extends no grid. {SWEEP_EDGE_VERDICTS}"


def grid_factor(lr_grid: Mapping[str, Sequence[float]], max_extensions: int) -> float | None:
    """The factor between neighbouring learning rates, the same in every grid of ``lr_grid``
    (6 significant digits, as the grids are written), by which the grid-extension rule extends
    a grid; None where no grid has two learning rates (nothing to extend). A grid not evenly
    spaced in log is refused when ``max_extensions`` is above 0; a grid with a learning rate
    twice (at 6 significant digits) is refused: its trials would count as an extension."""
    if max_extensions < 0:
        raise ValueError(
            f"max_extensions (--extend-max) must be a non-negative integer, got {max_extensions}"
        )
    for inner, lrs in lr_grid.items():
        written = [f"{lr:.6g}" for lr in lrs]
        if len(set(written)) != len(written):
            twice = sorted({lr for lr in written if written.count(lr) > 1}, key=float)
            raise ValueError(
                f"lr: each learning rate of a grid must be distinct, got {', '.join(twice)} "
                f"more than once in {inner}'s {', '.join(map(fmt, lrs))}"
            )
    ratios = [b / a for lrs in lr_grid.values() for a, b in itertools.pairwise(sorted(lrs))]
    if not ratios:
        return None
    factor = float(f"{ratios[0]:.6g}")
    if all(math.isclose(r, factor, rel_tol=1e-4) for r in ratios):
        return factor
    if max_extensions == 0:
        return None
    grids = "; ".join(f"{inner} {', '.join(map(fmt, lrs))}" for inner, lrs in lr_grid.items())
    raise ValueError(
        f"lr: the grid-extension rule (--extend-max {max_extensions}) extends a grid by its own "
        f"spacing, so its learning rates must be evenly spaced in log (LOW:HIGH:COUNT), got "
        f"{grids}; or pass --extend-max 0"
    )


def sweep_experiment(
    task: str,
    inners: Sequence[str],
    seeds: int,
    settings: TaskSettings,
    *,
    lrs: Sequence[float] | None = None,
    ks: Sequence[int] = (5, 10, 20),
    alphas: Sequence[float] = (0.3, 0.5, 0.8),
    max_extensions: int = 2,
    options: RunOptions = RunOptions(),
    quick: bool = False,
    seed_offset: int = 0,
) -> Experiment:
    """Learning-rate curves (plain and Lookahead with the first k and alpha) over ``lrs``
    (default: ``default_lr_grid``), and every (k, alpha) at the task's learning rate. Each
    method whose best learning rate is at an edge of the grid gets up to ``max_extensions``
    more beyond it, a grid step apart (``Experiment.extension_configs``; the plan states the
    rule, ``SWEEP_EXTENSION_RULE``)."""
    if not ks or not alphas:
        raise ValueError("ks and alphas must not be empty")
    seed_tuple = tuple(range(seed_offset, seed_offset + seeds))
    lr_grid = default_lr_grid(task, inners) if lrs is None else {i: list(lrs) for i in inners}
    factor = grid_factor(lr_grid, max_extensions)
    most = max_extensions if factor else 0  # a grid of one learning rate has no step
    tie = 0.0
    sweep = lr_sweep_configs(
        task, lr_grid, seed_tuple, settings, k=ks[0], alpha=alphas[0], options=options
    )
    grid = [
        config
        for inner in inners
        for config in k_alpha_configs(
            task, inner, ks, alphas, seed_tuple, settings, options=options
        )
    ]
    spec = get_task(task)
    endpoint = spec.test_metric or spec.headline_metric
    sesoi = _default_sesoi(endpoint)
    delta = 0.01
    plan = _flag_plan(
        "sweep",
        {"task": task, "inners": list(inners), "seeds": list(seed_tuple), "lrs": lr_grid,
         "ks": list(ks), "alphas": list(alphas), "steps": settings.steps,
         "selection": {"metric": spec.headline_metric, "tie": tie, "rule": SWEEP_SELECTION_RULE},
         "robustness_delta": delta,
         "tuning": {"extension": {
             "factor": factor, "max": most,
             "rule": SWEEP_EXTENSION_RULE if most else SWEEP_NO_EXTENSION_RULE}}},
        {"final_tuned": {"role": "descriptive", "endpoint": endpoint, "sesoi": sesoi},
         "lr_robustness": {"role": "descriptive", "endpoint": "log10_lr_width", "sesoi": 0.477},
         "k_alpha_robustness": {"role": "descriptive", "endpoint": endpoint, "sesoi": sesoi}},
    )  # fmt: skip
    title = f"torch-lookahead sweep: {task}" + (" (quick)" if quick else "")
    return Experiment(
        title, task, lr_sweep=tuple(sweep), k_alpha=tuple(grid), quick=quick, plan=plan,
        seed_offset=seed_offset, selection_metric=spec.headline_metric, selection_tie=tie,
        extension_factor=factor or math.nan, max_extensions=most,
    )  # fmt: skip


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


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second: ``2026-12-06T12:45:00+00:00``."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_experiment(
    experiment: Experiment | StabilityExperiment | ConfirmatoryExperiment,
    cache_dir: Path | None,
    *,
    command: str,
    workers: int | None = None,
    on_result: Callable[[Any, bool], None] | None = None,
) -> LabResults | StabilityResults | ConfirmatoryResults:
    """Compute every job of ``experiment`` (see ``run_many``), then its tuned stage, and gather
    what it measured, with the wall time it took: the results a report renders
    (``report.write_report``)."""
    started = time.perf_counter()
    started_at = utc_now()
    if isinstance(experiment, ConfirmatoryExperiment):
        counted = [0, 0]

        def compute(configs: list[RunConfig]) -> list[RunResult]:
            results, cached = run_many_counted(
                configs, cache_dir, workers=workers, on_result=on_result
            )
            counted[0] += len(configs)
            counted[1] += cached
            return results

        runs = edge_search(experiment.plan, compute)
        seconds = time.perf_counter() - started
        return ConfirmatoryResults(
            experiment.plan,
            command,
            runs,
            seconds,
            counted[0],
            counted[1],
            started_at,
            utc_now(),
        )
    jobs = experiment.jobs()
    results, cached = run_many_counted(jobs, cache_dir, workers=workers, on_result=on_result)
    if isinstance(experiment, StabilityExperiment):
        seconds = time.perf_counter() - started
        return StabilityResults(
            experiment.plan, command, list(results), seconds, len(jobs), cached, started_at,
            utc_now(),
        )  # fmt: skip
    by_job = dict(zip(jobs, results, strict=True))
    tuned: list[RunResult] = []
    trials = [by_job[c] for c in experiment.tuning or experiment.lr_sweep]

    def compute_more(configs: list[RunConfig]) -> list[RunResult]:
        nonlocal cached
        new = [c for c in dict.fromkeys(configs) if c not in by_job]
        more, more_cached = run_many_counted(new, cache_dir, workers=workers, on_result=on_result)
        by_job.update(zip(new, more, strict=True))
        jobs.extend(new)
        cached += more_cached
        return [by_job[c] for c in configs]

    while extension := experiment.extension_configs(trials):
        trials += compute_more(extension)
    if experiment.tuned_seeds and trials:
        tuned = compute_more(experiment.tuned_configs(trials))
    seconds = time.perf_counter() - started
    spec = get_task(experiment.task) if experiment.task else None
    nqm = experiment.nqm
    return LabResults(
        title=experiment.title,
        command=command,
        task=experiment.task,
        headline_metric=spec.headline_metric if spec else "val_loss",
        higher_is_better=spec.higher_is_better if spec else False,
        compare=[by_job[c] for c in experiment.compare],
        rescaled=[by_job[c] for c in experiment.rescaled],
        # Without trials of its own, the tuned protocol's trials are the sweep, as extended.
        lr_sweep=[by_job[c] for c in experiment.lr_sweep] if experiment.tuning else trials,
        tuned=tuned,
        k_alpha=[by_job[c] for c in experiment.k_alpha],
        tuning=trials if experiment.tuning else [],
        schedule_compare=[by_job[c] for c in experiment.schedule_compare],
        nqm=[by_job[c] for c in nqm],
        nqm_k=nqm[0].k if nqm else 5,
        nqm_alpha=nqm[0].alpha if nqm else 0.5,
        seconds=seconds,
        started_at=started_at,
        finished_at=utc_now(),
        jobs=len(jobs),
        cached_jobs=cached,
        quick=experiment.quick,
        plan=experiment.plan,
        seed_offset=experiment.seed_offset,
    )
