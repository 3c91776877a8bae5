"""Plans before data: what an experiment runs and how it will be judged, fixed in a file.

A plan names the claims, each claim's role (``primary``: confirmatory, Holm across the report's
primary endpoints, difference and equivalence tests as one family; ``descriptive``: shown with
its test at the unadjusted level, except the (k, alpha) settings, Holm-adjusted among
themselves, no confirmatory weight; ``check``: an implementation check of a theorem), its
endpoint and its
smallest effect of interest (SESOI), and the grids, seeds, selection rule and level. The demo's
plan is a committed file of this package (``plans/demo.json``), and so is each plan that
``compare --plan`` runs (``plans/compare-charlm.json``); a command driven by its flags
(compare, sweep) writes the plan its flags make. Either way the report folder gets the plan as
``plan.json`` and its digest in ``results.json``.

A report is *exploratory* when its plan says so, or when the plan changed after results
existed: the folder's earlier ``results.json`` names another plan digest (``plan_status``),
unless no run of the report uses a seed of the earlier results' runs (a revised plan run on
fresh seeds: none of its data existed when it was written). Once exploratory, a folder stays
so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = [
    "ClaimPlan",
    "Plan",
    "load_plan",
    "plan_from_mapping",
    "plan_status",
]

ROLES = ("primary", "descriptive", "check")


@dataclass(frozen=True)
class ClaimPlan:
    """How one claim is judged: its role, endpoint and smallest effect of interest;
    ``bootstrap``: (resamples, generator seed) of the two-way paired bootstrap over seeds and
    test examples that must agree with the seed-level test (the plan's ``example_bootstrap``
    names the claim), None when the seed-level test decides alone."""

    role: str
    endpoint: str
    sesoi: float | None = None
    why: str = ""
    bootstrap: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"a claim's role must be one of {', '.join(ROLES)}, got {self.role!r}")


@dataclass(frozen=True)
class Plan:
    """A plan as written (``text``, whose SHA-256 is its digest) and parsed (``data``);
    ``committed``: a file of this package (``load_plan``), not made from a command's flags."""

    name: str
    text: str
    data: Mapping[str, Any]
    committed: bool = False

    @property
    def digest(self) -> str:
        """SHA-256 of the plan's text, first 16 hex digits."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def status(self) -> str:
        """``confirmatory`` or ``exploratory``, as the plan declares it."""
        return str(self.data.get("status", "exploratory"))

    def claim(self, key: str) -> ClaimPlan:
        """How the plan judges claim ``key`` (descriptive, no SESOI, when it does not say)."""
        entry = self.data.get("claims", {}).get(key)
        if entry is None:
            return ClaimPlan("descriptive", "", None)
        sesoi = entry.get("sesoi", entry.get("tolerance"))
        bootstrap = self.data.get("example_bootstrap")
        resampled = (
            (int(bootstrap["resamples"]), int(bootstrap["seed"]))
            if bootstrap and key in bootstrap["claims"]
            else None
        )
        return ClaimPlan(
            entry["role"], entry["endpoint"], None if sesoi is None else float(sesoi),
            entry.get("why", ""), resampled,
        )  # fmt: skip

    def json(self) -> dict[str, Any]:
        """The plan as results.json records it."""
        return {"name": self.name, "digest": self.digest, "status": self.status, "plan": self.data}


def load_plan(name: str) -> Plan:
    """The committed plan ``plans/<name>.json`` of this package."""
    try:
        text = resources.files("torch_lookahead_lab").joinpath(f"plans/{name}.json").read_text()
    except FileNotFoundError:
        raise ValueError(f"no committed plan called {name!r}") from None
    return Plan(name, text, json.loads(text), committed=True)


def plan_from_mapping(name: str, data: Mapping[str, Any]) -> Plan:
    """A plan made from a command's flags, in a canonical text (sorted keys)."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    return Plan(name, text, json.loads(text))


def plan_status(
    plan: Plan, earlier: Mapping[str, Any] | None, seeds: Collection[int] = ()
) -> tuple[str, str]:
    """(``confirmatory`` or ``exploratory``, why) for a report of ``plan`` whose runs used
    ``seeds``, written into a folder whose earlier results.json is ``earlier`` (None: no
    results existed)."""
    if plan.status != "confirmatory":
        return "exploratory", "its plan declares it exploratory"
    if earlier is not None:
        before = earlier.get("plan") or {}
        if before.get("status_of_report") == "exploratory":
            return "exploratory", str(before.get("why_exploratory", "an earlier report was"))
        digest = before.get("digest")
        used = sorted({int(run["config"]["seed"]) for run in earlier.get("runs", [])})
        if digest is not None and digest != plan.digest and seeds and not set(seeds) & set(used):
            return "confirmatory", (
                f"its plan, revised after the results of seeds {_spans(used)} existed (plan "
                f"{digest}), runs on fresh seeds only"
            )
        if digest is not None and digest != plan.digest:
            return "exploratory", (
                f"the plan changed after results existed (digest {digest} then, {plan.digest} now)"
            )
    return "confirmatory", "its plan was fixed before its results"


def _spans(seeds: Sequence[int]) -> str:
    """``0-9, 1000-1002`` for sorted seeds."""
    spans: list[list[int]] = []
    for seed in seeds:
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
