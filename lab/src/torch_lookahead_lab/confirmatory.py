"""The confirmatory stability study (``torch-lookahead stability --confirmatory``), run by its
committed plan (``plans/stability.json``) on fresh seeds.

The pilot (``stability``) read the final validation bits per character of 4 evaluations, so it
missed instability that happened and recovered, and it had no arm to tell a wider
learning-rate range from one shifted by alpha. Here every run records its per-step minibatch
training loss (the ``charlm-transformer`` tasks do), and a run is *unstable* when that loss is
ever non-finite or exceeds the untrained model's (step 0) after the warm-up plus a few grace
steps: an absolute rule, not one relative to the best run. Per seed, the endpoint is log10 of
the largest learning rate of a fine grid whose run is stable. Three arms: Adam at lr,
Lookahead(Adam) at lr, and Adam at alpha x lr (the effective-learning-rate control); two
Transformers, pre-LN and post-LN; with and without warm-up. The primary endpoints (the plan's
``primary`` cell: pre-LN, warm-up 50; Lookahead against Adam and against Adam at alpha x lr)
are Holm-adjusted together and tested with the exact sign-flip test (``stats``).

Two savings change no endpoint (``edge_search``): a run ends at the step where the rule first
calls it unstable (``RunConfig.stop_unstable_after``: nothing later can make it stable again),
and each seed's learning rates are run from the largest down to the first stable one (the
endpoint is the largest stable one, whatever the smaller ones would give).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch_lookahead_lab.claims import Case, Claim, _case, fmt, holm_primary
from torch_lookahead_lab.plans import Plan, load_plan, plan_settings
from torch_lookahead_lab.runner import RunConfig, RunResult, make_config
from torch_lookahead_lab.stability import PAPER_STABILITY, largest_on_grid
from torch_lookahead_lab.stats import holm, paired_difference, verdict_kind
from torch_lookahead_lab.tasks import get_task

__all__ = [
    "ARMS",
    "ConfirmatoryPlan",
    "ConfirmatoryResults",
    "arm_config",
    "arm_label",
    "censored_at_top",
    "confirmatory_claims",
    "confirmatory_configs",
    "confirmatory_plan",
    "edge_search",
    "first_checks",
    "first_round",
    "grace_flips",
    "grid_caveat",
    "grid_step",
    "not_monotone",
    "reference_config",
    "unstable",
    "unstable_at",
]

# The arms: (label, uses Lookahead, factor on the learning rate).
ARMS = (("adam", False, 1.0), ("lookahead", True, 1.0), ("adam at alpha x lr", False, None))


@dataclass(frozen=True)
class ConfirmatoryPlan:
    """The study's committed plan, parsed (``confirmatory_plan``)."""

    tasks: tuple[str, ...]
    inner: str
    k: int
    alpha: float
    lrs: tuple[float, ...]
    warmups: tuple[int, ...]
    seeds: tuple[int, ...]
    grace_steps: int
    primary_task: str
    primary_warmup: int
    plan: Plan
    quick: bool = False


def _log_grid(low: float, high: float, count: int) -> tuple[float, ...]:
    if count < 2:
        return (low,)
    ratio = math.log(high / low) / (count - 1)
    return tuple(float(f"{low * math.exp(ratio * i):.6g}") for i in range(count))


def confirmatory_plan(quick: bool = False, seed_offset: int = 0) -> ConfirmatoryPlan:
    """The committed plan (its ``quick`` part over it for a quick run), seeds moved by
    ``seed_offset``."""
    if seed_offset < 0:
        raise ValueError(f"seed_offset must be a non-negative integer, got {seed_offset}")
    plan = load_plan("stability")
    data = plan_settings(plan, quick)
    lrs, seeds = data["lrs"], data["seeds"]
    first = seeds["first"] + seed_offset
    return ConfirmatoryPlan(
        tasks=tuple(data["tasks"]),
        inner=data["inner"],
        k=int(data["k"]),
        alpha=float(data["alpha"]),
        lrs=_log_grid(float(lrs["low"]), float(lrs["high"]), int(lrs["count"])),
        warmups=tuple(int(w) for w in data["warmups"]),
        seeds=tuple(range(first, first + int(seeds["count"]))),
        grace_steps=int(data["instability"]["grace_steps"]),
        primary_task=data["primary"]["task"],
        primary_warmup=int(data["primary"]["warmup"]),
        plan=plan,
        quick=quick,
    )


def arm_label(arm: str, plan: ConfirmatoryPlan) -> str:
    """``adam at lr``, ``Lookahead(adam, k=5, alpha=0.5) at lr``, ``adam at 0.5 x lr``."""
    if arm == "lookahead":
        return f"Lookahead({plan.inner}, k={plan.k}, alpha={plan.alpha}) at lr"
    return f"{plan.inner} at lr" if arm == "adam" else f"{plan.inner} at {plan.alpha:g} x lr"


def arm_config(
    plan: ConfirmatoryPlan, task: str, arm: str, lr: float, warmup: int, seed: int
) -> RunConfig:
    """The run of ``arm`` at grid learning rate ``lr`` (Adam at alpha x lr for that arm); it
    ends where the plan's rule first calls it unstable."""
    spec = get_task(task)
    settings = spec.quick if plan.quick else spec.full
    _, lookahead, factor = next(a for a in ARMS if a[0] == arm)
    return make_config(
        task, plan.inner, seed=seed, settings=settings,
        lr=lr * (plan.alpha if factor is None else factor),
        k=plan.k if lookahead else None, alpha=plan.alpha if lookahead else None,
        schedule="cosine", warmup_steps=min(warmup, settings.steps),
        stop_unstable_after=plan.grace_steps,
    )  # fmt: skip


def confirmatory_configs(plan: ConfirmatoryPlan) -> list[RunConfig]:
    """Every arm at every grid learning rate, warm-up, task and seed."""
    return [
        arm_config(plan, task, arm, lr, warmup, seed)
        for task in plan.tasks
        for warmup in plan.warmups
        for lr in plan.lrs
        for seed in plan.seeds
        for arm, _, _ in ARMS
    ]


def reference_config(plan: ConfirmatoryPlan) -> RunConfig:
    """The run a report marks stable, for ``reproduce`` to check: Adam on the first task at the
    grid's smallest learning rate, the last warm-up, the first seed (stable, far from the edge,
    so other machines reproduce it within the tolerance)."""
    return arm_config(plan, plan.tasks[0], "adam", plan.lrs[0], plan.warmups[-1], plan.seeds[0])


def _series(plan: ConfirmatoryPlan) -> list[tuple[str, int, str, int]]:
    """Every (task, warm-up, arm, seed) whose edge the study measures."""
    return [
        (task, warmup, arm, seed)
        for task in plan.tasks
        for warmup in plan.warmups
        for arm, _, _ in ARMS
        for seed in plan.seeds
    ]


def first_round(plan: ConfirmatoryPlan) -> list[RunConfig]:
    """The first round of ``edge_search``: the reference run, then every series at the grid's
    largest learning rate."""
    top = [arm_config(plan, t, arm, plan.lrs[-1], w, seed) for t, w, arm, seed in _series(plan)]
    return list(dict.fromkeys([reference_config(plan), *top]))


def edge_search(
    plan: ConfirmatoryPlan, compute: Callable[[list[RunConfig]], list[RunResult]]
) -> list[RunResult]:
    """The runs that decide every seed's edge, and the reference run: per (task, warm-up, arm,
    seed), the grid's learning rates from the largest down to the first stable run (all of
    them when none is). ``compute(configs)`` returns their results in order; it is called once
    per round, each round the next learning rate of every series not yet decided.

    The endpoint is the same as the whole grid's: it is the largest stable learning rate, and
    every larger one was run and found unstable."""
    position = {series: len(plan.lrs) - 1 for series in _series(plan)}
    runs: dict[RunConfig, RunResult] = {}
    extra = [reference_config(plan)]  # in the first round (``first_round``)
    while position:
        configs = {
            series: arm_config(plan, series[0], series[2], plan.lrs[index], series[1], series[3])
            for series, index in position.items()
        }
        batch = list(dict.fromkeys([*extra, *configs.values()]))
        runs |= dict(zip(batch, compute(batch), strict=True))
        extra = []
        position = {
            series: index - 1
            for series, index in position.items()
            if index > 0 and unstable(runs[configs[series]], plan.grace_steps)
        }
    return list(runs.values())


def unstable(result: RunResult, grace_steps: int) -> bool:
    """True when the run's per-step training loss was ever non-finite, or exceeded its step-0
    value after the warm-up plus ``grace_steps`` (a run that ended early diverged)."""
    return unstable_at(result, grace_steps) is not None


def unstable_at(result: RunResult, grace_steps: int) -> int | None:
    """The step (index of the per-step loss, so the loss after that many updates) at which the
    rule of ``unstable`` first calls the run unstable; None when it is stable."""
    losses = result.step_losses
    if losses is None:
        raise ValueError(f"{result.config.task}: the run recorded no per-step training loss")
    if not losses:
        return 0
    start = result.config.warmup_steps + grace_steps
    initial = losses[0]
    for step, value in enumerate(losses):
        if value is None or (step >= start and initial is not None and value > initial):
            return step
    return None if result.diverged_at is None else max(0, min(result.diverged_at, len(losses)) - 1)


@dataclass
class ConfirmatoryResults:
    """What the confirmatory study measured: every run of its plan."""

    plan: ConfirmatoryPlan
    command: str
    runs: list[RunResult]
    seconds: float = math.nan
    jobs: int = 0
    cached_jobs: int = 0
    started_at: str = ""  # when the command started and finished, UTC, ISO 8601
    finished_at: str = ""

    @property
    def title(self) -> str:
        return "torch-lookahead stability --confirmatory" + (" (quick)" if self.quick else "")

    @property
    def quick(self) -> bool:
        return self.plan.quick

    def edge_runs(self, task: str, arm: str, warmup: int, seed: int) -> list[RunResult]:
        """The runs of ``arm`` for ``seed`` from the grid's largest learning rate down to the
        first stable one (``edge_search``)."""
        by_config = {r.config: r for r in self.runs}
        out = []
        for lr in reversed(self.plan.lrs):
            config = arm_config(self.plan, task, arm, lr, warmup, seed)
            if config not in by_config:
                raise ValueError(
                    f"{task}, {arm}, warm-up {warmup}, seed {seed}: no run at lr {lr} although "
                    "every larger learning rate was unstable"
                )
            out.append(by_config[config])
            if not unstable(out[-1], self.plan.grace_steps):
                break
        return out

    def edges(self, task: str, arm: str, warmup: int) -> list[float]:
        """Per seed, log10 of the largest grid learning rate whose run of ``arm`` is stable (the
        grid's learning rate, for the alpha x lr arm too: its edge is read on the same grid)."""
        out = []
        for seed in self.plan.seeds:
            runs = self.edge_runs(task, arm, warmup, seed)
            edge = self.plan.lrs[len(self.plan.lrs) - len(runs)]
            stable = [] if unstable(runs[-1], self.plan.grace_steps) else [edge]
            out.append(largest_on_grid(stable, self.plan.lrs))
        return out


def grid_step(plan: ConfirmatoryPlan) -> float:
    """The grid's step in log10 of the learning rate (the edge moves in whole steps)."""
    return math.log10(plan.lrs[-1] / plan.lrs[0]) / (len(plan.lrs) - 1)


def grid_caveat(
    baseline: Sequence[float], candidate: Sequence[float], step: float, sesoi: float | None
) -> str:
    """How to read an equivalence on a grid coarser than the SESOI: when every paired
    difference is exactly 0 and the grid's step (in log10) exceeds the SESOI, each seed's true
    difference is known only within a grid step, so the data show no difference on this grid,
    not one within +-SESOI. Empty otherwise."""
    if (
        sesoi is None
        or step <= sesoi
        or any(b != c for b, c in zip(baseline, candidate, strict=True))
    ):
        return ""
    return (
        f"all {len(baseline)} differences 0 on a grid coarser than the SESOI: no difference on "
        f"this grid, whose steps are a factor of {fmt(10**step, 3)}; not shown equivalent within "
        f"±{sesoi:g}"
    )


def _all_edge_runs(
    lab: ConfirmatoryResults,
) -> list[tuple[tuple[str, int, str, int], list[RunResult]]]:
    return [
        ((t, w, arm, seed), lab.edge_runs(t, arm, w, seed)) for t, w, arm, seed in _series(lab.plan)
    ]


def first_checks(lab: ConfirmatoryResults) -> tuple[int, int]:
    """(how many runs the rule calls unstable at the first step it checks, the warm-up plus the
    grace steps; how many it calls unstable), over the runs that decide the edges."""
    grace = lab.plan.grace_steps
    steps = [
        (unstable_at(r, grace), r.config.warmup_steps + grace)
        for _, runs in _all_edge_runs(lab)
        for r in runs
    ]
    called = [(at, first) for at, first in steps if at is not None]
    return sum(at == first for at, first in called), len(called)


def grace_flips(lab: ConfirmatoryResults, warmup: int, grace: int) -> tuple[int, int]:
    """(how many of the stable runs that set an edge at ``warmup`` the rule would call unstable
    with ``grace`` grace steps instead of the plan's, how many stable runs set an edge there)."""
    stable = [
        runs[-1]
        for series, runs in _all_edge_runs(lab)
        if series[1] == warmup and not unstable(runs[-1], lab.plan.grace_steps)
    ]
    return sum(unstable(r, grace) for r in stable), len(stable)


def not_monotone(lab: ConfirmatoryResults) -> int:
    """How many (task, warm-up, seed) cells have a run of the inner optimizer alone that is
    unstable at one learning rate and stable at the next larger one run: its two arms (at lr
    and at alpha x lr) run it at interleaved learning rates."""
    plan = lab.plan
    count = 0
    for task in plan.tasks:
        for warmup in plan.warmups:
            for seed in plan.seeds:
                runs = sorted(
                    (r for arm in ("adam", "adam at alpha x lr")
                     for r in lab.edge_runs(task, arm, warmup, seed)),
                    key=lambda r: r.config.lr,
                )  # fmt: skip
                flags = [unstable(r, plan.grace_steps) for r in runs]
                count += any(low and not high for low, high in itertools.pairwise(flags))
    return count


def censored_at_top(lab: ConfirmatoryResults) -> dict[tuple[str, int, str], int]:
    """Per (task, warm-up, arm), how many seeds' edges are the grid's largest learning rate
    (cut off by the grid: the true edge may lie above it); cells with none are left out."""
    top = math.log10(lab.plan.lrs[-1])
    out: dict[tuple[str, int, str], int] = {}
    for task in lab.plan.tasks:
        for warmup in lab.plan.warmups:
            for arm, _, _ in ARMS:
                count = sum(edge == top for edge in lab.edges(task, arm, warmup))
                if count:
                    out[(task, warmup, arm)] = count
    return out


def _label(task: str, warmup: int) -> str:
    variant = "post-LN" if task.endswith("postln") else "pre-LN"
    return f"{variant}, {'warm-up ' + str(warmup) if warmup else 'no warm-up'}"


CONTROL = (
    "the lab's effective-learning-rate control. To first order "
    "Lookahead moves like its inner optimizer at about alpha x lr; above zero, Lookahead's edge "
    "is larger than that rescaling of the learning rate gives, below zero smaller, and the "
    "paper's claim is not tested by it."
)


def confirmatory_claims(lab: ConfirmatoryResults) -> list[Claim]:
    """Per (task, warm-up): Lookahead's edge against Adam's and against Adam at alpha x lr's
    (the lab's control, ``CONTROL``); the plan's primary cell is primary (Holm over its
    endpoints), the others descriptive. Caveats, changing no verdict: ``grid_caveat``, and the
    Holm-adjusted p-value among the descriptive difference tests beside a descriptive verdict
    that is significant unadjusted."""
    plan = lab.plan
    claims = []
    for key, baseline, title in (
        ("stability_edge", "adam", "Lookahead against Adam"),
        ("stability_edge_rescaled", "adam at alpha x lr", "Lookahead against Adam at alpha x lr"),
    ):
        for primary in (True, False):
            claim_plan = plan.plan.claim(key if primary else "stability_edge_other")
            cases: list[Case] = []
            for task in plan.tasks:
                for warmup in plan.warmups:
                    if (task == plan.primary_task and warmup == plan.primary_warmup) != primary:
                        continue
                    base = lab.edges(task, baseline, warmup)
                    wrapped = lab.edges(task, "lookahead", warmup)
                    estimate = paired_difference(base, wrapped, sesoi=claim_plan.sesoi)
                    what = (
                        f"log10 of the largest stable learning rate, mean {fmt(_mean(base), 3)} "
                        f"{baseline}, {fmt(_mean(wrapped), 3)} Lookahead; Lookahead minus "
                        f"{baseline}"
                    )
                    case = _case(_label(task, warmup), estimate, "above", what)
                    caveat = grid_caveat(base, wrapped, grid_step(plan), claim_plan.sesoi)
                    cases.append(dataclasses.replace(case, caveat=caveat))
            if not cases:
                continue
            control = CONTROL if baseline != "adam" else ""
            claims.append(
                Claim(
                    key=key if primary else f"{key}_other",
                    title=("the effective-learning-rate control: " if control else "")
                    + f"largest stable learning rate, {title}"
                    + ("" if primary else ", the other models and warm-ups"),
                    paper=PAPER_STABILITY,
                    protocol=f"{len(plan.seeds)} fresh seeds, {len(plan.lrs)} learning rates "
                    f"from {fmt(plan.lrs[0], 3)} to {fmt(plan.lrs[-1], 3)}; a run is unstable by "
                    "the plan's rule on the per-step training loss.",
                    effect="per seed, log10 of the largest stable learning rate, Lookahead "
                    f"minus {baseline}; above zero favours Lookahead.",
                    cases=tuple(cases),
                    role=claim_plan.role,
                    sesoi=claim_plan.sesoi,
                    control=control,
                )
            )
    return holm_primary(_descriptive_holm(claims))


def _descriptive_holm(claims: Sequence[Claim]) -> list[Claim]:
    """The claims with a caveat beside each descriptive verdict that is significant at the
    unadjusted 5%: its Holm-adjusted p-value among all the descriptive difference tests, for
    information (descriptive verdicts stay unadjusted)."""
    tested = [
        (id(case), case.estimate.p_value)
        for claim in claims
        if claim.role == "descriptive"
        for case in claim.cases
        if case.estimate is not None
    ]
    p_values = holm([1.0 if math.isnan(p) else p for _, p in tested])
    adjusted = {key: p for (key, _), p in zip(tested, p_values, strict=True)}
    out = []
    for claim in claims:
        new = []
        for case in claim.cases:
            if id(case) in adjusted and verdict_kind(case.verdict) in ("supports", "contradicts"):
                note = (
                    f"unadjusted; Holm-adjusted among the {len(tested)} descriptive difference "
                    f"tests p = {adjusted[id(case)]:.2g}, for information"
                )
                case = dataclasses.replace(
                    case, caveat="; ".join(filter(None, (case.caveat, note)))
                )
            new.append(case)
        out.append(dataclasses.replace(claim, cases=tuple(new)))
    return out


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan
