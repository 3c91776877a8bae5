"""The confirmatory stability study: its committed plan, the per-step instability rule, the
post-LN Transformer, the alpha x lr arm, the claims, and the command end to end on the plan's
quick (tiny) configuration."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from torch_lookahead_lab import cli
from torch_lookahead_lab.confirmatory import (
    ConfirmatoryResults,
    arm_config,
    confirmatory_claims,
    confirmatory_configs,
    confirmatory_plan,
    unstable,
)
from torch_lookahead_lab.models import CharTransformer
from torch_lookahead_lab.plans import load_plan
from torch_lookahead_lab.runner import RunResult, run
from torch_lookahead_lab.stability import largest_on_grid
from torch_lookahead_lab.stats import pairs_needed
from torch_lookahead_lab.tasks import get_task


def _run(config, losses: list[float | None]) -> RunResult:  # type: ignore[no-untyped-def]
    return RunResult(config, [0], {"val_bpc": [8.0]}, None, step_losses=losses)


def test_the_plan_is_committed_and_its_primary_cell_has_the_seeds_it_needs() -> None:
    plan = confirmatory_plan()
    assert plan.plan.digest == load_plan("stability").digest and plan.plan.status == "confirmatory"
    assert plan.tasks == ("charlm-transformer", "charlm-transformer-postln")
    assert len(plan.lrs) == 11 and plan.lrs[0] == 0.003 and plan.lrs[-1] == 1.0
    # two primary endpoints (against Adam, against Adam at alpha x lr), Holm: 7 pairs needed
    assert len(plan.seeds) >= pairs_needed(family=2)
    assert min(plan.seeds) >= 2000  # fresh: the pilot used seeds 0-5
    configs = confirmatory_configs(plan)
    assert len(configs) == 2 * 2 * 11 * len(plan.seeds) * 3 == len(set(configs))
    rescaled = arm_config(plan, plan.tasks[0], "adam at alpha x lr", 0.1, 50, plan.seeds[0])
    assert rescaled.lr == pytest.approx(0.05) and rescaled.k is None
    moved = confirmatory_plan(seed_offset=100)
    assert moved.seeds[0] == plan.seeds[0] + 100


def test_a_run_is_unstable_by_its_per_step_training_loss() -> None:
    config = arm_config(confirmatory_plan(), "charlm-transformer", "adam", 0.1, 2, 2000)
    grace = 3
    assert not unstable(_run(config, [5.5, 6.0, 5.9, 5.0, 4.0, 3.0, 2.5]), grace)  # within grace
    assert unstable(_run(config, [5.5, 5.0, 4.0, 3.0, 2.5, 5.6, 2.0]), grace)  # spike, recovered
    assert unstable(_run(config, [5.5, 5.0, None]), grace)  # non-finite
    with pytest.raises(ValueError, match="no per-step training loss"):
        unstable(RunResult(config, [0], {"val_bpc": [8.0]}), grace)
    assert largest_on_grid([0.01, 0.1], [0.01, 0.1, 1.0]) == pytest.approx(-1.0)
    assert largest_on_grid([], [0.01, 0.1, 1.0]) == pytest.approx(-3.0)


def test_the_post_ln_transformer_is_causal_and_differs_from_pre_ln() -> None:
    torch.manual_seed(0)
    post = CharTransformer(d_model=16, heads=4, layers=2, context=8, norm_first=False)
    torch.manual_seed(0)
    pre = CharTransformer(d_model=16, heads=4, layers=2, context=8)
    tokens = torch.randint(0, 256, (2, 8))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 256
    with torch.no_grad():
        before, after = post(tokens), post(changed)
        assert not torch.allclose(before, pre(tokens))
    assert torch.equal(before[:, :5], after[:, :5]) and not torch.equal(before[:, 5:], after[:, 5:])
    assert get_task("charlm-transformer-postln").records_step_losses


def test_claims_on_synthetic_runs_primary_cell_holm_adjusted() -> None:
    """Lookahead stable one grid step beyond Adam on 8 seeds, and level with Adam at alpha x
    lr: the primary cell supports against Adam and is equivalent against the rescaled arm."""
    plan = dataclasses.replace(confirmatory_plan(), tasks=("charlm-transformer",))
    runs = []
    for config in confirmatory_configs(plan):
        index = plan.lrs.index(config.lr) if config.lr in plan.lrs else None
        if config.k is not None:
            edge = 6
        elif index is None:  # Adam at alpha x lr: read on the grid
            index = min(range(len(plan.lrs)), key=lambda i: abs(plan.lrs[i] * 0.5 - config.lr))
            edge = 6
        else:
            edge = 5
        assert index is not None
        runs.append(_run(config, [5.5, 5.0] + [4.0 if index <= edge else 9.0] * 60))
    claims = confirmatory_claims(ConfirmatoryResults(plan, "c", runs))
    primary = [c for c in claims if c.role == "primary"]
    assert [c.key for c in primary] == ["stability_edge", "stability_edge_rescaled"]
    assert primary[0].cases[0].verdict == "supports"
    assert primary[0].cases[0].adjusted is not None
    assert primary[1].cases[0].verdict.startswith("equivalent within")
    other = [c for c in claims if c.role == "descriptive"]
    assert [case.label for c in other for case in c.cases] == ["pre-LN, no warm-up"] * 2


@pytest.mark.slow  # 12 Transformer runs: about a minute on 2 cores
def test_the_confirmatory_command_on_its_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "confirmatory"
    code = cli.main(["stability", "--confirmatory", "--quick", "--out", str(out), "--workers", "1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["digest"] == load_plan("stability").digest
    assert len(results["runs"]) == 2 * 1 * 2 * 1 * 3
    assert all(len(r["step_losses"]) >= 1 for r in results["runs"])
    assert {r["config"]["task"] for r in results["runs"]} == {
        "charlm-transformer", "charlm-transformer-postln"
    }  # fmt: skip
    report = (out / "report.md").read_text()
    assert "## Stable runs per learning rate" in report and "Instability rule" in report
    assert math.isfinite(results["runs"][0]["step_losses"][0])


def test_per_step_losses_are_recorded_only_where_the_task_asks() -> None:
    plan = confirmatory_plan(quick=True)
    config = dataclasses.replace(
        arm_config(plan, "charlm-transformer", "adam", plan.lrs[0], 5, plan.seeds[0]), steps=3
    )
    result = run(config)
    assert result.step_losses is not None and len(result.step_losses) == 3
    digits = run(dataclasses.replace(config, task="digits", inner="sgd", lr=0.05, steps=2))
    assert digits.step_losses is None and "step_losses" not in digits.to_json()
