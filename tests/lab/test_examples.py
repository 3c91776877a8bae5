"""The per-example record of the test split: it round-trips through results.json, scores a
run as its test accuracy does, enters the test-accuracy verdicts through the two-way bootstrap
(a verdict counts only where the seed-level test and the bootstrap both reach it), is compared
between machines by its counts, and removes the report's sampling-error bullet."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch

from torch_lookahead_lab.claims import Case, final_quality_claim, holm_primary, pair_by_inner
from torch_lookahead_lab.experiments import LabResults
from torch_lookahead_lab.metrics import final_value, scored_correct, summarize
from torch_lookahead_lab.plans import ClaimPlan
from torch_lookahead_lab.report import _cannot_test_lines
from torch_lookahead_lab.reproduce import HORIZON_STEPS, LATE_TOLERANCE, disagreements
from torch_lookahead_lab.runner import (
    RunConfig,
    RunResult,
    decode_correct,
    encode_correct,
    make_config,
    run,
)
from torch_lookahead_lab.stats import holm
from torch_lookahead_lab.tasks import TaskSettings

EXAMPLES = 360


def test_a_digits_run_records_its_test_examples_and_the_record_round_trips() -> None:
    result = run(make_config("digits", "sgd", seed=3, settings=TaskSettings(20, 10, 32)))
    record = result.test_correct
    assert record is not None and record["examples"] == EXAMPLES and record["steps"] == [0, 20]
    assert all(len(mask) == 90 for mask in record["correct"])  # 360 bits in hex
    for step, mask in zip(record["steps"], record["correct"], strict=True):
        correct = decode_correct(mask, EXAMPLES)
        at = result.steps.index(step)
        assert correct.sum() / EXAMPLES == result.history["test_accuracy"][at]
    back = RunResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back == result and back.test_correct == record
    assert (scored_correct(back).mean()) == final_value(back, "test_accuracy")  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [1, 7, 8, 9, 360, 1001])
def test_masks_encode_and_decode(size: int) -> None:
    bits = np.random.default_rng(size).random(size) < 0.5
    mask = encode_correct(torch.from_numpy(bits))
    assert len(mask) == 2 * ((size + 7) // 8)
    assert np.array_equal(decode_correct(mask, size), bits)
    with pytest.raises(ValueError, match="bytes"):
        decode_correct(mask, size + 8)


def run_with(
    seed: int, end: np.ndarray, *, start: np.ndarray | None = None, k: int | None = None,
    lr: float = 0.05, diverged_at: int | None = None,
) -> RunResult:  # fmt: skip
    """A digits run of 10 steps whose test examples at its end are ``end`` (at step 0
    ``start``, default a tenth right)."""
    start = np.arange(EXAMPLES) % 10 == 0 if start is None else start
    config = RunConfig("digits", "sgd", lr, seed, 10, 10, 8, k, 0.5 if k else None)
    accuracy = [float(start.mean()), float(end.mean())]
    history = {"train_loss": [2.3, 0.1], "val_loss": [2.3, 0.1], "val_accuracy": [0.1, 0.9]}
    record = {
        "examples": EXAMPLES,
        "steps": [0, 10],
        "correct": [encode_correct(torch.from_numpy(v)) for v in (start, end)],
    }
    return RunResult(config, [0, 10], history | {"test_accuracy": accuracy}, diverged_at,
                     test_correct=record)  # fmt: skip


def test_the_scored_examples_are_those_the_test_accuracy_scores() -> None:
    good = np.arange(EXAMPLES) >= 10
    worse = np.arange(EXAMPLES) < 5  # fewer right than at step 0 (36)
    for result, expected in [
        (run_with(0, good), good),
        (run_with(0, worse), np.arange(EXAMPLES) % 10 == 0),
        (run_with(0, good, diverged_at=10), np.arange(EXAMPLES) % 10 == 0),
    ]:
        scored = scored_correct(result)
        assert scored is not None and np.array_equal(scored, expected)
        assert scored.mean() == final_value(result, "test_accuracy")
    assert scored_correct(RunResult(run_with(0, good).config, [0], {})) is None


def pairs_where_lookahead_misses(images: int) -> list[Any]:
    """Ten seeds: plain wrong on three images of its own, Lookahead also on the same ``images``
    images at every seed: every seed agrees, only those images carry the difference."""
    runs = []
    for seed in range(10):
        plain = np.ones(EXAMPLES, dtype=bool)
        plain[3 * seed : 3 * seed + 3] = False
        wrapped = plain.copy()
        wrapped[EXAMPLES - images :] = False
        runs += [run_with(seed, plain), run_with(seed, wrapped, k=5)]
    return pair_by_inner(summarize(runs))


def claim_of(pairs: list[Any], plan: ClaimPlan) -> Any:
    return final_quality_claim(
        pairs, "test_accuracy", protocol="p", key="final_default", title="t", plan=plan
    )


BOOTSTRAP = (2000, 23)


def test_a_difference_counts_only_where_the_bootstrap_over_images_agrees() -> None:
    """Two images, wrong at every seed: the seed-level test sees ten equal differences (p =
    0.002) but other images would not have those two; the verdict is inconclusive and says
    what the seed-level test alone would have said. Thirty images: both tests agree."""
    alone = claim_of(pairs_where_lookahead_misses(2), ClaimPlan("primary", "test_accuracy"))
    assert alone.cases[0].verdict == "contradicts" and alone.cases[0].bootstrap is None
    both = claim_of(
        pairs_where_lookahead_misses(2), ClaimPlan("primary", "test_accuracy", None, "", BOOTSTRAP)
    )
    (case,) = both.cases
    assert case.estimate is not None and case.bootstrap is not None
    assert case.estimate.p_value == pytest.approx(0.002, abs=1e-4)
    assert case.bootstrap.p_value > 0.05
    assert case.bootstrap.effect == pytest.approx(case.estimate.effect) == pytest.approx(-2 / 360)
    assert case.verdict == "inconclusive at 10 seeds"
    assert case.caveat_text == "seed-level test alone: contradicts"
    assert "two-way paired bootstrap over seeds and 360 test examples" in case.sentence
    many = claim_of(
        pairs_where_lookahead_misses(30), ClaimPlan("primary", "test_accuracy", None, "", BOOTSTRAP)
    )
    assert many.cases[0].verdict == "contradicts" and many.cases[0].caveat_text == ""


def pairs_that_trade_images() -> list[Any]:
    """At every seed Lookahead gets 20 images wrong that plain gets right and 20 right that
    plain gets wrong: no seed differs, but other images would."""
    runs = []
    for seed in range(10):
        plain = np.arange(EXAMPLES) >= 20
        wrapped = (np.arange(EXAMPLES) < 20) | (np.arange(EXAMPLES) >= 40)
        runs += [run_with(seed, plain), run_with(seed, wrapped, k=5)]
    return pair_by_inner(summarize(runs))


def test_equivalence_counts_only_where_the_bootstrap_over_images_agrees() -> None:
    seed_level = claim_of(pairs_that_trade_images(), ClaimPlan("primary", "test_accuracy", 0.01))
    assert seed_level.cases[0].verdict == "equivalent within ±0.01"
    both = claim_of(
        pairs_that_trade_images(), ClaimPlan("primary", "test_accuracy", 0.01, "", BOOTSTRAP)
    )
    (case,) = both.cases
    assert case.bootstrap is not None and case.bootstrap.p_equivalence > 0.05
    assert case.verdict == "inconclusive at 10 seeds"
    assert case.caveat_text == "seed-level test alone: equivalent"


def test_holm_adjusts_the_larger_p_values_of_both_tests() -> None:
    plan = ClaimPlan("primary", "test_accuracy", 0.01, "", BOOTSTRAP)
    claims = [claim_of(pairs_where_lookahead_misses(n), plan) for n in (2, 30)]
    adjusted = holm_primary(claims)
    cases: list[Case] = [c for claim in claims for c in claim.cases]
    larger = [c.p_values() for c in cases]
    expected = holm([p for p, _ in larger] + [q for _, q in larger])
    for case, p, q in zip(
        (c for claim in adjusted for c in claim.cases), expected[:2], expected[2:], strict=True
    ):
        assert case.adjusted == pytest.approx((p, q)) and case.family == 4
    assert [c.verdict for claim in adjusted for c in claim.cases] == [
        "inconclusive at 10 seeds", "contradicts",
    ]  # fmt: skip


def test_a_plan_that_asks_for_the_bootstrap_needs_the_record() -> None:
    pairs = pairs_where_lookahead_misses(2)
    plain, wrapped = pairs[0]
    bare = [RunResult(r.config, r.steps, r.history) for r in (*plain.runs, *wrapped.runs)]
    with pytest.raises(ValueError, match="per-example record"):
        claim_of(
            pair_by_inner(summarize(bare)),
            ClaimPlan("primary", "test_accuracy", 0.01, "", BOOTSTRAP),
        )


def recorded(end_step: int, masks: list[np.ndarray]) -> dict[str, Any]:
    payload = run_with(100, masks[1], start=masks[0]).to_json()
    payload["steps"] = [0, end_step]
    payload["test_correct"]["steps"] = [0, end_step]
    return payload


def test_the_record_is_compared_by_its_counts_across_machines_bit_for_bit_on_one() -> None:
    start = np.arange(EXAMPLES) % 10 == 0
    end = np.arange(EXAMPLES) >= 10
    late = HORIZON_STEPS + 50
    committed = recorded(late, [start, end])
    assert not disagreements(committed, copy.deepcopy(committed), bit_for_bit=True)
    swapped = end.copy()
    swapped[[0, 20]] = [True, False]  # other images, the same count: rounding on another CPU
    fresh = recorded(late, [start, swapped])
    (difference,) = disagreements(committed, fresh, bit_for_bit=True)
    assert difference.metric == "test_correct" and difference.step == late
    assert not disagreements(committed, fresh, bit_for_bit=False)
    fewer = end.copy()
    fewer[10 : 10 + int(LATE_TOLERANCE * 350) + 2] = False  # beyond the late tolerance
    assert disagreements(committed, recorded(late, [start, fewer]), bit_for_bit=False)
    one_off = start.copy()
    one_off[1] = True  # step 0 is held to the early tolerance: one image is too many
    assert disagreements(committed, recorded(late, [one_off, end]), bit_for_bit=False)
    missing = copy.deepcopy(committed)
    del missing["test_correct"]
    assert disagreements(committed, missing, bit_for_bit=False)
    assert not disagreements(missing, committed, bit_for_bit=True)  # recorded before the record


def test_the_sampling_error_bullet_goes_where_the_bootstrap_ran() -> None:
    pairs = pairs_where_lookahead_misses(30)
    runs = [r for pair in pairs for s in pair for r in s.runs]
    lab = LabResults("t", "c", task="digits", headline_metric="val_accuracy", compare=runs)
    with_bootstrap = claim_of(pairs, ClaimPlan("primary", "test_accuracy", 0.01, "", BOOTSTRAP))
    without = claim_of(pairs, ClaimPlan("primary", "test_accuracy", 0.01))
    assert not any("Sampling error" in line for line in _cannot_test_lines(lab, [with_bootstrap]))
    (line,) = [line for line in _cannot_test_lines(lab, [without]) if "Sampling error" in line]
    assert "360 test images" in line and "not included" in line
    charlm = LabResults("t", "c", task="charlm", headline_metric="val_bpc")
    (line,) = [line for line in _cannot_test_lines(charlm, []) if "Sampling error" in line]
    assert "1,562 validation windows of 64 bytes" in line
