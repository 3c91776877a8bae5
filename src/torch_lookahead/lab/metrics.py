"""Summaries of runs over seeds: final metrics (mean and standard deviation), steps to a target
loss, and curves with seed bands. Pure functions of ``RunResult`` lists."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch_lookahead.lab.runner import RunConfig, RunResult

__all__ = [
    "Band",
    "SettingSummary",
    "group_by_setting",
    "mean_and_std",
    "seed_band",
    "steps_to_target",
    "summarize",
]


def mean_and_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value). A missing or
    non-finite value makes both NaN: a diverged seed is not averaged away."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not values or len(finite) < len(values):
        return math.nan, math.nan
    if len(finite) == 1:
        return finite[0], 0.0
    return statistics.fmean(finite), statistics.stdev(finite)


def steps_to_target(result: RunResult, target: float, metric: str = "train_loss") -> int | None:
    """The first evaluated step at which ``metric`` is at or below ``target`` (None: never)."""
    for step, value in zip(result.steps, result.history[metric], strict=True):
        if value is not None and value <= target:
            return step
    return None


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
    """One setting over its seeds."""

    setting: RunConfig
    seeds: tuple[int, ...]
    final: dict[str, tuple[float, float]]  # metric -> (mean, std) at the last evaluation
    steps_to_target: tuple[int | None, ...]  # per seed
    target_loss: float
    diverged: int

    @property
    def method(self) -> str:
        return self.setting.method

    def mean_steps_to_target(self) -> float | None:
        """Mean over seeds, or None when some seed never reached the target."""
        reached = [s for s in self.steps_to_target if s is not None]
        if not reached or len(reached) < len(self.steps_to_target):
            return None
        return statistics.fmean(reached)


def summarize(results: Iterable[RunResult], target_loss: float) -> list[SettingSummary]:
    """One ``SettingSummary`` per setting."""
    summaries = []
    for setting, runs in group_by_setting(results).items():
        metrics = list(runs[0].history)
        summaries.append(
            SettingSummary(
                setting=setting,
                seeds=tuple(r.config.seed for r in runs),
                final={m: mean_and_std([r.final(m) for r in runs]) for m in metrics},
                steps_to_target=tuple(steps_to_target(r, target_loss) for r in runs),
                target_loss=target_loss,
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
