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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch_lookahead.lab.claims import (
    Claim,
    claim_json,
    convergence_claim,
    final_quality_claim,
    fmt,
    k_alpha_claim,
    lr_robustness_claim,
    nqm_claim,
    pair_by_inner,
    seed_variance_claim,
    short_interval,
    tuned_pairs,
)
from torch_lookahead.lab.metrics import SettingSummary, area_under_curve, final_value, summarize
from torch_lookahead.lab.nqm import NQMPoint
from torch_lookahead.lab.optimizers import inner_settings
from torch_lookahead.lab.provenance import machine, package_version, source_digest
from torch_lookahead.lab.reproduce import RELATIVE_TOLERANCE, compare_payloads, is_stable
from torch_lookahead.lab.runner import RunConfig, RunResult
from torch_lookahead.lab.tasks import SCHEDULES, get_task

__all__ = [
    "DETAILS_MARKER",
    "LabResults",
    "build_claims",
    "check_out_dir",
    "differences_from",
    "embed_report",
    "results_json",
    "summary_rows",
    "verdict_rows",
    "write_report",
]


@dataclass
class LabResults:
    """What one command measured; any part may be empty."""

    title: str
    command: str
    task: str = ""
    headline_metric: str = "val_loss"
    higher_is_better: bool = False
    compare: list[RunResult] = field(default_factory=list)
    lr_sweep: list[RunResult] = field(default_factory=list)
    k_alpha: list[RunResult] = field(default_factory=list)
    nqm: list[NQMPoint] = field(default_factory=list)
    nqm_k: int = 5
    nqm_alpha: float = 0.5
    seconds: float = math.nan  # wall time of the command
    jobs: int = 0
    cached_jobs: int = 0  # jobs read back from the cache rather than computed


# ------------------------------------------------------------------------------------ the claims


def _seeds_text(runs: Sequence[RunResult]) -> str:
    seeds = sorted({r.config.seed for r in runs})
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"


def _training_text(runs: Sequence[RunResult]) -> str:
    config = runs[0].config
    return f"{SCHEDULES[config.schedule]}, {config.steps} steps of batch {config.batch_size}"


def default_protocol(lab: LabResults) -> str:
    """The paper's headline protocol, as this lab ran it."""
    lrs = ", ".join(
        f"{inner} {fmt(lr, 3)}"
        for inner, lr in dict.fromkeys((r.config.inner, r.config.lr) for r in lab.compare)
    )
    wrapped = next(r.config for r in lab.compare if r.config.uses_lookahead)
    return (
        f"default: each inner optimizer at the task's learning rate ({lrs}), "
        f"{_training_text(lab.compare)}; Lookahead(k={wrapped.k}, alpha={wrapped.alpha}) on top; "
        f"compared at the end of training over {_seeds_text(lab.compare)}, paired by seed "
        "(a seed fixes the initialisation and the minibatch order)."
    )


def tuned_protocol(lab: LabResults) -> str:
    wrapped = next(r.config for r in lab.lr_sweep if r.config.uses_lookahead)
    return (
        f"tuned: each method at its own best learning rate of the sweep (the best mean final "
        f"{lab.headline_metric.replace('_', ' ')} over the sweep's {_seeds_text(lab.lr_sweep)}, "
        "the same seeds it is compared on, which favours each method alike), "
        f"{_training_text(lab.lr_sweep)}; Lookahead(k={wrapped.k}, alpha={wrapped.alpha}); "
        "paired by seed."
    )


def sweep_protocol(lab: LabResults, runs: Sequence[RunResult]) -> str:
    return f"{_training_text(runs)}, over {_seeds_text(runs)}, paired by seed."


def build_claims(lab: LabResults) -> list[Claim]:
    """The claims this lab's measurements can speak to."""
    metric, higher = lab.headline_metric, lab.higher_is_better
    claims = []
    compare_pairs = pair_by_inner(summarize(lab.compare)) if lab.compare else []
    sweep = summarize(lab.lr_sweep) if lab.lr_sweep else []
    tuned = tuned_pairs(sweep, metric, higher)
    if compare_pairs:
        claims.append(
            final_quality_claim(
                compare_pairs, metric, higher, protocol=default_protocol(lab), key="final_default"
            )
        )
    if tuned:
        claims.append(
            final_quality_claim(
                tuned, metric, higher, protocol=tuned_protocol(lab), key="final_tuned", grid=sweep
            )
        )
    if compare_pairs:
        claims.append(
            convergence_claim(
                compare_pairs, protocol=default_protocol(lab), key="convergence_default"
            )
        )
    if tuned:
        claims.append(
            convergence_claim(tuned, protocol=tuned_protocol(lab), key="convergence_tuned")
        )
    if compare_pairs:
        claims.append(seed_variance_claim(compare_pairs, protocol=default_protocol(lab)))
    if sweep:
        claims.append(
            lr_robustness_claim(sweep, metric, higher, protocol=sweep_protocol(lab, lab.lr_sweep))
        )
    if lab.k_alpha:
        claims.append(
            k_alpha_claim(
                summarize(lab.k_alpha), sweep, metric, protocol=sweep_protocol(lab, lab.k_alpha)
            )
        )
    if lab.nqm:
        claims.append(nqm_claim(lab.nqm, lab.nqm_k, lab.nqm_alpha))
    return claims


def reading(simulated: bool) -> str:
    """How to read a verdict, in a few sentences."""
    over = "seeds (over simulated chains for the noisy quadratic model)" if simulated else "seeds"
    return (
        f"How to read a verdict: each case's effect comes with a 95% confidence interval over {over}. "
        "The claim *holds* when the whole interval lies on the side the paper predicts, *does not "
        "hold* when it lies on the other side, and is *inconclusive* when it contains zero (1 for "
        "a ratio of variances): the difference, if any, is inside the noise of this many seeds, "
        "and the report says how many seeds would decide it if the spread stayed as measured."
    )


def verdict_rows(claims: Sequence[Claim]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the verdicts at a glance: one row per case."""
    header = ["#", "claim", "case", "effect [95% CI]", "verdict"]
    rows = []
    for number, claim in enumerate(claims, 1):
        for case in claim.cases:
            effect = short_interval(case.interval) if case.interval else ""
            rows.append([str(number), claim.title, case.label, effect, case.verdict])
    return header, rows


def _glance_lines(claims: Sequence[Claim]) -> list[str]:
    return ["## Verdicts at a glance", "", *markdown_table(*verdict_rows(claims)), ""]


def _claim_lines(claims: Sequence[Claim]) -> list[str]:
    lines = ["## The paper's claims, as measured here", ""]
    for number, claim in enumerate(claims, 1):
        lines += [
            f"### {number}. {claim.title[0].upper()}{claim.title[1:]}",
            "",
            f"The paper: {claim.paper}",
            "",
            f"- Protocol: {claim.protocol}",
            f"- Effect: {claim.effect}",
            f"- **Verdict: {claim.verdict}.**",
        ]
        lines += [f"    - {sentence}" for sentence in claim.measured]
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------ the setup


def _setup_lines(lab: LabResults) -> list[str]:
    runs = lab.compare + lab.lr_sweep + lab.k_alpha
    lines = ["## Setup", ""]
    if runs:
        spec = get_task(lab.task)
        config = runs[0].config
        lines += [
            f"- Task: **{spec.name}**, {spec.model_description}.",
            f"- Data: {spec.split_description}.",
            f"- Training: {_training_text(runs)}, evaluated every {config.eval_every} steps; "
            f"headline metric {lab.headline_metric.replace('_', ' ')}. Lookahead runs are "
            "evaluated on their slow weights.",
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
            ("learning-rate sweep", lab.lr_sweep),
            ("(k, alpha) grid", lab.k_alpha),
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
    reused = (
        f", which read {lab.cached_jobs} of its {lab.jobs} jobs back from its cache"
        if lab.cached_jobs
        else f" ({lab.jobs} jobs, none from a cache)"
    )
    lines.append(
        f"- Time: {fmt(lab.seconds, 3)} s of wall time for the command{reused}; the training "
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
    header = [
        "optimizer", "lr", "k", "alpha", "seeds", "train loss", "val loss",
        headline.replace("_", " "), "mean train loss", "diverged",
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
            ]
        )
    return header, rows


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
        "setting": {k: v for k, v in dataclasses.asdict(summary.setting).items() if k != "seed"},
        "method": summary.method,
        "seeds": list(summary.seeds),
        "final": {m: {"mean": v[0], "std": v[1]} for m, v in summary.final.items()},
        "mean_train_loss": {"mean": summary.train_loss_area[0], "std": summary.train_loss_area[1]},
        "diverged": summary.diverged,
    }


def _parts(lab: LabResults) -> list[tuple[str, RunResult]]:
    return (
        [("compare", r) for r in lab.compare]
        + [("lr_sweep", r) for r in lab.lr_sweep]
        + [("k_alpha", r) for r in lab.k_alpha]
    )


def results_json(lab: LabResults, claims: Sequence[Claim]) -> dict[str, Any]:
    """Everything the report states, with what produced it: the package version and digests
    of its sources (all of them, and those that compute the numbers), torch, Python and the CPU
    kernels; every claim; every summary; every run's whole history."""
    payload: dict[str, Any] = {
        "title": lab.title,
        "command": lab.command,
        "provenance": {
            "version": package_version(),
            "source_digest": source_digest(),
            "computing_source_digest": source_digest(computing_only=True),
            **machine(),
            "wall_seconds": lab.seconds,
        },
        "task": lab.task,
        "headline_metric": lab.headline_metric,
        "higher_is_better": lab.higher_is_better,
        "claims": [claim_json(c) for c in claims],
    }
    for name in ("compare", "lr_sweep", "k_alpha"):
        part = getattr(lab, name)
        if part:
            payload[name] = [_summary_json(s) for s in summarize(part)]
    if lab.nqm:
        payload["nqm"] = {
            "k": lab.nqm_k,
            "alpha": lab.nqm_alpha,
            "points": [p.to_json() for p in lab.nqm],
        }
    seen: set[RunConfig] = set()
    runs = []
    for part, result in _parts(lab):
        if result.config not in seen:
            seen.add(result.config)
            entry = result.to_json()
            entry["stable"] = is_stable(entry["config"], result.diverged_at)
            runs.append({"part": part, **entry})
    payload["runs"] = runs
    return payload


# The docs copy a report up to this line: what follows is in the report folder only.
DETAILS_MARKER = "<!-- details -->"


def write_report(out_dir: Path, lab: LabResults) -> Path:
    """Write the report folder for ``lab`` into ``out_dir`` and return the path of report.md."""
    from torch_lookahead.lab import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    claims = build_claims(lab)
    payload = results_json(lab, claims)
    provenance = payload["provenance"]
    lines = [
        f"# {lab.title}",
        "",
        f"Produced by `{lab.command}` with torch-lookahead {provenance['version']} (sources "
        f"{provenance['source_digest']}), torch {provenance['torch']} on Python "
        f"{provenance['python']} ({provenance['cpu_capability']} CPU kernels).",
        "",
    ]
    if claims:
        lines += _glance_lines(claims)
    lines += [DETAILS_MARKER, ""]
    if claims:
        lines += [
            reading(bool(lab.nqm)),
            "",
            "Each claim is described below with its protocol, the effect measured and every case.",
            "",
        ]
    lines += _setup_lines(lab)
    if claims:
        lines += _claim_lines(claims)
    if lab.compare:
        summaries = summarize(lab.compare)
        plots.plot_loss_curves(lab.compare, out_dir / "loss_curves.png")
        lines += [
            f"## Final metrics ({lab.task}, default protocol, mean ± standard deviation over seeds)",
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
        plots.plot_lr_robustness(summaries, lab.headline_metric, out_dir / "lr_robustness.png")
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
        summaries = summarize(lab.k_alpha)
        lines += ["## Sensitivity to k and alpha", ""]
        for inner in dict.fromkeys(s.setting.inner for s in summaries):
            name = f"k_alpha_{inner}.png"
            plots.plot_k_alpha(
                [s for s in summaries if s.setting.inner == inner],
                lab.headline_metric,
                out_dir / name,
                lab.higher_is_better,
            )
            lines += [f"![k and alpha heat map, {inner}]({name})", ""]
        lines += [*markdown_table(*summary_rows(summaries, lab.headline_metric)), ""]
    if lab.nqm:
        plots.plot_nqm(lab.nqm, out_dir / "nqm.png", lab.nqm_k, lab.nqm_alpha)
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
        "## Reproducing it",
        "",
        f"The command above reproduces this report when every case gets the same verdict and "
        f"each run that results.json marks `stable` (seed 0 at the task's learning rate, plain "
        f"and in Lookahead(k=5, alpha=0.5)) agrees at every evaluation within "
        f"{RELATIVE_TOLERANCE:g} relative; on the same CPU model, CPU kernels and torch, every "
        "number is the same bit for bit. Other runs may differ between CPUs as much as between "
        "seeds where training amplifies rounding (large learning rates); `--against` with this "
        "folder says which.",
        "",
    ]
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
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
    section: headings one level down, figure links pointing into ``assets`` (a path relative to
    the docs page)."""
    text = (report_dir / "report.md").read_text().split(DETAILS_MARKER, 1)[0]
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
