"""The paper's claims, each checked against what the runs measured, with intervals.

Every claim names its protocol, estimates an effect per case (an inner optimizer, or a learning
rate of the noisy quadratic model) with a 95% confidence interval (``stats``), and reads its
verdict from the interval: "holds", "does not hold" or "inconclusive at n seeds". Every
sentence here is generated from the measured numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch_lookahead_lab.metrics import SettingSummary, area_under_curve, final_value, value_at
from torch_lookahead_lab.nqm import NQMPoint
from torch_lookahead_lab.runner import RunResult
from torch_lookahead_lab.stats import Favours, Interval, difference, variance_ratio, verdict_of

__all__ = [
    "Case",
    "Claim",
    "best_lr",
    "combined_verdict",
    "convergence_claim",
    "final_quality_claim",
    "fmt",
    "format_interval",
    "k_alpha_claim",
    "lr_robustness_claim",
    "nqm_claim",
    "pair_by_inner",
    "seed_variance_claim",
    "short_interval",
    "tuned_pairs",
]

# The paper's own words (Zhang, Lucas, Ba & Hinton 2019, abstract).
PAPER_IMPROVES = (
    'Lookahead "can significantly improve the performance of SGD and Adam, even with their '
    'default hyperparameter settings".'
)
PAPER_VARIANCE = (
    'Lookahead "improves the learning stability and lowers the variance of its inner optimizer".'
)


@dataclass(frozen=True)
class Case:
    """One case of a claim: its label, the effect with its interval, the verdict, and what was
    measured, in words."""

    label: str
    verdict: str
    interval: Interval | None
    sentence: str


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, how it was put to the test here, and what came out."""

    key: str
    title: str  # a few words: "final result, default protocol"
    paper: str
    protocol: str
    effect: str  # what the effect of each case is, and which sign supports the claim
    cases: tuple[Case, ...]
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        return combined_verdict(self.cases)

    @property
    def measured(self) -> tuple[str, ...]:
        return tuple(case.sentence for case in self.cases) + self.notes


def combined_verdict(cases: Sequence[Case]) -> str:
    """One verdict when every case agrees, else each verdict with its cases."""
    if not cases:
        return "not measured"
    by_verdict: dict[str, list[str]] = {}
    for case in cases:
        by_verdict.setdefault(case.verdict, []).append(case.label)
    if len(by_verdict) == 1:
        return cases[0].verdict
    return "; ".join(f"{verdict} for {', '.join(labels)}" for verdict, labels in by_verdict.items())


def fmt(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; "n/a" for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def short_interval(interval: Interval, digits: int = 3) -> str:
    """``-0.0139 [-0.0201, -0.0077]``, or ``-0.0139 [no interval]``."""
    if not interval.estimated:
        return f"{fmt(interval.effect, digits)} [no interval]"
    return f"{fmt(interval.effect, digits)} [{fmt(interval.low, digits)}, {fmt(interval.high, digits)}]"


def format_interval(interval: Interval, digits: int = 3) -> str:
    """``-0.0139 (95% CI -0.0201 to -0.0077; paired t-interval, 5 seeds)``, or the estimate
    alone when no interval could be computed."""
    if not interval.estimated:
        return f"{fmt(interval.effect, digits)} (no interval from {interval.samples})"
    return (
        f"{fmt(interval.effect, digits)} (95% CI {fmt(interval.low, digits)} to "
        f"{fmt(interval.high, digits)}; {interval.method}, {interval.samples})"
    )


def _seeds_needed(interval: Interval, verdict: str) -> str:
    if not verdict.startswith("inconclusive"):
        return ""
    if not interval.estimated:
        return f" An interval needs more {interval.unit}s ({interval.method})."
    if interval.seeds_needed is None:
        return " No number of seeds would decide it at this estimate."
    if interval.seeds_needed > 10_000:
        return f" More than 10,000 {interval.unit}s would be needed to decide it at this spread."
    return f" About {interval.seeds_needed} {interval.unit}s would decide it at this spread."


def _case(label: str, interval: Interval, favours: Favours, what: str) -> Case:
    verdict = verdict_of(interval, favours)
    sentence = f"{label}: {what} {format_interval(interval)}: {verdict}."
    return Case(label, verdict, interval, sentence + _seeds_needed(interval, verdict))


def _favours(higher_is_better: bool) -> Favours:
    return "above" if higher_is_better else "below"


def pair_by_inner(
    summaries: Sequence[SettingSummary],
) -> list[tuple[SettingSummary, SettingSummary]]:
    """(plain, Lookahead) summaries of the same inner optimizer at the same learning rate."""
    plain = {(s.setting.inner, s.setting.lr): s for s in summaries if not s.setting.uses_lookahead}
    pairs = []
    for summary in summaries:
        key = (summary.setting.inner, summary.setting.lr)
        if summary.setting.uses_lookahead and key in plain:
            pairs.append((plain[key], summary))
    return pairs


def _paired_values(
    plain: SettingSummary, lookahead: SettingSummary, value: Callable[[RunResult], float]
) -> tuple[list[float], list[float], bool]:
    """Values of both settings on their common seeds (paired), or all of them (unpaired) when
    they share no seed."""
    plain_values = {r.config.seed: value(r) for r in plain.runs}
    lookahead_values = {r.config.seed: value(r) for r in lookahead.runs}
    common = sorted(set(plain_values) & set(lookahead_values))
    if common:
        return [plain_values[s] for s in common], [lookahead_values[s] for s in common], True
    return list(plain_values.values()), list(lookahead_values.values()), False


def _compare(
    plain: SettingSummary, lookahead: SettingSummary, value: Callable[[RunResult], float]
) -> Interval:
    base, candidate, paired = _paired_values(plain, lookahead, value)
    return difference(base, candidate, paired=paired)


def _metric_name(metric: str) -> str:
    return metric.replace("_", " ")


def final_quality_claim(
    pairs: Sequence[tuple[SettingSummary, SettingSummary]],
    metric: str,
    higher_is_better: bool,
    *,
    protocol: str,
    key: str,
    grid: Sequence[SettingSummary] = (),
) -> Claim:
    """Lookahead's final ``metric`` against its inner optimizer's, per (plain, Lookahead) pair.

    ``grid``: the sweep the pairs were chosen from; a learning rate chosen at its edge is noted
    (a wider grid might do better there).
    """
    cases = []
    notes = []
    for plain, lookahead in pairs:
        for chosen in (plain, lookahead):
            lrs = [
                s.setting.lr
                for s in grid
                if s.setting.inner == chosen.setting.inner
                and s.setting.uses_lookahead == chosen.setting.uses_lookahead
            ]
            if len(lrs) >= 2 and chosen.setting.lr in (min(lrs), max(lrs)):
                edge = "largest" if chosen.setting.lr == max(lrs) else "smallest"
                notes.append(
                    f"{chosen.method}: its best learning rate, {fmt(chosen.setting.lr, 3)}, is "
                    f"the {edge} of the sweep; a wider sweep might find a better one."
                )
        interval = _compare(plain, lookahead, lambda r: final_value(r, metric))
        what = (
            f"final {_metric_name(metric)} {fmt(plain.final[metric][0])} plain (lr "
            f"{fmt(plain.setting.lr, 3)}), {fmt(lookahead.final[metric][0])} with Lookahead (lr "
            f"{fmt(lookahead.setting.lr, 3)}); Lookahead minus plain"
        )
        cases.append(_case(plain.setting.inner, interval, _favours(higher_is_better), what))
    return Claim(
        key=key,
        title=f"final {_metric_name(metric)}, {protocol.split(':', 1)[0]} protocol",
        paper=PAPER_IMPROVES,
        protocol=protocol,
        effect=f"Lookahead's final {_metric_name(metric)} minus the inner optimizer's, per seed; "
        f"{'above' if higher_is_better else 'below'} zero supports the claim.",
        cases=tuple(cases),
        notes=tuple(notes),
    )


def convergence_claim(
    pairs: Sequence[tuple[SettingSummary, SettingSummary]], *, protocol: str, key: str
) -> Claim:
    """Lookahead's mean training loss over the run (the area under the curve) against its inner
    optimizer's; the training loss at a third and two thirds of the budget as notes."""
    cases = []
    notes = []
    for plain, lookahead in pairs:
        interval = _compare(plain, lookahead, area_under_curve)
        what = (
            f"mean training loss over the run {fmt(plain.train_loss_area[0])} plain, "
            f"{fmt(lookahead.train_loss_area[0])} with Lookahead; Lookahead minus plain"
        )
        cases.append(_case(plain.setting.inner, interval, "below", what))
        steps = plain.setting.steps
        budgets = []
        for step in (steps // 3, 2 * steps // 3, steps):
            at = _compare(
                plain, lookahead, functools.partial(value_at, metric="train_loss", step=step)
            )
            budgets.append(f"step {step}: {format_interval(at)}")
        notes.append(
            f"{plain.setting.inner}: training loss, Lookahead minus plain, at "
            + "; at ".join(budgets)
            + "."
        )
    return Claim(
        key=key,
        title=f"convergence, {protocol.split(':', 1)[0]} protocol",
        paper="Lookahead converges faster than, or as fast as, its inner optimizer (the "
        "paper's training-loss curves).",
        protocol=protocol,
        effect="Lookahead's mean training loss over the run (area under the training-loss "
        "curve divided by the steps) minus the inner optimizer's, per seed; below zero supports "
        "the claim.",
        cases=tuple(cases),
        notes=tuple(notes),
    )


def seed_variance_claim(
    pairs: Sequence[tuple[SettingSummary, SettingSummary]],
    *,
    protocol: str,
    metric: str = "val_loss",
) -> Claim:
    """The variance over seeds of Lookahead's final ``metric`` against its inner optimizer's."""
    cases = []
    for plain, lookahead in pairs:
        base, candidate, paired = _paired_values(plain, lookahead, lambda r: final_value(r, metric))
        if paired:
            interval = variance_ratio(base, candidate)
        else:  # no shared seed: nothing to pair, and the interval assumes pairs
            interval = Interval(math.nan, math.nan, math.nan, 0, "Pitman-Morgan interval", 1.0)
        what = f"variance over seeds of the final {_metric_name(metric)}, Lookahead over plain"
        cases.append(_case(plain.setting.inner, interval, "below", what))
    return Claim(
        key="seed_variance",
        title="variance across seeds",
        paper=PAPER_VARIANCE + " Here: across random seeds.",
        protocol=protocol,
        effect=f"the ratio of the variances over seeds of the final {_metric_name(metric)}, "
        "Lookahead over the inner optimizer; below 1 supports the claim.",
        cases=tuple(cases),
    )


def best_lr(
    summaries: Sequence[SettingSummary], metric: str, higher_is_better: bool
) -> SettingSummary:
    """The setting with the best mean final ``metric`` (diverged seeds at their step-0 value)."""

    def score(summary: SettingSummary) -> float:
        values = list(summary.values(metric).values())
        mean = math.fsum(values) / len(values)
        return mean if higher_is_better else -mean

    return max(summaries, key=score)


def tuned_pairs(
    summaries: Sequence[SettingSummary], metric: str, higher_is_better: bool
) -> list[tuple[SettingSummary, SettingSummary]]:
    """Per inner optimizer: (plain at its best learning rate, Lookahead at its best)."""
    pairs = []
    for inner in dict.fromkeys(s.setting.inner for s in summaries):
        plain = [s for s in summaries if s.setting.inner == inner and not s.setting.uses_lookahead]
        wrapped = [s for s in summaries if s.setting.inner == inner and s.setting.uses_lookahead]
        if len(plain) >= 2 and wrapped:
            pairs.append(
                (
                    best_lr(plain, metric, higher_is_better),
                    best_lr(wrapped, metric, higher_is_better),
                )
            )
    return pairs


def lr_robustness_claim(
    summaries: Sequence[SettingSummary], metric: str, higher_is_better: bool, *, protocol: str
) -> Claim:
    """Per inner optimizer: Lookahead's final ``metric`` averaged over the learning-rate grid
    against the inner optimizer's, paired by seed."""
    cases = []
    for inner in dict.fromkeys(s.setting.inner for s in summaries):
        pairs = [p for p in pair_by_inner(summaries) if p[0].setting.inner == inner]
        if len(pairs) < 2:
            continue
        seeds = sorted(set.intersection(*(set(p.seeds) & set(la.seeds) for p, la in pairs)))
        plain_means = [math.fsum(p.values(metric)[s] for p, _ in pairs) / len(pairs) for s in seeds]
        lookahead_means = [
            math.fsum(la.values(metric)[s] for _, la in pairs) / len(pairs) for s in seeds
        ]
        interval = difference(plain_means, lookahead_means, paired=True)
        lrs = [p.setting.lr for p, _ in pairs]
        what = (
            f"final {_metric_name(metric)} averaged over {len(pairs)} learning rates from "
            f"{fmt(min(lrs), 3)} to {fmt(max(lrs), 3)}: "
            f"{fmt(math.fsum(plain_means) / max(len(seeds), 1))} plain, "
            f"{fmt(math.fsum(lookahead_means) / max(len(seeds), 1))} with Lookahead; "
            "Lookahead minus plain"
        )
        cases.append(_case(inner, interval, _favours(higher_is_better), what))
    return Claim(
        key="lr_robustness",
        title="robustness to the learning rate",
        paper="Lookahead makes the result less sensitive to the inner optimizer's learning "
        "rate (the paper's learning-rate robustness experiments).",
        protocol=protocol,
        effect=f"the final {_metric_name(metric)} averaged over the learning-rate grid, "
        "Lookahead minus the inner optimizer, per seed (a diverged run counts as the untrained "
        f"model); {'above' if higher_is_better else 'below'} zero supports the claim.",
        cases=tuple(cases),
    )


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values)


def k_alpha_claim(
    grid: Sequence[SettingSummary],
    lr_sweep: Sequence[SettingSummary],
    metric: str,
    *,
    protocol: str,
) -> Claim:
    """Per inner optimizer: how much the final ``metric`` moves over the (k, alpha) grid against
    how much the inner optimizer's moves over its learning-rate grid, per seed; and against the
    inner optimizer's seed-to-seed standard deviation (a note)."""
    cases = []
    notes = []
    for inner in dict.fromkeys(s.setting.inner for s in grid):
        settings = [s for s in grid if s.setting.inner == inner and s.setting.uses_lookahead]
        plain_lrs = [
            s for s in lr_sweep if s.setting.inner == inner and not s.setting.uses_lookahead
        ]
        if len(settings) < 2:
            continue
        if len(plain_lrs) < 2:
            notes.append(
                f"{inner}: no learning-rate sweep of {inner} to compare the (k, alpha) spread with."
            )
            continue
        seeds = sorted(set.intersection(*(set(s.seeds) for s in [*settings, *plain_lrs])))
        grid_spread = [_spread([s.values(metric)[seed] for s in settings]) for seed in seeds]
        lr_spread = [_spread([s.values(metric)[seed] for s in plain_lrs]) for seed in seeds]
        interval = difference(grid_spread, lr_spread, paired=True)
        what = (
            f"spread (largest minus smallest final {_metric_name(metric)}) over "
            f"{len(settings)} (k, alpha) settings {fmt(_mean(grid_spread), 3)}, over "
            f"{len(plain_lrs)} learning rates of {inner} alone {fmt(_mean(lr_spread), 3)}; "
            "learning-rate spread minus (k, alpha) spread"
        )
        cases.append(_case(inner, interval, "above", what))
        baseline = [s for s in grid if s.setting.inner == inner and not s.setting.uses_lookahead]
        if baseline:
            mean, std = baseline[0].final[metric]
            notes.append(
                f"{inner}: seed noise for scale: {inner} alone at lr "
                f"{fmt(baseline[0].setting.lr, 3)} gave {fmt(mean)} with a standard deviation "
                f"of {fmt(std, 2)} over {len(baseline[0].seeds)} seeds; the (k, alpha) grid's "
                f"mean values ranged from {fmt(min(s.final[metric][0] for s in settings))} to "
                f"{fmt(max(s.final[metric][0] for s in settings))}."
            )
    return Claim(
        key="k_alpha_robustness",
        title="robustness to k and alpha",
        paper="Lookahead's result varies little with its own hyper-parameters k and alpha (the "
        "paper's (k, alpha) sensitivity experiments).",
        protocol=protocol,
        effect=f"per seed, the spread of the final {_metric_name(metric)} over the inner "
        "optimizer's learning-rate grid minus its spread over the (k, alpha) grid; above zero "
        "supports the claim (k and alpha matter less than the learning rate).",
        cases=tuple(cases),
        notes=tuple(notes),
    )


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def nqm_claim(points: Sequence[NQMPoint], k: int, alpha: float) -> Claim:
    """Proposition 2: Lookahead's steady-state expected loss is below SGD's at the same learning
    rate; per learning rate, the simulated difference with its interval over chains."""
    cases = []
    for point in points:
        interval = Interval(
            point.lookahead_simulated - point.sgd_simulated,
            point.difference_low,
            point.difference_high,
            point.chains,
            "paired t-interval",
            unit="chain",
        )
        verdict = verdict_of(interval, "below")
        cases.append(
            Case(
                f"lr {fmt(point.lr, 3)}",
                verdict,
                interval,
                f"lr {fmt(point.lr, 3)}: steady-state expected loss {fmt(point.sgd_simulated)} "
                f"SGD, {fmt(point.lookahead_simulated)} Lookahead (closed forms "
                f"{fmt(point.sgd_theory)} and {fmt(point.lookahead_theory)}); Lookahead minus SGD "
                f"{format_interval(interval)}: {verdict}.",
            )
        )
    errors = [e for p in points for e in p.relative_errors()]
    notes = (
        f"Simulation against the closed forms: largest relative error of the excess loss over "
        f"the noise floor {fmt(100 * max(errors), 2)}%."
        if errors
        else "",
    )
    return Claim(
        key="nqm_variance",
        title="noisy quadratic model, steady-state variance",
        paper="On the noisy quadratic model, Lookahead's steady-state variance, hence its "
        "expected loss, is strictly below SGD's at the same learning rate (the paper's "
        "Proposition 2).",
        protocol=f"simulated with the real torch.optim.SGD and Lookahead(k={k}, alpha={alpha}) "
        "from the optimum, in float64; SGD and Lookahead share each chain's noise.",
        effect="Lookahead's simulated steady-state expected loss minus SGD's at each learning "
        "rate; below zero supports the claim.",
        cases=tuple(cases),
        notes=tuple(n for n in notes if n),
    )


def claim_json(claim: Claim) -> dict[str, Any]:
    """A claim and its cases as plain data, for a report's results.json."""
    return {
        "key": claim.key,
        "paper": claim.paper,
        "protocol": claim.protocol,
        "effect": claim.effect,
        "verdict": claim.verdict,
        "cases": [
            {
                "label": case.label,
                "verdict": case.verdict,
                "interval": asdict(case.interval) if case.interval else None,
                "sentence": case.sentence,
            }
            for case in claim.cases
        ],
        "notes": list(claim.notes),
    }
