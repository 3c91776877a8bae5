"""The paper's claims, each checked against what a run measured.

Every sentence here is generated from the measured numbers; a claim that the numbers do not
support says so. The verdicts are "holds", "does not hold" or "holds in n of m cases".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch_lookahead.lab.metrics import SettingSummary
from torch_lookahead.lab.nqm import NQMPoint

__all__ = [
    "Claim",
    "convergence_claim",
    "fmt",
    "k_alpha_claim",
    "lr_robustness_claim",
    "nqm_claim",
    "pair_by_inner",
    "seed_variance_claim",
    "verdict",
]


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, the verdict of this run, and the measurements behind it."""

    key: str
    paper: str
    verdict: str
    measured: tuple[str, ...]


def fmt(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; "n/a" for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def verdict(outcomes: Sequence[bool]) -> str:
    """ "holds" when every case holds, "does not hold" when none does, else "holds in n of m"."""
    if not outcomes:
        return "not measured"
    held = sum(outcomes)
    if held == len(outcomes):
        return "holds"
    if held == 0:
        return "does not hold"
    return f"holds in {held} of {len(outcomes)} cases"


def _better_or_equal(candidate: float, baseline: float, higher_is_better: bool) -> bool:
    if not math.isfinite(candidate):
        return False
    if not math.isfinite(baseline):
        return True
    return candidate >= baseline if higher_is_better else candidate <= baseline


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


def nqm_claim(points: Sequence[NQMPoint], k: int, alpha: float) -> Claim:
    """Proposition 2: Lookahead's steady-state variance is below SGD's at the same learning rate."""
    outcomes = [p.lookahead_simulated < p.sgd_simulated for p in points]
    ratios = [p.variance_ratio() for p in points]
    errors = [e for p in points for e in p.relative_errors()]
    lrs = ", ".join(fmt(p.lr, 3) for p in points)
    measured = (
        f"Simulated at {len(points)} learning rates ({lrs}) with k={k}, alpha={alpha}: Lookahead's "
        f"steady-state excess loss was below SGD's at {sum(outcomes)} of {len(points)}; "
        f"the ratio Lookahead/SGD ranged from {fmt(min(ratios), 3)} to {fmt(max(ratios), 3)}.",
        f"Simulation against the closed forms: largest relative error of the excess loss "
        f"{fmt(100 * max(errors), 2)}%.",
    )
    return Claim(
        key="nqm_variance",
        paper="On the noisy quadratic model, Lookahead's steady-state variance (hence its expected "
        "loss) is strictly lower than SGD's at the same learning rate.",
        verdict=verdict(outcomes),
        measured=measured,
    )


def seed_variance_claim(summaries: Sequence[SettingSummary], metric: str = "val_loss") -> Claim:
    """Lookahead's final ``metric`` varies less across seeds than its inner optimizer's."""
    outcomes = []
    measured = []
    for plain, lookahead in pair_by_inner(summaries):
        if min(len(plain.seeds), len(lookahead.seeds)) < 2:
            measured.append(f"{plain.setting.inner}: needs at least 2 seeds; not measured.")
            continue
        plain_std = plain.final[metric][1]
        lookahead_std = lookahead.final[metric][1]
        outcomes.append(math.isfinite(lookahead_std) and lookahead_std <= plain_std)
        measured.append(
            f"{plain.setting.inner}: standard deviation of the final {metric} over "
            f"{len(plain.seeds)} seeds {fmt(plain_std, 3)} plain, {fmt(lookahead_std, 3)} with "
            f"Lookahead."
        )
    return Claim(
        key="seed_variance",
        paper="Lookahead lowers the variance of the result across random seeds.",
        verdict=verdict(outcomes),
        measured=tuple(measured),
    )


def convergence_claim(summaries: Sequence[SettingSummary]) -> Claim:
    """Lookahead reaches the target training loss in no more steps than its inner optimizer."""
    outcomes = []
    measured = []
    for plain, lookahead in pair_by_inner(summaries):
        plain_steps = plain.mean_steps_to_target()
        lookahead_steps = lookahead.mean_steps_to_target()
        if lookahead_steps is None:
            held = plain_steps is None and _better_or_equal(
                lookahead.final["train_loss"][0], plain.final["train_loss"][0], False
            )
        else:
            held = plain_steps is None or lookahead_steps <= plain_steps
        outcomes.append(held)
        measured.append(
            f"{plain.setting.inner}: steps to a training loss of {fmt(plain.target_loss)} "
            f"(mean over seeds) {_steps_text(plain)} plain, {_steps_text(lookahead)} with "
            f"Lookahead; final training loss {fmt(plain.final['train_loss'][0])} and "
            f"{fmt(lookahead.final['train_loss'][0])}."
        )
    return Claim(
        key="convergence",
        paper="Lookahead converges faster than, or as fast as, its inner optimizer.",
        verdict=verdict(outcomes),
        measured=tuple(measured),
    )


def _steps_text(summary: SettingSummary) -> str:
    mean_steps = summary.mean_steps_to_target()
    if mean_steps is not None:
        return fmt(mean_steps)
    reached = sum(s is not None for s in summary.steps_to_target)
    return f"not reached by {len(summary.steps_to_target) - reached} of {len(summary.seeds)} seeds"


def lr_robustness_claim(
    summaries: Sequence[SettingSummary], metric: str, higher_is_better: bool
) -> Claim:
    """Across a learning-rate grid, Lookahead's ``metric`` averaged over the grid is at least as
    good as the inner optimizer's, per inner optimizer."""
    outcomes = []
    measured = []
    for inner in dict.fromkeys(s.setting.inner for s in summaries):
        pairs = [p for p in pair_by_inner(summaries) if p[0].setting.inner == inner]
        if len(pairs) < 2:
            continue
        plain_values = [p.final[metric][0] for p, _ in pairs]
        lookahead_values = [la.final[metric][0] for _, la in pairs]
        wins = sum(
            _better_or_equal(la, p, higher_is_better)
            for p, la in zip(plain_values, lookahead_values, strict=True)
        )
        plain_mean = _grid_mean(plain_values)
        lookahead_mean = _grid_mean(lookahead_values)
        outcomes.append(_better_or_equal(lookahead_mean, plain_mean, higher_is_better))
        lrs = [p.setting.lr for p, _ in pairs]
        plain_best = _best(lrs, plain_values, higher_is_better)
        lookahead_best = _best(lrs, lookahead_values, higher_is_better)
        measured.append(
            f"{inner}: over {len(pairs)} learning rates from {fmt(min(lrs), 3)} to "
            f"{fmt(max(lrs), 3)}, the mean final {metric} was {fmt(plain_mean)} plain and "
            f"{fmt(lookahead_mean)} with Lookahead; Lookahead was as good or better at "
            f"{wins} of {len(pairs)} learning rates; the best learning rate gave "
            f"{fmt(plain_best[1])} (lr {fmt(plain_best[0], 3)}) plain and {fmt(lookahead_best[1])} "
            f"(lr {fmt(lookahead_best[0], 3)}) with Lookahead."
        )
    return Claim(
        key="lr_robustness",
        paper="Lookahead is more robust to the choice of the inner learning rate.",
        verdict=verdict(outcomes),
        measured=tuple(measured),
    )


def _best(
    lrs: Sequence[float], values: Sequence[float], higher_is_better: bool
) -> tuple[float, float]:
    """The (learning rate, value) with the best finite value; (nan, nan) if there is none."""
    finite = [(v, lr) for lr, v in zip(lrs, values, strict=True) if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    value, lr = max(finite) if higher_is_better else min(finite)
    return lr, value


def _grid_mean(values: Sequence[float]) -> float:
    """Mean over a grid; a diverged point (NaN) makes the mean NaN, which counts as worst."""
    return math.fsum(values) / len(values)


def k_alpha_claim(
    summaries: Sequence[SettingSummary], metric: str, higher_is_better: bool
) -> Claim:
    """Every tested (k, alpha) is at least as good as the inner optimizer alone, up to the
    inner optimizer's own seed-to-seed standard deviation."""
    outcomes = []
    measured = []
    for inner in dict.fromkeys(s.setting.inner for s in summaries):
        plain = [s for s in summaries if s.setting.inner == inner and not s.setting.uses_lookahead]
        grid = [s for s in summaries if s.setting.inner == inner and s.setting.uses_lookahead]
        if not plain or len(grid) < 2:
            continue
        baseline, baseline_std = plain[0].final[metric]
        tolerance = baseline_std if math.isfinite(baseline_std) else 0.0
        allowed = baseline - tolerance if higher_is_better else baseline + tolerance
        values = [s.final[metric][0] for s in grid]
        matched = [_better_or_equal(v, allowed, higher_is_better) for v in values]
        outcomes.append(all(matched))
        finite = [v for v in values if math.isfinite(v)]
        spread = (max(finite) - min(finite)) if finite else math.nan
        measured.append(
            f"{inner}: {sum(matched)} of {len(grid)} (k, alpha) settings reached a final {metric} "
            f"at least as good as the inner optimizer alone ({fmt(baseline)} ± "
            f"{fmt(baseline_std, 2)} over seeds); across the grid it ranged from "
            f"{fmt(min(finite) if finite else None)} to {fmt(max(finite) if finite else None)} "
            f"(spread {fmt(spread, 3)})."
        )
    return Claim(
        key="k_alpha_robustness",
        paper="Lookahead is robust to its own hyper-parameters k and alpha.",
        verdict=verdict(outcomes),
        measured=tuple(measured),
    )
