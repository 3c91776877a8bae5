"""The compiled sync (``compiled_sync=True``): bit-identical to the eager kernel, or not used at all."""

from __future__ import annotations

import copy
import logging
import pickle
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from torch_lookahead import Lookahead, _compiled_sync, _sync

# Small thresholds, so that tests with small tensors go through the compiled kernel (64 floats).
SMALL_MIN_BYTES = 256

has_cpp_compiler = any(shutil.which(name) for name in ("c++", "g++", "clang++"))
needs_compiler = pytest.mark.skipif(
    not has_cpp_compiler, reason="torch.compile on the CPU needs a C++ compiler"
)


def random_pairs(
    seed: int, sizes: list[int], dtype: torch.dtype, slow_dtype: torch.dtype | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    fast = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    # Slow weights of another scale, so that the results lie far from both ends and rounding shows.
    slow = [(10 * torch.randn(n, generator=gen)).to(slow_dtype or dtype) for n in sizes]
    return fast, slow


def clones(tensors: list[Tensor]) -> list[Tensor]:
    return [t.clone() for t in tensors]


class KernelCalls:
    """Wraps ``compiled_kernel`` and counts the tensors its kernels are handed."""

    def __init__(self) -> None:
        self.tensors = 0
        self._original = _compiled_sync.compiled_kernel

    def __call__(self, dtype: torch.dtype) -> Callable[..., None] | None:
        kernel = self._original(dtype)
        if kernel is None:
            return None

        def counted(fast: list[Tensor], slow: list[Tensor], weight: Tensor) -> None:
            self.tensors += len(fast)
            kernel(fast, slow, weight)

        return counted


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernel_compiles_and_passes_its_probe(dtype: torch.dtype) -> None:
    assert _compiled_sync.compiled_kernel(dtype) is not None


def test_no_kernel_for_dtypes_it_cannot_reproduce() -> None:
    assert _compiled_sync.compiled_kernel(torch.bfloat16) is None
    assert _compiled_sync.compiled_kernel(torch.float16) is None


@needs_compiler
@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=30),
    alpha=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0, 0.49999997])),
    seed=st.integers(0, 2**16),
    foreach=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_compiled_sync_is_bit_identical_to_the_eager_kernel(
    sizes: list[int], alpha: float, seed: int, foreach: bool, dtype: torch.dtype
) -> None:
    sizes = [max(2, sizes[0]), *sizes[1:]]  # a one-element tensor is always contiguous
    fast, slow = random_pairs(seed, sizes, dtype)
    every_other = torch.randn(2 * sizes[0], generator=torch.Generator().manual_seed(seed))
    fast[0] = every_other.to(dtype)[::2]  # one non-contiguous pair: eager
    assert not fast[0].is_contiguous()
    eager_fast, eager_slow = clones(fast), clones(slow)
    calls = KernelCalls()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_compiled_sync, "COMPILED_MIN_BYTES", SMALL_MIN_BYTES)
        patch.setattr(_compiled_sync, "compiled_kernel", calls)
        _sync.sync_(fast, slow, alpha, foreach=foreach, compiled=True)
    _sync.sync_(eager_fast, eager_slow, alpha, foreach=foreach)
    for a, b in zip(fast + slow, eager_fast + eager_slow, strict=True):
        assert torch.equal(a, b)
    element_size = torch.empty((), dtype=dtype).element_size()
    long_pairs = sum(
        n * element_size >= SMALL_MIN_BYTES for i, n in enumerate(sizes) if i > 0
    )  # the first pair is non-contiguous
    assert calls.tensors == long_pairs - long_pairs % _compiled_sync.COMPILED_CHUNK


@needs_compiler
def test_mixed_buckets_with_mismatched_pairs() -> None:
    # A float32 and a float64 bucket, a bf16 parameter with an fp32 slow copy: each where it goes.
    fast32, slow32 = random_pairs(1, [300] * 9 + [20], torch.float32)
    fast64, slow64 = random_pairs(2, [300] * 8, torch.float64)
    fast_bf, slow_bf = random_pairs(3, [300] * 2, torch.bfloat16, torch.float32)
    fast, slow = fast32 + fast_bf + fast64, slow32 + slow_bf + slow64
    eager_fast, eager_slow = clones(fast), clones(slow)
    calls = KernelCalls()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_compiled_sync, "COMPILED_MIN_BYTES", SMALL_MIN_BYTES)
        patch.setattr(_compiled_sync, "compiled_kernel", calls)
        _sync.sync_(fast, slow, 0.7, foreach=True, compiled=True)
    _sync.sync_(eager_fast, eager_slow, 0.7, foreach=True)
    assert all(map(torch.equal, fast + slow, eager_fast + eager_slow))
    assert calls.tensors == 16  # 8 of the 9 long float32 pairs, the 8 float64 pairs


@needs_compiler
def test_compiled_sync_is_seen_by_autograd_and_allocates_nothing() -> None:
    from torch.profiler import ProfilerActivity, profile

    params = [torch.nn.Parameter(torch.randn(300)) for _ in range(8)]
    slow = [p.detach() + 1.0 for p in params]
    loss = sum((p * p).sum() for p in params)
    versions = [p._version for p in params]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_compiled_sync, "COMPILED_MIN_BYTES", SMALL_MIN_BYTES)
        _sync.sync_(params, slow, 0.5, foreach=True, compiled=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
            _sync.sync_(params, slow, 0.5, foreach=True, compiled=True)
    events = recorded.profiler.kineto_results.events()  # type: ignore[union-attr]
    assert any("Torch-Compiled Region" in e.name() for e in events)
    assert [e.nbytes() for e in events if e.name() == "[memory]" and e.nbytes() > 0] == []
    assert all(p._version > v for p, v in zip(params, versions, strict=True))
    assert all(torch.equal(p.detach(), s) for p, s in zip(params, slow, strict=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # type: ignore[union-attr]
    assert all(p.requires_grad and p.grad_fn is None for p in params)


@needs_compiler
def test_kernel_run_eagerly_stays_bit_identical() -> None:
    # With dynamo told to stay eager the kernel's body runs as Python: it must take ATen's lerp.
    kernel = _compiled_sync.compiled_kernel(torch.float32)
    assert kernel is not None
    fast, slow = random_pairs(5, [1000 + i for i in range(8)], torch.float32)
    eager_fast, eager_slow = clones(fast), clones(slow)
    with torch.compiler.set_stance("force_eager"), torch.no_grad():
        kernel(fast, slow, _compiled_sync._weight(0.3, torch.float32))
    _sync.sync_(eager_fast, eager_slow, 0.3, foreach=False)
    assert all(map(torch.equal, fast + slow, eager_fast + eager_slow))


@needs_compiler
def test_new_alphas_and_lengths_compile_nothing_more() -> None:
    from torch._dynamo.utils import counters

    assert _compiled_sync.compiled_kernel(torch.float32) is not None  # compiled and probed
    graphs = counters["stats"]["unique_graphs"]
    calls = KernelCalls()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_compiled_sync, "COMPILED_MIN_BYTES", SMALL_MIN_BYTES)
        patch.setattr(_compiled_sync, "compiled_kernel", calls)
        for seed, (length, alpha) in enumerate([(300, 0.1), (300, 0.9), (5000, 0.37), (77, 0.5)]):
            fast, slow = random_pairs(seed, [length] * 8 + [length + 1] * 8, torch.float32)
            _sync.sync_(fast, slow, alpha, foreach=True, compiled=True)
    assert calls.tensors == 64
    assert counters["stats"]["unique_graphs"] == graphs


def _failing_compile(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("no C++ compiler")


def _double_rounding_compile(function: Any, **kwargs: Any) -> Any:
    """A 'compiler' whose kernel rounds the product before the add: not ATen's lerp."""

    def kernel(fast: list[Tensor], slow: list[Tensor], weight: Tensor) -> None:
        for f, s in zip(fast, slow, strict=True):
            s.copy_(s + weight * (f - s))
            f.copy_(s)

    return kernel


@pytest.mark.parametrize("compile_function", [_failing_compile, _double_rounding_compile])
def test_without_a_faithful_kernel_the_eager_kernel_runs_silently(
    compile_function: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    fast, slow = random_pairs(6, [300] * 8, torch.float32)
    eager_fast, eager_slow = clones(fast), clones(slow)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("error")
        patch.setattr(_compiled_sync, "_kernels", {})
        patch.setattr(_compiled_sync, "COMPILED_MIN_BYTES", SMALL_MIN_BYTES)
        patch.setattr(torch, "compile", compile_function)
        with caplog.at_level(logging.DEBUG, logger="torch_lookahead"):
            assert _compiled_sync.compiled_kernel(torch.float32) is None
        _sync.sync_(fast, slow, 0.3, foreach=True, compiled=True)
    _sync.sync_(eager_fast, eager_slow, 0.3, foreach=True)
    assert all(map(torch.equal, fast + slow, eager_fast + eager_slow))
    # Nothing shown by default; the reason is on the torch_lookahead logger at DEBUG level.
    (record,) = [r for r in caplog.records if r.name == "torch_lookahead"]
    assert record.levelno == logging.DEBUG
    assert "no C++ compiler" in record.getMessage() or "differs" in record.getMessage()


def _train(compiled_sync: bool, steps: int) -> tuple[list[Tensor], Lookahead]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    optimizer = Lookahead(
        torch.optim.AdamW(model.parameters(), lr=1e-2), k=3, alpha=0.6, compiled_sync=compiled_sync
    )
    data = torch.randn(16, 32)
    for _ in range(steps):
        optimizer.zero_grad()
        model(data).pow(2).mean().backward()
        optimizer.step()
    return [p.detach() for p in model.parameters()], optimizer


@needs_compiler
def test_lookahead_trains_bit_identically_with_compiled_sync() -> None:
    calls = KernelCalls()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_compiled_sync, "COMPILED_MIN_BYTES", SMALL_MIN_BYTES)
        patch.setattr(_compiled_sync, "compiled_kernel", calls)
        compiled, optimizer = _train(True, 10)
        assert calls.tensors == 0  # two weight matrices and two biases: no chunk of eight
    eager, _ = _train(False, 10)
    assert all(map(torch.equal, compiled, eager))
    assert optimizer.compiled_sync


@needs_compiler
def test_lookahead_uses_the_compiled_kernel_on_long_parameters() -> None:
    params = [torch.nn.Parameter(torch.randn(140_000)) for _ in range(9)]
    optimizer = Lookahead(torch.optim.SGD(params, lr=0.1), k=1, compiled_sync=True)
    calls = KernelCalls()
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_compiled_sync, "compiled_kernel", calls)
        optimizer.step()
    assert calls.tensors == 8  # 140,000 floats >= 512 KiB; the ninth does not fill a chunk


def test_compiled_sync_is_validated_and_kept_when_pickled() -> None:
    param = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(TypeError, match="compiled_sync must be a bool"):
        Lookahead(torch.optim.SGD([param], lr=0.1), compiled_sync="yes")  # type: ignore[arg-type]
    optimizer = Lookahead(torch.optim.SGD([param], lr=0.1), compiled_sync=True)
    assert copy.deepcopy(optimizer).compiled_sync
    assert pickle.loads(pickle.dumps(optimizer)).compiled_sync
    assert not Lookahead(torch.optim.SGD([param], lr=0.1)).compiled_sync
    state = optimizer.__getstate__()
    del state["compiled_sync"]  # pickled before the option existed
    restored = Lookahead.__new__(Lookahead)
    restored.__setstate__(state)
    assert restored.compiled_sync is False
