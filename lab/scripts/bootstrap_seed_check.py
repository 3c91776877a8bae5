"""How the verdicts of a demo or sweep results.json depend on the two-way bootstrap's
generator seed.

The plan's ``example_bootstrap`` fixes (resamples, seed); a bootstrap p-value is an estimate
whose Monte Carlo error can decide a verdict. This script judges the runs that results.json
records with the plan it records, once as recorded and once under each generator seed 1..N
(the plan's resample count unchanged), through the lab's own claims (``report.build_claims``,
Holm included), and prints, per case whose verdict changes under any seed, how many seeds
change it. From the repository root, e.g. for the demo at commit 131ec7a::

    git show 131ec7a:reports/demo/results.json > /tmp/results.json
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src:$PWD/lab/src \\
        python lab/scripts/bootstrap_seed_check.py /tmp/results.json --seeds 39
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch_lookahead_lab.plans import plan_from_mapping
from torch_lookahead_lab.report import build_claims, recorded_lab
from torch_lookahead_lab.stats import verdict_kind


def verdicts(payload: dict[str, Any], seed: int | None) -> dict[tuple[str, str], str]:
    """Per (claim key, case label), the verdict (its kind) of the runs of ``payload`` under
    its recorded plan, with the bootstrap's generator ``seed`` in place of the plan's (None:
    the plan's)."""
    recorded = payload["plan"]
    data = dict(recorded["plan"])
    if seed is not None:
        data["example_bootstrap"] = {**data["example_bootstrap"], "seed": seed}
    lab = recorded_lab(payload, plan_from_mapping(recorded["name"], data))
    return {
        (claim.key, case.label): verdict_kind(case.verdict)
        for claim in build_claims(lab)
        for case in claim.cases
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a demo or sweep results.json")
    parser.add_argument(
        "--seeds", type=int, default=39, help="judge under generator seeds 1..SEEDS (39)"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be a positive integer, got {args.seeds}")
    payload = json.loads(args.results.read_text())
    bootstrap = payload["plan"]["plan"].get("example_bootstrap")
    if not bootstrap:
        parser.error(f"{args.results}: its plan has no example_bootstrap")
    print(
        f"plan {payload['plan']['name']} {payload['plan']['digest']}: "
        f"{bootstrap['resamples']} resamples, generator seed {bootstrap['seed']}; "
        f"judged again under seeds 1..{args.seeds}"
        + (" (the plan's own among them)" if 1 <= int(bootstrap["seed"]) <= args.seeds else "")
    )
    base = verdicts(payload, None)
    changed: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for seed in range(1, args.seeds + 1):
        for case, kind in verdicts(payload, seed).items():
            if kind != base[case]:
                changed.setdefault(case, []).append((seed, kind))
    if not changed:
        print(f"no verdict changes under any of the {args.seeds} seeds")
    for (key, label), moved in changed.items():
        print(
            f"{key} / {label}: {base[(key, label)]} at seed {bootstrap['seed']}; changes under "
            f"{len(moved)} of {args.seeds} seeds: "
            + ", ".join(f"{seed} ({kind})" for seed, kind in moved)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
