"""The report's figures, drawn with matplotlib's non-interactive Agg backend into PNG files.

Blue is always the inner optimizer alone, orange Lookahead; legends sit below the axes, where
they cover no curve. Each figure's title names the task, the seeds and a quick run (``title``,
written by the report); log axes carry plain numbers; every reference line says what it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from torch_lookahead_lab.confirmatory import ARMS, ConfirmatoryResults, arm_label
from torch_lookahead_lab.metrics import SettingSummary, final_value, group_by_setting, seed_band
from torch_lookahead_lab.nqm import NQMPoint
from torch_lookahead_lab.runner import RunResult
from torch_lookahead_lab.stability import StabilityResults, largest_on_grid
from torch_lookahead_lab.tasks import get_task

__all__ = [
    "plot_confirmatory",
    "plot_k_alpha",
    "plot_loss_curves",
    "plot_lr_robustness",
    "plot_nqm",
    "plot_stability",
]

_PLAIN_COLOR = "tab:blue"
_LOOKAHEAD_COLOR = "tab:orange"
_DPI = 110
plt.rcParams.update({"font.size": 10, "legend.fontsize": 10, "axes.titlesize": 11})


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def _legend_below(figure: Any, handles: Sequence[Any], columns: int = 2) -> None:
    """The legend under the whole figure (saving with a tight bounding box keeps it)."""
    figure.tight_layout()
    figure.legend(handles=handles, loc="upper center", ncol=columns, bbox_to_anchor=(0.5, 0.0),
                  frameon=False)  # fmt: skip


def _plain_log_axis(axis: Any, which: str) -> None:
    """Tick labels of a log axis as plain numbers (0.2, 2), never powers of ten: the decades;
    every tick between them when the axis spans less than a decade, 2 and 5 times them when
    it spans less than two."""
    target = axis.yaxis if which == "y" else axis.xaxis
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    low, high = axis.get_ylim() if which == "y" else axis.get_xlim()
    span = high / low if low > 0 else math.inf

    def minor(value: float, _: int) -> str:
        if span >= 100 or value <= 0:
            return ""
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
        return f"{value:g}" if span < 10 or mantissa in (2.0, 5.0) else ""

    target.set_minor_formatter(FuncFormatter(minor))


def _title(figure: Any, title: str) -> None:
    """The figure's title above all its panels (the task, the seeds, a quick run)."""
    if title:
        figure.suptitle(title, fontsize=11)
        figure.tight_layout()


def _line_label(axis: Any, text: str, *, x: float | None = None, y: float | None = None) -> None:
    """``text`` written along a reference line: a vertical one at ``x``, a horizontal one at
    ``y``."""
    box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1}
    if x is not None:
        axis.text(x, 0.98, text, transform=axis.get_xaxis_transform(), rotation=90,
                  ha="left", va="top", fontsize=8, color="dimgray", bbox=box)  # fmt: skip
    elif y is not None:
        axis.text(0.99, y, text, transform=axis.get_yaxis_transform(), ha="right",
                  va="bottom", fontsize=8, color="dimgray", bbox=box)  # fmt: skip


def _text_color(rgba: Sequence[float]) -> str:
    """Black on a light cell, white on a dark one (relative luminance, ITU-R BT.601)."""
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def _method_handles(k: int | None, alpha: float | None) -> list[Any]:
    wrapped = f"Lookahead (k={k}, alpha={alpha})" if k is not None else "Lookahead"
    return [
        Line2D([], [], color=_PLAIN_COLOR, marker="o", label="inner optimizer alone"),
        Line2D([], [], color=_LOOKAHEAD_COLOR, marker="o", label=wrapped),
    ]


def plot_loss_curves(
    results: Sequence[RunResult],
    path: Path,
    metrics: Sequence[str] = ("train_loss", "val_loss"),
    title: str = "",
) -> Path:
    """One column per inner optimizer, one row per metric: the mean over seeds of the plain and
    the Lookahead runs with a band from the lowest to the highest seed."""
    groups = group_by_setting(results)
    inners = list(dict.fromkeys(setting.inner for setting in groups))
    figure, axes = plt.subplots(
        len(metrics), len(inners), figsize=(5.0 * len(inners), 3.6 * len(metrics)), squeeze=False
    )
    wrapped = next((s for s in groups if s.uses_lookahead), None)
    for column, inner in enumerate(inners):
        for row, metric in enumerate(metrics):
            axis = axes[row][column]
            for setting, runs in groups.items():
                if setting.inner != inner:
                    continue
                band = seed_band(runs, metric)
                color = _LOOKAHEAD_COLOR if setting.uses_lookahead else _PLAIN_COLOR
                axis.plot(band.steps, band.mean, color=color, marker="o", markersize=3)
                axis.fill_between(band.steps, band.low, band.high, color=color, alpha=0.25)
                if row == 0:
                    axis.set_title(f"{inner}, lr {setting.lr:.3g}")
            axis.set_yscale("log")
            _plain_log_axis(axis, "y")
            axis.set_xlabel("step")
            axis.set_ylabel(metric.replace("_", " "))
            axis.grid(alpha=0.3)
    _title(figure, title)
    _legend_below(figure, _method_handles(wrapped.k if wrapped else None,
                                          wrapped.alpha if wrapped else None))  # fmt: skip
    return _save(figure, path)


def plot_lr_robustness(
    summaries: Sequence[SettingSummary], metric: str, path: Path, title: str = ""
) -> Path:
    """Final ``metric`` (mean over seeds, bars from the lowest to the highest seed) against the
    inner learning rate, plain and Lookahead, one panel per inner optimizer; a dotted line marks
    the task's learning rate."""
    inners = list(dict.fromkeys(s.setting.inner for s in summaries))
    figure, axes = plt.subplots(1, len(inners), figsize=(5.0 * len(inners), 3.9), squeeze=False)
    wrapped = next((s.setting for s in summaries if s.setting.uses_lookahead), None)
    for column, inner in enumerate(inners):
        axis = axes[0][column]
        for uses_lookahead, color in ((False, _PLAIN_COLOR), (True, _LOOKAHEAD_COLOR)):
            chosen = sorted(
                (s for s in summaries
                 if s.setting.inner == inner and s.setting.uses_lookahead == uses_lookahead),
                key=lambda s: s.setting.lr,
            )  # fmt: skip
            if not chosen:
                continue
            lrs = [s.setting.lr for s in chosen]
            values = [list(s.values(metric).values()) for s in chosen]
            means = [math.fsum(v) / len(v) for v in values]
            # max(0, ...): the mean of equal values can round past them
            below = [max(0.0, m - min(v)) for m, v in zip(means, values, strict=True)]
            above = [max(0.0, max(v) - m) for m, v in zip(means, values, strict=True)]
            axis.errorbar(lrs, means, yerr=[below, above], color=color, marker="o", capsize=3)
        task = get_task(summaries[0].setting.task)
        axis.axvline(task.learning_rate(inner), color="gray", linestyle=":")
        _line_label(axis, "task's lr", x=task.learning_rate(inner))
        axis.set_xscale("log")
        lrs = sorted({s.setting.lr for s in summaries if s.setting.inner == inner})
        axis.set_xticks(lrs, [f"{lr:.3g}" for lr in lrs])
        axis.minorticks_off()
        axis.set_xlabel(f"{inner} learning rate")
        axis.set_ylabel(f"final {metric.replace('_', ' ')}")
        axis.set_title(inner)
        axis.grid(alpha=0.3)
    handles = _method_handles(wrapped.k if wrapped else None, wrapped.alpha if wrapped else None)
    handles.append(Line2D([], [], color="gray", linestyle=":", label="the task's learning rate"))
    _title(figure, title)
    _legend_below(figure, handles, columns=3)
    return _save(figure, path)


def plot_k_alpha(
    summaries: Sequence[SettingSummary],
    metric: str,
    path: Path,
    higher_is_better: bool,
    title: str = "",
) -> Path:
    """Heat map over the (k, alpha) grid of one inner optimizer of the final ``metric``'s
    difference from the inner optimizer alone (mean over seeds), centred on zero; each cell
    shows the value and the difference. The colour scale spans at least two standard
    deviations of the inner optimizer's seed noise, so that noise does not look like an effect."""
    grid = [s for s in summaries if s.setting.uses_lookahead]
    plain = [s for s in summaries if not s.setting.uses_lookahead]
    ks = sorted({int(s.setting.k or 0) for s in grid})
    alphas = sorted({float(s.setting.alpha or 0.0) for s in grid})
    baseline, noise = plain[0].final[metric] if plain else (math.nan, math.nan)
    values = [[math.nan for _ in alphas] for _ in ks]
    for s in grid:
        values[ks.index(int(s.setting.k or 0))][alphas.index(float(s.setting.alpha or 0.0))] = (
            s.final[metric][0]
        )
    reference = baseline if math.isfinite(baseline) else 0.0
    differences = [[v - reference for v in row] for row in values]
    finite = [abs(d) for row in differences for d in row if math.isfinite(d)]
    limit = max([*finite, 2 * noise if math.isfinite(noise) else 0.0, 1e-12])
    figure, axis = plt.subplots(figsize=(1.6 * len(alphas) + 3.2, 0.9 * len(ks) + 2.2))
    colormap = "RdBu" if higher_is_better else "RdBu_r"
    image = axis.imshow(
        differences, cmap=colormap, norm=TwoSlopeNorm(0.0, -limit, limit), aspect="auto"
    )
    label = f"final {metric.replace('_', ' ')} minus {plain[0].method if plain else 'baseline'}"
    figure.colorbar(image, ax=axis, label=label)
    axis.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    axis.set_yticks(range(len(ks)), [str(k) for k in ks])
    axis.set_xlabel("alpha")
    axis.set_ylabel("k")
    for row, row_values in enumerate(values):
        for column, value in enumerate(row_values):
            difference = differences[row][column]
            shade: Any = (1.0, 1.0, 1.0)  # an empty (NaN) cell is drawn white
            if math.isfinite(difference):
                shade = image.cmap(float(np.asarray(image.norm(np.array([difference]))).item()))
            axis.text(column, row, f"{value:.4g}\n({difference:+.2g})", ha="center",
                      va="center", fontsize=9, color=_text_color(shade))  # fmt: skip
    heading = f"lookahead({grid[0].setting.inner})" if grid else "lookahead"
    if plain:
        seeds = len(plain[0].seeds)
        spread = f" ± {noise:.2g}" if math.isfinite(noise) else ""
        heading += (
            f"\n{plain[0].method} alone: {baseline:.4g}{spread} ({seeds} seed"
            f"{'s' if seeds != 1 else ''})"
        )
    axis.set_title(heading)
    figure.tight_layout()
    _title(figure, title)
    return _save(figure, path)


def plot_nqm(points: Sequence[NQMPoint], path: Path, k: int, alpha: float, title: str = "") -> Path:
    """Steady-state expected loss against the learning rate: closed forms (lines) and simulation
    (markers) for SGD and Lookahead(SGD), and the noise floor."""
    lrs = [p.lr for p in points]
    figure, axis = plt.subplots(figsize=(7.0, 4.6))
    axis.plot(lrs, [p.sgd_theory for p in points], color=_PLAIN_COLOR)
    axis.plot(lrs, [p.sgd_simulated for p in points], "o", color=_PLAIN_COLOR)
    axis.plot(lrs, [p.lookahead_theory for p in points], color=_LOOKAHEAD_COLOR)
    axis.plot(lrs, [p.lookahead_simulated for p in points], "s", color=_LOOKAHEAD_COLOR)
    axis.axhline(points[0].floor, color="gray", linestyle=":")
    axis.set_yscale("log")
    _line_label(axis, "noise floor", y=points[0].floor)
    _plain_log_axis(axis, "y")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("steady-state expected loss")
    axis.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=_PLAIN_COLOR, label="SGD, closed form"),
        Line2D([], [], color=_PLAIN_COLOR, marker="o", linestyle="", label="SGD, simulated"),
        Line2D([], [], color=_LOOKAHEAD_COLOR, label=f"Lookahead (k={k}, alpha={alpha}), closed form"),
        Line2D([], [], color=_LOOKAHEAD_COLOR, marker="s", linestyle="",
               label="Lookahead, simulated"),
        Line2D([], [], color="gray", linestyle=":", label="loss at the optimum (noise floor)"),
    ]  # fmt: skip
    _title(figure, title)
    _legend_below(figure, handles, columns=2)
    return _save(figure, path)


def plot_stability(lab: StabilityResults, path: Path, title: str = "") -> Path:
    """Final metric (mean over seeds, bars from the lowest to the highest seed) against the
    learning rate, the inner optimizer alone and in Lookahead, one panel per warm-up; a dashed
    line marks the threshold below which a run trains."""
    plan = lab.plan
    warmups = list(plan.warmups)
    figure, axes = plt.subplots(
        1, len(warmups), figsize=(5.0 * len(warmups), 3.9), squeeze=False, sharey=True
    )
    threshold = lab.threshold
    for column, warmup in enumerate(warmups):
        axis = axes[0][column]
        for lookahead, color in ((False, _PLAIN_COLOR), (True, _LOOKAHEAD_COLOR)):
            lrs, means, below, above = [], [], [], []
            for lr in sorted(plan.lrs):
                values = [
                    final_value(r, plan.metric)
                    for r in lab.select(lookahead=lookahead, warmup=warmup, lr=lr)
                ]
                if not values:
                    continue
                mean = math.fsum(values) / len(values)
                lrs.append(lr)
                means.append(mean)
                below.append(max(0.0, mean - min(values)))
                above.append(max(0.0, max(values) - mean))
            axis.errorbar(lrs, means, yerr=[below, above], color=color, marker="o", capsize=3)
        axis.axhline(threshold, color="gray", linestyle="--")
        # A linear y axis: the values span less than a decade, where a log axis labels one tick.
        _line_label(axis, f"trains below {threshold:.3g}", y=threshold)
        axis.set_xscale("log")
        axis.set_xticks(sorted(plan.lrs), [f"{lr:.3g}" for lr in sorted(plan.lrs)])
        axis.minorticks_off()
        axis.set_xlabel(f"{plan.inner} learning rate")
        axis.set_ylabel(
            f"final {plan.metric.replace('_', ' ')}\n(mean; bars: lowest to highest seed)"
        )
        axis.set_title(f"linear warm-up over {warmup} steps" if warmup else "no warm-up")
        axis.grid(alpha=0.3)
    handles = _method_handles(plan.k, plan.alpha)
    handles.append(Line2D([], [], color="gray", linestyle="--", label="trains below this line"))
    _title(figure, title)
    _legend_below(figure, handles, columns=3)
    return _save(figure, path)


_RESCALED_COLOR = "tab:green"


def plot_confirmatory(lab: ConfirmatoryResults, path: Path, title: str = "") -> Path:
    """Per model (rows) and warm-up (columns), each arm's largest stable learning rate: a dot
    per seed (seeds that tie stacked), and below them the geometric mean over seeds (a diamond)
    with a bar from the lowest to the highest seed. The x axis is the grid's learning rates on
    a log scale; "none" is a seed at which no learning rate of the grid was stable."""
    plan = lab.plan
    colors = {"adam": _PLAIN_COLOR, "lookahead": _LOOKAHEAD_COLOR}
    arms = [arm for arm, _, _ in ARMS]
    ticks = [largest_on_grid([], plan.lrs), *(math.log10(lr) for lr in plan.lrs)]
    tick_labels = ["none", *(f"{lr:.3g}" for lr in plan.lrs)]
    rows, columns = len(plan.tasks), len(plan.warmups)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.6 * columns, 0.4 + 2.8 * rows), squeeze=False, sharex=True
    )
    for row, task in enumerate(plan.tasks):
        variant = "post-LN" if task.endswith("postln") else "pre-LN"
        for column, warmup in enumerate(plan.warmups):
            axis = axes[row][column]
            for place, arm in enumerate(arms):
                color = colors.get(arm, _RESCALED_COLOR)
                edges = lab.edges(task, arm, warmup)
                seen: dict[float, int] = {}
                for edge in edges:
                    order = seen.get(edge, 0)
                    seen[edge] = order + 1
                    offset = (order - (edges.count(edge) - 1) / 2) * 0.07
                    axis.plot(edge, place + 0.12 + offset, "o", color=color, markersize=3.5)
                mean = math.fsum(edges) / len(edges)
                axis.errorbar(
                    [mean], [place - 0.25],
                    xerr=[[mean - min(edges)], [max(edges) - mean]],
                    fmt="D", color=color, markersize=5, capsize=3,
                )  # fmt: skip
            axis.set_yticks(range(len(arms)))
            if column == 0:
                axis.set_yticklabels([arm_label(a, plan).replace(" at ", "\nat ") for a in arms])
                for label, arm in zip(axis.get_yticklabels(), arms, strict=True):
                    label.set_color(colors.get(arm, _RESCALED_COLOR))
            else:
                axis.tick_params(labelleft=False)
            axis.set_ylim(len(arms) - 0.45, -0.55)  # the first arm on top
            axis.set_xticks(ticks, tick_labels, rotation=60, fontsize=8)
            axis.set_xlim(ticks[0] - 0.15, ticks[-1] + 0.15)
            axis.minorticks_off()
            axis.grid(axis="x", alpha=0.3)
            warm = f"linear warm-up over {warmup} steps" if warmup else "no warm-up"
            axis.set_title(f"{variant}, {warm}", fontsize=10)
            if row == rows - 1:
                axis.set_xlabel("largest stable learning rate (log scale)")
    handles = [
        Line2D([], [], color="gray", marker="o", linestyle="", markersize=4,
               label="one seed (ties stacked)"),
        Line2D([], [], color="gray", marker="D", label="geometric mean; bar: lowest to highest"),
    ]  # fmt: skip
    _title(figure, title)
    _legend_below(figure, handles, columns=2)
    return _save(figure, path)
