"""Plans before data: the committed demo plan drives the demo, its digest identifies it, a
plan that changed after results existed makes the report exploratory, and --seed-offset moves
every seed."""

from __future__ import annotations

import hashlib
import json

import pytest

from torch_lookahead_lab.experiments import (
    compare_experiment,
    demo_experiment,
    demo_plan,
    planned_compare_experiment,
)
from torch_lookahead_lab.plans import (
    ClaimPlan,
    load_plan,
    plan_from_mapping,
    plan_settings,
    plan_status,
)
from torch_lookahead_lab.stats import pairs_needed
from torch_lookahead_lab.tasks import TaskSettings

TINY = TaskSettings(steps=4, eval_every=2, batch_size=8)


def test_the_demo_plan_is_the_committed_file_and_its_digest_is_its_sha256() -> None:
    plan = load_plan("demo")
    assert plan.digest == hashlib.sha256(plan.text.encode()).hexdigest()[:16]
    assert plan.status == "confirmatory"
    assert plan.claim("final_default") == ClaimPlan(
        "primary", "test_accuracy", 0.01, plan.data["claims"]["final_default"]["why"],
        bootstrap=(100_000, 23),
    )  # fmt: skip
    assert plan.claim("not a claim").role == "descriptive"
    with pytest.raises(ValueError, match="no committed plan"):
        load_plan("nope")


def test_the_demo_has_the_seeds_its_primary_claims_need() -> None:
    """Two primary claims of two cases each, Holm over 4 endpoints: the exact test needs 8
    pairs; the plan's comparison seeds are at least that, and the selection seeds are others."""
    plan = demo_plan()
    primary = [k for k in plan.plan.data["claims"] if plan.plan.claim(k).role == "primary"]
    endpoints = len(primary) * len(plan.inners)
    assert len(plan.comparison_seeds) >= pairs_needed(family=endpoints)
    assert not set(plan.comparison_seeds) & set(plan.selection_seeds)
    assert 0.3 in plan.grid_alphas


def test_the_demo_follows_its_plan_and_the_offset_moves_every_seed() -> None:
    experiment = demo_experiment()
    plan = demo_plan()
    assert {c.seed for c in experiment.compare} == set(plan.comparison_seeds)
    assert {c.seed for c in experiment.lr_sweep} == set(plan.selection_seeds)
    assert experiment.tuned_seeds == plan.comparison_seeds
    moved = demo_experiment(seed_offset=500)
    assert {c.seed for c in moved.compare} == {s + 500 for s in plan.comparison_seeds}
    assert {c.seed for c in moved.lr_sweep} == {s + 500 for s in plan.selection_seeds}
    assert moved.plan is not None and moved.plan.digest == plan.plan.digest
    with pytest.raises(ValueError, match="seed_offset"):
        demo_plan(seed_offset=-1)
    flags = compare_experiment("digits", ["sgd"], 2, TINY, seed_offset=7)
    assert {c.seed for c in flags.compare} == {7, 8}
    assert flags.plan is not None and flags.plan.status == "exploratory"


def test_the_quick_part_replaces_what_it_names_at_any_depth() -> None:
    """A quick run's settings: the quick part over the plan, mapping by mapping, a list
    replaced whole; the full run's are the plan's data; a plan without a quick part runs its
    full settings quick."""
    data = {
        "tuning": {"extension": {"factor": 3.0, "max": 2, "rule": "r"}, "draw": {"seed": 1}},
        "lrs": [1, 2, 3],
        "quick": {"tuning": {"extension": {"max": 1}}, "lrs": [1]},
    }
    plan = plan_from_mapping("p", data)
    assert plan_settings(plan, quick=False) == plan.data
    quick = plan_settings(plan, quick=True)
    assert quick["tuning"] == {
        "extension": {"factor": 3.0, "max": 1, "rule": "r"},
        "draw": {"seed": 1},
    }
    assert quick["lrs"] == [1]
    assert plan.data["tuning"]["extension"]["max"] == 2  # the plan itself is left as it was
    bare = plan_from_mapping("p", {"lrs": [1, 2]})
    assert plan_settings(bare, quick=True) == bare.data


def test_a_plan_that_changed_after_results_existed_makes_the_report_exploratory() -> None:
    plan = plan_from_mapping("x", {"status": "confirmatory", "claims": {}})
    assert plan_status(plan, None) == ("confirmatory", "its plan was fixed before its results")
    same = {"plan": {"digest": plan.digest, "status_of_report": "confirmatory"}}
    assert plan_status(plan, same)[0] == "confirmatory"
    before = {"plan": {"digest": "0123456789abcdef", "status_of_report": "confirmatory"}}
    status, why = plan_status(plan, before)
    assert status == "exploratory" and "plan changed after results existed" in why
    # once exploratory, a folder stays so, whatever the plan is now
    sticky = {"plan": {"digest": plan.digest, "status_of_report": "exploratory",
                       "why_exploratory": "the plan changed after results existed"}}  # fmt: skip
    assert plan_status(plan, sticky)[0] == "exploratory"
    flagged = plan_from_mapping("x", {"status": "exploratory"})
    assert plan_status(flagged, None)[0] == "exploratory"
    assert json.loads(plan.text) == plan.data


def test_the_demo_plan_declares_the_two_way_bootstrap_for_its_test_accuracy_claims() -> None:
    """Every claim on test accuracy but the variance ratio gets the bootstrap over seeds and
    test images, with a declared number of resamples and generator seed; the others not."""
    plan = load_plan("demo")
    on_accuracy = {
        key for key, entry in plan.data["claims"].items()
        if entry["endpoint"] == "test_accuracy" and key != "seed_variance"
    }  # fmt: skip
    assert on_accuracy == {
        "final_default", "rescaled_lr", "final_tuned", "final_default_constant", "k_alpha_robustness"
    }  # fmt: skip
    for key in plan.data["claims"]:
        expected = (100_000, 23) if key in on_accuracy else None
        assert plan.claim(key).bootstrap == expected, key
    assert "intersection-union" in plan.data["example_bootstrap"]["rule"]


def test_a_revised_plan_on_fresh_seeds_stays_confirmatory() -> None:
    """A plan that changed after results existed is confirmatory again only where none of its
    runs uses a seed of those results (none of its data existed when it was written)."""
    plan = plan_from_mapping("x", {"status": "confirmatory", "claims": {}})
    before = {
        "plan": {"digest": "0123456789abcdef", "status_of_report": "confirmatory"},
        "runs": [{"config": {"seed": s}} for s in (0, 1, 2, 1000)],
    }
    status, why = plan_status(plan, before, {100, 101, 1100})
    assert status == "confirmatory" and "after the results of seeds 0-2, 1000 existed" in why
    assert "0123456789abcdef" in why
    assert plan_status(plan, before, {2, 100})[0] == "exploratory"
    assert plan_status(plan, before)[0] == "exploratory"
    sticky = {**before, "plan": {**before["plan"], "status_of_report": "exploratory"}}
    assert plan_status(plan, sticky, {100})[0] == "exploratory"


def test_claim_roles_are_checked() -> None:
    with pytest.raises(ValueError, match="role"):
        ClaimPlan("confirmatory", "x")


def test_compare_charlm_follows_its_committed_plan_on_the_test_split() -> None:
    """The committed plan fixes the task, inners, fresh seeds (none of the pilot's 0-2) and
    enough of them for its primary family (difference and equivalence per inner optimizer);
    every run measures the test split; --seed-offset moves the seeds."""
    plan = load_plan("compare-charlm")
    assert plan.committed and plan.status == "confirmatory"
    assert plan.claim("final_default").endpoint == "test_bpc"
    experiment = planned_compare_experiment("compare-charlm")
    seeds = sorted({c.seed for c in experiment.compare})
    assert seeds == list(range(3000, 3010)) and not set(seeds) & {0, 1, 2}
    assert len(seeds) >= pairs_needed(family=2 * len(plan.data["inners"]))
    assert all(c.evaluate_test and c.task == "charlm" for c in experiment.compare)
    assert {(c.inner, c.k) for c in experiment.compare} == {
        (inner, k) for inner in ("adamw", "sgd") for k in (None, 5)
    }
    assert experiment.plan is not None and experiment.plan.digest == plan.digest
    moved = planned_compare_experiment("compare-charlm", seed_offset=100)
    assert {c.seed for c in moved.compare} == {s + 100 for s in seeds}
    with pytest.raises(ValueError, match="not a plan of the compare command"):
        planned_compare_experiment("demo")
    flags = compare_experiment("digits", ["sgd"], 2, TINY)
    assert flags.plan is not None and not flags.plan.committed
