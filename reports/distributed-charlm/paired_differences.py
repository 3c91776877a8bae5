"""The paired tables of report.md: each row's final validation bits per character minus that of
plain DistributedLookahead (k = 20, alpha = 1, float32, no fragments, no delay) with the same
seed, and DDP with its bf16_compress_hook and DistributedLookahead's float32, bfloat16 and int8
rows minus plain DDP; mean and 95% t-interval over the seeds, read from options.json.

    python reports/distributed-charlm/paired_differences.py reports/distributed-charlm/options.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from typing import Any

from scipy import stats

PLAIN = (1, 0, None)
DDP = ("ddp", None)
LABELS = {
    DDP: "DDP",
    ("ddp", "bfloat16"): "DDP, `bf16_compress_hook`",
    (2, 0, None): "F = 2",
    (4, 0, None): "F = 4",
    (1, 5, None): "`sync_delay=5`",
    (1, 0, "bfloat16"): '`"bfloat16"`',
    (1, 0, "int8"): '`"int8"`',
    (4, 5, "int8"): 'F = 4, `sync_delay=5`, `"int8"`',
}


def _key(method: dict[str, Any]) -> Any:
    if method["name"] == "ddp":
        return ("ddp", method["compression"])
    return (method["fragments"], method["sync_delay"], method["compression"])


def _finals(run: dict[str, Any]) -> list[float]:
    return [curve[-1]["val_bpc"] for curve in run["curves"]]


def table(
    options: dict[str, Any], base_key: Any = PLAIN, labels: dict[Any, str] | None = None
) -> list[str]:
    """Rows ``labels`` (default: every other row) minus the run ``base_key``, seed by seed."""
    runs = {_key(run["method"]): run for run in options["runs"]}
    base = _finals(runs[base_key])
    lines = ["| run | difference in val bits per character |", "| --- | --- |"]
    for key, label in (LABELS if labels is None else labels).items():
        diffs = [x - b for x, b in zip(_finals(runs[key]), base, strict=True)]
        n = len(diffs)
        half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
        lines.append(f"| {label} | {statistics.fmean(diffs):+.4f} ± {half:.4f} |")
    return lines


AGAINST_DDP = (("ddp", "bfloat16"), PLAIN, (1, 0, "bfloat16"), (1, 0, "int8"))
"""The rows of the second table: DDP's and DistributedLookahead's compressions, and plain
DistributedLookahead."""


def ddp_table(options: dict[str, Any]) -> list[str]:
    """DDP with its bf16_compress_hook, plain DistributedLookahead and its bfloat16 and int8
    rows, each minus plain DDP, seed by seed."""
    labels = {key: LABELS.get(key, "k = 20, alpha = 1, float32") for key in AGAINST_DDP}
    return table(options, DDP, labels)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        options = json.load(file)
    print("\n".join(table(options)))
    print()
    print("\n".join(ddp_table(options)))
