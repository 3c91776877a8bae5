"""The stability experiment (``torch-lookahead stability``): does Lookahead widen the range of
learning rates, with and without warm-up, at which its inner optimizer trains?

A small causal Transformer on the ``charlm`` corpus (``charlm-transformer``, no gradient
clipping) trains with Adam and with Lookahead(Adam) over a log-spaced grid of learning rates
running from "trains" to "does not", with and without a linear warm-up, over seeds. A run
*trains* when it never produced a non-finite loss and its final validation bits per character
are within ``margin`` of the best final value of any run of the experiment. Per seed, the largest
learning rate that trains is read for each method and warm-up; the claim compares them in
log10(lr), paired by seed, with the lab's intervals and verdicts (``stats``), and, per learning
rate and warm-up, the final validation bits per character of both methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch_lookahead_lab.claims import Case, Claim, _case, fmt
from torch_lookahead_lab.metrics import final_value
from torch_lookahead_lab.runner import RunConfig, RunResult, make_config
from torch_lookahead_lab.stats import paired_difference
from torch_lookahead_lab.tasks import SCHEDULES, get_task

__all__ = [
    "PAPER_STABILITY",
    "STABILITY",
    "STABILITY_QUICK",
    "StabilityPlan",
    "StabilityResults",
    "largest_lr_that_trains",
    "largest_on_grid",
    "method_label",
    "protocol_text",
    "stability_claims",
    "stability_configs",
    "training_threshold",
    "trains",
]

# The smallest effects of interest of the pilot, declared with the exact tests (after its data:
# the pilot is exploratory): a factor of about 1.8 in the largest learning rate that trains
# (a third of the grid's factor of 3.3), and 0.05 bits per character.
EDGE_SESOI = 0.25
FINAL_SESOI = 0.05

# The paper's own words (Zhang, Lucas, Ba & Hinton 2019, abstract).
PAPER_STABILITY = (
    'Lookahead "improves the learning stability and lowers the variance of its inner optimizer '
    'with negligible computation and memory cost".'
)


@dataclass(frozen=True)
class StabilityPlan:
    """What the stability experiment runs, and the rule that says whether a run trained."""

    task: str
    inner: str
    k: int
    alpha: float
    lrs: tuple[float, ...]
    warmups: tuple[int, ...]
    seeds: int
    margin: float  # a run trains when its final metric is within this of the best run's
    metric: str = "val_bpc"
    schedule: str = "cosine"
    quick: bool = False


STABILITY = StabilityPlan(
    task="charlm-transformer",
    inner="adam",
    k=5,
    alpha=0.5,
    lrs=(3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
    warmups=(0, 50),
    seeds=6,
    margin=0.5,
)

# Two learning rates, one seed, a few steps: it checks the pipeline, and its verdicts mean nothing.
STABILITY_QUICK = StabilityPlan(
    task="charlm-transformer",
    inner="adam",
    k=5,
    alpha=0.5,
    lrs=(3e-3, 1.0),
    warmups=(0, 5),
    seeds=1,
    margin=0.5,
    quick=True,
)


def stability_configs(plan: StabilityPlan) -> list[RunConfig]:
    """The inner optimizer plain and in Lookahead(k, alpha) at every learning rate, warm-up and
    seed of ``plan``."""
    spec = get_task(plan.task)
    settings = spec.quick if plan.quick else spec.full
    configs = []
    for warmup in plan.warmups:
        for lr in plan.lrs:
            for seed in range(plan.seeds):
                for k, alpha in ((None, None), (plan.k, plan.alpha)):
                    configs.append(
                        make_config(
                            plan.task,
                            plan.inner,
                            seed=seed,
                            settings=settings,
                            lr=lr,
                            k=k,
                            alpha=alpha,
                            schedule=plan.schedule,
                            warmup_steps=warmup,
                        )
                    )
    return configs


# ------------------------------------------------------------------------------- the training rule


def _final_or_none(result: RunResult, metric: str) -> float | None:
    """The final ``metric`` of a run that never diverged, else None."""
    if result.diverged_at is not None:
        return None
    value = result.final(metric)
    return value if value is not None and math.isfinite(value) else None


def training_threshold(results: Sequence[RunResult], metric: str, margin: float) -> float:
    """The best final ``metric`` (lowest) of any run that did not diverge, plus ``margin``."""
    finals = [v for r in results if (v := _final_or_none(r, metric)) is not None]
    if not finals:
        raise ValueError("every run diverged: there is no best run to measure the others against")
    return min(finals) + margin


def trains(result: RunResult, metric: str, threshold: float) -> bool:
    """True when the run never produced a non-finite loss or metric and ended at or below
    ``threshold``."""
    value = _final_or_none(result, metric)
    return value is not None and value <= threshold


def largest_lr_that_trains(
    results: Sequence[RunResult], metric: str, threshold: float, grid: Sequence[float]
) -> float:
    """log10 of the largest learning rate among ``results`` (runs of one method, warm-up and
    seed) that trains; when none does, one grid step (the log-spacing of the two smallest
    learning rates of ``grid``, or one decade) below the smallest learning rate of ``grid``."""
    return largest_on_grid([r.config.lr for r in results if trains(r, metric, threshold)], grid)


def largest_on_grid(lrs: Sequence[float], grid: Sequence[float]) -> float:
    """log10 of the largest of ``lrs``; when there is none, one grid step (the log-spacing of the
    two smallest learning rates of ``grid``, or one decade) below the smallest of ``grid``."""
    if lrs:
        return math.log10(max(lrs))
    ordered = sorted(grid)
    step = math.log10(ordered[1] / ordered[0]) if len(ordered) >= 2 else 1.0
    return math.log10(ordered[0]) - step


# -------------------------------------------------------------------------------------- the claims


@dataclass
class StabilityResults:
    """What the stability experiment measured."""

    plan: StabilityPlan
    command: str
    runs: list[RunResult]
    seconds: float = math.nan
    jobs: int = 0
    cached_jobs: int = 0
    started_at: str = ""  # when the command started and finished, UTC, ISO 8601
    finished_at: str = ""

    @property
    def title(self) -> str:
        return "torch-lookahead stability" + (" (quick)" if self.plan.quick else "")

    @property
    def quick(self) -> bool:
        return self.plan.quick

    @property
    def threshold(self) -> float:
        return training_threshold(self.runs, self.plan.metric, self.plan.margin)

    def select(
        self, *, lookahead: bool, warmup: int, lr: float | None = None, seed: int | None = None
    ) -> list[RunResult]:
        return [
            r
            for r in self.runs
            if r.config.uses_lookahead == lookahead
            and r.config.warmup_steps == warmup
            and (lr is None or r.config.lr == lr)
            and (seed is None or r.config.seed == seed)
        ]

    def seeds(self) -> list[int]:
        return sorted({r.config.seed for r in self.runs})

    def largest(self, *, lookahead: bool, warmup: int) -> list[float]:
        """Per seed (in ``seeds()`` order), log10 of the largest learning rate that trains."""
        threshold = self.threshold
        return [
            largest_lr_that_trains(
                self.select(lookahead=lookahead, warmup=warmup, seed=seed),
                self.plan.metric,
                threshold,
                self.plan.lrs,
            )
            for seed in self.seeds()
        ]


def method_label(plan: StabilityPlan, lookahead: bool) -> str:
    return f"Lookahead({plan.inner}, k={plan.k}, alpha={plan.alpha})" if lookahead else plan.inner


def _warmup_label(warmup: int) -> str:
    return f"warm-up {warmup}" if warmup else "no warm-up"


def protocol_text(lab: StabilityResults) -> str:
    plan = lab.plan
    spec = get_task(plan.task)
    settings = spec.quick if plan.quick else spec.full
    lrs = ", ".join(fmt(lr, 3) for lr in plan.lrs)
    warmups = " and ".join(f"{w} steps" for w in plan.warmups)
    return (
        f"{plan.inner} alone and in Lookahead(k={plan.k}, alpha={plan.alpha}) on "
        f"{plan.task}, {settings.steps} steps of batch {settings.batch_size}, "
        f"{SCHEDULES[plan.schedule]} after a linear warm-up of {warmups}, at learning rates "
        f"{lrs}, over {len(lab.seeds())} seeds, paired by seed (a seed fixes the initialisation "
        "and the minibatch order). A run trains when it never produced a non-finite loss and its "
        f"final {plan.metric.replace('_', ' ')} is within {fmt(plan.margin, 3)} of the best run's "
        f"(at most {fmt(lab.threshold)})."
    )


def stability_claims(lab: StabilityResults) -> list[Claim]:
    """The widening of the trainable learning-rate range, per warm-up; and the final metric,
    Lookahead minus plain, per warm-up and learning rate."""
    plan = lab.plan
    metric = plan.metric
    name = metric.replace("_", " ")
    protocol = protocol_text(lab)
    edge_cases: list[Case] = []
    notes: list[str] = []
    threshold = lab.threshold
    for warmup in plan.warmups:
        plain = lab.largest(lookahead=False, warmup=warmup)
        wrapped = lab.largest(lookahead=True, warmup=warmup)
        interval = paired_difference(plain, wrapped, sesoi=EDGE_SESOI)
        what = (
            f"largest learning rate that trains, per seed, {_lr_list(plain)} for {plan.inner}, "
            f"{_lr_list(wrapped)} with Lookahead; Lookahead minus {plan.inner} in log10(lr)"
        )
        edge_cases.append(_case(_warmup_label(warmup), interval, "above", what))
        for lookahead in (False, True):
            runs = lab.select(lookahead=lookahead, warmup=warmup)
            trained = sum(trains(r, metric, threshold) for r in runs)
            diverged = sum(r.diverged_at is not None for r in runs)
            notes.append(
                f"{method_label(plan, lookahead)}, {_warmup_label(warmup)}: {trained} of {len(runs)} "
                f"runs train, {diverged} produced a non-finite loss."
            )
    ordered = sorted(plan.lrs)
    if len(ordered) >= 2:
        notes.append(
            f"The grid resolves the largest learning rate to a factor of "
            f"{fmt(ordered[1] / ordered[0], 3)}; a seed at which no learning rate trains counts "
            f"as one grid step below {fmt(ordered[0], 3)}."
        )
    edge = Claim(
        key="stability_lr_range",
        title="stability (pilot): largest learning rate that trains",
        paper=PAPER_STABILITY + " Here: the range of learning rates at which training works.",
        protocol=protocol,
        effect=f"per seed, log10 of the largest learning rate at which Lookahead({plan.inner}) "
        f"trains minus log10 of {plan.inner}'s; above zero favours Lookahead (it trains at larger "
        "learning rates). A larger edge cannot tell a wider learning-rate response from one "
        "shifted by alpha (Lookahead moves like its inner optimizer at about alpha x lr).",
        cases=tuple(edge_cases),
        notes=tuple(notes),
    )
    per_lr: list[Case] = []
    for warmup in plan.warmups:
        for lr in plan.lrs:
            pairs = _paired_finals(lab, warmup, lr)
            interval = paired_difference(
                [p for p, _ in pairs], [w for _, w in pairs], sesoi=FINAL_SESOI
            )
            what = (
                f"final {name} {fmt(_mean([p for p, _ in pairs]))} {plan.inner}, "
                f"{fmt(_mean([w for _, w in pairs]))} with Lookahead; Lookahead minus "
                f"{plan.inner}"
            )
            per_lr.append(
                _case(f"{_warmup_label(warmup)}, lr {fmt(lr, 3)}", interval, "below", what)
            )
    final = Claim(
        key="stability_final",
        title=f"stability (pilot): final {name} per learning rate",
        paper=PAPER_STABILITY + " Here: the final result at each learning rate and warm-up.",
        protocol=protocol,
        effect=f"Lookahead's final {name} minus {plan.inner}'s at the same learning rate, warm-up "
        "and seed (a run that produced a non-finite loss counts as the untrained model); below "
        "zero favours Lookahead.",
        cases=tuple(per_lr),
    )
    return [edge, final]


def _paired_finals(lab: StabilityResults, warmup: int, lr: float) -> list[tuple[float, float]]:
    metric = lab.plan.metric
    pairs = []
    for seed in lab.seeds():
        plain = lab.select(lookahead=False, warmup=warmup, lr=lr, seed=seed)
        wrapped = lab.select(lookahead=True, warmup=warmup, lr=lr, seed=seed)
        if plain and wrapped:
            pairs.append((final_value(plain[0], metric), final_value(wrapped[0], metric)))
    return pairs


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _lr_list(log_lrs: Sequence[float]) -> str:
    return "(" + ", ".join(fmt(10**v, 3) for v in log_lrs) + ")"
