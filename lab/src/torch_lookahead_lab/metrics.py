"""What a run measured, as numbers the claims compare: final values, the area under the training
loss curve, values at fixed budgets; summaries over seeds and curves with seed bands. Pure
functions of ``RunResult`` lists.

A run that diverged counts as the untrained model: every value after its divergence, and every
finite value worse than the untrained model's (a run that blew up and stayed finite), is the
value the run measured at step 0. A diverged run is not averaged away, it is not infinitely
bad, and one that reached NaN scores no better than one that blew up and stayed finite.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid  # type: ignore[import-untyped]

from torch_lookahead_lab.runner import RunConfig, RunResult, decode_correct

__all__ = [
    "Band",
    "SettingSummary",
    "area_under_curve",
    "final_value",
    "group_by_setting",
    "higher_is_better",
    "mean_and_std",
    "scored_correct",
    "seed_band",
    "setting_of",
    "steps_to_target",
    "summarize",
    "value_at",
]


def mean_and_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value: no spread was
    measured). A missing or non-finite value makes both NaN."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not values or len(finite) < len(values):
        return math.nan, math.nan
    if len(finite) == 1:
        return finite[0], math.nan
    return statistics.fmean(finite), statistics.stdev(finite)


def higher_is_better(metric: str) -> bool:
    """Accuracies are better high; losses and bits per character low."""
    return metric.endswith("accuracy")


def _curve(result: RunResult, metric: str) -> tuple[list[int], list[float]]:
    """Evaluated steps and values of ``metric`` over the whole budget, a diverged run's values
    replaced from its divergence on by its step-0 value (and extended to the last step), and
    any value worse than the step-0 value by the step-0 value."""
    history = result.history[metric]
    untrained = history[0]
    if untrained is None:
        raise ValueError(f"{result.config.method}: {metric} was not finite at step 0")
    steps = list(result.steps)
    no_worse = max if higher_is_better(metric) else min
    values = [untrained if v is None else no_worse(v, untrained) for v in history]
    if result.diverged_at is not None:
        values = [
            untrained if step >= result.diverged_at else value
            for step, value in zip(steps, values, strict=True)
        ]
        if steps[-1] < result.config.steps:
            steps.append(result.config.steps)
            values.append(untrained)
    return steps, values


def final_value(result: RunResult, metric: str) -> float:
    """``metric`` at the end of training (the step-0 value for a run that diverged)."""
    return _curve(result, metric)[1][-1]


def scored_correct(result: RunResult) -> np.ndarray | None:
    """Which test examples the run's scored evaluation classified correctly (its record
    ``RunResult.test_correct``; None without one): the last evaluation's, or step 0's for a run
    that diverged or ended with fewer correct than at step 0, as ``final_value`` scores its
    ``test_accuracy``, whose value is this vector's mean."""
    record = result.test_correct
    if record is None:
        return None
    untrained, last = (decode_correct(record["correct"][i], record["examples"]) for i in (0, -1))
    if result.diverged_at is not None or last.sum() < untrained.sum():
        return untrained
    return last


def value_at(result: RunResult, metric: str, step: int) -> float:
    """``metric`` at the first evaluation at or after ``step``."""
    steps, values = _curve(result, metric)
    for evaluated, value in zip(steps, values, strict=True):
        if evaluated >= step:
            return value
    raise ValueError(f"the run ends at step {steps[-1]}, before {step}")


def steps_to_target(result: RunResult, metric: str, target: float) -> int:
    """The first evaluated step at which ``metric`` reaches ``target`` (at or above it for an
    accuracy, at or below it otherwise); a run that never does is censored at one evaluation
    interval past its last step."""
    steps, values = _curve(result, metric)
    sign = 1.0 if higher_is_better(metric) else -1.0
    for step, value in zip(steps, values, strict=True):
        if sign * value >= sign * target:
            return step
    return result.config.steps + result.config.eval_every


def area_under_curve(result: RunResult, metric: str = "train_loss") -> float:
    """The mean of ``metric`` over the run: the area under its curve (trapezoids between the
    evaluations) divided by the number of steps. Lower for a loss means faster convergence."""
    steps, values = _curve(result, metric)
    return float(trapezoid(values, steps)) / (steps[-1] - steps[0])


def setting_of(config: RunConfig) -> RunConfig:
    """The configuration without its seed: runs that differ only by seed share a setting."""
    return dataclasses.replace(config, seed=-1)


def group_by_setting(results: Iterable[RunResult]) -> dict[RunConfig, list[RunResult]]:
    """Runs grouped by setting, in first-seen order, each group sorted by seed."""
    groups: dict[RunConfig, list[RunResult]] = {}
    for result in results:
        groups.setdefault(setting_of(result.config), []).append(result)
    return {s: sorted(rs, key=lambda r: r.config.seed) for s, rs in groups.items()}


@dataclass(frozen=True)
class SettingSummary:
    """One setting over its seeds: the runs, and mean and standard deviation of what they
    measured at the end (``final``) and of their mean training loss (``train_loss_area``)."""

    setting: RunConfig
    runs: tuple[RunResult, ...]
    final: dict[str, tuple[float, float]]  # metric -> (mean, std) at the end of training
    train_loss_area: tuple[float, float]
    diverged: int

    @property
    def method(self) -> str:
        return self.setting.method

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.config.seed for r in self.runs)

    def values(self, metric: str) -> dict[int, float]:
        """Final ``metric`` per seed (diverged runs at their step-0 value)."""
        return {r.config.seed: final_value(r, metric) for r in self.runs}


def summarize(results: Iterable[RunResult]) -> list[SettingSummary]:
    """One ``SettingSummary`` per setting, in first-seen order."""
    summaries = []
    for setting, runs in group_by_setting(results).items():
        summaries.append(
            SettingSummary(
                setting=setting,
                runs=tuple(runs),
                final={m: mean_and_std([final_value(r, m) for r in runs]) for m in runs[0].history},
                train_loss_area=mean_and_std([area_under_curve(r) for r in runs]),
                diverged=sum(r.diverged_at is not None for r in runs),
            )
        )
    return summaries


@dataclass(frozen=True)
class Band:
    """A metric's mean over seeds with its minimum and maximum, at each evaluated step."""

    steps: tuple[int, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


def seed_band(runs: Sequence[RunResult], metric: str) -> Band:
    """The seed band of ``metric`` over the steps every run evaluated (a diverged run ends the
    band at its last finite evaluation)."""
    if not runs:
        raise ValueError("runs must not be empty")
    steps: list[int] = []
    mean: list[float] = []
    low: list[float] = []
    high: list[float] = []
    for index, step in enumerate(runs[0].steps):
        values = []
        for run in runs:
            value = run.history[metric][index] if index < len(run.steps) else None
            if value is None or run.steps[index] != step:
                break
            values.append(value)
        if len(values) < len(runs):
            break
        steps.append(step)
        mean.append(statistics.fmean(values))
        low.append(min(values))
        high.append(max(values))
    return Band(tuple(steps), tuple(mean), tuple(low), tuple(high))
