"""The paper's claims, each checked against what the runs measured, under a plan.

Every claim names its protocol, its role in the plan (primary, descriptive, or an
implementation check), its endpoint and its smallest effect of interest (SESOI); it estimates an
effect per case (an inner optimizer, a (k, alpha) setting) with an exact test (``stats``) and
reads one of four verdicts: supports, contradicts, equivalent within +-SESOI, inconclusive.
Primary endpoints are Holm-adjusted together across a report (``holm_primary``); the cases of
the (k, alpha) claim are Holm-adjusted among themselves. A family holds the difference and the
equivalence p-values of its cases together. Every sentence here is generated from
the measured numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from torch_lookahead_lab.metrics import (
    SettingSummary,
    final_value,
    higher_is_better,
    scored_correct,
    steps_to_target,
)
from torch_lookahead_lab.nqm import NQMPoint
from torch_lookahead_lab.plans import ClaimPlan
from torch_lookahead_lab.runner import RunConfig, RunResult
from torch_lookahead_lab.stats import (
    NO_VERDICT,
    Estimate,
    Favours,
    holm,
    paired_difference,
    two_way_bootstrap,
    variance_ratio,
    verdict_kind,
    verdict_of,
)

__all__ = [
    "EQUAL_MEANS",
    "NO_VERDICT",
    "Case",
    "Claim",
    "best_lr",
    "by_method",
    "claim_json",
    "convergence_claim",
    "final_quality_claim",
    "fmt",
    "format_estimate",
    "holm_primary",
    "k_alpha_claim",
    "lr_robustness_claim",
    "nqm_claim",
    "pair_by_inner",
    "seed_variance_claim",
    "select_per_method",
    "selection_edge",
    "short_interval",
    "tuned_pairs",
]

# The paper's own words (Zhang, Lucas, Ba & Hinton 2019, abstract).
PAPER_IMPROVES = (
    'Lookahead "can significantly improve the performance of SGD and Adam, even with their '
    'default hyperparameter settings".'
)
# Means of a metric this close are equal in a selection (``best_lr``): float sums of the same
# values in another order differ by about 1e-16; one image moves a mean accuracy by
# 1 / (images x seeds), above 1e-9 below a billion images.
EQUAL_MEANS = 1e-9
PAPER_VARIANCE = (
    'Lookahead "improves the learning stability and lowers the variance of its inner optimizer".'
)

_Value = TypeVar("_Value")  # what _paired_values pairs: a float, or a per-example record


@dataclass(frozen=True)
class Case:
    """One case of a claim: its label, the effect with its test, the verdict, and what was
    measured, in words. ``adjusted``: the Holm-adjusted p-values (difference, equivalence)
    when the case is one of ``family`` endpoints tested together. ``caveat``: how to read the
    verdict, printed beside it (it changes no verdict). ``bootstrap``: the two-way paired
    bootstrap over seeds and test examples, when the plan asks for it; then each p-value the
    verdict reads is the larger of the seed-level test's and the bootstrap's (``p_values``).
    ``from_tests``: what the tests say beside the verdict: that the seed-level test alone
    would give another, or that the bootstrap's p-values moved by ``MC_BAND`` Monte Carlo
    standard errors would (a verdict within Monte Carlo error)."""

    label: str
    verdict: str
    estimate: Estimate | None
    what: str
    favours: Favours = "above"
    adjusted: tuple[float, float] | None = None
    family: int = 1
    caveat: str = ""
    bootstrap: Estimate | None = None
    from_tests: str = ""

    @property
    def sentence(self) -> str:
        effect = ""
        if self.estimate:
            effect = f" {format_estimate(self.estimate, self.adjusted, self.bootstrap)}"
        return f"{self.label}: {self.what}{effect}: {self.verdict_text}."

    @property
    def interval_text(self) -> str:
        """The effect and its 95% interval (and the two-way one): ``-0.015 [-0.022, -0.008];
        two-way [-0.031, -0.001]``."""
        if self.estimate is None:
            return ""
        text = short_interval(self.estimate)
        if self.bootstrap is not None:
            text += f"; two-way {short_interval(self.bootstrap).split(' ', 1)[1]}"
        return text

    def p_values(self, shift: float = 0.0) -> tuple[float, float]:
        """(difference, equivalence) p-values the verdict reads before any Holm adjustment:
        the seed-level test's, or with a ``bootstrap`` the larger of its and the bootstrap's
        (an intersection-union test: it rejects only where both tests do). ``shift``: the
        bootstrap's p-values moved by that many of their Monte Carlo standard errors."""
        if self.estimate is None:
            return math.nan, math.nan
        p, q = self.estimate.p_value, self.estimate.p_equivalence
        if self.bootstrap is not None:
            boot = self.bootstrap
            p = _larger(p, _moved(boot.p_value, boot.p_value_se, shift))
            q = _larger(q, _moved(boot.p_equivalence, boot.p_equivalence_se, shift))
        return p, q

    @property
    def verdict_text(self) -> str:
        """The verdict, with its caveats in parentheses when it has some."""
        return f"{self.verdict} ({self.caveat_text})" if self.caveat_text else self.verdict

    @property
    def caveat_text(self) -> str:
        """What the tests say beside the verdict (``from_tests``), then the ``caveat``."""
        return "; ".join(filter(None, (self.from_tests, self.caveat)))

    @property
    def favours_text(self) -> str:
        """When the effect favours Lookahead: ``> 0``, ``< 0``, ``< 1``."""
        null = self.estimate.null if self.estimate else 0.0
        return f"{'>' if self.favours == 'above' else '<'} {fmt(null)}"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, how it was put to the test here, and what came out."""

    key: str
    title: str  # a few words: "final accuracy, default protocol"
    paper: str
    protocol: str
    effect: str  # what the effect of each case is, and which sign supports the claim
    cases: tuple[Case, ...]
    notes: tuple[str, ...] = ()
    role: str = "descriptive"  # primary, descriptive or check
    sesoi: float | None = None
    control: str = ""  # set: not a claim of the paper but the lab's control, described here
    schedule: str = ""  # the learning-rate schedule its runs trained with, where one

    @property
    def measured(self) -> tuple[str, ...]:
        return tuple(case.sentence for case in self.cases) + self.notes


def _moved(p: float, se: float, shift: float) -> float:
    """``p + shift * se`` within [0, 1]; ``p`` where ``se`` is not known."""
    return p if shift == 0.0 or math.isnan(se) else min(1.0, max(0.0, p + shift * se))


def _larger(first: float, second: float) -> float:
    """The larger p-value; NaN (no test) when either is."""
    return math.nan if math.isnan(first) or math.isnan(second) else max(first, second)


def fmt(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; "n/a" for a missing or NaN value."""
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value + 0.0:.{digits}g}"  # + 0.0: no "-0"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2g}"


def short_interval(estimate: Estimate, digits: int = 3) -> str:
    """``-0.0139 [-0.0201, -0.0077]``, or ``-0.0139 [no interval]``."""
    if math.isnan(estimate.low) or math.isnan(estimate.high):
        return f"{fmt(estimate.effect, digits)} [no interval]"
    return (
        f"{fmt(estimate.effect, digits)} [{fmt(estimate.low, digits)}, "
        f"{fmt(estimate.high, digits)}]"
    )


def _interval(estimate: Estimate) -> str:
    if math.isnan(estimate.low) or math.isnan(estimate.high):
        return "no interval"
    return f"95% CI {fmt(estimate.low, 3)} to {fmt(estimate.high, 3)}"


def format_estimate(
    estimate: Estimate,
    adjusted: tuple[float, float] | None = None,
    bootstrap: Estimate | None = None,
) -> str:
    """``-0.0139 (95% CI -0.0201 to -0.0077; exact sign-flip test (paired), 10 seeds,
    p = 0.002, Holm-adjusted 0.008; equivalence within +-0.01 p = 0.6)``; with a
    ``bootstrap``, its interval and p-values follow, each with its Monte Carlo standard error
    (``MC SE``), and the Holm-adjusted ones are those of the larger p-values
    (``Case.p_values``)."""
    tests = f"p = {_p(estimate.p_value)}"
    if adjusted is not None and bootstrap is None:
        tests += f", Holm-adjusted {_p(adjusted[0])}"
    if estimate.sesoi is not None:
        tests += f"; equivalence within {estimate.equivalence_text()} p = "
        tests += _p(estimate.p_equivalence)
        if adjusted is not None and bootstrap is None:
            tests += f", Holm-adjusted {_p(adjusted[1])}"
    if bootstrap is not None:
        tests += (
            f"; {bootstrap.method}: {_interval(bootstrap)}, p = {_p(bootstrap.p_value)} "
            f"(MC SE {_p(bootstrap.p_value_se)})"
        )
        if bootstrap.sesoi:
            tests += (
                f", equivalence p = {_p(bootstrap.p_equivalence)} "
                f"(MC SE {_p(bootstrap.p_equivalence_se)})"
            )
        if adjusted is not None:
            tests += (
                f"; the larger p-values of both tests, Holm-adjusted {_p(adjusted[0])} and "
                f"{_p(adjusted[1])}"
            )
    return (
        f"{fmt(estimate.effect, 3)} ({_interval(estimate)}; {estimate.method}, "
        f"{estimate.samples}, {tests})"
    )


def _case(
    label: str, estimate: Estimate, favours: Favours, what: str, bootstrap: Estimate | None = None
) -> Case:
    case = Case(label, "", estimate, what, favours, bootstrap=bootstrap)

    def at(shift: float) -> str:
        p, q = case.p_values(shift)
        return verdict_of(estimate, favours, p_value=p, p_equivalence=q)

    return _with_verdict(case, at(0.0), verdict_of(estimate, favours), [at(-MC_BAND), at(MC_BAND)])


# A verdict is Monte Carlo fragile where the bootstrap's p-values moved by this many of their
# Monte Carlo standard errors, all up or all down, would change it.
MC_BAND = 2.0


def _with_verdict(
    case: Case, verdict: str, seed_level: str, moved: Sequence[str], **fields: Any
) -> Case:
    """``case`` with its ``verdict`` and what the tests say beside it (``from_tests``, made
    afresh: an earlier verdict's goes), from these verdicts alone: where the
    seed-level test alone (``seed_level``) would have decided otherwise, because the two-way
    bootstrap does not agree; and where the bootstrap's p-values moved by ``MC_BAND`` Monte
    Carlo standard errors (the verdicts ``moved``) would."""
    told = []
    if case.bootstrap is not None and verdict_kind(seed_level) != verdict_kind(verdict):
        told.append(f"seed-level test alone: {verdict_kind(seed_level)}")
    fragile = dict.fromkeys(
        verdict_kind(v) for v in moved if verdict_kind(v) != verdict_kind(verdict)
    )
    if fragile:
        told.append(f"within {MC_BAND:g} Monte Carlo SE: {' or '.join(fragile)}")
    return dataclasses.replace(case, verdict=verdict, from_tests="; ".join(told), **fields)


def _example_bootstrap(
    plain: SettingSummary, lookahead: SettingSummary, plan: ClaimPlan
) -> Estimate | None:
    """The two-way paired bootstrap of the plan (``ClaimPlan.bootstrap``) over the common
    seeds and the test examples of both settings (``metrics.scored_correct``), or None when
    the plan asks for none."""
    if plan.bootstrap is None:
        return None
    resamples, seed = plan.bootstrap
    plain_rows, lookahead_rows = _paired_values(plain, lookahead, scored_correct)
    if not plain_rows or any(row is None for row in (*plain_rows, *lookahead_rows)):
        raise ValueError(
            f"the plan tests {plain.method} against {lookahead.method} on test examples, but "
            "their runs have no per-example record (RunResult.test_correct): rerun them"
        )
    base = np.array(plain_rows, dtype=np.float64)
    cand = np.array(lookahead_rows, dtype=np.float64)
    return two_way_bootstrap(base, cand, resamples=resamples, seed=seed, sesoi=plan.sesoi)


def _favours(higher: bool) -> Favours:
    return "above" if higher else "below"


def _name(metric: str) -> str:
    return metric.replace("_", " ")


def _adjust(cases: Sequence[Case]) -> list[Case]:
    """The cases with their verdicts read from Holm-adjusted p-values, as one family: the
    difference p-value of every case and the equivalence p-value of every case with a SESOI
    are adjusted together (a verdict may come from either test)."""
    tested = [(c, c.estimate) for c in cases if c.estimate is not None]
    if len(tested) < 2:
        return list(cases)
    with_sesoi = [e.sesoi is not None for _, e in tested]
    both = _holm_pooled([c for c, _ in tested], [c.p_values() for c, _ in tested], with_sesoi)
    alone = _holm_pooled(
        [c for c, _ in tested], [(e.p_value, e.p_equivalence) for _, e in tested], with_sesoi
    )
    shifted = [
        _holm_pooled([c for c, _ in tested], [c.p_values(s) for c, _ in tested], with_sesoi)
        for s in (-MC_BAND, MC_BAND)
    ]
    family = len(tested) + sum(with_sesoi)
    out = []
    for case in cases:
        if case.estimate is None or id(case) not in both:
            out.append(case)
            continue
        (p, q), (p_alone, q_alone) = both[id(case)], alone[id(case)]
        verdict = verdict_of(case.estimate, case.favours, p_value=p, p_equivalence=q, family=family)
        seed_level = verdict_of(
            case.estimate, case.favours, p_value=p_alone, p_equivalence=q_alone, family=family
        )
        moved = [
            verdict_of(case.estimate, case.favours, p_value=a, p_equivalence=b, family=family)
            for a, b in (ps[id(case)] for ps in shifted)
        ]
        out.append(_with_verdict(case, verdict, seed_level, moved, adjusted=(p, q), family=family))
    return out


def _holm_pooled(
    cases: Sequence[Case], p_values: Sequence[tuple[float, float]], with_sesoi: Sequence[bool]
) -> dict[int, tuple[float, float]]:
    """Per case (by ``id``), its (difference, equivalence) p-values Holm-adjusted as one family:
    every difference p-value and the equivalence p-value of every case with a SESOI."""
    equal = [i for i, has in enumerate(with_sesoi) if has]
    pooled = holm([_finite_p(p) for p, _ in p_values] + [_finite_p(p_values[i][1]) for i in equal])
    p_equal = [1.0] * len(cases)
    for i, q in zip(equal, pooled[len(cases) :], strict=True):
        p_equal[i] = q
    return {id(c): (p, q) for c, p, q in zip(cases, pooled[: len(cases)], p_equal, strict=True)}


def _finite_p(p: float) -> float:
    return 1.0 if math.isnan(p) else p


def holm_primary(claims: Sequence[Claim]) -> list[Claim]:
    """The claims with the cases of every primary claim Holm-adjusted as one family."""
    primary = [case for claim in claims if claim.role == "primary" for case in claim.cases]
    adjusted = iter(_adjust(primary))
    out = []
    for claim in claims:
        if claim.role == "primary":
            cases = tuple(next(adjusted) for _ in claim.cases)
            claim = dataclasses.replace(claim, cases=cases)
        out.append(claim)
    return out


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
    plain: SettingSummary, lookahead: SettingSummary, value: Callable[[RunResult], _Value]
) -> tuple[list[_Value], list[_Value]]:
    """Values of both settings on their common seeds (the exact test needs pairs)."""
    plain_values = {r.config.seed: value(r) for r in plain.runs}
    lookahead_values = {r.config.seed: value(r) for r in lookahead.runs}
    common = sorted(set(plain_values) & set(lookahead_values))
    return [plain_values[s] for s in common], [lookahead_values[s] for s in common]


def selection_edge(chosen: SettingSummary, group: Sequence[SettingSummary]) -> str | None:
    """``largest`` or ``smallest`` when ``chosen``'s learning rate is at that edge of the
    learning rates of ``group`` (the trials it was selected from, two or more), else None."""
    lrs = [s.setting.lr for s in group]
    if len(set(lrs)) < 2:
        return None
    if math.isclose(chosen.setting.lr, max(lrs)):
        return "largest"
    if math.isclose(chosen.setting.lr, min(lrs)):
        return "smallest"
    return None


def _lookahead_text(setting: RunConfig) -> str:
    return f"lr {fmt(setting.lr, 3)}, k={setting.k}, alpha={setting.alpha}"


def final_quality_claim(
    pairs: Sequence[tuple[SettingSummary, SettingSummary]],
    metric: str,
    *,
    protocol: str,
    key: str,
    title: str,
    plan: ClaimPlan,
    paper: str = PAPER_IMPROVES,
    grid: Sequence[SettingSummary] = (),
    edge_rule: Mapping[str, str] = {},
    schedule: str = "",
) -> Claim:
    """Lookahead's final ``metric`` against the baseline's, per (baseline, Lookahead) pair.

    ``grid``: the trials the pairs were selected from. A learning rate selected at the edge of
    its method's trials is noted (a wider grid might do better there); with ``edge_rule`` (per
    method, what the grid-extension rule did to its trials, in words) that case gets no verdict
    and no test, and says why with those words."""
    higher = higher_is_better(metric)
    cases = []
    notes = []
    methods = by_method(grid)
    for plain, lookahead in pairs:
        edges = []
        for chosen in (plain, lookahead):
            group = methods.get((chosen.setting.inner, chosen.setting.uses_lookahead), [])
            edge = selection_edge(chosen, group)
            if edge is not None:
                edges.append(
                    (
                        f"{chosen.method}'s selected learning rate, {fmt(chosen.setting.lr, 3)}, "
                        f"is the {edge} of its {len(group)} trials",
                        chosen.method,
                    )
                )
        if edges and not edge_rule:
            notes += [f"{edge}; a wider sweep might find a better one." for edge, _ in edges]
        chosen_lookahead = (
            _lookahead_text(lookahead.setting)
            if edge_rule
            else f"lr {fmt(lookahead.setting.lr, 3)}"
        )
        what = (
            f"final {_name(metric)} {fmt(plain.final[metric][0])} {plain.method} (lr "
            f"{fmt(plain.setting.lr, 3)}), {fmt(lookahead.final[metric][0])} with Lookahead "
            f"({chosen_lookahead})"
        )
        if edges and edge_rule:
            reason = " and ".join(f"{edge} {edge_rule.get(m, '')}" for edge, m in edges)
            cases.append(
                Case(plain.setting.inner, NO_VERDICT, None, f"{what}; not tested", caveat=reason)
            )
            continue
        what += f"; Lookahead minus {plain.method}"
        base, cand = _paired_values(plain, lookahead, lambda r: final_value(r, metric))
        estimate = paired_difference(base, cand, sesoi=plan.sesoi)
        bootstrap = _example_bootstrap(plain, lookahead, plan)
        cases.append(_case(plain.setting.inner, estimate, _favours(higher), what, bootstrap))
    return Claim(
        key=key,
        title=title,
        paper=paper,
        protocol=protocol,
        effect=f"Lookahead's final {_name(metric)} minus the baseline's, per seed; "
        f"{'above' if higher else 'below'} zero favours Lookahead.",
        cases=tuple(cases),
        notes=tuple(notes),
        role=plan.role,
        sesoi=plan.sesoi,
        schedule=schedule,
    )


def convergence_claim(
    pairs: Sequence[tuple[SettingSummary, SettingSummary]],
    *,
    metric: str,
    target: float,
    protocol: str,
    plan: ClaimPlan,
) -> Claim:
    """Steps until ``metric`` first reaches ``target`` at an evaluation, Lookahead against its
    inner optimizer (a run that never does counts as one evaluation past its last step)."""
    cases = []
    for plain, lookahead in pairs:

        def steps(r: RunResult) -> float:
            return float(steps_to_target(r, metric, target))

        base, cand = _paired_values(plain, lookahead, steps)
        censored = sum(steps(r) > r.config.steps for r in (*plain.runs, *lookahead.runs))
        estimate = paired_difference(base, cand, sesoi=plan.sesoi)
        what = (
            f"steps to {_name(metric)} {fmt(target)}: {fmt(_mean(base))} plain, "
            f"{fmt(_mean(cand))} with Lookahead ({censored} of {len(base) + len(cand)} runs never "
            "reached it); Lookahead minus plain"
        )
        cases.append(_case(plain.setting.inner, estimate, "below", what))
    return Claim(
        key="convergence",
        title="convergence: steps to a validation target",
        paper="Lookahead converges faster than, or as fast as, its inner optimizer (the "
        "paper's training curves).",
        protocol=protocol,
        effect=f"the evaluation step at which the {_name(metric)} first reaches {fmt(target)}, "
        "Lookahead minus the inner optimizer, per seed (evaluations every few steps: the "
        "resolution is one evaluation interval; a run that never reaches it counts as one "
        "evaluation past its last step, so a difference it enters is a bound, not a measurement); "
        "below zero favours Lookahead.",
        cases=tuple(cases),
        role=plan.role,
        sesoi=plan.sesoi,
    )


def seed_variance_claim(
    pairs: Sequence[tuple[SettingSummary, SettingSummary]],
    *,
    metric: str,
    protocol: str,
    plan: ClaimPlan,
) -> Claim:
    """The variance over seeds of Lookahead's final ``metric`` against its inner optimizer's."""
    cases = []
    for plain, lookahead in pairs:
        base, cand = _paired_values(plain, lookahead, lambda r: final_value(r, metric))
        estimate = variance_ratio(base, cand, sesoi=plan.sesoi)
        what = f"variance over seeds of the final {_name(metric)}, Lookahead over plain"
        cases.append(_case(plain.setting.inner, estimate, "below", what))
    return Claim(
        key="seed_variance",
        title="variance across seeds",
        paper=PAPER_VARIANCE + " Here: across random seeds.",
        protocol=protocol,
        effect=f"the ratio of the variances over seeds of the final {_name(metric)}, "
        "Lookahead over the inner optimizer; below 1 favours Lookahead.",
        cases=tuple(cases),
        role=plan.role,
        sesoi=plan.sesoi,
    )


def best_lr(
    summaries: Sequence[SettingSummary], metric: str, *, tie: float = 0.0
) -> SettingSummary:
    """The setting with the best mean final ``metric`` (diverged seeds at their step-0
    value). Means within ``tie`` of the best are ties, broken by the lowest mean final
    validation loss, then the smallest learning rate: rounding differences between machines
    cannot flip the choice unless they move a mean across the tie band. Means that differ by
    at most ``EQUAL_MEANS`` (1e-9) are equal, so a tie of ``0.0`` is exact: two means of the
    same count of correct images (over 360 images and 3 seeds, one image is 1/1080 of a mean)
    tie whatever the order of their float sums."""
    if not summaries:
        raise ValueError("summaries must not be empty")
    sign = 1.0 if higher_is_better(metric) else -1.0

    def mean(summary: SettingSummary, name: str) -> float:
        values = list(summary.values(name).values())
        return math.fsum(values) / len(values)

    best = max(sign * mean(s, metric) for s in summaries)
    ties = [s for s in summaries if sign * mean(s, metric) >= best - tie - EQUAL_MEANS]
    return min(ties, key=lambda s: (mean(s, "val_loss"), s.setting.lr))


def by_method(summaries: Sequence[SettingSummary]) -> dict[tuple[str, bool], list[SettingSummary]]:
    """The settings of each method, keyed (inner optimizer, in Lookahead): per inner optimizer
    in order of appearance, plain first."""
    methods = {}
    for inner in dict.fromkeys(s.setting.inner for s in summaries):
        for lookahead in (False, True):
            group = [
                s for s in summaries
                if s.setting.inner == inner and s.setting.uses_lookahead == lookahead
            ]  # fmt: skip
            if group:
                methods[(inner, lookahead)] = group
    return methods


def select_per_method(
    summaries: Sequence[SettingSummary], metric: str, *, tie: float = 0.0
) -> list[tuple[SettingSummary, list[SettingSummary]]]:
    """Per method (``by_method``): the setting ``best_lr`` selects, and the method's settings
    it was selected from."""
    return [(best_lr(group, metric, tie=tie), group) for group in by_method(summaries).values()]


def tuned_pairs(
    selected: Sequence[SettingSummary],
) -> list[tuple[SettingSummary, SettingSummary]]:
    """Per inner optimizer: (plain, Lookahead) among ``selected`` (each at its own learning
    rate)."""
    pairs = []
    for inner in dict.fromkeys(s.setting.inner for s in selected):
        plain = [s for s in selected if s.setting.inner == inner and not s.setting.uses_lookahead]
        wrapped = [s for s in selected if s.setting.inner == inner and s.setting.uses_lookahead]
        if plain and wrapped:
            pairs.append((plain[0], wrapped[0]))
    return pairs


def _near(summaries: Sequence[SettingSummary], metric: str, seed: int, delta: float) -> list[float]:
    """The learning rates whose final ``metric`` for ``seed`` lies within ``delta`` of the best
    learning rate's."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    values = {s.setting.lr: sign * s.values(metric)[seed] for s in summaries}
    best = max(values.values())
    return [lr for lr, v in values.items() if v >= best - delta]


def _width(near: Sequence[float]) -> float:
    """log10 of the ratio of the largest to the smallest of the learning rates ``near``."""
    # 4 decimals: grids are written to 6 significant digits, so equal steps differ at 1e-7
    return round(math.log10(max(near) / min(near)), 4)


def _censored(group: Sequence[SettingSummary], near: dict[int, list[float]]) -> str:
    """Where the width of ``group``'s method reaches an edge of its learning rates (the grid
    cuts it off), in words, with the seeds; empty where it never does."""
    lrs = [s.setting.lr for s in group]
    reached = []
    for edge, end in (("largest", max(lrs)), ("smallest", min(lrs))):
        seeds = [
            seed for seed, lrs_near in near.items() if any(math.isclose(end, lr) for lr in lrs_near)
        ]
        if seeds:
            reached.append(
                f"the {edge} of its {len(lrs)} learning rates, {fmt(end, 3)}, at "
                f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            )
    return f"{group[0].method}'s width reaches {' and '.join(reached)}" if reached else ""


def _lr_span(group: Sequence[SettingSummary]) -> str:
    lrs = sorted(s.setting.lr for s in group)
    return f"{len(lrs)} learning rates from {fmt(lrs[0], 3)} to {fmt(lrs[-1], 3)}"


def lr_robustness_claim(
    summaries: Sequence[SettingSummary],
    metric: str,
    *,
    delta: float,
    protocol: str,
    plan: ClaimPlan,
    edge_rule: Mapping[str, str] = {},
) -> Claim:
    """Per inner optimizer and seed: the width in log10(lr) of the learning rates within
    ``delta`` of each method's own best, Lookahead minus plain.

    With ``edge_rule`` (per method, what the grid-extension rule did to its learning rates, in
    words), a case where the width of either method at any seed reaches the edge of its
    learning rates (a width the grid cuts off: censored) gets no verdict and no test, and says
    why with those words."""
    cases = []
    methods = by_method(summaries)
    for inner in dict.fromkeys(s.setting.inner for s in summaries):
        plain, wrapped = methods.get((inner, False), []), methods.get((inner, True), [])
        if len(plain) < 2 or len(wrapped) < 2:
            continue
        seeds = sorted(set.intersection(*(set(s.seeds) for s in (*plain, *wrapped))))
        near_plain = {seed: _near(plain, metric, seed, delta) for seed in seeds}
        near_wrapped = {seed: _near(wrapped, metric, seed, delta) for seed in seeds}
        base = [_width(near_plain[seed]) for seed in seeds]
        cand = [_width(near_wrapped[seed]) for seed in seeds]
        spans = (_lr_span(plain), _lr_span(wrapped))
        over = spans[0] if spans[0] == spans[1] else f"{spans[0]} plain, {spans[1]} with Lookahead"
        what = (
            f"width in log10(lr) within {fmt(delta)} of each method's best {_name(metric)}, over "
            f"{over}: {fmt(_mean(base), 3)} plain, {fmt(_mean(cand), 3)} with Lookahead"
        )
        censored = [
            f"{text} {edge_rule.get(group[0].method, '')}"
            for group, near in ((plain, near_plain), (wrapped, near_wrapped))
            if (text := _censored(group, near))
        ]
        if edge_rule and censored:
            reason = f"{' and '.join(censored)}: a width the grid cuts off is censored"
            cases.append(Case(inner, NO_VERDICT, None, f"{what}; not tested", caveat=reason))
            continue
        estimate = paired_difference(base, cand, sesoi=plan.sesoi)
        cases.append(_case(inner, estimate, "above", f"{what}; Lookahead minus plain"))
    censoring = (
        " Where a width reaches the edge of its method's learning rates, after any extensions "
        "of the grid, it is censored and its case gets no verdict."
        if edge_rule
        else " A width cannot tell a wider learning-rate response from a shifted one only "
        "where the grid ends."
    )
    return Claim(
        key="lr_robustness",
        title="robustness to the learning rate",
        paper="Lookahead makes the result less sensitive to the inner optimizer's learning "
        "rate (the paper's learning-rate robustness experiments).",
        protocol=protocol,
        effect=f"per seed, the width in log10(lr) of the learning rates whose final "
        f"{_name(metric)} is within {fmt(delta)} of the method's own best, Lookahead minus the "
        f"inner optimizer; above zero favours Lookahead.{censoring}",
        cases=tuple(cases),
        role=plan.role,
        sesoi=plan.sesoi,
    )


def k_alpha_claim(
    grid: Sequence[SettingSummary], metric: str, *, protocol: str, plan: ClaimPlan
) -> Claim:
    """Each (k, alpha) setting against the inner optimizer alone at the same learning rate,
    Holm-adjusted across the settings (simultaneous decisions) with the plan's SESOI: the
    claim that k and alpha matter little holds where every setting is at least equivalent to
    the inner optimizer."""
    higher = higher_is_better(metric)
    cases = []
    for plain, lookahead in pair_by_inner(grid):
        base, cand = _paired_values(plain, lookahead, lambda r: final_value(r, metric))
        estimate = paired_difference(base, cand, sesoi=plan.sesoi)
        label = f"{plain.setting.inner} k={lookahead.setting.k} alpha={lookahead.setting.alpha}"
        what = (
            f"final {_name(metric)} {fmt(lookahead.final[metric][0])} against "
            f"{fmt(plain.final[metric][0])} plain; Lookahead minus plain"
        )
        bootstrap = _example_bootstrap(plain, lookahead, plan)
        cases.append(_case(label, estimate, _favours(higher), what, bootstrap))
    cases = _adjust(cases)
    kinds = [verdict_kind(c.verdict) for c in cases]
    worse = sum(k == "contradicts" for k in kinds)
    notes = (
        f"{sum(k in ('supports', 'equivalent') for k in kinds)} of {len(cases)} settings are at "
        f"least equivalent to the inner optimizer alone; {worse} are worse beyond doubt.",
    )
    return Claim(
        key="k_alpha_robustness",
        title="robustness to k and alpha",
        paper="Lookahead's result varies little with its own hyper-parameters k and alpha, and "
        "improves on the inner optimizer across them (the paper's (k, alpha) sensitivity "
        "experiments).",
        protocol=protocol,
        effect=f"per (k, alpha) setting, Lookahead's final {_name(metric)} minus the inner "
        f"optimizer's at the same learning rate, per seed, Holm-adjusted across the settings; "
        f"{'above' if higher else 'below'} zero favours Lookahead.",
        cases=tuple(cases),
        notes=notes,
        role=plan.role,
        sesoi=plan.sesoi,
    )


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def nqm_claim(points: Sequence[NQMPoint], k: int, alpha: float, *, tolerance: float) -> Claim:
    """Proposition 2, as one implementation check: at every learning rate the simulation of
    the real optimizers agrees with the closed forms within ``tolerance`` (relative, on the
    excess loss) and its interval over chains puts Lookahead's expected loss below SGD's."""
    below = sum(point.difference_high < 0 for point in points)
    errors = [e for p in points for e in p.relative_errors()]
    largest = max(errors) if errors else math.nan
    passed = bool(points) and below == len(points) and largest <= tolerance
    lrs = ", ".join(fmt(p.lr, 3) for p in points)
    sentence = (
        f"at {len(points)} learning rates ({lrs}), Lookahead's simulated steady-state loss is "
        f"below SGD's (95% interval over {points[0].chains if points else 0} chains) at "
        f"{below}; the largest relative error of the simulated excess loss against the closed "
        f"forms is {fmt(100 * largest, 2)}% (tolerance {fmt(100 * tolerance, 2)}%)"
    )
    case = Case(
        "closed form vs simulation",
        "check passed" if passed else "check FAILED",
        None,
        sentence,
        "below",
    )
    return Claim(
        key="nqm_variance",
        title="noisy quadratic model (implementation check of Proposition 2)",
        paper="On the noisy quadratic model, Lookahead's steady-state variance, hence its "
        "expected loss, is strictly below SGD's at the same learning rate (the paper's "
        "Proposition 2): a theorem, checked here as an implementation check, not an empirical "
        "claim.",
        protocol=f"simulated with the real torch.optim.SGD and Lookahead(k={k}, alpha={alpha}) "
        "from the optimum, in float64; SGD and Lookahead share each chain's noise.",
        effect="the simulation against the closed forms, and the sign of Lookahead minus SGD.",
        cases=(case,),
        role="check",
        sesoi=tolerance,
    )


def claim_json(claim: Claim) -> dict[str, Any]:
    """A claim and its cases as plain data, for a report's results.json."""
    return {
        "key": claim.key,
        "title": claim.title,
        "role": claim.role,
        "sesoi": claim.sesoi,
        "paper": claim.paper,
        "control": claim.control,
        "schedule": claim.schedule,
        "protocol": claim.protocol,
        "effect": claim.effect,
        "cases": [
            {
                "label": case.label,
                "verdict": case.verdict,
                "favours_lookahead_if": case.favours_text,
                "estimate": asdict(case.estimate) if case.estimate else None,
                "holm_adjusted": list(case.adjusted) if case.adjusted else None,
                **(
                    {"two_way_bootstrap": asdict(case.bootstrap)}
                    if case.bootstrap is not None
                    else {}
                ),
                "caveat": case.caveat_text,
                "sentence": case.sentence,
            }
            for case in claim.cases
        ],
        "notes": list(claim.notes),
    }
