"""A plan's lineage: the status of a report sees the results of every earlier version of its
plan, not only those in its folder, and each committed plan's lineage names every earlier
version of its file that git holds (``plans.Lineage``, ``plans.plan_status``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from torch_lookahead_lab.plans import Plan, load_plan, plan_digest, plan_from_mapping, plan_status

ROOT = Path(__file__).resolve().parents[2]
PLANS = "lab/src/torch_lookahead_lab/plans"
OLD = "0123456789abcdef"  # the digest of an earlier version that ran on seeds 0-9


def revised(**fields: Any) -> Plan:
    """A confirmatory plan revised once, after the results of seeds 0-9 of plan ``OLD``."""
    lineage = [{"digest": OLD, "commit": "abc1234", "seeds": list(range(10)), "results": "x"}]
    return plan_from_mapping("x", {"status": "confirmatory", "lineage": lineage, **fields})


def results_of(plan: Plan, seeds: range, status: str = "confirmatory") -> dict[str, Any]:
    """A folder's results.json of ``plan`` whose runs used ``seeds``."""
    return {
        "plan": {"digest": plan.digest, "status_of_report": status},
        "runs": [{"config": {"seed": s}} for s in seeds],
    }


def test_a_revised_plan_on_old_seeds_is_exploratory_in_a_fresh_folder() -> None:
    """No results.json in the folder: the lineage alone says that seeds 0-9 were seen."""
    status, why = plan_status(revised(), None, range(5, 15))
    assert status == "exploratory"
    assert f"reuse their seeds: seeds 5-9 of plan {OLD}" in why


def test_a_revised_plan_on_fresh_seeds_is_confirmatory_and_names_its_lineage() -> None:
    status, why = plan_status(revised(), None, range(100, 110))
    assert status == "confirmatory"
    assert why == (
        f"its plan, revised after the results of seeds 0-9 existed (plan {OLD}), runs on "
        "fresh seeds only"
    )
    # without the seeds of its runs nothing shows that they are fresh
    assert plan_status(revised(), None)[0] == "exploratory"


def test_an_unchanged_plan_rerun_in_its_folder_stays_confirmatory() -> None:
    """Its own earlier results (same digest) are no earlier version's: their seeds are the
    report's own, and the lineage still counts."""
    plan = revised()
    status, why = plan_status(plan, results_of(plan, range(100, 110)), range(100, 110))
    assert status == "confirmatory"
    assert f"after the results of seeds 0-9 existed (plan {OLD})" in why
    fixed = plan_from_mapping("y", {"status": "confirmatory"})
    assert plan_status(fixed, results_of(fixed, range(3)), range(3)) == (
        "confirmatory",
        "its plan was fixed before its results",
    )


def test_the_folder_and_the_lineage_count_together() -> None:
    """Results in the folder of a plan outside the lineage count too, merged with it; an
    exploratory folder stays so."""
    plan = revised()
    other = {**results_of(plan, range(200, 203)), "plan": {"digest": "fedcba9876543210"}}
    status, why = plan_status(plan, other, [201, 300])
    assert status == "exploratory" and "seeds 201 of plan fedcba9876543210" in why
    status, why = plan_status(plan, other, range(300, 310))
    assert status == "confirmatory"
    assert f"seeds 0-9, 200-202 existed (plans {OLD}, fedcba9876543210)" in why
    sticky = results_of(plan, range(100, 110), status="exploratory")
    assert plan_status(plan, sticky, range(100, 110))[0] == "exploratory"


def test_a_version_that_produced_no_results_leaves_the_plan_fixed_before_its_results() -> None:
    plan = plan_from_mapping(
        "x", {"status": "confirmatory", "lineage": [{"digest": OLD, "seeds": []}]}
    )
    assert plan_status(plan, None, range(3)) == (
        "confirmatory",
        "its plan was fixed before its results",
    )


@pytest.mark.parametrize(
    ("lineage", "message"),
    [
        ({"digest": OLD}, "lineage must be a list"),
        (["0123"], "a lineage entry must be"),
        ([{"digest": "0123", "seeds": []}], "lineage digest must be"),
        ([{"digest": OLD.upper(), "seeds": []}], "lineage digest must be"),
        ([{"digest": OLD, "seeds": "0-9"}], "lineage seeds must be"),
        ([{"digest": OLD, "seeds": [True]}], "lineage seeds must be"),
        ([{"digest": OLD, "seeds": [], "when": "today"}], r"lineage entry \w+ has unknown"),
    ],
)
def test_a_bad_lineage_is_named_as_the_plan_loads(lineage: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"plan 'x': {message}"):
        plan_from_mapping("x", {"status": "confirmatory", "lineage": lineage})


# ------------------------------------------------------------------ the committed plans and git


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


def _history_or_skip() -> None:
    """Skip, saying why, where git cannot show the plans' history."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the plans' earlier versions cannot be read")
    try:
        shallow = _git("rev-parse", "--is-shallow-repository").strip()
    except subprocess.CalledProcessError:
        pytest.skip(f"{ROOT} is not a git clone: the plans' earlier versions are not here")
    if shallow == "true":
        pytest.skip(
            "shallow clone: the plans' earlier versions may be missing from it, so their "
            "lineage cannot be checked (git fetch --unshallow, then run this test)"
        )


def _committed_versions(name: str) -> list[str]:
    """The texts of every committed version of ``plans/<name>.json`` in HEAD's history."""
    path = f"{PLANS}/{name}.json"
    commits = _git("log", "--full-history", "--format=%H", "--", path).split()
    texts = []
    for commit in commits:
        listed = _git("ls-tree", "--name-only", commit, "--", path).strip()
        if listed:
            texts.append(_git("show", f"{commit}:{path}"))
    return texts


def _committed_results() -> Iterator[dict[str, Any]]:
    """Every distinct committed version of a report's results.json in HEAD's history."""
    blobs: dict[str, None] = {}
    for commit in _git("log", "--full-history", "--format=%H", "--", "reports").split():
        for line in _git("ls-tree", "-r", commit, "--", "reports").splitlines():
            meta, _, path = line.partition("\t")
            if path.endswith("/results.json"):
                blobs.setdefault(meta.split()[2])
    for blob in blobs:
        yield json.loads(_git("cat-file", "blob", blob))


def _plan_names() -> list[str]:
    folder = resources.files("torch_lookahead_lab").joinpath("plans")
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def test_every_committed_plan_names_each_earlier_version_of_its_file_in_its_lineage() -> None:
    """The lineage of each plan file is the set of digests of its earlier committed versions
    (by ``plan_digest``, the lab's own digest), nothing missing and nothing invented; and each
    entry's seeds hold every seed of every committed results.json that version made."""
    _history_or_skip()
    names = _plan_names()
    assert {"demo", "compare-charlm", "stability"} <= set(names)
    plans = {name: load_plan(name) for name in names}
    made: dict[tuple[str, str], set[int]] = {}
    for results in _committed_results():
        recorded = results.get("plan") or {}
        if recorded.get("name") in plans:
            seeds = {int(run["config"]["seed"]) for run in results.get("runs", [])}
            made.setdefault((recorded["name"], recorded["digest"]), set()).update(seeds)
    for name, plan in plans.items():
        earlier = {plan_digest(text) for text in _committed_versions(name)} - {plan.digest}
        listed = {entry.digest: entry.seeds for entry in plan.lineage}
        assert set(listed) == earlier, (
            f"plans/{name}.json: its lineage lists {sorted(listed)}, git holds earlier "
            f"versions {sorted(earlier)}"
        )
        for digest, seen in listed.items():
            missing = made.get((name, digest), set()) - seen
            assert not missing, f"plans/{name}.json: version {digest} ran seeds {missing} too"


@pytest.mark.parametrize("in_lineage", [True, False])
def test_a_folder_of_an_earlier_plan_version_rerenders_with_that_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_lineage: bool
) -> None:
    """A results folder written under an earlier version of a committed plan re-renders with the
    plan.json it holds, counted as committed only when the plan's lineage lists that digest."""
    from torch_lookahead_lab import report

    earlier = plan_from_mapping("demo", {"status": "exploratory", "note": "an earlier version"})
    (tmp_path / "plan.json").write_text(earlier.text)
    lineage = [{"digest": plan_digest(earlier.text), "commit": "0000000", "seeds": [0]}]
    current = {"status": "exploratory", "lineage": lineage if in_lineage else []}
    text = json.dumps(current)
    monkeypatch.setattr(report, "load_plan", lambda name: Plan(name, text, current, True))
    recorded = {"name": "demo", "digest": earlier.digest, "plan": {}}
    plan = report._recorded_plan(recorded, tmp_path)
    assert plan.text == earlier.text
    assert plan.committed == in_lineage
