"""reports/distributed-charlm/diloco.md is what its script renders from the cached runs, and the
script's selection follows diloco_plan.md's rule."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

FOLDER = Path(__file__).resolve().parents[2] / "reports" / "distributed-charlm"


def _script() -> ModuleType:
    pytest.importorskip("scipy", reason="the script's t-quantile (a dev extra, not in test-oldest)")
    spec = importlib.util.spec_from_file_location("diloco", FOLDER / "diloco.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_report_is_what_the_script_renders_from_the_cache() -> None:
    diloco = _script()
    assert (FOLDER / "diloco.md").read_text(encoding="utf-8") == diloco.render()


def test_the_row_marked_selected_is_the_rule_s_choice() -> None:
    diloco = _script()
    report = (FOLDER / "diloco.md").read_text(encoding="utf-8")
    marked = re.findall(r"^\| ([\d.]+) \| ([\d.]+) \|.*\*\*selected\*\* \|$", report, re.M)
    selected = diloco.select(diloco.scores())
    assert marked == ([] if selected is None else [(str(selected[0]), str(selected[1]))])


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        # The lowest score wins when nothing else is within 0.002 of it.
        ({(0.5, 0.0): 2.50, (0.7, 0.9): 2.40, (1.0, 0.0): 2.45}, (0.7, 0.9)),
        # Within 0.002: the smaller mu first, even at a higher score ...
        ({(0.5, 0.5): 2.400, (0.7, 0.0): 2.4005, (1.0, 0.9): 2.399}, (0.7, 0.0)),
        # ... then alpha = 1 among the smallest mu.
        ({(0.5, 0.0): 2.3990, (1.0, 0.0): 2.4005, (0.7, 0.5): 2.3995}, (1.0, 0.0)),
        # Just outside the tie: the lower score.
        ({(0.5, 0.5): 2.400, (1.0, 0.0): 2.4021}, (0.5, 0.5)),
        # A missing score: nothing is selected.
        ({(0.5, 0.5): 2.400, (1.0, 0.0): None}, None),
    ],
)
def test_selection_follows_the_plan_s_tie_rule(
    scores: dict[tuple[float, float], float | None], expected: tuple[float, float] | None
) -> None:
    assert _script().select(scores) == expected


def test_a_complete_cache_gets_differences_and_the_rule_s_conclusion(tmp_path: Path) -> None:
    """With every run cached, the report pairs the seeds and applies the conclusion rule: here the
    selected configuration is 0.01 bpc below DiLoCo's values on every seed but level with local
    SGD up to noise."""
    diloco = _script()
    noise = dict(zip(diloco.TEST_SEEDS, (0.003, -0.002, 0.001, -0.004, 0.002), strict=True))

    def write(phase: str, config: object, seed: int, bpc: float) -> None:
        final = {"step": diloco.STEPS, "val_bpc": bpc + 0.05, "test_bpc": bpc}
        run = {"curves": [[final]], "machine": "test", "torch": "test", "backend": "gloo"}
        run |= {"world_size": 2, "wall_seconds": 30.0}
        path = tmp_path / f"{diloco.run_name(phase, config, seed)}.json"
        path.write_text(json.dumps(run))

    for alpha, mu in diloco.GRID:
        for seed in diloco.TUNING_SEEDS:  # (1.0, 0.5) is the lowest, (0.5, 0.0) within 0.002
            best = {(1.0, 0.5): 2.400, (0.5, 0.0): 2.4015}.get((alpha, mu), 2.5)
            write("tune", (alpha, mu), seed, best - 0.05)
    assert diloco.select(diloco.scores(tmp_path)) == (0.5, 0.0)
    for seed in diloco.TEST_SEEDS:
        write("test", (0.5, 0.0), seed, 2.40 + noise[seed])
        write("test", diloco.PUBLISHED, seed, 2.41 + noise[seed] / 2)
        write("test", diloco.LOCAL_SGD, seed, 2.40 - noise[seed])
        write("test", "ddp", seed, 2.30)
    report = diloco.render(tmp_path)
    assert "| 0.5 | 0.0 | 2.4015 | 2.4015 | 2.4015 | 2.4015 | **selected** |" in report
    assert (
        "On charlm, the tuned outer step ends with lower test bits per character than alpha = 0.7, "
        "mu = 0.9 (Nesterov): the paired difference's 95% interval is below zero (the plan's "
        '"repairs the row").'
    ) in report
    assert "exact two-sided sign-flip p = 0.0625" in report  # 5 seeds, all below
    assert "Against alpha = 1.0, mu = 0.0: **no difference was measured**" in report
    assert "Incomplete" not in report
