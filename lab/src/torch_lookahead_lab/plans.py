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

A committed plan revised after results existed says so in its ``lineage``: one entry per earlier
committed version of its file, oldest first, with that version's digest, the commit that
brought it, the seeds its results used (none if it produced none) and where they are::

    "lineage": [{"digest": "9897ca5e098ef067", "commit": "f112fe2",
                 "seeds": [0, 1, 1000], "results": "reports/demo at 075da32"}]

A repository test checks that the lineage names every earlier digest of the file in git.

A report is *exploratory* when its plan says so, or when the plan changed after results
existed and a run of the report uses a seed of those results (``plan_status``): the results of
any version in the plan's lineage, wherever they were written, and the results already in the
report's folder when they are of another plan. A revised plan run only on fresh seeds is
confirmatory: none of its data existed when it was written. Once exploratory, a folder stays
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
    "Lineage",
    "Plan",
    "load_plan",
    "plan_digest",
    "plan_from_mapping",
    "plan_settings",
    "plan_status",
    "seed_spans",
]

ROLES = ("primary", "descriptive", "check")
_HEX = frozenset("0123456789abcdef")


def plan_digest(text: str) -> str:
    """The digest of a plan's text: its SHA-256, first 16 hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Lineage:
    """An earlier committed version of a plan: its ``digest``, the ``commit`` that brought it,
    the ``seeds`` of the runs whose results it produced (empty: none) and where they are."""

    digest: str
    seeds: frozenset[int]
    commit: str = ""
    results: str = ""

    @classmethod
    def from_json(cls, entry: Any, plan: str) -> Lineage:
        """One entry of a plan's ``lineage`` list, checked."""
        accepted = (
            'an object {"digest": 16 lowercase hex digits, "seeds": a list of integers, '
            '"commit": text, "results": text}'
        )
        if not isinstance(entry, Mapping):
            raise ValueError(f"plan {plan!r}: a lineage entry must be {accepted}, got {entry!r}")
        digest, seeds = entry.get("digest"), entry.get("seeds")
        if not (isinstance(digest, str) and len(digest) == 16 and set(digest) <= _HEX):
            raise ValueError(f"plan {plan!r}: lineage digest must be {accepted}, got {digest!r}")
        if not (
            isinstance(seeds, list)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        ):
            raise ValueError(f"plan {plan!r}: lineage seeds must be {accepted}, got {seeds!r}")
        extra = set(entry) - {"digest", "seeds", "commit", "results"}
        if extra:
            raise ValueError(f"plan {plan!r}: lineage entry {digest} has unknown {sorted(extra)}")
        return cls(
            digest, frozenset(seeds), str(entry.get("commit", "")), str(entry.get("results", ""))
        )


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

    def __post_init__(self) -> None:
        self.lineage  # noqa: B018 (checked here: a bad lineage fails as the plan loads)

    @property
    def digest(self) -> str:
        """SHA-256 of the plan's text, first 16 hex digits (``plan_digest``)."""
        return plan_digest(self.text)

    @property
    def lineage(self) -> tuple[Lineage, ...]:
        """The earlier committed versions of this plan, oldest first (none when not revised)."""
        entries = self.data.get("lineage", [])
        if not isinstance(entries, list):
            raise ValueError(f"plan {self.name!r}: lineage must be a list, got {entries!r}")
        return tuple(Lineage.from_json(entry, self.name) for entry in entries)

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


def plan_settings(plan: Plan, quick: bool) -> dict[str, Any]:
    """The settings a run of ``plan`` uses: its data, and for a ``quick`` run its ``quick`` part
    over it. The quick part replaces what it names, at any depth (``{"tuning": {"extension":
    {"max": 1}}}`` changes that number only); a list is replaced whole. The run and its report
    both read this, so the report states the rules the run followed."""
    return _over(plan.data, plan.data.get("quick", {})) if quick else dict(plan.data)


def _over(base: Mapping[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``part`` over it, mapping by mapping."""
    merged = dict(base)
    for key, value in part.items():
        below = merged.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            value = _over(below, value)
        merged[key] = value
    return merged


def plan_status(
    plan: Plan, earlier: Mapping[str, Any] | None, seeds: Collection[int] = ()
) -> tuple[str, str]:
    """(``confirmatory`` or ``exploratory``, why) for a report of ``plan`` whose runs used
    ``seeds``, written into a folder whose earlier results.json is ``earlier`` (None: no
    results existed there).

    The results that existed before the plan was written are those of every version in its
    lineage and those in the folder when another plan made them. The report is confirmatory
    when none existed, or when its runs use none of their seeds (``seeds`` given); otherwise
    exploratory, naming the seeds and plans."""
    if plan.status != "confirmatory":
        return "exploratory", "its plan declares it exploratory"
    before = (earlier or {}).get("plan") or {}
    if before.get("status_of_report") == "exploratory":
        return "exploratory", str(before.get("why_exploratory", "an earlier report was"))
    seen = {entry.digest: set(entry.seeds) for entry in plan.lineage if entry.seeds}
    digest = before.get("digest")
    if earlier is not None and digest is not None and digest != plan.digest:
        used = {int(run["config"]["seed"]) for run in earlier.get("runs", [])}
        seen[digest] = seen.get(digest, set()) | used
    if not seen:
        return "confirmatory", "its plan was fixed before its results"
    plans = f"plan{'s' if len(seen) > 1 else ''} {', '.join(seen)}"
    if not seeds:
        return "exploratory", (
            f"the plan changed after results existed ({plans} then, {plan.digest} now), "
            "and the seeds of this report's runs are not known"
        )
    reused = {d: sorted(set(seeds) & used) for d, used in seen.items() if set(seeds) & used}
    if reused:
        which = "; ".join(f"seeds {seed_spans(s)} of plan {d}" for d, s in reused.items())
        return "exploratory", (
            f"the plan changed after results existed ({plan.digest} now), and its runs reuse "
            f"their seeds: {which}"
        )
    every = sorted(set().union(*seen.values()))
    return "confirmatory", (
        f"its plan, revised after the results of seeds {seed_spans(every)} existed ({plans}), "
        "runs on fresh seeds only"
    )


def seed_spans(seeds: Sequence[int]) -> str:
    """``0-9, 1000-1002`` for sorted seeds."""
    spans: list[list[int]] = []
    for seed in seeds:
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
