"""The report folder: ``report.md`` (claims, tables, figures), ``results.json`` (every summary
and claim), ``runs.csv`` (one row per run), ``curves.csv`` (every evaluation) and the PNG figures.

Every number in the report is computed here from the runs; nothing is typed by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torch_lookahead.lab.claims import (
    Claim,
    convergence_claim,
    fmt,
    k_alpha_claim,
    lr_robustness_claim,
    nqm_claim,
    seed_variance_claim,
)
from torch_lookahead.lab.metrics import SettingSummary, steps_to_target, summarize
from torch_lookahead.lab.nqm import NQMPoint
from torch_lookahead.lab.runner import RunResult

__all__ = [
    "LabResults",
    "build_claims",
    "check_out_dir",
    "embed_report",
    "summary_rows",
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
    target_loss: float = 0.0
    compare: list[RunResult] = field(default_factory=list)
    lr_sweep: list[RunResult] = field(default_factory=list)
    k_alpha: list[RunResult] = field(default_factory=list)
    nqm: list[NQMPoint] = field(default_factory=list)
    nqm_k: int = 5
    nqm_alpha: float = 0.5


def build_claims(lab: LabResults) -> list[Claim]:
    """The claims this lab's measurements can speak to, in the paper's order."""
    claims = []
    if lab.nqm:
        claims.append(nqm_claim(lab.nqm, lab.nqm_k, lab.nqm_alpha))
    if lab.lr_sweep:
        sweep = summarize(lab.lr_sweep, lab.target_loss)
        claims.append(lr_robustness_claim(sweep, lab.headline_metric, lab.higher_is_better))
    if lab.k_alpha:
        grid = summarize(lab.k_alpha, lab.target_loss)
        claims.append(k_alpha_claim(grid, lab.headline_metric, lab.higher_is_better))
    if lab.compare:
        compare = summarize(lab.compare, lab.target_loss)
        claims.append(seed_variance_claim(compare, "val_loss"))
        claims.append(convergence_claim(compare))
    return claims


def _summary_json(summary: SettingSummary) -> dict[str, Any]:
    return {
        "setting": {k: v for k, v in dataclasses.asdict(summary.setting).items() if k != "seed"},
        "method": summary.method,
        "seeds": list(summary.seeds),
        "final": {m: {"mean": v[0], "std": v[1]} for m, v in summary.final.items()},
        "steps_to_target": list(summary.steps_to_target),
        "target_loss": summary.target_loss,
        "diverged": summary.diverged,
    }


def summary_rows(
    summaries: Sequence[SettingSummary], headline: str
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the final-metrics table (shared by report.md and the console)."""
    target = fmt(summaries[0].target_loss) if summaries else ""
    header = [
        "optimizer", "lr", "k", "alpha", "seeds", "train loss", "val loss", headline,
        f"steps to train loss ≤ {target}", "diverged",
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
                *(_mean_std(s.final.get(m)) for m in ("train_loss", "val_loss", headline)),
                _steps_cell(s),
                f"{s.diverged}/{len(s.seeds)}",
            ]
        )
    return header, rows


def _summary_table(summaries: Sequence[SettingSummary], headline: str) -> list[str]:
    header, rows = summary_rows(summaries, headline)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _mean_std(value: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{fmt(value[0])} ± {fmt(value[1], 2)}"


def _steps_cell(summary: SettingSummary) -> str:
    mean_steps = summary.mean_steps_to_target()
    if mean_steps is not None:
        return fmt(mean_steps)
    reached = sum(s is not None for s in summary.steps_to_target)
    return f"reached by {reached}/{len(summary.seeds)}"


def _nqm_table(points: Sequence[NQMPoint]) -> list[str]:
    lines = [
        "| lr | SGD closed form | SGD simulated | Lookahead closed form | Lookahead simulated | "
        "largest error of the excess loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        error = max(p.relative_errors())
        lines.append(
            f"| {fmt(p.lr, 3)} | {fmt(p.sgd_theory)} | {fmt(p.sgd_simulated)} | "
            f"{fmt(p.lookahead_theory)} | {fmt(p.lookahead_simulated)} | {fmt(100 * error, 2)}% |"
        )
    return lines


def _write_runs_csv(path: Path, parts: Sequence[tuple[str, RunResult]], target: float) -> None:
    metrics = sorted({m for _, r in parts for m in r.history})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["part", "task", "method", "inner", "lr", "k", "alpha", "seed", "steps"]
            + [f"final_{m}" for m in metrics]
            + ["steps_to_target", "diverged_at"]
        )
        for part, r in parts:
            c = r.config
            writer.writerow(
                [part, c.task, c.method, c.inner, c.lr, c.k, c.alpha, c.seed, c.steps]
                + [r.history.get(m, [None])[-1] for m in metrics]
                + [steps_to_target(r, target), r.diverged_at]
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


def write_report(out_dir: Path, lab: LabResults) -> Path:
    """Write the report folder for ``lab`` into ``out_dir`` and return the path of report.md."""
    from torch_lookahead.lab import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    claims = build_claims(lab)
    lines = [f"# {lab.title}", ""]
    lines.append(
        f"Produced by `{lab.command}` with torch {torch.__version__} on Python "
        f"{platform.python_version()}. Metrics of Lookahead runs are measured on the slow weights."
    )
    lines.append("")
    if claims:
        lines += ["## The paper's claims, as measured here", ""]
        for claim in claims:
            lines.append(f"- **{claim.paper}** Verdict: *{claim.verdict}*.")
            lines += [f"    - {sentence}" for sentence in claim.measured]
        lines.append("")
    results_json: dict[str, Any] = {
        "title": lab.title,
        "command": lab.command,
        "task": lab.task,
        "headline_metric": lab.headline_metric,
        "target_loss": lab.target_loss,
        "torch": torch.__version__,
        "claims": [dataclasses.asdict(c) for c in claims],
    }
    parts: list[tuple[str, RunResult]] = []
    if lab.compare:
        summaries = summarize(lab.compare, lab.target_loss)
        results_json["compare"] = [_summary_json(s) for s in summaries]
        plots.plot_loss_curves(lab.compare, out_dir / "loss_curves.png")
        lines += [
            f"## Final metrics ({lab.task}, mean ± standard deviation over seeds)",
            "",
            *_summary_table(summaries, lab.headline_metric),
            "",
            "## Loss curves",
            "",
            "Mean over seeds; the band spans the lowest to the highest seed.",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
        parts += [("compare", r) for r in lab.compare]
    if lab.lr_sweep:
        summaries = summarize(lab.lr_sweep, lab.target_loss)
        results_json["lr_sweep"] = [_summary_json(s) for s in summaries]
        plots.plot_lr_robustness(summaries, lab.headline_metric, out_dir / "lr_robustness.png")
        lines += [
            "## Learning-rate robustness",
            "",
            "![learning-rate robustness](lr_robustness.png)",
            "",
            *_summary_table(summaries, lab.headline_metric),
            "",
        ]
        parts += [("lr_sweep", r) for r in lab.lr_sweep]
    if lab.k_alpha:
        summaries = summarize(lab.k_alpha, lab.target_loss)
        results_json["k_alpha"] = [_summary_json(s) for s in summaries]
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
        lines += [
            *_summary_table(summaries, lab.headline_metric),
            "",
        ]
        parts += [("k_alpha", r) for r in lab.k_alpha]
    if lab.nqm:
        results_json["nqm"] = {
            "k": lab.nqm_k,
            "alpha": lab.nqm_alpha,
            "points": [dataclasses.asdict(p) for p in lab.nqm],
        }
        plots.plot_nqm(lab.nqm, out_dir / "nqm.png", lab.nqm_k, lab.nqm_alpha)
        lines += [
            "## Noisy quadratic model",
            "",
            f"Steady-state expected loss of SGD and Lookahead(SGD, k={lab.nqm_k}, "
            f"alpha={lab.nqm_alpha}): closed forms against a simulation of the real optimizers.",
            "",
            "![noisy quadratic model](nqm.png)",
            "",
            *_nqm_table(lab.nqm),
            "",
        ]
    if parts:
        _write_runs_csv(out_dir / "runs.csv", parts, lab.target_loss)
        _write_curves_csv(out_dir / "curves.csv", lab.compare or lab.lr_sweep)
        lines += [
            "## Files",
            "",
            "`results.json` (every summary and claim), `runs.csv` (one row per run), "
            "`curves.csv` (every evaluation of the comparison runs, or of the learning-rate "
            "sweep), and the figures.",
            "",
        ]
    (out_dir / "results.json").write_text(json.dumps(results_json, indent=1, allow_nan=True) + "\n")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


EMBED_START = "<!-- lab-report:start -->"
EMBED_END = "<!-- lab-report:end -->"


def embedded_section(report_dir: Path, assets: str) -> str:
    """``report.md`` of ``report_dir`` as a docs section: headings one level down, figure links
    pointing into ``assets`` (a path relative to the docs page)."""
    text = (report_dir / "report.md").read_text()
    text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE)
    text = re.sub(r"\]\(([\w.-]+\.png)\)", rf"]({assets}/\1)", text)
    return text.strip() + "\n"


def embed_report(report_dir: Path, doc_path: Path, assets_dir: Path) -> None:
    """Replace the part of ``doc_path`` between the lab-report markers with ``report.md`` of
    ``report_dir``, and copy its figures into ``assets_dir``."""
    document = doc_path.read_text()
    if EMBED_START not in document or EMBED_END not in document:
        raise ValueError(f"{doc_path} has no {EMBED_START} ... {EMBED_END} markers")
    assets_dir.mkdir(parents=True, exist_ok=True)
    for figure in sorted(report_dir.glob("*.png")):
        shutil.copyfile(figure, assets_dir / figure.name)
    relative = Path(os.path.relpath(assets_dir, doc_path.parent)).as_posix()
    head, rest = document.split(EMBED_START, 1)
    _, tail = rest.split(EMBED_END, 1)
    section = embedded_section(report_dir, relative)
    doc_path.write_text(f"{head}{EMBED_START}\n{section}{EMBED_END}{tail}")
