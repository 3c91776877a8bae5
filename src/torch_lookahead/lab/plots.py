"""The report's figures, drawn with matplotlib's non-interactive Agg backend into PNG files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from torch_lookahead.lab.metrics import SettingSummary, group_by_setting, seed_band
from torch_lookahead.lab.nqm import NQMPoint
from torch_lookahead.lab.runner import RunResult

__all__ = ["plot_k_alpha", "plot_loss_curves", "plot_lr_robustness", "plot_nqm"]

_PLAIN_COLOR = "tab:blue"
_LOOKAHEAD_COLOR = "tab:orange"
_DPI = 80


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return path


def plot_loss_curves(
    results: Sequence[RunResult], path: Path, metrics: Sequence[str] = ("train_loss", "val_loss")
) -> Path:
    """One column per inner optimizer, one row per metric: the mean over seeds of the plain and
    the Lookahead runs with a band from the lowest to the highest seed."""
    groups = group_by_setting(results)
    inners = list(dict.fromkeys(setting.inner for setting in groups))
    figure, axes = plt.subplots(
        len(metrics), len(inners), figsize=(3.6 * len(inners), 2.8 * len(metrics)), squeeze=False
    )
    for column, inner in enumerate(inners):
        for row, metric in enumerate(metrics):
            axis = axes[row][column]
            for setting, runs in groups.items():
                if setting.inner != inner:
                    continue
                band = seed_band(runs, metric)
                color = _LOOKAHEAD_COLOR if setting.uses_lookahead else _PLAIN_COLOR
                label = _label(setting.method, setting.k, setting.alpha, setting.lr)
                axis.plot(band.steps, band.mean, color=color, label=label)
                axis.fill_between(band.steps, band.low, band.high, color=color, alpha=0.25)
            axis.set_yscale("log")
            axis.set_xlabel("step")
            axis.set_ylabel(metric.replace("_", " "))
            axis.grid(alpha=0.3)
            if row == 0:
                axis.set_title(inner)
                axis.legend(fontsize=7)
    return _save(figure, path)


def _label(method: str, k: int | None, alpha: float | None, lr: float) -> str:
    if k is None:
        return f"{method}, lr {lr:.3g}"
    return f"{method}, k {k}, alpha {alpha}, lr {lr:.3g}"


def plot_lr_robustness(summaries: Sequence[SettingSummary], metric: str, path: Path) -> Path:
    """Final ``metric`` (mean over seeds, error bar one standard deviation) against the inner
    learning rate, plain and Lookahead, one panel per inner optimizer."""
    inners = list(dict.fromkeys(s.setting.inner for s in summaries))
    figure, axes = plt.subplots(1, len(inners), figsize=(3.6 * len(inners), 3.0), squeeze=False)
    for column, inner in enumerate(inners):
        axis = axes[0][column]
        for uses_lookahead, color in ((False, _PLAIN_COLOR), (True, _LOOKAHEAD_COLOR)):
            points = sorted(
                (s.setting.lr, *s.final[metric])
                for s in summaries
                if s.setting.inner == inner and s.setting.uses_lookahead == uses_lookahead
            )
            if not points:
                continue
            lrs = [p[0] for p in points]
            means = [p[1] if math.isfinite(p[1]) else math.nan for p in points]
            stds = [p[2] if math.isfinite(p[2]) else 0.0 for p in points]
            label = "lookahead" if uses_lookahead else "plain"
            axis.errorbar(lrs, means, yerr=stds, color=color, marker="o", capsize=3, label=label)
        axis.set_xscale("log")
        axis.set_xlabel(f"{inner} learning rate")
        axis.set_ylabel(f"final {metric.replace('_', ' ')}")
        axis.set_title(inner)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, path)


def plot_k_alpha(
    summaries: Sequence[SettingSummary], metric: str, path: Path, higher_is_better: bool
) -> Path:
    """Heat map of the final ``metric`` (mean over seeds) over the (k, alpha) grid of one inner
    optimizer; the title gives the inner optimizer alone for comparison."""
    grid = [s for s in summaries if s.setting.uses_lookahead]
    plain = [s for s in summaries if not s.setting.uses_lookahead]
    ks = sorted({int(s.setting.k or 0) for s in grid})
    alphas = sorted({float(s.setting.alpha or 0.0) for s in grid})
    values = [[math.nan for _ in alphas] for _ in ks]
    for s in grid:
        values[ks.index(int(s.setting.k or 0))][alphas.index(float(s.setting.alpha or 0.0))] = (
            s.final[metric][0]
        )
    figure, axis = plt.subplots(figsize=(1.2 * len(alphas) + 2.4, 0.7 * len(ks) + 1.8))
    image = axis.imshow(values, cmap="viridis" if higher_is_better else "viridis_r", aspect="auto")
    figure.colorbar(image, ax=axis, label=f"final {metric.replace('_', ' ')}")
    axis.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    axis.set_yticks(range(len(ks)), [str(k) for k in ks])
    axis.set_xlabel("alpha")
    axis.set_ylabel("k")
    for row, column_values in enumerate(values):
        for column, value in enumerate(column_values):
            axis.text(
                column, row, f"{value:.4g}", ha="center", va="center", color="white", fontsize=8
            )
    title = f"lookahead({grid[0].setting.inner})" if grid else "lookahead"
    if plain:
        title += f"; alone: {plain[0].final[metric][0]:.4g}"
    axis.set_title(title, fontsize=9)
    return _save(figure, path)


def plot_nqm(points: Sequence[NQMPoint], path: Path, k: int, alpha: float) -> Path:
    """Steady-state expected loss against the learning rate: closed forms (lines) and simulation
    (markers) for SGD and Lookahead(SGD)."""
    lrs = [p.lr for p in points]
    figure, axis = plt.subplots(figsize=(5.0, 3.4))
    axis.plot(lrs, [p.sgd_theory for p in points], color=_PLAIN_COLOR, label="SGD, closed form")
    axis.plot(
        lrs, [p.sgd_simulated for p in points], "o", color=_PLAIN_COLOR, label="SGD, simulated"
    )
    axis.plot(
        lrs,
        [p.lookahead_theory for p in points],
        color=_LOOKAHEAD_COLOR,
        label=f"Lookahead (k {k}, alpha {alpha}), closed form",
    )
    axis.plot(
        lrs,
        [p.lookahead_simulated for p in points],
        "s",
        color=_LOOKAHEAD_COLOR,
        label="Lookahead, simulated",
    )
    axis.axhline(points[0].floor, color="gray", linestyle=":", label="loss at the optimum")
    axis.set_yscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("steady-state expected loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, path)
