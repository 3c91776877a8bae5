"""The benchmark harness (``torch-lookahead bench``, benchmarks/gpu_bench.py): logic, not timings."""

from __future__ import annotations

import importlib.util
import platform
import sys
from pathlib import Path

import pytest
import torch

from torch_lookahead import Lookahead, bench
from torch_lookahead._sync import sync_

REPO = Path(__file__).resolve().parents[1]

# torch.compile's own imports use a deprecated torch.jit API.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*")


def test_gpt2_small_parameter_list_has_the_published_size() -> None:
    shapes = bench.gpt2_parameter_shapes()
    assert len(shapes) == 148
    assert sum(bench._numel(s) for s in shapes) == 124_439_808


def test_quick_run_writes_every_section_and_every_contender(tmp_path: Path) -> None:
    report_path = tmp_path / "report.md"
    docs_path = tmp_path / "page.md"
    docs_path.write_text(f"# Page\n\n{bench.DOCS_BLOCK_START}\nold\n{bench.DOCS_BLOCK_END}\ntail\n")
    argv = ["--quick", "--rounds", "1", "--compiled", "--heap", "system"]
    status = bench.main([*argv, "--output", str(report_path), "--docs", str(docs_path)])
    assert status == 0
    report = report_path.read_text()
    for heading in ("### Sync against the memory floor", "### Step time, k=5", "### Memory"):
        assert heading in report
    assert "- Heap: system allocator" in report
    assert bench.OURS_COMPILED in report  # Lookahead(compiled_sync=True) as a contender of ours
    assert "Target: torch_lookahead (compiled_sync)'s ratio below" in report
    for shape in bench.QUICK_SHAPES:
        # one sync row, and one step row and one memory row per inner optimizer
        assert report.count(f"| {shape.name} |") == 1 + 2 * len(bench.INNER_OPTIMIZERS)
    for contender in bench.find_contenders():
        assert contender.name in report
        if contender.wrap is None:
            assert contender.unavailable is not None and contender.unavailable in report
    page = docs_path.read_text()
    assert "old" not in page and report.strip() in page and page.endswith("tail\n")


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


def test_step_ratios_are_relative_to_the_inner_optimizer() -> None:
    ours = bench.find_contenders()[0]
    shape = bench.ParameterList("3 x 100", ((100,),) * 3)
    result = bench.measure_steps(shape, "AdamW (fused)", [ours], rounds=2, cycles=1, k=3)
    assert set(result.ratios) == {ours.name, bench.CONTROL}
    assert result.ratios[ours.name] > 0 and result.seconds[bench.INNER_ALONE] > 0


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
    assert wrapped.peak_bytes - alone.peak_bytes == slow_bytes
    assert wrapped.between_syncs_bytes == alone.between_syncs_bytes
    assert wrapped.sync_step_bytes == alone.sync_step_bytes


def test_memory_measurement_sees_a_temporary() -> None:
    params = bench.make_parameters([(1000,)])

    class Wasteful(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            scratch = torch.empty(5000)  # 20,000 bytes allocated and freed by every step
            del scratch
            return super().step(closure)

    alone = bench.measure_memory(params, lambda ps: torch.optim.SGD(ps, lr=0.1), None, k=2, alpha=1)
    wasteful = bench.measure_memory(params, lambda ps: Wasteful(ps, lr=0.1), None, k=2, alpha=1)
    assert wasteful.between_syncs_bytes - alone.between_syncs_bytes == 20_000
    assert wasteful.peak_bytes - alone.peak_bytes == 20_000


def test_compiled_sync_equals_the_foreach_sync() -> None:
    gen = torch.Generator().manual_seed(3)
    fast = [torch.randn(s, generator=gen) for s in [(7, 5), (300,), (2, 3, 4)]]
    slow = [torch.randn(f.shape, generator=gen) for f in fast]
    fast_eager, slow_eager = [f.clone() for f in fast], [s.clone() for s in slow]
    try:
        run, _ = bench.compiled_sync(fast, slow, 0.3)  # the first call compiles and syncs
    except Exception as error:  # the benchmark reports such a failure and measures the rest
        pytest.skip(f"torch.compile is unavailable here: {error}")
    sync_(fast_eager, slow_eager, 0.3, foreach=True)
    torch.testing.assert_close(fast, fast_eager)
    torch.testing.assert_close(slow, slow_eager)
    run()
    sync_(fast_eager, slow_eager, 0.3, foreach=True)
    torch.testing.assert_close(fast, fast_eager)
    torch.testing.assert_close(slow, slow_eager)


def test_sync_measurement_covers_mixed_dtypes() -> None:
    shape = bench.ParameterList("4 x 50", ((50,),) * 4)
    result = bench.measure_sync(
        shape, rounds=1, fast_dtype=torch.bfloat16, slow_dtype=torch.float32
    )
    assert result.parameter_bytes == 4 * 50 * 2
    assert set(result.kernel_ratios) == {bench.SHIPPED_KERNEL, "sync_ (foreach=False)"}
    assert result.floor_seconds > 0


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--k", "0"], "--k"),
        (["--alpha", "1.5"], "--alpha"),
        (["--sections", "sync,speed"], "sync, step, memory"),
        (["--shapes", "7"], "--shapes"),
    ],
)
def test_bad_arguments_fail_early_naming_the_option(
    argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert mentions in capsys.readouterr().err


def test_docs_block_needs_its_markers() -> None:
    with pytest.raises(ValueError, match="must contain"):
        bench.replace_docs_block("# no markers\n", "report")


def _benchmark_script(filename: str):  # type: ignore[no-untyped-def]
    """A script of benchmarks/ imported as a module."""
    spec = importlib.util.spec_from_file_location(filename[:-3], REPO / "benchmarks" / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_bench_module():  # type: ignore[no-untyped-def]
    return _benchmark_script("gpu_bench.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_script_without_cuda_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert _gpu_bench_module().main([]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_gpu_script_runs_its_cpu_code_path(tmp_path: Path) -> None:
    output = tmp_path / "gpu.md"
    argv = ["--cpu", "--quick", "--rounds", "1", "--no-compiled", "--output", str(output)]
    assert _gpu_bench_module().main(argv) == 0
    report = output.read_text()
    assert "torch_lookahead (fp32 slow)" in report and "torch_lookahead (bf16 slow)" in report
    assert "AdamW (fused)" in report


def test_thin_scripts_forward_to_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    for script, section in (("bench_sync.py", "sync"), ("bench_step.py", "step,memory")):
        monkeypatch.setattr(sys, "argv", [script, "--quick"])
        spec = importlib.util.spec_from_file_location("script", REPO / "benchmarks" / script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main() == 0
        assert seen[-1] == ["--sections", section, "--quick"]


def test_lookahead_contender_is_this_package() -> None:
    ours = bench.find_contenders()[0]
    inner = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert ours.wrap is not None and isinstance(ours.wrap(inner, 5, 0.5), Lookahead)


def test_whole_syncs_are_divided_by_the_floor_on_their_own_slow_copies() -> None:
    shape = bench.ParameterList("3 x 40", ((40,),) * 3)
    contenders = [c for c in bench.find_contenders() if c.wrap is not None]
    result = bench.measure_sync(shape, rounds=2, contenders=contenders)
    # Every installed implementation's slow copies are found (timm's only after its first sync).
    assert set(result.own_floor_seconds) == {c.name for c in contenders}
    assert all(seconds > 0 for seconds in result.own_floor_seconds.values())
    report = "\n".join(bench.format_sync([result], target=1.15))
    assert "Floors on each implementation's own slow copies" in report
    assert "for the whole `Lookahead.sync()`" in report


def test_own_slow_copies_are_the_state_tensors_not_the_parameters() -> None:
    params = bench.make_parameters([(4,), (2, 3)])
    optimizer = Lookahead(torch.optim.SGD(params, lr=0.0), k=1 << 30)
    assert bench.own_slow_copies(optimizer, params) is None  # no step yet: no slow copies
    optimizer.step()
    found = bench.own_slow_copies(optimizer, params)
    assert found is not None
    for p, slow in zip(params, found, strict=True):
        assert slow is optimizer.state[p]["lookahead_slow"]
        assert slow.data_ptr() != p.data_ptr()


def test_sync_overheads_script_reports_every_run(tmp_path: Path) -> None:
    module = _benchmark_script("bench_sync_overheads.py")
    output = tmp_path / "overheads.md"
    assert module.main(["--shape", "1", "--rounds", "1", "--output", str(output)]) == 0
    rows = [line for line in output.read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 6
    assert f"| {module.OWN_FLOOR} |" in "\n".join(rows) and rows[1].endswith("| 1.000 |")


HEAP_PROBE = """
import resource, sys, torch
from torch_lookahead import bench
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


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="holding freed memory needs glibc",
)
def test_held_heap_stops_the_page_faults_of_freed_temporaries() -> None:
    import subprocess

    def faults_per_step(heap: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", HEAP_PROBE, heap], capture_output=True, text=True, check=True
        )
        return int(done.stdout.strip())

    # 32 MiB are 8,192 pages of 4 KiB (16 huge pages where the kernel hands those out): every
    # one faults again on every step unless the memory is kept.
    system, held = faults_per_step("system"), faults_per_step("held")
    assert system >= 16
    assert held * 10 < system


def test_compiled_sync_script_reports_every_length(tmp_path: Path) -> None:
    from torch_lookahead import _compiled_sync

    if _compiled_sync.compiled_kernel(torch.float32) is None:
        pytest.skip("no compiled sync kernel here")
    module = _benchmark_script("bench_compiled_sync.py")
    shipped_min_bytes = _compiled_sync.COMPILED_MIN_BYTES
    output = tmp_path / "compiled.md"
    argv = ["--rounds", "1", "--megabytes", "1", "--lengths", "300,70000", "--output", str(output)]
    assert module.main(argv) == 0
    report = output.read_text()
    assert "| 300 | 872 |" in report and "| 70,000 | 8 |" in report
    assert shipped_min_bytes == _compiled_sync.COMPILED_MIN_BYTES  # restored after the run
