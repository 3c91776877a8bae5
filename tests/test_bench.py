"""The benchmark harness benchmarks/bench.py: its logic, not timings.

The fast tests guard what the published tables rest on: the memory promise (Lookahead's peak is
the inner optimizer's plus exactly one copy of the weights, and it allocates nothing between
syncs or at a sync), the instrument that measures it, the pairing of each time with its reference
of the same round, the verdict lines, the step-by-step split, and docs/benchmarks.md quoting the
committed reports as they were written. Running the harness itself is marked ``slow``.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from torch_lookahead import Lookahead, _sync

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "benchmarks" / "bench.py"


def _load_harness() -> ModuleType:
    """benchmarks/bench.py as a module: benchmarks/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("bench", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench", module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


bench = _load_harness()


# ------------------------------------------------------------------------------------------------
# Fast: what the published numbers rest on
# ------------------------------------------------------------------------------------------------


def test_gpt2_small_parameter_list_has_the_published_size() -> None:
    shapes = bench.gpt2_parameter_shapes()
    assert len(shapes) == 148
    assert sum(bench._numel(s) for s in shapes) == 124_439_808


@pytest.mark.parametrize("inner_name", list(bench.INNER_OPTIMIZERS))
def test_lookahead_memory_is_inner_plus_one_slow_copy_and_nothing_between_syncs(
    inner_name: str,
) -> None:
    # 70,000 floats per tensor exceed a CPU block, so the measured sync cuts them into views.
    params = bench.make_parameters([(70_000,)] * 3 + [(300,)] * 20)
    slow_bytes = sum(p.numel() * p.element_size() for p in params)
    inner = bench.INNER_OPTIMIZERS[inner_name]
    alone = bench.measure_memory(params, inner, None, k=3, alpha=0.5)
    wrapped = bench.measure_memory(params, inner, bench.find_contenders()[0].wrap, k=3, alpha=0.5)
    # Plus the sync's reused scratch block (src/torch_lookahead/_sync.py): at most one CPU block.
    assert 0 <= wrapped.peak_bytes - alone.peak_bytes - slow_bytes <= _sync.SYNC_BLOCK_BYTES
    assert wrapped.between_syncs_bytes == alone.between_syncs_bytes
    assert wrapped.sync_step_bytes == alone.sync_step_bytes


def test_memory_measurement_sees_a_temporary_and_a_sync_step_allocation() -> None:
    params = bench.make_parameters([(1000,)])
    k = 3  # the second cycle: steps 5, 6, 7; step 6 syncs

    class Wasteful(torch.optim.SGD):
        """Allocates and frees 20,000 bytes at every step, and 4,000 more at every k-th step."""

        calls = 0

        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            Wasteful.calls += 1
            scratch = torch.empty(5000 + (1000 if Wasteful.calls % k == 0 else 0))
            del scratch
            return super().step(closure)

    alone = bench.measure_memory(params, lambda ps: torch.optim.SGD(ps, lr=0.1), None, k=k, alpha=1)
    wasteful = bench.measure_memory(params, lambda ps: Wasteful(ps, lr=0.1), None, k=k, alpha=1)
    assert wasteful.between_syncs_bytes - alone.between_syncs_bytes == 20_000
    assert wasteful.sync_step_bytes - alone.sync_step_bytes == 24_000
    assert wasteful.peak_bytes - alone.peak_bytes == 24_000


def test_median_ratio_pairs_each_time_with_the_reference_of_its_round() -> None:
    # Per round: 1, 1, 3 -> median 1; the ratio of the medians would be 3 / 1.
    assert bench.median_ratio([1.0, 10.0, 3.0], [1.0, 10.0, 1.0]) == 1.0
    assert bench.median_ratio([4.0, 8.0], [1.0, 2.0], scale=2.0) == 2.0
    with pytest.raises(ValueError, match="as many references"):
        bench.median_ratio([1.0, 2.0], [1.0])


def test_step_verdict_separates_losses_within_the_controls_noise() -> None:
    ours, peer = bench.Contender("ours", "1", None), bench.Contender("peer", "2", None)
    shape = bench.ParameterList("1 x 1", ((1,),))

    def row(ours_ratio: float, peer_ratio: float, control: float) -> bench.StepResult:
        ratios = {"ours": ours_ratio, "peer": peer_ratio, bench.CONTROL: control}
        return bench.StepResult(shape, "SGD", {bench.INNER_ALONE: 1.0}, ratios, {})

    rows = [row(1.10, 1.20, 1.01), row(1.12, 1.10, 0.97), row(1.20, 1.10, 1.02)]
    table = "\n".join(bench.format_steps(rows, [ours, peer], k=5))
    # The first row is a win; the second a loss by 0.02 with noise 0.03; the third by 0.10 > 0.02.
    assert "**1 of 3** comparisons; 1 of the other 2 by no more than" in table
    assert "| **1.100** | 1.200 | 1.010 |" in table


def test_sync_verdict_takes_the_worst_list_of_our_whole_syncs() -> None:
    def result(name: str, ours: float, peer: float) -> bench.SyncResult:
        ratios = {bench.OURS: ours, "timm": peer, bench.TEXTBOOK_KERNEL: 2.0}
        shape = bench.ParameterList(name, ((10,),))
        return bench.SyncResult(shape, 40, 1e-3, dict.fromkeys(ratios, 1e-3), ratios)

    met = "\n".join(bench.format_sync([result("a", 0.9, 3.0), result("b", 1.1, 0.8)], 1.15))
    assert "`Lookahead.sync()` <= 1.15 x floor on every list: **met** (worst 1.10)" in met
    missed = "\n".join(bench.format_sync([result("a", 0.9, 0.5), result("b", 1.2, 0.5)], 1.15))
    assert "**NOT met** (worst 1.20)" in missed


def test_own_slow_copies_are_the_state_tensors_not_the_parameters() -> None:
    params = bench.make_parameters([(4,), (2, 3)])
    optimizer = Lookahead(torch.optim.SGD(params, lr=0.0), k=1 << 30)
    assert bench.own_slow_copies(optimizer, params) is None  # no step yet: no slow copies
    optimizer.step()
    found = bench.own_slow_copies(optimizer, params)
    assert found is not None
    for p, slow in zip(params, found, strict=True):
        assert any(slow is value for value in optimizer.state[p].values())
        assert slow.data_ptr() != p.data_ptr()
        torch.testing.assert_close(slow, p.detach())  # the slow copy of the weights as they are


def test_docs_page_quotes_the_committed_reports_unchanged() -> None:
    """Every table row after a ``<!-- benchmarks/results/NAME.md -->`` marker of
    docs/benchmarks.md (up to the next heading) is a row of that report, as it was written."""
    page = (REPO / "docs" / "benchmarks.md").read_text()
    quoted = re.findall(r"<!-- (benchmarks/results/[\w.-]+\.md) -->\n(.*?)(?=\n#)", page, re.S)
    assert {name for name, _ in quoted} >= {
        "benchmarks/results/many-small-tensors.md",
        "benchmarks/results/step.md",
        "benchmarks/results/sync-memory.md",
    }
    for name, block in quoted:
        report_rows = set((REPO / name).read_text().splitlines())
        rows = [line for line in block.splitlines() if line.startswith("|")]
        assert len(rows) >= 3, name
        assert [row for row in rows if row not in report_rows] == [], name


def test_the_sync_step_of_every_installed_implementation_is_found() -> None:
    k = 4
    for contender in bench.find_contenders():
        if contender.wrap is None:
            continue
        position = bench.sync_position(contender.wrap, k)
        # torch-optimizer syncs on the first step of its cycles, the others on the k-th.
        assert position == (0 if contender.name == "torch-optimizer" else k - 1), contender.name


def test_sync_position_refuses_a_wrapper_that_never_syncs() -> None:
    with pytest.raises(RuntimeError, match="expected one sync in a cycle of 3 steps"):
        bench.sync_position(lambda inner, k, alpha: inner, 3)


def test_step_by_step_separates_the_sync_step_from_the_steps_between_syncs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake clock: every inner step takes 1 s; Lookahead's steps take 2 s, its sync step 10 s.
    k = 3
    timed: dict[int, int] = {}

    def fake_seconds(run, device, calls=1):  # type: ignore[no-untyped-def]
        optimizer = run.__self__
        index = timed.get(id(optimizer), 0)
        timed[id(optimizer)] = index + calls
        if not isinstance(optimizer, Lookahead):
            return float(calls)
        assert calls == 1
        return 10.0 if index % k == k - 1 else 2.0

    monkeypatch.setattr(bench, "_seconds", fake_seconds)
    ours = bench.find_contenders()[0]
    shape = bench.ParameterList("2 x 10", ((10,),) * 2)
    result = bench.measure_steps(
        shape, "SGD (foreach)", [ours], rounds=1, cycles=2, k=k, stepwise=True
    )
    assert result.regular_ratios == {ours.name: 2.0, bench.CONTROL: 1.0}
    assert result.sync_ratios == {ours.name: 10.0, bench.CONTROL: 1.0}
    assert result.regular_extra_seconds == {ours.name: 1.0, bench.CONTROL: 0.0}
    assert result.ratios[ours.name] == (2.0 * (k - 1) + 10.0) / k
    table = "\n".join(bench.format_stepwise([result], [ours], k))
    assert f"| {ours.name} {ours.version} | 2.000 | +1000.000 | 10.000 | 4.667 |" in table


def test_step_by_step_and_swap_run_on_tiny_sizes(tmp_path: Path) -> None:
    # The smoke run of the two new sections: real timings, nothing asserted about them.
    output = tmp_path / "report.md"
    argv = ["--quick", "--rounds", "1", "--heap", "system", "--sections", "stepwise,swap"]
    assert bench.main([*argv, "--shapes", "1", "--inner", "3", "--output", str(output)]) == 0
    report = output.read_text()
    assert "### Step by step, k=5" in report and "### eval() + train() against one step" in report
    assert "| 200 x 250 | SGD (foreach) |" in report
    for contender in bench.find_contenders():
        assert contender.name in report
    assert f"| {bench.QUICK_SWAP_SHAPES.name} |" in report


def test_swap_measurement_leaves_the_weights_as_it_found_them() -> None:
    shape = bench.ParameterList("50 x 1", ((1,),) * 50)
    result = bench.measure_swap(shape, rounds=2, k=2)
    names = {bench.SWAP, bench.INNER_STEP, bench.LOOKAHEAD_STEP, bench.KERNELS}
    assert set(result.seconds) == names
    assert result.per_inner_step > 0 and result.per_lookahead_step > 0
    assert result.kernels_per_inner_step > 0
    assert "| 50 x 1 |" in "\n".join(bench.format_swap([result]))


def test_the_exchange_floor_writes_both_lists_and_ends_where_it_began() -> None:
    params = bench.make_parameters([(1,)] * 5 + [(3,)] * 2)
    other = [p.detach() + 1.0 for p in params]
    before = [t.detach().clone() for t in params + other]
    versions = [t._version for t in params + other]
    bench.exchange_kernels(params, other)()  # eval() then train(): there and back
    assert all(torch.equal(t.detach(), v) for t, v in zip(params + other, before, strict=True))
    assert all(t._version > v for t, v in zip(params + other, versions, strict=True))


# ------------------------------------------------------------------------------------------------
# Slow: the harness run end to end
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_writes_every_section_and_every_contender(tmp_path: Path) -> None:
    report_path = tmp_path / "report.md"
    argv = ["--quick", "--rounds", "1", "--heap", "system", "--sections", "sync,step,memory"]
    status = bench.main([*argv, "--output", str(report_path)])
    assert status == 0
    report = report_path.read_text()
    for heading in ("### Sync against the memory floor", "### Step time, k=5", "### Memory"):
        assert heading in report
    assert "- Heap: system allocator" in report
    assert f"- Command: `python benchmarks/bench.py {' '.join(argv)} --output" in report
    for shape in bench.QUICK_SHAPES:
        # one sync row, and one step row and one memory row per inner optimizer
        assert report.count(f"| {shape.name} |") == 1 + 2 * len(bench.INNER_OPTIMIZERS)
    for contender in bench.find_contenders():
        assert contender.name in report
        if contender.wrap is None:
            assert contender.unavailable is not None and contender.unavailable in report


@pytest.mark.slow
def test_low_precision_run_adds_float32_slow_copies(tmp_path: Path) -> None:
    output = tmp_path / "bf16.md"
    argv = ["--quick", "--rounds", "1", "--dtype", "bfloat16", "--inner", "2", "--shapes", "1"]
    assert bench.main([*argv, "--sections", "sync,memory", "--output", str(output)]) == 0
    report = output.read_text()
    assert "- Parameters: torch.bfloat16" in report
    ours_fp32 = bench.find_contenders(torch.bfloat16)[1]
    assert ours_fp32.name == "torch_lookahead (float32 slow)" and ours_fp32.name in report
    memory_row = report.splitlines()[-1].split(" | ")
    # bf16 slow copies are one copy of the parameters, float32 ones two; the sync's scratch (at
    # most one block per dtype, here the whole 100 kB model: the lerp's result and, for float32
    # slow copies, the parameters in float32) adds one copy in bf16, four bf16-sized in float32.
    assert memory_row[3] == "2.00 / +0 B / +0 B"
    assert 6.0 <= float(memory_row[4].split(" / ")[0]) < 6.05


@pytest.mark.slow
def test_missing_peer_is_reported_not_raised() -> None:
    missing = bench._peer_from_module("nobody", "nobody", "torch_lookahead_no_such_module")
    assert missing.wrap is None and missing.unavailable == "not installed"
    shape = bench.ParameterList("2 x 10", ((10,), (10,)))
    result = bench.measure_steps(
        shape, "SGD momentum (foreach)", [missing], rounds=1, cycles=1, k=2
    )
    assert result.unavailable == {"nobody": "not installed"}
    assert set(result.seconds) == {bench.INNER_ALONE, bench.CONTROL}
    table = "\n".join(bench.format_steps([result], [missing], k=2))
    assert "| not installed |" in table


@pytest.mark.slow
def test_step_ratios_pair_each_cycle_with_the_inner_cycle_of_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake clock: in turn t the inner optimizer's cycle (and its control's) takes inner[t]
    # seconds and Lookahead's ours[t]. Per turn 3, 1, 3: median 3, where the ratio of the medians
    # would be 1.
    inner, ours_seconds = [1.0, 10.0, 10.0], [3.0, 10.0, 30.0]
    timed = [0]

    def fake_seconds(run, device, calls=1):  # type: ignore[no-untyped-def]
        turn = timed[0] // 3  # every turn times the inner optimizer, the control and Lookahead
        timed[0] += 1
        return (ours_seconds if isinstance(run.__self__, Lookahead) else inner)[turn]

    monkeypatch.setattr(bench, "_seconds", fake_seconds)
    ours = bench.find_contenders()[0]
    shape = bench.ParameterList("3 x 100", ((100,),) * 3)
    result = bench.measure_steps(shape, "AdamW (fused)", [ours], rounds=1, cycles=3, k=2)
    assert result.ratios == {ours.name: 3.0, bench.CONTROL: 1.0}
    assert result.seconds[bench.INNER_ALONE] == 10.0 / 2  # per step: a cycle is k steps


@pytest.mark.slow
def test_sync_measurement_covers_mixed_dtypes() -> None:
    shape = bench.ParameterList("4 x 50", ((50,),) * 4)
    ours_fp32 = bench.find_contenders(torch.bfloat16)[1]
    result = bench.measure_sync(
        shape,
        rounds=1,
        fast_dtype=torch.bfloat16,
        slow_dtype=torch.float32,
        contenders=[ours_fp32],
    )
    assert result.parameter_bytes == 4 * 50 * 2
    # No textbook kernel across dtypes; our float32 slow copies are measured against the floor.
    assert set(result.kernel_ratios) == {ours_fp32.name}


@pytest.mark.slow
def test_whole_syncs_are_divided_by_the_floor_on_their_own_slow_copies() -> None:
    shape = bench.ParameterList("3 x 40", ((40,),) * 3)
    contenders = [c for c in bench.find_contenders() if c.wrap is not None]
    result = bench.measure_sync(shape, rounds=2, contenders=contenders)
    # Every installed implementation's slow copies are found (timm's only after its first sync).
    assert set(result.own_floor_seconds) == {c.name for c in contenders}
    report = "\n".join(bench.format_sync([result], target=1.15))
    assert "Floors on each implementation's own slow copies" in report
    assert "Target: `Lookahead.sync()` <= 1.15 x floor on every list" in report


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--k", "0"], "--k"),
        (["--alpha", "1.5"], "--alpha"),
        (["--sections", "sync,speed"], "sync, step, stepwise, swap, memory"),
        (["--shapes", "7"], "--shapes"),
        (["--dtype", "int8"], "--dtype"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_fail_early_naming_the_option(
    argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert mentions in capsys.readouterr().err


@pytest.mark.slow
def test_lookahead_contender_is_this_package() -> None:
    ours = bench.find_contenders()[0]
    inner = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert ours.wrap is not None and isinstance(ours.wrap(inner, 5, 0.5), Lookahead)


@pytest.mark.slow
def test_script_runs_from_the_command_line(tmp_path: Path) -> None:
    output = tmp_path / "sync.md"
    argv = ["--quick", "--rounds", "1", "--sections", "sync", "--shapes", "1", "--output"]
    done = subprocess.run(
        [sys.executable, str(HARNESS), *argv, str(output)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "| 200 x 250 | 200 |" in output.read_text()


HEAP_PROBE = """
import importlib.util, resource, sys, torch
spec = importlib.util.spec_from_file_location("bench", sys.argv[2])
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)
if sys.argv[1] == "held":
    print(bench.hold_freed_memory(), file=sys.stderr)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm-up: the heap grows to its size once
    torch.ones(8 << 20).sum()
per_step = []
for _ in range(7):  # 32 MiB allocated, touched and freed
    before = faults()
    torch.ones(8 << 20).sum()
    per_step.append(faults() - before)
# The median step: once in a while small allocations take a piece of the freed block and the heap
# grows once more, faulting on fresh pages, even when freed memory is kept.
print(sorted(per_step)[3])
"""


@pytest.mark.slow
@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="holding freed memory needs glibc",
)
def test_held_heap_stops_the_page_faults_of_freed_temporaries() -> None:
    def faults_per_step(heap: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", HEAP_PROBE, heap, str(HARNESS)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout.strip())

    # 32 MiB are 8,192 pages of 4 KiB (16 huge pages where the kernel hands those out): every
    # one faults again on every step unless the memory is kept.
    system, held = faults_per_step("system"), faults_per_step("held")
    assert system >= 16
    assert held * 10 < system
