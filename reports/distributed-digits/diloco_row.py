"""The tables of diloco_row.md, read from the runs' result files (``--result-json`` of the example).

    python reports/distributed-digits/diloco_row.py reports/distributed-digits/diloco_row

Each file holds one configuration's runs (one curve per seed, the same seeds in every file). For
each configuration: the final validation loss and accuracy (mean and 95% t-interval over the
seeds), and each seed's lowest validation loss along the run with its step; then each
configuration's final validation loss minus that of plain averaging (alpha = 1, no outer
momentum) with the same seed, mean and 95% t-interval.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from scipy import stats


def _interval(values: list[float]) -> str:
    mean = statistics.mean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.4f} ± {half:.4f}"


def _at(point: dict[str, Any]) -> str:
    return f"{point['val_loss']:.3f} ({point['step']})"


def _label(method: dict[str, Any]) -> str:
    momentum = method["outer_momentum"]
    kind = (
        ""
        if momentum == 0
        else f", {'Nesterov' if method['nesterov'] else 'heavy-ball'} {momentum:g}"
    )
    return f"k = {method['k']}, alpha = {method['alpha']:g}{kind}"


def main(directory: Path) -> None:
    results = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
    seeds = results[0]["seeds"]
    assert all(result["seeds"] == seeds for result in results), "the same seeds in every file"
    print(
        "| configuration | final val loss | final val accuracy | lowest val loss (step), per seed |"
    )
    print("| --- | --- | --- | --- |")
    for result in results:
        curves = result["curves"]
        lowest = [min(curve, key=lambda point: point["val_loss"]) for curve in curves]
        print(
            f"| {_label(result['method'])} "
            f"| {_interval([curve[-1]['val_loss'] for curve in curves])} "
            f"| {_interval([curve[-1]['val_accuracy'] for curve in curves])} "
            f"| {', '.join(_at(point) for point in lowest)} |"
        )
    plain = [
        r for r in results if r["method"]["alpha"] == 1.0 and r["method"]["outer_momentum"] == 0
    ]
    if len(plain) != 1:
        return
    base = [curve[-1]["val_loss"] for curve in plain[0]["curves"]]
    print()
    print("| configuration | final val loss minus plain averaging's, same seed |")
    print("| --- | --- |")
    for result in results:
        if result is plain[0]:
            continue
        finals = [curve[-1]["val_loss"] for curve in result["curves"]]
        differences = [a - b for a, b in zip(finals, base, strict=True)]
        print(f"| {_label(result['method'])} | {_interval(differences)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
