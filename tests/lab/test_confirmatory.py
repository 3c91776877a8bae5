"""The confirmatory stability study: its committed plan, the per-step instability rule, the
post-LN Transformer, the alpha x lr arm, the claims, and the command end to end on the plan's
quick (tiny) configuration."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from torch_lookahead_lab import cli, plots
from torch_lookahead_lab.confirmatory import (
    ARMS,
    ConfirmatoryResults,
    arm_config,
    censored_at_top,
    confirmatory_claims,
    confirmatory_configs,
    confirmatory_plan,
    edge_search,
    first_checks,
    first_round,
    grace_flips,
    grid_caveat,
    grid_step,
    not_monotone,
    reference_config,
    unstable,
    unstable_at,
)
from torch_lookahead_lab.models import CharTransformer
from torch_lookahead_lab.plans import load_plan
from torch_lookahead_lab.report import summary_sentences, verdict_rows
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


@pytest.mark.slow  # up to 12 short Transformer runs: about half a minute on 2 cores
def test_the_confirmatory_command_on_its_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "confirmatory"
    code = cli.main(["stability", "--confirmatory", "--quick", "--out", str(out), "--workers", "1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["digest"] == load_plan("stability").digest
    # 2 tasks x 1 warm-up x 3 arms x 1 seed, each from the top of its 2 learning rates down
    assert 2 * 3 <= len(results["runs"]) <= 2 * 1 * 2 * 1 * 3
    assert all(len(r["step_losses"]) >= 1 for r in results["runs"])
    assert sum(r["reference"] for r in results["runs"]) == 1
    assert {r["config"]["task"] for r in results["runs"]} == {
        "charlm-transformer", "charlm-transformer-postln"
    }  # fmt: skip
    report = (out / "report.md").read_text()
    assert "## Largest stable learning rate per seed" in report and "Instability rule" in report
    assert math.isfinite(results["runs"][0]["step_losses"][0])
    assert (out / "stability.png").is_file()


def _arm_and_index(plan, config) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """The arm of a run of the plan and the index of its learning rate on the grid."""
    if config.k is not None:
        return "lookahead", plan.lrs.index(config.lr)
    if config.lr in plan.lrs:
        return "adam", plan.lrs.index(config.lr)
    scaled = [i for i, lr in enumerate(plan.lrs) if lr * plan.alpha == config.lr]
    return "adam at alpha x lr", scaled[0]


def _synthetic_study() -> ConfirmatoryResults:
    """The whole plan's edge search on synthetic runs: Adam's edge at grid index 5 (4 at odd
    seeds), Lookahead's and the rescaled arm's one step above."""
    plan = confirmatory_plan()

    def fake(config):  # type: ignore[no-untyped-def]
        arm, index = _arm_and_index(plan, config)
        edge = 5 - config.seed % 2 + (arm != "adam")
        return _run(config, [5.5, 5.0] + [4.0 if index <= edge else 9.0] * 60)

    runs = edge_search(plan, lambda configs: [fake(c) for c in configs])
    return ConfirmatoryResults(plan, "torch-lookahead stability --confirmatory", runs, 1.0)


def test_the_report_follows_the_lab_conventions(tmp_path: Path) -> None:
    """Scope and plain sentences on top, the sign that favours Lookahead, a verdict line per
    case, what the lab cannot test, the pilot named as the pilot, the plan's digest in
    results.json and one run marked for the reproduction check."""
    from torch_lookahead_lab.report import write_report

    lab = _synthetic_study()
    report = write_report(tmp_path, lab).read_text()
    top = report.split("## In short")[1].split("##")[0]
    assert top.count("\n- ") <= 5 and "- Scope: two 2-layer" in top
    assert "| favours Lookahead if |" in report and "| > 0 |" in report
    assert "    - pre-LN, warm-up 50: **supports**" in report
    for heading in ("## What this lab cannot test here", "## The pilot", "## Setup"):
        assert heading in report
    assert "reports/stability-charlm" in report.split("## The pilot")[1]
    assert "bar: from the lowest to the highest seed" in report
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["plan"]["digest"] == load_plan("stability").digest
    assert results["plan"]["status_of_report"] == "confirmatory"
    stable = [r for r in results["runs"] if r["reference"]]
    assert [r["config"] for r in stable] == [reference_config(lab.plan).to_dict()]
    edges = results["log10_largest_stable_lr"]["charlm-transformer/warm-up 50/adam"]
    assert edges == pytest.approx([math.log10(lab.plan.lrs[5 - s % 2]) for s in lab.plan.seeds])
    assert (tmp_path / "plan.json").read_text() == load_plan("stability").text


def test_the_figure_labels_every_grid_rate_and_explains_its_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure) or path)
    lab = _synthetic_study()
    plots.plot_confirmatory(lab, tmp_path / "stability.png", title="8 fresh seeds")
    figure = saved[0]
    assert len(figure.axes) == 4
    labels = [t.get_text() for t in figure.axes[2].get_xticklabels()]  # the bottom row
    assert labels == ["none", *(f"{lr:.3g}" for lr in lab.plan.lrs)]
    arms = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert arms == ["adam\nat lr", "Lookahead(adam, k=5, alpha=0.5)\nat lr", "adam\nat 0.5 x lr"]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["one seed (ties stacked)", "geometric mean; bar: lowest to highest"]
    plt.close(figure)


def test_per_step_losses_are_recorded_only_where_the_task_asks() -> None:
    plan = confirmatory_plan(quick=True)
    config = dataclasses.replace(
        arm_config(plan, "charlm-transformer", "adam", plan.lrs[0], 5, plan.seeds[0]), steps=3
    )
    result = run(config)
    assert result.step_losses is not None and len(result.step_losses) == 3
    digits = run(dataclasses.replace(config, task="digits", inner="sgd", lr=0.05, steps=2))
    assert digits.step_losses is None and "step_losses" not in digits.to_json()


def test_stopping_a_run_when_it_turns_unstable_changes_no_flag_and_no_edge() -> None:
    """The savings are exact: a run stopped where the rule first calls it unstable has the same
    flag as the whole run (and the same losses up to there), and the edge read from the
    stopped runs of the search equals the edge read from every whole run of the grid."""
    plan = dataclasses.replace(
        confirmatory_plan(quick=True), tasks=("charlm-transformer",), warmups=(0,), lrs=(0.1, 1.0)
    )
    whole, stopped = [], []
    for lr in plan.lrs:
        config = arm_config(plan, "charlm-transformer", "adam", lr, 0, plan.seeds[0])
        assert config.stop_unstable_after == plan.grace_steps
        config = dataclasses.replace(config, steps=60, eval_every=30)  # shorter, same rule
        stopped.append(run(config))
        whole.append(run(dataclasses.replace(config, stop_unstable_after=None)))
    for short, full in zip(stopped, whole, strict=True):
        assert unstable(short, plan.grace_steps) == unstable(full, plan.grace_steps)
        assert short.step_losses == full.step_losses[: len(short.step_losses or [])]  # type: ignore[index]
    # lr 1 goes unstable and stops at the first step the rule may count (grace 10)...
    assert unstable(whole[1], plan.grace_steps) and len(stopped[1].step_losses or []) == 11
    assert len(whole[1].step_losses or []) == whole[1].config.steps
    # ... lr 0.1 stays stable and trains every step, exactly as without the rule.
    assert not unstable(whole[0], plan.grace_steps) and stopped[0].history == whole[0].history

    def edge(runs: list[RunResult]) -> float:
        by_lr = {r.config.lr: dataclasses.replace(r, config=arm_config(
            plan, "charlm-transformer", "adam", r.config.lr, 0, plan.seeds[0]
        )) for r in runs}  # fmt: skip
        lab = ConfirmatoryResults(plan, "c", list(by_lr.values()))
        return lab.edges("charlm-transformer", "adam", 0)[0]

    assert edge(whole) == edge(stopped) == pytest.approx(-1.0)


def test_the_edge_search_runs_the_grid_down_to_the_first_stable_run() -> None:
    """Synthetic runs: each series stops at its first stable learning rate from the top, a
    series with none runs the whole grid, and the edges are those of the whole grid."""
    plan = dataclasses.replace(
        confirmatory_plan(), tasks=("charlm-transformer",), warmups=(50,), seeds=(2000, 2001)
    )
    edge = {"adam": 4, "lookahead": 6, "adam at alpha x lr": -1}  # index of the largest stable

    def fake(config):  # type: ignore[no-untyped-def]
        arm, index = _arm_and_index(plan, config)
        return _run(config, [5.5, 5.0] + [4.0 if index <= edge[arm] else 9.0] * 60)

    rounds: list[list[object]] = []

    def compute(configs):  # type: ignore[no-untyped-def]
        rounds.append(configs)
        return [fake(c) for c in configs]

    runs = edge_search(plan, compute)
    assert rounds[0] == first_round(plan) and rounds[0][0] == reference_config(plan)
    assert len(rounds) == len(plan.lrs)  # the arm with no stable rate goes to the bottom
    # per seed: adam 11 - 4 runs, lookahead 11 - 6, the rescaled arm all 11; and the reference
    assert len(runs) == 2 * ((11 - 4) + (11 - 6) + 11) + 1
    searched = ConfirmatoryResults(plan, "c", runs)
    whole = ConfirmatoryResults(plan, "c", [fake(c) for c in confirmatory_configs(plan)])
    for arm, _, _ in ARMS:
        assert searched.edges(plan.tasks[0], arm, 50) == whole.edges(plan.tasks[0], arm, 50)
    assert searched.edges(plan.tasks[0], "adam", 50)[0] == pytest.approx(math.log10(plan.lrs[4]))
    with pytest.raises(ValueError, match="although every larger learning rate was unstable"):
        top = arm_config(plan, plan.tasks[0], "adam", plan.lrs[-1], 50, plan.seeds[0])
        ConfirmatoryResults(plan, "c", [r for r in runs if r.config != top]).edges(
            plan.tasks[0], "adam", 50
        )


def test_an_equivalence_the_grid_cannot_resolve_carries_a_caveat_and_keeps_its_verdict() -> None:
    """All paired differences 0 on a grid whose step exceeds the SESOI: the verdict stays the
    computed one, with a caveat beside it; a difference, or a finer grid, gives none. The
    rescaled arm is the lab's control, not the paper's claim, and a descriptive verdict that is
    significant unadjusted shows its Holm-adjusted p-value among the descriptive tests."""
    plan = dataclasses.replace(confirmatory_plan(), tasks=("charlm-transformer",))
    step = grid_step(plan)
    assert step == pytest.approx(math.log10(1 / 0.003) / 10) and step > 0.126
    same = [-0.5] * 8
    assert "all 8 differences 0 on a grid coarser than the SESOI" in grid_caveat(
        same, same, step, 0.126
    )
    assert "not shown equivalent within ±0.126" in grid_caveat(same, same, step, 0.126)
    assert grid_caveat(same, [-0.5] * 7 + [-0.5 + step], step, 0.126) == ""
    assert grid_caveat(same, same, 0.1, 0.126) == grid_caveat(same, same, step, None) == ""

    edge = {"adam": 5, "lookahead": 5, "adam at alpha x lr": 7}

    def fake(config):  # type: ignore[no-untyped-def]
        arm, index = _arm_and_index(plan, config)
        return _run(config, [5.5, 5.0] + [4.0 if index <= edge[arm] else 9.0] * 60)

    claims = confirmatory_claims(ConfirmatoryResults(plan, "c", edge_search(plan, fake_all(fake))))
    against_adam = [case for c in claims if not c.control for case in c.cases]
    assert [case.verdict for case in against_adam] == ["equivalent within ±0.126"] * 2
    assert all("not shown equivalent" in case.caveat for case in against_adam)
    assert "not shown equivalent" in against_adam[0].sentence
    _, rows = verdict_rows(claims)
    assert "not shown equivalent" in rows[0][-1] and rows[0][-1].startswith("equivalent within")
    controls = [c for c in claims if c.control]
    assert [c.role for c in controls] == ["primary", "descriptive"]
    assert all(c.title.startswith("the effective-learning-rate control") for c in controls)
    # the rescaled arm's edge two steps above Lookahead's at every seed: p = 2/256 unadjusted
    descriptive = controls[1].cases[0]
    assert descriptive.verdict == "contradicts" and descriptive.estimate is not None
    assert descriptive.estimate.p_value == pytest.approx(2 / 256)
    assert "Holm-adjusted among the 2 descriptive difference tests p = 0.016" in descriptive.caveat
    assert "Holm" not in controls[0].cases[0].caveat  # primary: adjusted by the plan's family
    short = summary_sentences(claims, "Scope.")
    assert "Did not hold (Lookahead worse, significant at 5%): none." in short
    assert short[-1].startswith("The lab's effective-learning-rate control")
    assert "Lookahead below the control" in short[-1] and "[pre-LN, no warm-up (unadj" in short[-1]


def fake_all(fake):  # type: ignore[no-untyped-def]
    """``compute`` for ``edge_search`` from a function of one configuration."""
    return lambda configs: [fake(c) for c in configs]


def test_the_grid_notes_count_the_grace_period_non_monotone_cells_and_the_grids_top() -> None:
    """Synthetic runs with known answers: where the rule fires, which stable runs a shorter
    grace period would flip, a cell where Adam's two arms interleave non-monotonically, and an
    edge at the grid's top."""
    plan = dataclasses.replace(
        confirmatory_plan(), tasks=("charlm-transformer",), warmups=(0,), seeds=(2000, 2001)
    )
    late = [5.5, 5.0] + [4.0] * 10 + [9.0] * 50  # above step 0 from step 12
    edge = {("adam", 2000): 4, ("adam", 2001): 4, ("adam at alpha x lr", 2000): 4}
    edge |= {("adam at alpha x lr", 2001): 5, ("lookahead", 2000): 6, ("lookahead", 2001): 10}

    def fake(config):  # type: ignore[no-untyped-def]
        arm, index = _arm_and_index(plan, config)
        if index > edge[arm, config.seed]:
            return _run(config, late if arm == "lookahead" else [5.5, 5.0] + [9.0] * 60)
        spike = 6.0 if arm == "adam" else 5.0  # Adam's stable runs: above step 0 at step 1
        return _run(config, [5.5, spike] + [4.0] * 60)

    lab = ConfirmatoryResults(plan, "c", edge_search(plan, fake_all(fake)))
    assert unstable_at(lab.edge_runs(plan.tasks[0], "lookahead", 0, 2000)[0], 10) == 12
    assert unstable_at(lab.edge_runs(plan.tasks[0], "adam", 0, 2000)[-1], 10) is None
    # unstable: adam 2 x 6, rescaled 6 + 5 at step 10; Lookahead 4 at step 12
    assert first_checks(lab) == (12 + 11, 12 + 11 + 4)
    assert grace_flips(lab, 0, 0) == (2, 6) and grace_flips(lab, 0, 5) == (0, 6)
    # seed 2000: Adam at 0.5 x lrs[5] (below lrs[4]) unstable, at lrs[4] stable; 2001 monotone
    assert not_monotone(lab) == 1
    assert censored_at_top(lab) == {("charlm-transformer", 0, "lookahead"): 1}
