"""The report folder: ``report.md`` (setup, claims, tables, figures), ``results.json`` (the
provenance, every claim with its intervals, every summary and every run's history), ``runs.csv``
(one row per run), ``curves.csv`` (every evaluation) and the PNG figures.

Every number in the report is computed here from the runs; nothing is typed by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch_lookahead_lab.claims import (
    NO_VERDICT,
    Case,
    Claim,
    claim_json,
    convergence_claim,
    final_quality_claim,
    fmt,
    holm_primary,
    k_alpha_claim,
    lr_robustness_claim,
    nqm_claim,
    pair_by_inner,
    seed_variance_claim,
    select_per_method,
    short_interval,
    tuned_pairs,
)
from torch_lookahead_lab.confirmatory import (
    ARMS,
    ConfirmatoryResults,
    arm_label,
    censored_at_top,
    confirmatory_claims,
    confirmatory_configs,
    first_checks,
    grace_flips,
    not_monotone,
    reference_config,
)
from torch_lookahead_lab.console import QUICK_REPORT_NOTICE
from torch_lookahead_lab.experiments import LabResults, compare_experiment
from torch_lookahead_lab.metrics import SettingSummary, area_under_curve, final_value, summarize
from torch_lookahead_lab.nqm import NQMPoint
from torch_lookahead_lab.optimizers import inner_settings
from torch_lookahead_lab.plans import (
    Plan,
    load_plan,
    plan_digest,
    plan_from_mapping,
    plan_settings,
    plan_status,
    seed_spans,
)
from torch_lookahead_lab.provenance import record
from torch_lookahead_lab.reproduce import (
    EARLY_TOLERANCE,
    HORIZON_STEPS,
    LATE_TOLERANCE,
    compare_payloads,
    is_reference,
)
from torch_lookahead_lab.runner import RunConfig, RunResult
from torch_lookahead_lab.stability import (
    PAPER_STABILITY,
    StabilityPlan,
    StabilityResults,
    largest_on_grid,
    method_label,
    protocol_text,
    stability_claims,
    trains,
)
from torch_lookahead_lab.stats import holm, verdict_kind, verdict_of
from torch_lookahead_lab.tasks import SCHEDULES, get_task

__all__ = [
    "CANNOT_TEST",
    "DETAILS_MARKER",
    "ONE_SCHEDULE",
    "TUNED_ALONE",
    "build_claims",
    "check_out_dir",
    "differences_from",
    "embed_report",
    "rerender",
    "results_json",
    "stability_headline_rows",
    "stability_payload",
    "summary_rows",
    "summary_sentences",
    "verdict_rows",
    "write_report",
]


# ------------------------------------------------------------------------------------ the claims


def _seeds_text(runs: Sequence[RunResult]) -> str:
    seeds = sorted({r.config.seed for r in runs})
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"


def _training_text(runs: Sequence[RunResult]) -> str:
    config = runs[0].config
    return f"{SCHEDULES[config.schedule]}, {config.steps} steps of batch {config.batch_size}"


def default_protocol(lab: LabResults, runs: Sequence[RunResult] = ()) -> str:
    """The paper's headline protocol, as this lab ran it (with ``runs``: as those runs did,
    under another schedule)."""
    runs = runs or lab.compare
    lrs = ", ".join(
        f"{inner} {fmt(lr, 3)}"
        for inner, lr in dict.fromkeys((r.config.inner, r.config.lr) for r in runs)
    )
    wrapped = next(r.config for r in runs if r.config.uses_lookahead)
    return (
        f"default: each inner optimizer at the task's learning rate ({lrs}), "
        f"{_training_text(runs)}; Lookahead(k={wrapped.k}, alpha={wrapped.alpha}) on top; "
        f"compared at the end of training over {_seeds_text(runs)}, paired by seed "
        "(a seed fixes the initialisation and the minibatch order)."
    )


def _schedule_of(runs: Sequence[RunResult]) -> str:
    """The learning-rate schedule ``runs`` share ("" for none or several)."""
    schedules = {r.config.schedule for r in runs}
    return schedules.pop() if len(schedules) == 1 else ""


def _by_schedule(runs: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.config.schedule, []).append(run)
    return groups


def _seed_span(runs: Sequence[RunResult]) -> str:
    return "seeds " + seed_spans(sorted({r.config.seed for r in runs}))


def _plan_data(lab: LabResults) -> dict[str, Any]:
    """The plan's settings as the run used them (``plan_settings``)."""
    return plan_settings(_plan_of(lab), lab.quick)


def _method_trials(lab: LabResults) -> dict[str, tuple[int, int]]:
    """Per method: its count of trials (the tuned protocol's, else the sweep's) and of
    extensions among them (trials beyond the plan's equal number: its learning-rate factors,
    else the learning rates of the sweep's grid)."""
    data = _plan_data(lab)
    summaries = summarize(lab.tuning or lab.lr_sweep)
    methods = [s.method for s in summaries]
    inners = {s.method: s.setting.inner for s in summaries}
    counts = {}
    for method in dict.fromkeys(methods):
        count = methods.count(method)
        designed = data.get("lr_factors", data.get("lrs", {}).get(inners[method], ()))
        counts[method] = (count, max(count - len(designed), 0))
    return counts


def _extensions(count: int) -> str:
    return f"{count} extension{'s' if count != 1 else ''}"


def _trial_counts(lab: LabResults) -> str:
    """``sgd 5, lookahead(sgd) 6 (1 extension), ...``: each method's trials, the extensions
    counted apart (``_method_trials``)."""
    return ", ".join(
        f"{method} {count}" + (f" ({_extensions(extra)})" if extra else "")
        for method, (count, extra) in _method_trials(lab).items()
    )


def _extends(extension: dict[str, Any]) -> bool:
    """Whether a plan's grid-extension rule can extend a grid: a factor and a max above 0."""
    return bool(extension.get("max")) and extension.get("factor") is not None


def _extension_text(lab: LabResults) -> str:
    """The plan's grid-extension rule and each method's count of trials, in words; where the
    rule cannot extend a grid (max 0, no factor), that and what an edge then gets."""
    extension = _plan_data(lab).get("tuning", {}).get("extension", {})
    if not _extends(extension):
        width = "" if lab.tuning else ", and a seed's width that reaches that edge is censored"
        return (
            "Grid extension: the plan extends no grid; a selected learning rate at the edge of "
            f"its method's trials gets no verdict{width}. Trials run: {_trial_counts(lab)}."
        )
    return (
        f"Grid extension (factor {fmt(float(extension['factor']))}, at most "
        f"{extension['max']} per method): {extension.get('rule', 'see the plan')}. Trials run: "
        f"{_trial_counts(lab)}."
    )


def _tuning_protocol(lab: LabResults, rule: str) -> str:
    """The tuned protocol with equal trials over each method's own space (``lab.tuning``)."""
    tuning = _plan_data(lab).get("tuning", {})
    points = "; ".join(
        f"{fmt(p['lr_factor'], 3)} x lr, k={p['k']}, alpha={p['alpha']}"
        for p in tuning.get("lookahead", ())
    )
    return (
        f"tuned, equal trials: each method gets the same number of trials over its own space on "
        f"the validation split over {_seed_span(lab.tuning)}: the plain inner optimizer its "
        f"learning rate at each value of the sweep, Lookahead the plan's points of (lr, k, "
        f"alpha), k and alpha drawn with a fixed seed before any run ({points}; lr the task's "
        f"learning rate); selected by the rule: {rule}. {_extension_text(lab)} The selected "
        f"settings run again and compared on {_seed_span(lab.tuned)} (fresh seeds); "
        f"{_training_text(lab.tuned)}; paired by seed."
    )


def tuned_protocol(lab: LabResults) -> str:
    plan = _plan_data(lab)
    rule = plan.get("selection", {}).get("rule", "the best mean final validation metric")
    if lab.tuning and lab.tuned:
        return _tuning_protocol(lab, rule)
    wrapped = next(r.config for r in lab.lr_sweep if r.config.uses_lookahead)
    if lab.tuned:
        where = (
            f"selected on the validation split over the sweep's {_seed_span(lab.lr_sweep)}, then "
            f"run again and compared on {_seed_span(lab.tuned)} (fresh seeds)"
        )
    else:
        where = (
            f"selected and compared on the same {_seed_span(lab.lr_sweep)} (no fresh seeds: "
            "the selection's luck is in the comparison)"
        )
    extended = f" {_extension_text(lab)}" if plan.get("tuning", {}).get("extension") else ""
    return (
        f"tuned: each method at its own learning rate of the sweep, by the rule: {rule}; "
        f"{where}; {_training_text(lab.lr_sweep)}; Lookahead(k={wrapped.k}, "
        f"alpha={wrapped.alpha}); paired by seed.{extended}"
    )


def sweep_protocol(lab: LabResults, runs: Sequence[RunResult]) -> str:
    return f"{_training_text(runs)}, over {_seed_span(runs)}, paired by seed."


def endpoint_of(lab: LabResults) -> str:
    """The metric comparisons are reported on: the task's test metric where it has a test
    split, else its headline (validation) metric."""
    test = get_task(lab.task).test_metric if lab.task else None
    runs = lab.compare or lab.lr_sweep or lab.k_alpha
    return test if test and runs and test in runs[0].history else lab.headline_metric


def _plan_of(lab: LabResults) -> Plan:
    return lab.plan if lab.plan is not None else plan_from_mapping("none", {})


def _rescaled_pairs(lab: LabResults) -> list[tuple[SettingSummary, SettingSummary]]:
    """(inner at alpha x lr, Lookahead at lr) per inner optimizer."""
    rescaled = {s.setting.inner: s for s in summarize(lab.rescaled)}
    return [
        (rescaled[la.setting.inner], la)
        for _, la in pair_by_inner(summarize(lab.compare))
        if la.setting.inner in rescaled
    ]


def _edge_rule(lab: LabResults) -> dict[str, str]:
    """Per method, the words a case without a verdict gives after its edge, by what the plan's
    grid-extension rule did to the method's grid: ``after 2 extensions by 3x (the plan's
    most)``, ``after no extension (extensions follow the selected (mean) optimum only)``,
    ``(the plan extends no grid)``; empty where the plan has no rule."""
    extension = _plan_data(lab).get("tuning", {}).get("extension")
    if not extension:
        return {}
    counts = _method_trials(lab)
    if not _extends(extension):
        return dict.fromkeys(counts, "(the plan extends no grid)")
    words = {}
    for method, (_, extra) in counts.items():
        ran = (
            f"after {_extensions(extra)} by {fmt(float(extension['factor']))}x"
            if extra
            else "after no extension"
        )
        why = (
            "the plan's most"
            if extra >= int(extension["max"])
            else "extensions follow the selected (mean) optimum only"
        )
        words[method] = f"{ran} ({why})"
    return words


def build_claims(lab: LabResults) -> list[Claim]:
    """The claims this lab's measurements can speak to, judged by its plan (primary endpoints
    Holm-adjusted together)."""
    plan, settings = _plan_of(lab), _plan_data(lab)
    endpoint = endpoint_of(lab)
    selection = lab.headline_metric
    claims = []
    compare_pairs = pair_by_inner(summarize(lab.compare)) if lab.compare else []
    sweep = summarize(lab.lr_sweep) if lab.lr_sweep else []
    if lab.tuned:
        tuned = tuned_pairs(summarize(lab.tuned))
    else:
        tie = float(settings.get("selection", {}).get("tie", 0.0))
        chosen = select_per_method(sweep, selection, tie=tie)
        tuned = tuned_pairs([best for best, group in chosen if len(group) >= 2])
    edge_rule = _edge_rule(lab)
    name = endpoint.replace("_", " ")
    if compare_pairs:
        claims.append(
            final_quality_claim(
                compare_pairs, endpoint, protocol=default_protocol(lab), key="final_default",
                title=f"final {name}, default protocol", plan=plan.claim("final_default"),
                schedule=_schedule_of(lab.compare),
            )
        )  # fmt: skip
    if lab.rescaled and compare_pairs:
        alpha = next(la.setting.alpha for _, la in compare_pairs)
        claims.append(
            final_quality_claim(
                _rescaled_pairs(lab), endpoint, key="rescaled_lr",
                title=f"final {name}, Lookahead against its inner optimizer at alpha x lr",
                plan=plan.claim("rescaled_lr"),
                paper="Lookahead improves its inner optimizer. To first order, Lookahead(alpha) "
                "moves like its inner optimizer at alpha x lr (here: is it more than that?).",
                protocol=f"Lookahead(lr) at the task's learning rate against the plain inner "
                f"optimizer at {fmt(alpha)} x that learning rate (the effective-learning-rate "
                f"control), {_training_text(lab.rescaled)}, over {_seed_span(lab.rescaled)}, "
                "paired by seed.",
                schedule=_schedule_of(lab.rescaled),
            )
        )  # fmt: skip
    for schedule, runs in _by_schedule(lab.schedule_compare).items():
        claims.append(
            final_quality_claim(
                pair_by_inner(summarize(runs)), endpoint, protocol=default_protocol(lab, runs),
                key=f"final_default_{schedule}", title=f"final {name}, default protocol, "
                f"{schedule} schedule", plan=plan.claim(f"final_default_{schedule}"),
                schedule=schedule,
            )
        )  # fmt: skip
    if tuned:
        claims.append(
            final_quality_claim(
                tuned, endpoint, protocol=tuned_protocol(lab), key="final_tuned",
                title=f"final {name}, tuned protocol", plan=plan.claim("final_tuned"),
                grid=summarize(lab.tuning) if lab.tuning else sweep, edge_rule=edge_rule,
                schedule=_schedule_of(lab.tuned),
            )
        )  # fmt: skip
    convergence = settings.get("convergence")
    if compare_pairs and convergence:
        claims.append(
            convergence_claim(
                compare_pairs, metric=convergence["metric"], target=float(convergence["target"]),
                protocol=default_protocol(lab), plan=plan.claim("convergence"),
            )
        )  # fmt: skip
    if compare_pairs:
        claims.append(
            seed_variance_claim(
                compare_pairs, metric=endpoint, protocol=default_protocol(lab),
                plan=plan.claim("seed_variance"),
            )
        )  # fmt: skip
    if sweep:
        delta = float(settings.get("robustness_delta", 0.01))
        claims.append(
            lr_robustness_claim(
                sweep, selection, delta=delta, protocol=sweep_protocol(lab, lab.lr_sweep),
                plan=plan.claim("lr_robustness"),
                # the rule extended the sweep itself where the tuned protocol had no trials of
                # its own (a sweep's plan), else only those trials
                edge_rule={} if lab.tuning else edge_rule,
            )
        )  # fmt: skip
    if lab.k_alpha:
        claims.append(
            k_alpha_claim(
                _k_alpha_settings(lab), endpoint, protocol=sweep_protocol(lab, lab.k_alpha),
                plan=plan.claim("k_alpha_robustness"),
            )
        )  # fmt: skip
    if lab.nqm:
        check = plan.claim("nqm_variance")
        claims.append(nqm_claim(lab.nqm, lab.nqm_k, lab.nqm_alpha, tolerance=check.sesoi or 0.05))
    return holm_primary(claims)


def reading(bootstrap: bool = False) -> str:
    """How to read a verdict, in a few sentences; ``bootstrap``: some cases also have the
    two-way bootstrap over seeds and test examples."""
    both = (
        " Where the plan asks for it (test accuracy), a case is also tested by a two-way "
        "bootstrap over seeds and test images, which adds the sampling error of the images "
        "that the seed-level test holds fixed: each p-value is the larger of the two tests', so "
        "a verdict counts only where both reach it; otherwise the case is inconclusive and "
        "says what the seed-level test alone gives. The bootstrap's p-values are estimated from "
        "its resamples; each comes with its Monte Carlo standard error (MC SE; Holm multiplies "
        "it with the p-value), and a verdict that moving them all 2 MC SE up or down would "
        "change says so beside it."
        if bootstrap
        else ""
    )
    return (
        "How to read a verdict: each case compares Lookahead with a baseline on the same seeds "
        "(a seed fixes the initialisation and the minibatch order) with an exact sign-flip "
        "test, and each claim declares in its plan a smallest effect of interest (SESOI). "
        "*supports*: the difference is significant at 5% and favours Lookahead; *contradicts*: "
        "significant and against it; *equivalent within ±SESOI*: both one-sided tests against "
        "the SESOI reject (any difference is smaller than matters); *inconclusive*: neither, "
        "and *cannot decide at n seeds* when no result of n seeds could reach 5% (the exact "
        "test needs 6 pairs, more after Holm). Primary claims are confirmatory: Holm-adjusted "
        "together across the report, their difference and equivalence tests as one family. "
        "Descriptive claims carry no confirmatory weight: each is tested at the unadjusted 5%, "
        "except the (k, alpha) claim, whose settings are Holm-adjusted among themselves. The "
        "intervals are unadjusted: a Holm-adjusted case can be inconclusive with an interval "
        "that excludes zero." + both
    )


def _k_alpha_settings(lab: LabResults) -> list[SettingSummary]:
    """The (k, alpha) grid's settings in the order of the settings, not of the runs (which a live
    run and a re-render of its results.json list differently): the claim's cases and the table."""
    summaries = summarize(lab.k_alpha)
    return sorted(
        summaries,
        key=lambda s: (s.setting.inner, s.setting.uses_lookahead, s.setting.k, s.setting.alpha),
    )


def verdict_rows(claims: Sequence[Claim]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the verdicts at a glance: one row per case."""
    header = ["#", "claim", "role", "case", "favours Lookahead if", "effect [95% CI]", "verdict"]
    rows = []
    for number, claim in enumerate(claims, 1):
        for case in claim.cases:
            effect = case.interval_text
            favours = case.favours_text if case.estimate else ""
            rows.append(
                [
                    str(number),
                    claim.title,
                    claim.role,
                    case.label,
                    favours,
                    effect,
                    case.verdict_text,
                ]
            )
    return header, rows


def _verdict_phrase(claim: Claim, cases: Sequence[Case], title: bool = True) -> str:
    """``title [sgd | adamw] (role)`` (without the title: ``[sgd | adamw] (role)``); beyond 3
    cases, how many of them (the table has each)."""
    if len(claim.cases) > 3:
        labels = f"{len(cases)} of {len(claim.cases)} cases"
    else:
        labels = " | ".join(
            f"{case.label} ({case.caveat_text})" if case.caveat_text else case.label
            for case in cases
        )
    return f"{claim.title} [{labels}] ({claim.role})" if title else f"[{labels}] ({claim.role})"


def _by_kind(cases: Sequence[Case]) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(verdict_kind(case.verdict), []).append(case)
    return groups


def summary_sentences(claims: Sequence[Claim], scope: str) -> list[str]:
    """3-5 plain sentences: the scope, then what was supported, contradicted, equivalent and
    undecided, each claim with its cases and role."""
    by_kind: dict[str, list[str]] = {}
    for claim in claims:
        if claim.role == "check" or claim.control:
            continue
        for kind, cases in _by_kind(claim.cases).items():
            by_kind.setdefault(kind, []).append(_verdict_phrase(claim, cases))
    sentences = [scope]
    words = {
        "supports": "Held (Lookahead better, significant at 5%)",
        "contradicts": "Did not hold (Lookahead worse, significant at 5%)",
        "equivalent": "Equivalent within the declared smallest effect of interest",
        "inconclusive": "Undecided at these seeds",
        NO_VERDICT: "No verdict, by the plan's rule",
    }
    for kind in ("supports", "contradicts", "equivalent", "inconclusive", NO_VERDICT):
        if kind in by_kind:
            sentences.append(f"{words[kind]}: {'; '.join(by_kind[kind])}.")
        elif kind not in ("inconclusive", NO_VERDICT):
            sentences.append(f"{words[kind]}: none.")
    controls = {
        "supports": "Lookahead above the control, significant at 5%",
        "contradicts": "Lookahead below the control, significant at 5%",
        "equivalent": "equivalent to the control within the smallest effect of interest",
        "inconclusive": "undecided at these seeds",
    }
    kinds: dict[str, list[str]] = {}
    for claim in (c for c in claims if c.control):
        for kind, cases in _by_kind(claim.cases).items():
            kinds.setdefault(kind, []).append(_verdict_phrase(claim, cases, title=False))
    if kinds:
        parts = [
            f"{controls[kind]}: {', '.join(kinds[kind])}" for kind in controls if kind in kinds
        ]
        sentences.append(
            "The lab's effective-learning-rate control, Lookahead against its inner optimizer at "
            f"alpha x lr (not a claim of the paper): {'; '.join(parts)}."
        )
    checks = [c for c in claims if c.role == "check"]
    for check in checks:
        sentences.append(f"{check.title[0].upper()}{check.title[1:]}: {check.cases[0].verdict}.")
    return sentences


CANNOT_TEST = (
    "The paper's scale: ImageNet, CIFAR-10/100 with ResNets over hundreds of epochs, Penn "
    "Treebank LSTMs and WMT Transformers. Here: CPU-sized models and runs (the scope line says "
    "which); an effect at this scale need not carry over, in either direction.",
    "Wall-clock claims (computation and memory cost): seconds depend on the machine, so no "
    "verdict uses them (benchmarks/ measures the optimizer's cost).",
)
ONE_SCHEDULE = (
    "The schedule as a factor: every run here uses the task's schedule (cosine for digits and "
    "charlm)."
)
TUNED_ALONE = (
    "A tuned protocol over Lookahead's own (k, alpha): the tuned protocol tunes the learning "
    "rate alone, at the paper's k=5, alpha=0.5."
)
UNTUNED = (
    "Tuning and the effective learning rate: no tuned protocol and no alpha x lr control ran in "
    "this report; every method runs at the task's learning rate, untuned for Lookahead."
)
SWEEP_TUNED = (
    "Tuning on fresh seeds and the effective learning rate: the tuned comparison selects each "
    "method's learning rate on the same seeds it compares on (the selection's luck is in the "
    "comparison), over the learning rate alone; no alpha x lr control ran in this report."
)


def _scope(lab: LabResults) -> str:
    runs = lab.compare or lab.lr_sweep or lab.k_alpha
    if not runs:
        return "Scope: the noisy quadratic model only (a theorem's implementation check)."
    spec = get_task(lab.task)
    config = runs[0].config
    return (
        f"Scope: {spec.name} ({spec.description}), {config.steps} steps of batch "
        f"{config.batch_size}, comparisons over {_seeds_text(runs)} on {_split_of(lab)}: toy "
        "scale, one CPU task, not the paper's benchmarks."
    )


def _test_split_text(lab: LabResults) -> str:
    """``; <the test split>`` where the runs measured a test split the task's split
    description leaves out (``Task.test_split_description``)."""
    spec = get_task(lab.task)
    measured = spec.test_split_description and endpoint_of(lab).startswith("test_")
    return f"; {spec.test_split_description}" if measured else ""


def _split_of(lab: LabResults) -> str:
    """Where the comparisons are reported: the held-out test split or the validation split."""
    return (
        "the held-out test split"
        if endpoint_of(lab).startswith("test_")
        else ("the validation split")
    )


def _short_lines(claims: Sequence[Claim], scope: str) -> list[str]:
    sentences = summary_sentences(claims, scope)
    return ["## In short", "", *(f"- {sentence}" for sentence in sentences), ""]


def _glance_lines(claims: Sequence[Claim]) -> list[str]:
    return ["## Verdicts at a glance", "", *markdown_table(*verdict_rows(claims)), ""]


def _claim_lines(claims: Sequence[Claim]) -> list[str]:
    lines = ["## The paper's claims, as measured here", ""]
    for number, claim in enumerate(claims, 1):
        name = "tolerance" if claim.role == "check" else "smallest effect of interest"
        margin = f"; {name} {fmt(claim.sesoi)}" if claim.sesoi else ""
        lines += [
            f"### {number}. {claim.title[0].upper()}{claim.title[1:]}",
            "",
            f"Not a claim of the paper: {claim.control}"
            if claim.control
            else f"The paper: {claim.paper}",
            "",
            f"- Role: {claim.role}{margin}.",
            f"- Protocol: {claim.protocol}",
            f"- Effect: {claim.effect}",
            "- Verdicts:",
        ]
        lines += [
            f"    - {case.label}: **{case.verdict}**"
            + (f" ({case.caveat_text})" if case.caveat_text else "")
            for case in claim.cases
        ]
        lines += ["- Measured:"]
        lines += [f"    - {sentence}" for sentence in claim.measured]
        lines.append("")
    return lines


def _plan_lines(lab: LabResults, status: tuple[str, str]) -> list[str]:
    if lab.plan is None:
        return []
    plan = lab.plan
    where = (
        f"the committed `lab/src/torch_lookahead_lab/plans/{plan.name}.json`"
        if plan.committed
        else "`plan.json` in this folder (made from the command's flags)"
    )
    offset = f" Seeds offset by {lab.seed_offset}." if lab.seed_offset else ""
    return [
        f"Plan: {where}, digest `{plan.digest}`; this report is **{status[0]}** "
        f"({status[1]}).{offset}",
        "",
    ]


def _plan_account_lines(lab: LabResults) -> list[str]:
    """The committed plan's own words on why it was written (its pilot, what changed) and how it
    was revised after earlier results: what the one-line status cannot tell."""
    data = lab.plan.data if lab.plan is not None and lab.plan.committed else {}
    parts = [(label, data.get(key)) for key, label in (("why", "Why"), ("revised", "Revised"))]
    told = [f"- {label}: {text}" for label, text in parts if isinstance(text, str) and text]
    if data and lab.plan is not None and lab.plan.lineage:
        versions = "; ".join(
            f"{e.digest} (commit {e.commit or 'not recorded'}; "
            + (f"seeds {seed_spans(sorted(e.seeds))}" if e.seeds else "no results")
            + (f", {e.results}" if e.results else "")
            + ")"
            for e in lab.plan.lineage
        )
        told.append(f"- Earlier versions of this plan, oldest first: {versions}.")
    return ["## The plan's own account", "", *told, ""] if told else []


# The examples each task's evaluation splits hold (the sampling-error bullet names them).
EVALUATED_EXAMPLES = {
    "digits": "360 {split} images",
    "charlm": "1,562 {split} windows of 64 bytes",
    "cifar10": "{size} {split} images",
}


def _sampling_error_line(lab: LabResults, claims: Sequence[Claim]) -> list[str]:
    """The sampling-error bullet, unless the test-accuracy cases have the two-way bootstrap
    over seeds and test examples (``Case.bootstrap``; the plan names the claims)."""
    cases = [c for claim in claims for c in claim.cases if c.estimate is not None]
    if not lab.task or any(c.bootstrap is not None for c in cases):
        return []
    endpoint = endpoint_of(lab)
    split = "test" if endpoint.startswith("test_") else "validation"
    size = "10,000" if split == "test" else "5,000"
    examples = EVALUATED_EXAMPLES.get(lab.task, "{split} examples").format(split=split, size=size)
    return [
        "Sampling error of the evaluation data: the seeds vary the training, not the evaluated "
        f"examples ({examples}), so the intervals speak for this split; a per-example "
        "bootstrap is not included (these runs record no per-example results)."
    ]


def _untested_factors(lab: LabResults) -> list[str]:
    """The schedule and tuning bullets of the "cannot test" list that hold for ``lab``: one
    schedule only; tuning over the learning rate alone, or no tuning."""
    items = [] if lab.schedule_compare else [ONE_SCHEDULE]
    if not lab.tuned:
        items.append(SWEEP_TUNED if lab.lr_sweep else UNTUNED)
    elif not any(r.config.uses_lookahead for r in lab.tuning):
        items.append(TUNED_ALONE)
    return items


def _cannot_test_lines(lab: LabResults, claims: Sequence[Claim] = ()) -> list[str]:
    extra = _sampling_error_line(lab, claims)
    if lab.task and not endpoint_of(lab).startswith("test_"):
        extra.append(
            f"A held-out test split: these {lab.task} runs measured training and validation "
            "data only, so their comparisons are reported on the validation split (this report "
            "chooses nothing on it, but a tuned protocol here would select and report on the "
            "same data)."
        )
    return [
        "## What this lab cannot test here",
        "",
        *(f"- {item}" for item in (*CANNOT_TEST, *_untested_factors(lab), *extra)),
        "",
    ]


# ------------------------------------------------------------------------------------ the setup


def _setup_lines(lab: LabResults) -> list[str]:
    runs = (
        lab.compare + lab.rescaled + lab.lr_sweep + lab.tuning + lab.tuned + lab.k_alpha
        + lab.schedule_compare
    )  # fmt: skip
    lines = ["## Setup", ""]
    if runs:
        spec = get_task(lab.task)
        config = runs[0].config
        lines += [
            f"- Task: **{spec.name}**, {spec.model_description}.",
            f"- Data: {spec.split_description}{_test_split_text(lab)}.",
            f"- Training: {_training_text(runs)}, evaluated every {config.eval_every} steps; "
            f"choices on {lab.headline_metric.replace('_', ' ')}, comparisons on "
            f"{endpoint_of(lab).replace('_', ' ')}. Lookahead runs are evaluated on their slow "
            'weights. A run whose loss turns non-finite (the tables\' "diverged") is scored at the '
            "untrained model's values from then on; any other value worse than the untrained "
            "model's, metric by metric and evaluation by evaluation, is scored at the untrained "
            "model's value (a run that blew up and stayed finite).",
        ]
        inners = dict.fromkeys(r.config.inner for r in runs)
        described = []
        for inner in inners:
            settings = inner_settings(inner, spec.optimizer_overrides.get(inner))
            extra = ", ".join(f"{key}={value}" for key, value in settings.items())
            described.append(
                f"{inner} at lr {fmt(spec.learning_rate(inner), 3)} "
                f"({extra or 'torch defaults otherwise'})"
            )
        lines.append(
            f"- Inner optimizers (torch.optim defaults otherwise): {'; '.join(described)}."
        )
        parts = [
            ("comparison", lab.compare),
            ("alpha x lr control", lab.rescaled),
            ("learning-rate sweep", lab.lr_sweep),
            ("tuning trials (with the sweep's plain runs)", lab.tuning),
            ("tuned comparison", lab.tuned),
            ("(k, alpha) grid", lab.k_alpha),
            ("comparison under the other schedules", lab.schedule_compare),
        ]
        counts = ", ".join(
            f"{name}: {len(part)} runs over {_seeds_text(part)}" for name, part in parts if part
        )
        lines.append(f"- Runs: {counts}.")
    if lab.nqm:
        lines.append(
            f"- Noisy quadratic model: {len(lab.nqm)} learning rates, {lab.nqm[0].chains} chains "
            "each (see its section)."
        )
    cpu_seconds = sum(r.cpu_seconds for r in dict((r.config, r) for r in runs).values())
    if lab.cached_jobs is None:
        reused = f" ({lab.jobs} jobs; how many it read back from its cache is not recorded)"
    elif lab.cached_jobs:
        reused = f", which read {lab.cached_jobs} of its {lab.jobs} jobs back from its cache"
    else:
        reused = f" ({lab.jobs} jobs, none from a cache)"
    lines.append(
        f"- Time: {lab.seconds:.0f} s of wall time for the command{reused}; the training "
        f"runs took {fmt(cpu_seconds, 3)} s of CPU time when they were computed, summed over "
        "runs."
    )
    lines.append("")
    return lines


# ----------------------------------------------------------------------------------- the tables


def summary_rows(
    summaries: Sequence[SettingSummary], headline: str
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the final-metrics table (shared by report.md and the console): mean ±
    standard deviation over seeds, the mean alone for one seed."""
    tests = [
        m for m in ("test_accuracy", "test_bpc")
        if summaries and all(m in s.final for s in summaries)
    ]  # fmt: skip
    header = [
        "optimizer", "lr", "k", "alpha", "seeds", "train loss", "val loss",
        headline.replace("_", " "), "mean train loss", "diverged",
        *(m.replace("_", " ") for m in tests),
    ]  # fmt: skip
    rows = []
    for s in summaries:
        rows.append(
            [
                s.method,
                fmt(s.setting.lr, 3),
                str(s.setting.k) if s.setting.k is not None else "",
                fmt(s.setting.alpha, 2) if s.setting.alpha is not None else "",
                str(len(s.seeds)),
                *(_mean_std(s.final[m]) for m in ("train_loss", "val_loss", headline)),
                _mean_std(s.train_loss_area),
                f"{s.diverged}/{len(s.seeds)}",
                *(_mean_std(s.final[m]) for m in tests),
            ]
        )
    return header, rows


def _mean_or_nan(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _mean_std(value: tuple[float, float]) -> str:
    mean, std = value
    if math.isnan(std):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std, 2)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def nqm_rows(points: Sequence[NQMPoint]) -> tuple[list[str], list[list[str]]]:
    header = [
        "lr", "SGD closed form", "SGD simulated", "Lookahead closed form", "Lookahead simulated",
        "Lookahead - SGD, 95% CI", "largest error of the excess loss",
    ]  # fmt: skip
    rows = [
        [
            fmt(p.lr, 3),
            fmt(p.sgd_theory),
            fmt(p.sgd_simulated),
            fmt(p.lookahead_theory),
            fmt(p.lookahead_simulated),
            f"{fmt(p.difference_low, 3)} to {fmt(p.difference_high, 3)}",
            f"{fmt(100 * max(p.relative_errors()), 2)}%",
        ]
        for p in points
    ]
    return header, rows


# ------------------------------------------------------------------------------------ the files


def _write_runs_csv(path: Path, parts: Sequence[tuple[str, RunResult]]) -> None:
    metrics = sorted({m for _, r in parts for m in r.history})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["part", "task", "method", "inner", "lr", "schedule", "k", "alpha", "seed", "steps"]
            + [f"final_{m}" for m in metrics]
            + ["mean_train_loss", "diverged_at"]
        )
        for part, r in parts:
            c = r.config
            writer.writerow(
                [part, c.task, c.method, c.inner, c.lr, c.schedule, c.k, c.alpha, c.seed, c.steps]
                + [final_value(r, m) for m in metrics]
                + [area_under_curve(r), r.diverged_at]
            )


def _write_curves_csv(path: Path, results: Sequence[RunResult]) -> None:
    metrics = sorted({m for r in results for m in r.history})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "inner", "lr", "k", "alpha", "seed", "step", *metrics])
        for r in results:
            c = r.config
            for index, step in enumerate(r.steps):
                values = [r.history[m][index] if m in r.history else None for m in metrics]
                writer.writerow([c.method, c.inner, c.lr, c.k, c.alpha, c.seed, step, *values])


def _summary_json(summary: SettingSummary) -> dict[str, Any]:
    return {
        "setting": {k: v for k, v in summary.setting.to_dict().items() if k != "seed"},
        "method": summary.method,
        "seeds": list(summary.seeds),
        "final": {m: {"mean": v[0], "std": v[1]} for m, v in summary.final.items()},
        "mean_train_loss": {"mean": summary.train_loss_area[0], "std": summary.train_loss_area[1]},
        "diverged": summary.diverged,
    }


_PARTS = ("compare", "rescaled", "lr_sweep", "tuning", "tuned", "k_alpha", "schedule_compare")


def _parts(lab: LabResults) -> list[tuple[str, RunResult]]:
    return [(name, r) for name in _PARTS for r in getattr(lab, name)]


def results_json(
    lab: LabResults, claims: Sequence[Claim], status: tuple[str, str] = ("exploratory", "")
) -> dict[str, Any]:
    """Everything the report states, with what produced it: the package version and digests
    of its sources (all of them, and those that compute the numbers), torch, Python and the CPU
    kernels; the plan and its digest, and whether the report is confirmatory; every claim;
    every summary; every run's whole history."""
    plan = (
        {**lab.plan.json(), "status_of_report": status[0], "why_exploratory": status[1]}
        if lab.plan
        else None
    )
    payload: dict[str, Any] = {
        "title": lab.title,
        "command": lab.command,
        "provenance": record(lab.seconds, lab.started_at, lab.finished_at),
        "jobs": lab.jobs,
        "cached_jobs": lab.cached_jobs,
        "plan": plan,
        "seed_offset": lab.seed_offset,
        "task": lab.task,
        "headline_metric": lab.headline_metric,
        "higher_is_better": lab.higher_is_better,
        "quick": lab.quick,
        "claims": [claim_json(c) for c in claims],
    }
    for name in _PARTS:
        part = getattr(lab, name)
        if part:
            payload[name] = [_summary_json(s) for s in summarize(part)]
    if lab.nqm:
        payload["nqm"] = {
            "k": lab.nqm_k,
            "alpha": lab.nqm_alpha,
            "points": [p.to_json() for p in lab.nqm],
        }
    payload["schedules"] = {
        name: sorted({r.config.schedule for r in getattr(lab, name)})
        for name in _PARTS
        if getattr(lab, name)
    }
    seen: dict[RunConfig, dict[str, Any]] = {}
    runs = []
    first = _first_seed(lab)
    for part, result in _parts(lab):
        if result.config in seen:  # recorded once, under its first part; "also" the others
            also = seen[result.config].setdefault("also", [])
            if part != seen[result.config]["part"] and part not in also:
                also.append(part)
            continue
        entry = result.to_json()
        entry["reference"] = is_reference(entry["config"], result.diverged_at, first)
        seen[result.config] = {"part": part, **entry}
        runs.append(seen[result.config])
    payload["runs"] = runs
    return payload


# The docs copy a report up to this line: what follows is in the report folder only.
DETAILS_MARKER = "<!-- details -->"


def write_report(out_dir: Path, lab: LabResults | StabilityResults | ConfirmatoryResults) -> Path:
    """Write the report folder of what an experiment measured into ``out_dir`` and return the
    path of report.md."""
    if isinstance(lab, StabilityResults):
        return _write_stability_report(out_dir, lab)
    if isinstance(lab, ConfirmatoryResults):
        return _write_confirmatory_report(out_dir, lab)
    return _write_lab_report(out_dir, lab)


def _produced_by(command: str, provenance: dict[str, Any]) -> str:
    return (
        f"Produced by `{command}` with torch-lookahead {provenance['version']} (sources "
        f"{provenance['source_digest']}), torch {provenance['torch']} on Python "
        f"{provenance['python']} ({provenance['cpu_capability']} CPU kernels)."
    )


def _figure_title(lab: LabResults, runs: Sequence[RunResult]) -> str:
    """``digits, 5 seeds`` (and ``, quick run: no evidence``)."""
    title = f"{lab.task}, {_seeds_text(runs)}"
    return title + (", quick run: no evidence" if lab.quick else "")


def _quick_lines(quick: bool) -> list[str]:
    return [f"> {QUICK_REPORT_NOTICE}", ""] if quick else []


def _first_seed(lab: LabResults) -> int:
    """The report's first seed: its reference runs' (``reproduce.is_reference``)."""
    return min((r.config.seed for _, r in _parts(lab)), default=0)


_RULE_TWO = (
    "agrees with the committed run: the same evaluation steps and divergence step, every value "
    f"within {EARLY_TOLERANCE:g} relative up to step {HORIZON_STEPS} or its first evaluation "
    f"after step 0, whichever is later, and within {LATE_TOLERANCE:g} after it"
)


def _reproducing_lines(first_seed: int) -> list[str]:
    return [
        "## Reproducing it",
        "",
        "The command above reproduces this report when every case gets the same verdict and "
        f"each run that results.json marks `reference` (seed {first_seed} at the task's "
        f"learning rate, plain and in Lookahead(k=5, alpha=0.5)) {_RULE_TWO}; on the same CPU "
        "model, CPU kernels and torch, every number is the same bit for bit. Other runs may "
        "differ between CPUs as much as between seeds (training amplifies rounding); "
        "`--against` with this folder says which.",
        "",
    ]


def _write_lab_report(out_dir: Path, lab: LabResults) -> Path:
    from torch_lookahead_lab import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    claims = build_claims(lab)
    status = ("exploratory", "no plan")
    if lab.plan is not None:
        earlier_path = out_dir / "results.json"
        earlier = json.loads(earlier_path.read_text()) if earlier_path.is_file() else None
        status = plan_status(lab.plan, earlier, {r.config.seed for _, r in _parts(lab)})
        (out_dir / "plan.json").write_text(lab.plan.text)
    payload = results_json(lab, claims, status)
    provenance = payload["provenance"]
    lines = [
        f"# {lab.title}",
        "",
        *_quick_lines(lab.quick),
        _produced_by(lab.command, provenance),
        "",
        *_plan_lines(lab, status),
    ]
    if claims:
        lines += _short_lines(claims, _scope(lab))
    # The docs copy the report up to here (their page must stay short); the table follows.
    lines += [DETAILS_MARKER, ""]
    if claims:
        lines += _glance_lines(claims)
    lines += _plan_account_lines(lab)
    lines += _cannot_test_lines(lab, claims)
    if claims:
        lines += [
            reading(any(c.bootstrap is not None for claim in claims for c in claim.cases)),
            "",
            "Each claim is described below with its protocol, the effect measured and every case.",
            "",
        ]
    lines += _setup_lines(lab)
    if claims:
        lines += _claim_lines(claims)
    if lab.compare:
        summaries = summarize(lab.compare + lab.rescaled + lab.tuned)
        plots.plot_loss_curves(
            lab.compare, out_dir / "loss_curves.png", title=_figure_title(lab, lab.compare)
        )
        lines += [
            f"## Final metrics ({lab.task}, the comparisons, mean ± standard deviation over seeds)",
            "",
            "`mean train loss` is the mean training loss over the run (the area under its curve "
            "divided by the steps): lower means faster convergence.",
            "",
            *markdown_table(*summary_rows(summaries, lab.headline_metric)),
            "",
            "## Loss curves",
            "",
            "Mean over seeds; the band spans the lowest to the highest seed.",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
    if lab.lr_sweep:
        summaries = summarize(lab.lr_sweep)
        plots.plot_lr_robustness(
            summaries,
            lab.headline_metric,
            out_dir / "lr_robustness.png",
            title=_figure_title(lab, lab.lr_sweep),
        )
        lines += [
            "## Learning-rate robustness",
            "",
            "Mean over seeds, the bars span the lowest to the highest seed; the dotted line marks "
            "the task's learning rate.",
            "",
            "![learning-rate robustness](lr_robustness.png)",
            "",
            *markdown_table(*summary_rows(summaries, lab.headline_metric)),
            "",
        ]
    if lab.k_alpha:
        summaries = _k_alpha_settings(lab)
        lines += ["## Sensitivity to k and alpha", ""]
        for inner in dict.fromkeys(s.setting.inner for s in summaries):
            name = f"k_alpha_{inner}.png"
            plots.plot_k_alpha(
                [s for s in summaries if s.setting.inner == inner],
                lab.headline_metric,
                out_dir / name,
                lab.higher_is_better,
                title=_figure_title(lab, lab.k_alpha),
            )
            lines += [f"![k and alpha heat map, {inner}]({name})", ""]
        lines += [*markdown_table(*summary_rows(summaries, lab.headline_metric)), ""]
    if lab.nqm:
        nqm_title = f"noisy quadratic model, {lab.nqm[0].chains} chains" + (
            ", quick run: no evidence" if lab.quick else ""
        )
        plots.plot_nqm(lab.nqm, out_dir / "nqm.png", lab.nqm_k, lab.nqm_alpha, title=nqm_title)
        lines += [
            "## Noisy quadratic model",
            "",
            "Per coordinate the loss is `1/2 a_i (x_i - c_i)^2` with fresh noise "
            "`c_i ~ N(0, s_i)` at every step; the curvatures `a_i` are log-spaced from 1 to 0.1 "
            "over 10 coordinates and `s_i = a_i`. Steady-state expected loss of SGD and "
            f"Lookahead(SGD, k={lab.nqm_k}, alpha={lab.nqm_alpha}): the closed forms of the "
            "paper's Proposition 2 against a simulation of the real optimizers.",
            "",
            "![noisy quadratic model](nqm.png)",
            "",
            *markdown_table(*nqm_rows(lab.nqm)),
            "",
        ]
    parts = _parts(lab)
    if parts:
        _write_runs_csv(out_dir / "runs.csv", parts)
        _write_curves_csv(out_dir / "curves.csv", lab.compare or lab.lr_sweep)
    lines += [
        "## Files",
        "",
        "`results.json` (the provenance, every claim with its intervals, every summary and every "
        "run's history)"
        + (
            ", `runs.csv` (one row per run), `curves.csv` (every evaluation of the comparison "
            "runs, or of the learning-rate sweep)"
            if parts
            else ""
        )
        + " and the figures.",
        "",
        *_reproducing_lines(_first_seed(lab)),
    ]
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


# ------------------------------------------------------------------------ the stability report


def _stability_grid_rows(lab: StabilityResults) -> tuple[list[str], list[list[str]]]:
    plan = lab.plan
    threshold = lab.threshold
    header = ["warm-up", "lr"]
    for lookahead in (False, True):
        method = method_label(plan, lookahead)
        header += [f"{method}: final {plan.metric.replace('_', ' ')}", f"{method}: trained"]
    rows = []
    for warmup in plan.warmups:
        for lr in plan.lrs:
            row = [str(warmup), fmt(lr, 3)]
            for lookahead in (False, True):
                runs = lab.select(lookahead=lookahead, warmup=warmup, lr=lr)
                values = [final_value(r, plan.metric) for r in runs]
                spread = (
                    f" ± {fmt(statistics.stdev(values), 2)}" if len(values) > 1 else ""
                )  # sample standard deviation over seeds
                trained = sum(trains(r, plan.metric, threshold) for r in runs)
                row += [f"{fmt(_mean_or_nan(values))}{spread}", f"{trained}/{len(runs)}"]
            rows.append(row)
    return header, rows


def _first_stability_seed(lab: StabilityResults) -> int:
    return min((r.config.seed for r in lab.runs), default=0)


def stability_payload(lab: StabilityResults, claims: Sequence[Claim]) -> dict[str, Any]:
    """Everything the stability report states, with its provenance and every run's history
    (each marked ``reference`` or not, see ``reproduce``)."""
    runs = []
    first = _first_stability_seed(lab)
    for result in lab.runs:
        entry = result.to_json()
        entry["reference"] = is_reference(entry["config"], result.diverged_at, first)
        runs.append(entry)
    return {
        "title": "torch-lookahead stability",
        "command": lab.command,
        "provenance": record(lab.seconds, lab.started_at, lab.finished_at),
        "task": lab.plan.task,
        "headline_metric": lab.plan.metric,
        "higher_is_better": False,
        "quick": lab.quick,
        "plan": dataclasses.asdict(lab.plan),
        "threshold": lab.threshold,
        "largest_log10_lr": {
            f"{'lookahead' if lookahead else 'plain'}/warmup{warmup}": dict(
                zip(lab.seeds(), lab.largest(lookahead=lookahead, warmup=warmup), strict=True)
            )
            for warmup in lab.plan.warmups
            for lookahead in (False, True)
        },
        "claims": [claim_json(c) for c in claims],
        "runs": runs,
    }


def _write_stability_report(out_dir: Path, lab: StabilityResults) -> Path:
    """Write report.md, results.json and stability.png into ``out_dir``; return report.md."""
    from torch_lookahead_lab import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    plan = lab.plan
    claims = stability_claims(lab)
    spec = get_task(plan.task)
    payload = stability_payload(lab, claims)
    provenance = payload["provenance"]
    stability_title = f"{plan.task}, {len(lab.seeds())} seed" + (
        "s" if len(lab.seeds()) != 1 else ""
    )
    if plan.quick:
        stability_title += ", quick run: no evidence"
    plots.plot_stability(lab, out_dir / "stability.png", title=stability_title)
    cpu = math.fsum(r.cpu_seconds for r in lab.runs)
    lines = [
        f"# {lab.title}",
        "",
        *_quick_lines(lab.quick),
        _produced_by(lab.command, provenance),
        "",
        "**This is the pilot** of the stability study: run before any plan was written, its "
        "seeds were raised from 3 to 6 after a first look, and its training rule (a margin of "
        f"{fmt(plan.margin, 3)} above the best run) and its smallest effects of interest were "
        "chosen after its data were seen. It is exploratory: it suggests what a confirmatory "
        "study should test, and it decides nothing.",
        "",
        *_short_lines(claims, _stability_scope(lab)),
        *_glance_lines(claims),
        "## What this pilot cannot test",
        "",
        "- Instability that happens and recovers: the endpoint is the final validation bits per "
        "character of 4 evaluations, not the per-step training loss.",
        "- Whether Lookahead widens the range or only shifts it: without an Adam-at-alpha x lr "
        "arm, a larger edge fits Lookahead moving like Adam at about alpha x lr.",
        "- The variant that needs warm-up most: only the pre-LN Transformer was run.",
        "",
        "## Setup",
        "",
        f"- The paper: {PAPER_STABILITY}",
        f"- Task: **{plan.task}**, {spec.model_description}.",
        f"- Data: {spec.split_description}.",
        f"- Protocol: {protocol_text(lab)}",
        f"- Time: {lab.seconds:.0f} s of wall time for the command ({lab.jobs} runs, "
        f"{lab.cached_jobs} from a cache); the runs took {cpu:.0f} s of CPU time when they were "
        "computed, summed over runs.",
        "",
        "![final validation bits per character against the learning rate](stability.png)",
        "",
        "Points: the mean over seeds; bars: from the lowest to the highest seed; dashed line: the "
        "pilot's training threshold (a run trains at or below it).",
        "",
        "## Final results per learning rate",
        "",
        f"Mean ± standard deviation over seeds of the final {plan.metric.replace('_', ' ')} (a "
        "run that produced a non-finite loss counts as the untrained model), and how many seeds "
        "trained.",
        "",
        *markdown_table(*_stability_grid_rows(lab)),
        "",
        reading(),
        "",
    ]
    lines += _claim_lines(claims)
    lines += _reproducing_lines(_first_stability_seed(lab))
    (out_dir / "report.md").write_text("\n".join(lines))
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1))
    return out_dir / "report.md"


def _confirmatory_rows(lab: ConfirmatoryResults) -> tuple[list[str], list[list[str]]]:
    """Per model, warm-up and arm: each seed's largest stable learning rate, their geometric
    mean, and how many runs the edge search computed."""
    plan = lab.plan
    header = ["model", "warm-up", "arm", "largest stable lr per seed", "geometric mean", "runs"]
    rows = []
    for task in plan.tasks:
        for warmup in plan.warmups:
            for arm, _, _ in ARMS:
                edges = lab.edges(task, arm, warmup)
                runs = sum(len(lab.edge_runs(task, arm, warmup, s)) for s in plan.seeds)
                none = largest_on_grid([], plan.lrs)
                per_seed = ", ".join("none" if edge == none else fmt(10**edge, 3) for edge in edges)
                mean = 10 ** (math.fsum(edges) / len(edges))
                rows.append(
                    [
                        _variant(task),
                        str(warmup),
                        arm_label(arm, plan),
                        per_seed,
                        fmt(mean, 3),
                        str(runs),
                    ]
                )
    return header, rows


def _variant(task: str) -> str:
    return "post-LN" if task.endswith("postln") else "pre-LN"


CONFIRMATORY_CANNOT_TEST = (
    "The paper's scale: its stability claim rests on ImageNet, CIFAR and WMT-scale training; "
    "here two 2-layer byte-level Transformers train for 300 steps on a CPU. An edge at this "
    "scale need not carry over, in either direction.",
    "Quality at the learning rates that are stable: the endpoint is where training stops being "
    "stable, not how well it trains there (the pilot and the demo report final losses).",
    "The lower end of the learning-rate range, and so its width: the largest stable learning "
    "rate is one edge. The alpha x lr arm tests whether that edge moves more than a rescaled "
    "learning rate would move it, not whether the whole range is wider.",
    "Other inner optimizers, other (k, alpha), other schedules and other instability rules: "
    "the plan fixes Adam, k=5, alpha=0.5, cosine decay after a linear warm-up, and one rule "
    "(the per-step loss above the untrained model's); loss spikes that stay below it count as "
    "stable.",
    "Differences smaller than the grid: the grid's learning rates are a factor apart, so the "
    "edge moves in whole steps and the smallest effect of interest is half a step.",
)


def _confirmatory_grid_notes(lab: ConfirmatoryResults) -> list[str]:
    """What the grid and the instability rule leave open, counted from the runs: the grace
    period, monotonicity in the learning rate, and edges cut off at the grid's top."""
    plan = lab.plan
    grace = plan.grace_steps
    first, called = first_checks(lab)
    checked = " and ".join(str(w + grace) for w in plan.warmups)
    flips = [(w, grace_flips(lab, w, 0), grace_flips(lab, w, grace // 2)) for w in plan.warmups]
    flip_text = "; ".join(
        f"warm-up {w}: {none[0]} of {none[1]}, {half[0]} with a grace of {grace // 2} steps"
        for w, none, half in flips
    )
    hinge = [str(w) for w, none, _ in flips if 2 * none[0] > none[1]]
    synced = all((w + grace) % plan.k == 0 for w in plan.warmups)
    lines = [
        f"A rule that does not hinge on its grace period: {first} of the {called} runs the rule "
        f"calls unstable are called so at the first step it checks ({grace} steps after the "
        f"warm-up: step {checked}), and without grace steps some stable runs that set an edge "
        f"would be unstable ({flip_text})"
        + (
            f": the edges, and so the verdicts, of the cells with warm-up {' and '.join(hinge)} "
            f"rest on the plan's {grace} grace steps."
            if hinge
            else "."
        )
        + (
            f" The first checked step is a multiple of k={plan.k}: Lookahead's loss there is "
            "measured right after a synchronisation, at its slow weights."
            if synced
            else ""
        ),
        f"A threshold in the learning rate: stability is not monotone in it; at {not_monotone(lab)} "
        f"(seed, model and warm-up) cells, {plan.inner} alone (run at lr and at {plan.alpha:g} x "
        "lr, so at interleaved learning rates) is unstable at one learning rate and stable at "
        "the next larger one. The endpoint is the plan's largest stable learning rate on the "
        "grid, as defined, not a rate below which every run is stable.",
    ]
    censored = censored_at_top(lab)
    if censored:
        cells = ", ".join(
            f"{_variant(task)} warm-up {warmup}, {arm_label(arm, plan)}: {count}"
            for (task, warmup, arm), count in censored.items()
        )
        lines.append(
            f"Edges above the grid: {sum(censored.values())} seeds' edges are the grid's largest "
            f"learning rate, {fmt(plan.lrs[-1], 3)} ({cells}); they are cut off at the grid's "
            "top and may lie higher, so differences against a baseline arm cut off there are "
            "understated where they are negative (and against Lookahead, where positive)."
        )
    return lines


def _confirmatory_family_lines(claims: Sequence[Claim]) -> list[str]:
    """The primary claims' Holm family, and what a family of their difference tests alone
    would give: a disclosure, the verdicts stay the plan's."""
    primary = [case for claim in claims if claim.role == "primary" for case in claim.cases]
    estimates = [case.estimate for case in primary if case.estimate is not None]
    if len(estimates) != len(primary) or len(primary) < 2:
        return []
    alone = holm([e.p_value for e in estimates])
    alone_equal = holm([e.p_equivalence for e in estimates])
    changed = [
        case.label
        for case, p, q in zip(primary, alone, alone_equal, strict=True)
        if case.estimate is not None
        and verdict_kind(case.verdict)
        != verdict_kind(
            verdict_of(case.estimate, case.favours, p_value=p, p_equivalence=q, family=len(primary))
        )
    ]
    return [
        f"Multiplicity, disclosed: the Holm family of the primary claims is {primary[0].family} "
        f"tests, the difference and the equivalence test of each of the {len(primary)} primary "
        "endpoints. The plan file names no family: the lab's code (`holm_primary`) sets it, and "
        "that code changed after the plan was committed. With a family of the "
        f"{len(primary)} difference tests alone the adjusted p-values would be "
        f"{' and '.join(f'{p:.3g}' for p in alone)}; "
        + (
            "no verdict changes."
            if not changed
            else f"the verdict of {', '.join(changed)} would change."
        ),
        "",
    ]


def _confirmatory_scope(lab: ConfirmatoryResults) -> str:
    plan = lab.plan
    config = lab.runs[0].config if lab.runs else None
    steps = f"{config.steps} steps of batch {config.batch_size}, " if config else ""
    return (
        f"Scope: two 2-layer byte-level causal Transformers, pre-LN and post-LN "
        f"({get_task(plan.tasks[0]).description.split(' LM ')[1]}), {steps}"
        f"{len(plan.seeds)} fresh seeds, {len(plan.lrs)} learning rates from "
        f"{fmt(plan.lrs[0], 3)} to {fmt(plan.lrs[-1], 3)}: toy scale, one CPU task; the "
        "confirmatory study of a committed plan."
    )


def _write_confirmatory_report(out_dir: Path, lab: ConfirmatoryResults) -> Path:
    """Write report.md, results.json, plan.json and stability.png of the confirmatory
    stability study."""
    from torch_lookahead_lab import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    plan = lab.plan
    claims = confirmatory_claims(lab)
    earlier_path = out_dir / "results.json"
    earlier = json.loads(earlier_path.read_text()) if earlier_path.is_file() else None
    status = plan_status(plan.plan, earlier, {r.config.seed for r in lab.runs})
    (out_dir / "plan.json").write_text(plan.plan.text)
    provenance = record(lab.seconds, lab.started_at, lab.finished_at)
    title = f"{len(plan.seeds)} fresh seeds" + (", quick run: no evidence" if lab.quick else "")
    plots.plot_confirmatory(lab, out_dir / "stability.png", title=title)
    reference = reference_config(plan)
    whole = len(confirmatory_configs(plan))
    cpu = math.fsum(r.cpu_seconds for r in lab.runs)
    step = plan.lrs[1] / plan.lrs[0]
    rule = plan_settings(plan.plan, plan.quick)["instability"]["rule"]
    lines = [
        f"# {lab.title}",
        "",
        *_quick_lines(lab.quick),
        _produced_by(lab.command, provenance),
        "",
        f"Plan: the committed `lab/src/torch_lookahead_lab/plans/{plan.plan.name}.json`, digest "
        f"`{plan.plan.digest}`; this report is **{status[0]}** ({status[1]}).",
        "",
        *_short_lines(claims, _confirmatory_scope(lab)),
        *_glance_lines(claims),
        "## The pilot",
        "",
        "The pilot, [reports/stability-charlm](../stability-charlm/report.md), is exploratory "
        "and is reported there as such, not here. The plan's reason for this study, as "
        f"committed: {plan.plan.data['why']}",
        "",
        "## What this lab cannot test here",
        "",
        *(f"- {item}" for item in (*CONFIRMATORY_CANNOT_TEST, *_confirmatory_grid_notes(lab))),
        "",
        "## Setup",
        "",
        f"- The paper: {PAPER_STABILITY}",
        *(
            f"- Model, {_variant(task)}: **{task}**, {get_task(task).model_description}."
            for task in plan.tasks
        ),
        f"- Data: {get_task(plan.tasks[0]).split_description}.",
        f"- Arms: {plan.inner} at lr; Lookahead({plan.inner}, k={plan.k}, alpha={plan.alpha}) "
        f"at lr; {plan.inner} at {plan.alpha:g} x lr, the effective-learning-rate control "
        "(to first order Lookahead moves like its inner optimizer at about alpha x lr), whose "
        "edge is read on the same grid of lr. Cosine decay to zero after a linear warm-up of "
        f"{' and '.join(str(w) for w in plan.warmups)} steps; seeds "
        f"{plan.seeds[0]}-{plan.seeds[-1]}, paired across arms (a seed fixes the "
        "initialisation and the minibatch order).",
        f"- Grid: {len(plan.lrs)} learning rates, {', '.join(fmt(lr, 3) for lr in plan.lrs)} "
        f"(a factor of {fmt(step, 3)} apart).",
        f"- Instability rule (declared in the plan): {rule}.",
        f"- Runs: {len(lab.runs)} of the {whole} of the whole grid. Two savings change no endpoint (tested in "
        "tests/lab/test_confirmatory.py): a run ends at the step where the rule first calls it "
        "unstable, since no later step can make it stable again; and each seed's learning "
        "rates are run from the largest down to the first stable one, since the endpoint is "
        "the largest stable learning rate whatever the smaller ones would give.",
        f"- Time: the runs took {cpu:.0f} s of CPU time when they were computed, summed over "
        f"runs; the command took {lab.seconds:.0f} s of wall time"
        + (f", reading {lab.cached_jobs} runs back from its cache." if lab.cached_jobs else "."),
        "",
        "![each seed's largest stable learning rate per arm](stability.png)",
        "",
        "Dots: each seed's largest stable learning rate (seeds that tie are stacked); diamond: "
        "the geometric mean over seeds; bar: from the lowest to the highest seed. The x axis is "
        "the grid on a log scale; *none*: no learning rate of the grid was stable.",
        "",
        "## Largest stable learning rate per seed",
        "",
        *markdown_table(*_confirmatory_rows(lab)),
        "",
        reading(),
        "",
        *_confirmatory_family_lines(claims),
        *_claim_lines(claims),
        "## Reproducing it",
        "",
        "The command above reproduces this report when every case gets the same verdict and "
        "the run that results.json marks `reference` (Adam on the pre-LN model at the grid's "
        f"smallest learning rate {fmt(reference.lr, 3)}, warm-up {reference.warmup_steps}, "
        f"seed {reference.seed}, far from the edge) {_RULE_TWO}, its per-step losses included; "
        "on the same CPU model, CPU kernels and torch, every number is the same bit for bit. Runs near a seed's edge amplify rounding, so on "
        "another CPU a seed's edge may move by a grid step; `--against` with this folder says "
        "which runs differ.",
        "",
    ]
    runs = [{**r.to_json(), "reference": r.config == reference} for r in lab.runs]
    edges = {
        f"{task}/warm-up {warmup}/{arm}": lab.edges(task, arm, warmup)
        for task in plan.tasks
        for warmup in plan.warmups
        for arm, _, _ in ARMS
    }
    payload = {
        "title": lab.title,
        "command": lab.command,
        "provenance": provenance,
        "plan": {**plan.plan.json(), "status_of_report": status[0], "why_exploratory": status[1]},
        "quick": lab.quick,
        "claims": [claim_json(c) for c in claims],
        "log10_largest_stable_lr": edges,
        "runs": runs,
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1))
    (out_dir / "report.md").write_text("\n".join(lines))
    return out_dir / "report.md"


def _stability_scope(lab: StabilityResults) -> str:
    spec = get_task(lab.plan.task)
    config = lab.runs[0].config if lab.runs else None
    steps = f"{config.steps} steps, " if config else ""
    return (
        f"Scope: {spec.name} ({spec.description}), {steps}{len(lab.seeds())} seeds, "
        f"{len(lab.plan.lrs)} learning rates: toy scale, one CPU task; a pilot."
    )


def stability_headline_rows(lab: StabilityResults) -> list[list[str]]:
    """One row per case of the learning-rate-range claim: label, effect [CI], verdict."""
    edge = stability_claims(lab)[0]
    return [
        [case.label, short_interval(case.estimate) if case.estimate else "", case.verdict]
        for case in edge.cases
    ]


# ------------------------------------------------------------------------------ re-rendering


def _recorded_plan(recorded: dict[str, Any], report_dir: Path) -> Plan:
    """The plan a results.json records: the committed plan of that name when its digest is the
    recorded one; else the folder's plan.json when it has the recorded digest (committed when
    it is a version of the committed plan's lineage); else the plan made from the command's
    flags."""
    try:
        committed = load_plan(recorded["name"])
    except ValueError:
        committed = None
    if committed is not None and committed.digest == recorded["digest"]:
        return committed
    written = report_dir / "plan.json"
    text = written.read_text() if written.is_file() else ""
    if text and plan_digest(text) == recorded["digest"]:
        earlier = committed is not None and any(
            entry.digest == recorded["digest"] for entry in committed.lineage
        )
        return Plan(recorded["name"], text, json.loads(text), committed=earlier)
    plan = plan_from_mapping(recorded["name"], recorded["plan"])
    if plan.digest != recorded["digest"]:
        raise ValueError(f"the recorded plan {recorded['name']!r} no longer has its digest")
    return plan


def _recorded_parts(payload: dict[str, Any], runs: list[RunResult]) -> dict[str, Any]:
    """The runs of a demo or sweep by part, and the noisy quadratic model's points."""
    parts: dict[str, Any] = {
        part: [
            r
            for r, entry in zip(runs, payload["runs"], strict=True)
            if part == entry["part"] or part in entry.get("also", ())
        ]
        for part in _PARTS
    }
    if not any("also" in entry for entry in payload["runs"]):
        # Written before shared runs were marked: the grid's runs that the comparison made
        # are the comparison's.
        grid = {(r.config.inner, r.config.lr) for r in parts["k_alpha"]}
        shared = [r for r in parts["compare"] if (r.config.inner, r.config.lr) in grid]
        parts["k_alpha"] = shared + parts["k_alpha"]
    nqm = payload.get("nqm")
    if nqm:
        parts["nqm"] = [NQMPoint.from_json(point) for point in nqm["points"]]
        parts["nqm_k"], parts["nqm_alpha"] = nqm["k"], nqm["alpha"]
    return parts


def recorded_lab(payload: dict[str, Any], plan: Plan) -> LabResults:
    """The runs of the demo or sweep whose results.json is ``payload``, judged by ``plan``
    (the one it records, ``rerender``, or another: a check of its verdicts)."""
    runs = [RunResult.from_json(entry) for entry in payload["runs"]]
    return LabResults(
        payload["title"], payload["command"], payload["task"], payload["headline_metric"],
        payload["higher_is_better"], jobs=payload.get("jobs", len(runs)),
        seconds=float(payload["provenance"].get("wall_seconds", math.nan)),
        cached_jobs=payload.get("cached_jobs"), quick=payload["quick"], plan=plan,
        seed_offset=payload["seed_offset"], **_recorded_parts(payload, runs),
    )  # fmt: skip


def rerender(report_dir: Path) -> Path:
    """Write the report of ``report_dir`` again from the runs its results.json records, with
    today's claims, tests and verdicts (the runs are not recomputed: the reproduction test
    reruns their reference run with today's code). The report says so. For a stability pilot or
    a ``compare`` report."""
    payload = json.loads((report_dir / "results.json").read_text())
    runs = [RunResult.from_json(entry) for entry in payload["runs"]]
    old = payload["provenance"]
    seconds = float(old.get("wall_seconds", math.nan))
    lab: LabResults | StabilityResults
    if payload["title"].startswith("torch-lookahead stability"):
        fields = dict(payload["plan"])
        fields["lrs"] = tuple(fields["lrs"])
        fields["warmups"] = tuple(fields["warmups"])
        lab = StabilityResults(
            StabilityPlan(**fields), payload["command"], runs, seconds, len(runs)
        )
    elif payload["title"].startswith("torch-lookahead compare") and {
        entry.get("part") for entry in payload["runs"]
    } == {"compare"}:
        first = runs[0].config
        inners = list(dict.fromkeys(r.config.inner for r in runs))
        seeds = sorted({r.config.seed for r in runs})
        spec = get_task(first.task)
        experiment = compare_experiment(
            first.task, inners, len(seeds), spec.full, k=next(r.config.k for r in runs if r.config.k),
            alpha=next(r.config.alpha for r in runs if r.config.alpha), seed_offset=seeds[0],
        )  # fmt: skip
        # The plan results.json records (a committed one stays committed), else the plan
        # of the command's flags (reports written before plans were recorded).
        recorded = payload.get("plan")
        lab = LabResults(
            payload["title"], payload["command"], first.task, payload["headline_metric"],
            payload["higher_is_better"], compare=runs, seconds=seconds,
            jobs=payload.get("jobs", len(runs)), cached_jobs=payload.get("cached_jobs"),
            plan=_recorded_plan(recorded, report_dir) if recorded else experiment.plan,
            seed_offset=payload.get("seed_offset", 0),
        )  # fmt: skip
    elif payload["title"] in (
        "torch-lookahead demo",
        f"torch-lookahead sweep: {payload.get('task')}",
    ):
        lab = recorded_lab(payload, _recorded_plan(payload["plan"], report_dir))
    else:
        raise ValueError(
            f"{report_dir}: only stability pilots, demo, sweep and compare reports re-render"
        )
    report = write_report(report_dir, lab)
    now = record(math.nan)
    note = (
        f"Re-rendered by `torch-lookahead rerender {report_dir}` with torch-lookahead "
        f"{now['version']} (sources {now['source_digest']}) from the runs that the command above "
        "computed and results.json records: the runs are those runs, the claims, tests and "
        "verdicts are today's code's."
    )
    # The runs' provenance stays what computed them (the reproduction rule compares against
    # that machine); what re-rendered them is recorded beside it.
    lines = report.read_text().split("\n")
    produced = next(i for i, line in enumerate(lines) if line.startswith("Produced by"))
    lines[produced : produced + 1] = [_produced_by(payload["command"], old), "", note]
    report.write_text("\n".join(lines))
    fresh = json.loads((report_dir / "results.json").read_text())
    fresh["rerendered_with"] = fresh["provenance"]
    fresh["provenance"] = old
    (report_dir / "results.json").write_text(json.dumps(fresh, indent=1) + "\n")
    return report


# ------------------------------------------------------------------------- checks and comparisons


def check_out_dir(path: Path) -> None:
    """Raise a ValueError, before any work is done, when ``path`` cannot become a report folder:
    it, its ``runs`` cache or one of its parents is a file, or the nearest existing parent is
    not writable."""
    for target in (path, path / "runs"):
        if target.exists() and not target.is_dir():
            raise ValueError(f"--out {str(path)!r}: {str(target)!r} exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(path)!r}: cannot write into {str(existing)!r}")


def differences_from(committed: dict[str, Any], fresh: dict[str, Any]) -> str:
    """One line: whether ``fresh`` reproduces ``committed`` by the rule of ``reproduce`` (the
    same verdicts; stable runs within its tolerance; bit for bit on the same machine), whether
    any verdict changed, and the largest relative difference with a value that differs."""
    return compare_payloads(committed, fresh).line()


# ------------------------------------------------------------------------------------- the docs

EMBED_START = "<!-- lab-report:start -->"
EMBED_END = "<!-- lab-report:end -->"


def embedded_section(report_dir: Path, assets: str) -> str:
    """The summary part of ``report.md`` of ``report_dir`` (up to ``DETAILS_MARKER``) as a docs
    section, followed by every figure of the report: headings one level down, figure links
    pointing into ``assets`` (a path relative to the docs page)."""
    summary, _, details = (report_dir / "report.md").read_text().partition(DETAILS_MARKER)
    shown = re.findall(r"!\[[^\]]*\]\([\w.-]+\.png\)", summary)
    more = [f for f in re.findall(r"!\[[^\]]*\]\([\w.-]+\.png\)", details) if f not in shown]
    text = summary.strip() + "\n"
    if more:
        text += "\n## The report's figures\n\n" + "\n\n".join(more) + "\n"
    text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE)
    text = re.sub(r"\]\(([\w.-]+\.png)\)", rf"]({assets}/\1)", text)
    return text.strip() + "\n"


def embed_report(report_dir: Path, doc_path: Path, assets_dir: Path) -> None:
    """Replace the part of ``doc_path`` between the lab-report markers with the summary of
    ``report.md`` of ``report_dir``, and copy the figures it shows into ``assets_dir``."""
    document = doc_path.read_text()
    if EMBED_START not in document or EMBED_END not in document:
        raise ValueError(f"{doc_path} has no {EMBED_START} ... {EMBED_END} markers")
    relative = Path(os.path.relpath(assets_dir, doc_path.parent)).as_posix()
    section = embedded_section(report_dir, relative)
    figures = re.findall(rf"\]\({re.escape(relative)}/([\w.-]+\.png)\)", section)
    if figures:
        assets_dir.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        shutil.copyfile(report_dir / figure, assets_dir / figure)
    head, rest = document.split(EMBED_START, 1)
    _, tail = rest.split(EMBED_END, 1)
    doc_path.write_text(f"{head}{EMBED_START}\n{section}{EMBED_END}{tail}")
