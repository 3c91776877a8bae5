"""What "reproduced" means for a report of the lab, and the check that says whether a run of
today's code reproduces a committed report.

Floating-point rounding differs between CPU models and between torch's CPU kernels (AVX2,
AVX512), and torch promises no bit-for-bit equality across them. Training amplifies such
differences: at the largest learning rates of a sweep a different CPU acts like a different
seed. So a report is *reproduced* when

1. every case of every claim has the same verdict;
2. every *reference* run (``is_reference``: the report's first seed at the task's learning
   rate, plain and in Lookahead(k=5, alpha=0.5); results.json marks them) has the same
   evaluation steps, metrics, per-step losses and divergence step as the committed one, and
   agrees with it within ``EARLY_TOLERANCE`` (relative to the committed value, absolute below
   ``ABSOLUTE_FLOOR``) at every value up to step ``HORIZON_STEPS`` or its first evaluation
   after step 0, whichever is later (per-step losses included where it records them), and
   within ``LATE_TOLERANCE`` at every later value: training amplifies rounding differences
   between CPUs, so later values get a looser bound, one that still fails a change of the
   training (a sync skipped or with another alpha, another schedule, another split); its
   per-example record of the test split (``RunResult.test_correct``), where the committed run
   has one, is compared by the share of examples it counts correct, under the same
   tolerances (which examples a CPU's rounding flips is not fixed across CPUs, the count is);
3. on the same CPU model, CPU kernels and torch version (``same_machine``), every number is
   the same, bit for bit.

Runs that are not reference runs are compared and their largest difference is reported, but a
difference there is no failure as long as the verdicts hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch_lookahead_lab.claims import fmt
from torch_lookahead_lab.runner import decode_correct
from torch_lookahead_lab.tasks import get_task

__all__ = [
    "ABSOLUTE_FLOOR",
    "EARLY_TOLERANCE",
    "HORIZON_STEPS",
    "LATE_TOLERANCE",
    "NQM_TOLERANCE",
    "Comparison",
    "ValueDifference",
    "breaks_rule",
    "compare_payloads",
    "disagreements",
    "history_differences",
    "horizon",
    "is_reference",
    "marked_reference",
    "run_label",
    "same_machine",
]

# Rule 2 until 2fb39ea checked every value within 1e-3; the committed reports/demo (written on
# an AMD EPYC) then failed it on an Intel Xeon: plain SGD's reference run differs by 2e-7
# relative at step 50 but by 8.8e-3 at step 200 (training amplifies rounding; the other three
# runs stay below 1.1e-6, below 7.5e-4 under AVX2 kernels). Since then the first steps are
# checked tightly and later ones loosely. Measured with a review's bugs injected into the
# demo's reference runs: a learning rate 0.1% larger moves lookahead(sgd) by 2.1e-4 by step
# 50; a sync with alpha 1, 0.6 or none after step 60 moves a Lookahead run by 0.2 to 32, a
# cosine schedule floored at 0.1 by up to 7.5e-2, and the final evaluation on the validation
# split by up to 0.19 (docs/lab.md).
HORIZON_STEPS = 50
EARLY_TOLERANCE = 1e-4
LATE_TOLERANCE = 5e-2
# The noisy quadratic model's simulated losses (a few thousand float64 steps).
NQM_TOLERANCE = 1e-3
# The Lookahead setting of the reference runs (``is_reference``).
REFERENCE_LOOKAHEAD = (5, 0.5)
DIVERGED = "diverged_at"  # the metric name of a difference in the divergence step
# Below this absolute size (a loss or an accuracy near 0), differences are compared absolutely.
ABSOLUTE_FLOOR = 1e-6


def same_machine(committed: Mapping[str, Any], fresh: Mapping[str, Any]) -> bool:
    """True when two provenances name the same CPU model, CPU kernels and torch: then a run
    must reproduce bit for bit. A provenance without a CPU model is another machine."""
    keys = ("cpu_model", "cpu_capability", "torch")
    return all(committed.get(k) is not None and committed.get(k) == fresh.get(k) for k in keys)


def is_reference(config: Mapping[str, Any], diverged_at: int | None, first_seed: int = 0) -> bool:
    """A run the report marks ``reference``, whose every value must agree across machines
    within rule 2's tolerances: the report's first seed (``first_seed``; 0 unless its seeds
    start elsewhere) at the task's learning rate for its inner optimizer and under its schedule
    (a run recorded before runs had a schedule counts as under it), plain or in the lab's
    default Lookahead(k=5, alpha=0.5), that never diverged.

    Other runs may amplify rounding into differences like those between seeds (measured: up to
    2% at the task's learning rate for some seeds, up to 60% at nine times it), so for them only
    the verdicts they feed must agree."""
    if diverged_at is not None or config["seed"] != first_seed:
        return False
    if (config["k"], config["alpha"]) not in ((None, None), REFERENCE_LOOKAHEAD):
        return False
    task = get_task(config["task"])
    if config.get("schedule", task.schedule) != task.schedule:
        return False
    return math.isclose(config["lr"], task.learning_rate(config["inner"]), rel_tol=1e-9)


def marked_reference(run: Mapping[str, Any]) -> bool:
    """Whether results.json marks ``run`` a reference run: its ``reference`` mark, the
    ``stable`` mark of reports written before the mark's rename, or for reports older still the
    rule of ``is_reference``."""
    mark = run.get("reference", run.get("stable"))
    if mark is None:
        return is_reference(run["config"], run.get("diverged_at"))
    return bool(mark)


def run_label(config: Mapping[str, Any]) -> str:
    """``lookahead(sgd) lr 0.05 k 5 alpha 0.5 seed 1``."""
    method = f"lookahead({config['inner']})" if config["k"] is not None else config["inner"]
    extra = f" k {config['k']} alpha {config['alpha']}" if config["k"] is not None else ""
    return f"{method} lr {fmt(config['lr'], 3)}{extra} seed {config['seed']}"


@dataclass(frozen=True)
class ValueDifference:
    """One value of a run's history, committed and now."""

    run: str
    metric: str
    step: int
    committed: float | None
    now: float | None

    @property
    def relative(self) -> float:
        """|now - committed| / max(|committed|, ABSOLUTE_FLOOR); inf when one is missing."""
        if self.committed is None or self.now is None:
            return 0.0 if self.committed is self.now else math.inf
        return abs(self.now - self.committed) / max(abs(self.committed), ABSOLUTE_FLOOR)

    @property
    def structural(self) -> bool:
        """One side has the value and the other not (``None`` stands for a missing value)."""
        return (self.committed is None) != (self.now is None)

    def describe(self) -> str:
        return (
            f"{self.run}: {self.metric} at step {self.step} {self.committed!r} committed, "
            f"{self.now!r} now"
        )


def history_differences(
    committed: Mapping[str, Any], fresh: Mapping[str, Any]
) -> Iterator[ValueDifference]:
    """Every value of two runs' histories (as in results.json), per-step losses included where
    the committed run has them, that is not bit for bit the same; a missing metric or evaluation
    step counts as a missing value."""
    label = run_label(fresh["config"])
    if committed.get("diverged_at") != fresh.get("diverged_at"):
        yield ValueDifference(
            label, DIVERGED, 0, committed.get("diverged_at"), fresh.get("diverged_at")
        )
    old_steps, new_steps = list(committed["steps"]), list(fresh["steps"])
    for metric in dict.fromkeys([*committed["history"], *fresh["history"]]):
        old = dict(zip(old_steps, committed["history"].get(metric, []), strict=False))
        new = dict(zip(new_steps, fresh["history"].get(metric, []), strict=False))
        for step in dict.fromkeys([*old_steps, *new_steps]):
            if old.get(step) != new.get(step) or (step in old) != (step in new):
                yield ValueDifference(label, metric, step, old.get(step), new.get(step))
    yield from _correct_differences(label, committed, fresh)
    if committed.get("step_losses") is None:  # recorded before runs kept per-step losses
        return
    old_losses, new_losses = committed["step_losses"], fresh.get("step_losses") or []
    for step in range(1, max(len(old_losses), len(new_losses)) + 1):
        before = old_losses[step - 1] if step <= len(old_losses) else None
        after = new_losses[step - 1] if step <= len(new_losses) else None
        if before != after or len(old_losses) != len(new_losses):
            yield ValueDifference(label, "step_loss", step, before, after)


CORRECT = "test_correct"  # the metric name of a difference in the per-example record


def _correct_share(record: Mapping[str, Any] | None, step: int) -> float | None:
    """The share of test examples the record counts correct at ``step`` (None: not recorded)."""
    mask = _mask_at(record, step)
    if record is None or mask is None:
        return None
    return float(decode_correct(mask, int(record["examples"])).mean())


def _correct_differences(
    label: str, committed: Mapping[str, Any], fresh: Mapping[str, Any]
) -> Iterator[ValueDifference]:
    """Per step of the committed per-example record whose mask is not the same, bit for bit,
    as the fresh one: the shares counted correct (runs recorded before the record: none)."""
    old, new = committed.get("test_correct"), fresh.get("test_correct")
    if old is None:
        return
    for step in old["steps"]:
        before = _mask_at(old, step)
        after = _mask_at(new, step)
        if before != after:
            yield ValueDifference(
                label, CORRECT, step, _correct_share(old, step), _correct_share(new, step)
            )


def _mask_at(record: Mapping[str, Any] | None, step: int) -> str | None:
    if record is None or step not in record["steps"]:
        return None
    return str(record["correct"][record["steps"].index(step)])


def horizon(committed: Mapping[str, Any]) -> int:
    """The last step whose values rule 2 checks: ``HORIZON_STEPS``, or the run's first
    evaluation after step 0 if that comes later."""
    return max(HORIZON_STEPS, next((s for s in committed["steps"] if s > 0), 0))


def breaks_rule(difference: ValueDifference, committed: Mapping[str, Any]) -> bool:
    """Rule 2: another divergence step, a value only one side has, or a difference outside
    ``EARLY_TOLERANCE`` within the run's ``horizon``, outside ``LATE_TOLERANCE`` after it."""
    if difference.metric == DIVERGED or difference.structural:
        return True
    late = difference.step > horizon(committed)
    return difference.relative > (LATE_TOLERANCE if late else EARLY_TOLERANCE)


def disagreements(
    committed: Mapping[str, Any], fresh: Mapping[str, Any], *, bit_for_bit: bool
) -> list[ValueDifference]:
    """The values of a fresh run's history that break the rule against the committed run's:
    any difference at all when ``bit_for_bit``, else one that ``breaks_rule``."""
    differences = history_differences(committed, fresh)
    return [d for d in differences if bit_for_bit or breaks_rule(d, committed)]


def _verdicts(payload: Mapping[str, Any]) -> dict[str, str]:
    verdicts = {}
    for claim in payload.get("claims", []):
        for case in claim.get("cases", []):
            verdicts[f"{claim['key']}/{case['label']}"] = case["verdict"]
    return verdicts


def _nqm_differences(committed: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[float]:
    old = committed.get("nqm", {}).get("points", [])
    new = fresh.get("nqm", {}).get("points", [])
    relative = []
    for a, b in zip(old, new, strict=False):
        for key in ("sgd_simulated", "lookahead_simulated"):
            if key in a and key in b and a[key] != b[key]:
                relative.append(abs(b[key] - a[key]) / max(abs(a[key]), ABSOLUTE_FLOOR))
    if len(old) != len(new):
        relative.append(math.inf)
    return relative


@dataclass
class Comparison:
    """How a fresh results.json compares with a committed one."""

    same_machine: bool
    runs_compared: int = 0
    runs_differing: int = 0
    reference_runs: int = 0
    only_committed: int = 0
    only_fresh: int = 0
    largest: ValueDifference | None = None
    reference_outside: list[ValueDifference] = field(default_factory=list)
    verdicts_compared: int = 0
    verdict_changes: list[str] = field(default_factory=list)
    nqm_largest: float = 0.0

    @property
    def reproduced(self) -> bool:
        """The rule of this module: same verdicts, the same runs, reference runs within the
        tolerance, and bit for bit on the same machine."""
        if self.verdict_changes or self.only_committed or self.only_fresh:
            return False
        if self.same_machine:
            return self.runs_differing == 0 and self.nqm_largest == 0.0
        return not self.reference_outside and self.nqm_largest <= NQM_TOLERANCE

    def line(self) -> str:
        """One line: whether it reproduced, whether any verdict changed, the largest relative
        difference with a value that differs."""
        head = "Reproduced" if self.reproduced else "NOT reproduced"
        if self.verdict_changes:
            verdicts = (
                f"{len(self.verdict_changes)} of {self.verdicts_compared} verdicts changed "
                f"({self.verdict_changes[0]})"
            )
        else:
            verdicts = f"all {self.verdicts_compared} verdicts unchanged"
        if self.largest is None:
            values = f"every value of the {self.runs_compared} runs the same, bit for bit"
        else:
            values = (
                f"{self.runs_differing} of {self.runs_compared} runs differ, the largest "
                f"relative difference {fmt(self.largest.relative, 2)} "
                f"(e.g. {self.largest.describe()})"
            )
        if self.same_machine:
            rule = "same CPU model, kernels and torch: bit for bit expected"
        elif self.reference_outside:
            worst = max(self.reference_outside, key=lambda d: d.relative)
            rule = (
                f"{len(self.reference_outside)} values of the {self.reference_runs} reference runs "
                f"break rule 2 (within {EARLY_TOLERANCE:g} relative in their first steps, "
                f"{LATE_TOLERANCE:g} later; e.g. {worst.describe()})"
            )
        else:
            rule = (
                f"the {self.reference_runs} reference runs within {EARLY_TOLERANCE:g} relative in "
                f"their first steps and {LATE_TOLERANCE:g} later"
            )
        extra = ""
        if self.only_committed or self.only_fresh:
            extra = (
                f"; {self.only_fresh} runs not in the committed report, {self.only_committed} "
                "committed runs not here"
            )
        if self.nqm_largest:
            extra += f"; noisy quadratic model within {fmt(self.nqm_largest, 2)} relative"
        return f"{head}: {verdicts}; {values}; {rule}{extra}."


def compare_payloads(committed: Mapping[str, Any], fresh: Mapping[str, Any]) -> Comparison:
    """Compare two results.json payloads by the rule of this module."""
    comparison = Comparison(
        same_machine(committed.get("provenance", {}), fresh.get("provenance", {}))
    )
    before = {json.dumps(r["config"], sort_keys=True): r for r in committed.get("runs", [])}
    after = {json.dumps(r["config"], sort_keys=True): r for r in fresh.get("runs", [])}
    common = sorted(before.keys() & after.keys())
    comparison.runs_compared = len(common)
    comparison.only_committed = len(before.keys() - after.keys())
    comparison.only_fresh = len(after.keys() - before.keys())
    for key in common:
        old, new = before[key], after[key]
        differences = list(history_differences(old, new))
        reference = marked_reference(old)
        comparison.reference_runs += reference
        if not differences:
            continue
        comparison.runs_differing += 1
        worst = max(differences, key=lambda d: d.relative)
        if comparison.largest is None or worst.relative > comparison.largest.relative:
            comparison.largest = worst
        if reference:
            comparison.reference_outside += [d for d in differences if breaks_rule(d, old)]
    old_verdicts, new_verdicts = _verdicts(committed), _verdicts(fresh)
    comparison.verdicts_compared = len(old_verdicts)
    for case, verdict in old_verdicts.items():
        now = new_verdicts.get(case, "absent")
        if now != verdict:
            comparison.verdict_changes.append(f"{case}: {verdict!r} committed, {now!r} now")
    comparison.nqm_largest = max(_nqm_differences(committed, fresh), default=0.0)
    return comparison
