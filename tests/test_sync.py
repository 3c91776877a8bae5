"""The sync kernel: the outer step over lists, cache-blocked on CPU, against a float64 reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from torch_lookahead import _sync

# Small blocks, so that tests with small tensors exercise the cut into views and the grouping.
SMALL_BLOCK_BYTES = 256


def sync_(
    fast: list[Tensor],
    slow: list[Tensor],
    alpha: float,
    *,
    scratch: dict | None = None,
) -> None:
    """One uninterrupted outer step: ``slow <- slow + alpha*(fast - slow); fast <- slow``."""
    _sync.Plan(_sync.sync_steps(fast, slow, alpha, {} if scratch is None else scratch)).run()


def swap_(a: list[Tensor], b: list[Tensor], scratch: dict) -> None:
    _sync.Plan(_sync.swap_steps(a, b, scratch)).run()


def reference_sync(fast: list[Tensor], slow: list[Tensor], alpha: float) -> list[Tensor]:
    """The outer step in float64, written out: slow + alpha * (fast - slow)."""
    return [s.double() + alpha * (f.double() - s.double()) for f, s in zip(fast, slow, strict=True)]


def random_pairs(
    seed: int, shapes: list[tuple[int, ...]], fast_dtype: torch.dtype, slow_dtype: torch.dtype
) -> tuple[list[Tensor], list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    fast = [torch.randn(shape, generator=gen).to(fast_dtype) for shape in shapes]
    slow = [torch.randn(shape, generator=gen).to(slow_dtype) for shape in shapes]
    return fast, slow


shape_lists = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 200)),
        st.tuples(st.integers(1, 30), st.integers(1, 30)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None)
@given(
    shapes=shape_lists,
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    dtypes=st.sampled_from(
        [
            (torch.float32, torch.float32),
            (torch.float64, torch.float64),
            (torch.bfloat16, torch.float32),
        ]
    ),
)
def test_sync_matches_the_float64_reference(
    shapes: list[tuple[int, ...]],
    alpha: float,
    seed: int,
    dtypes: tuple[torch.dtype, torch.dtype],
) -> None:
    fast_dtype, slow_dtype = dtypes
    fast, slow = random_pairs(seed, shapes, fast_dtype, slow_dtype)
    expected = reference_sync(fast, slow, alpha)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)
        sync_(fast, slow, alpha)
    tolerance = {torch.float32: 1e-6, torch.float64: 1e-14}[slow_dtype]
    for f, s, e in zip(fast, slow, expected, strict=True):
        torch.testing.assert_close(s.double(), e, rtol=tolerance, atol=tolerance)
        # The parameter holds the new slow weights, rounded to its own dtype.
        assert torch.equal(f, s.to(fast_dtype))


@pytest.mark.parametrize(
    ("fast_dtype", "slow_dtype"), [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]
)
def test_blocking_changes_no_bit(fast_dtype: torch.dtype, slow_dtype: torch.dtype) -> None:
    # Tensors shorter and longer than a block, contiguous and not, many of them.
    shapes = [(3,), (700,), (40, 30), (5,), (1000, 3)] * 4 + [(25,)] * 100
    fast, slow = random_pairs(0, shapes, fast_dtype, slow_dtype)
    fast[2], slow[2] = fast[2].t(), slow[2].t()  # non-contiguous: synced whole
    blocked_fast, blocked_slow = [f.clone() for f in fast], [s.clone() for s in slow]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", 1 << 40)  # one block: no blocking at all
        sync_(fast, slow, 0.3)
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)
        sync_(blocked_fast, blocked_slow, 0.3)
    for a, b in zip(fast + slow, blocked_fast + blocked_slow, strict=True):
        assert torch.equal(a, b)


def test_cache_blocks_cover_every_element_once_in_order() -> None:
    shapes = [(10,), (200,), (3,), (64,), (64,), (1,), (500,), (7,)]
    fast, slow = random_pairs(1, shapes, torch.float32, torch.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)  # 64 floats per block
        blocks = _sync._plan_blocks(fast, slow, 2)
    flat_fast = torch.cat([t.reshape(-1) for block_fast, *_ in blocks for t in block_fast])
    flat_slow = torch.cat([t.reshape(-1) for _, block_slow, *_ in blocks for t in block_slow])
    assert torch.equal(flat_fast, torch.cat([f.reshape(-1) for f in fast]))
    assert torch.equal(flat_slow, torch.cat([s.reshape(-1) for s in slow]))
    for block_fast, block_slow, sizes, dims, most in blocks:
        assert most == max(sum(block[2]) for block in blocks)  # the scratch a block needs
        # Either one view of at most a block, or whole tensors that together fit in one.
        assert len(block_fast) == len(block_slow)
        assert sizes == [t.numel() for t in block_fast]
        assert dims == [t.dim() for t in block_fast]
        if len(block_fast) > 1:
            assert sum(t.numel() for t in block_fast) <= 64


def test_a_bucket_of_one_block_is_not_cut() -> None:
    fast, slow = random_pairs(2, [(30,)] * 10, torch.float32, torch.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", 1200)  # 300 floats: the whole bucket
        assert len(_sync._plan_blocks(fast, slow, 2)) == 1
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", 400)  # 100 floats
        sizes = [len(block_fast) for block_fast, *_ in _sync._plan_blocks(fast, slow, 2)]
        assert sizes == [3, 3, 3, 1]


@pytest.mark.parametrize(
    ("fast_dtype", "slow_dtype"), [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]
)
def test_a_sync_resumed_after_any_completed_step_gives_one_uninterrupted_result(
    fast_dtype: torch.dtype, slow_dtype: torch.dtype
) -> None:
    """Every step may complete and still be interrupted before it is counted (Ctrl-C right after
    the kernel): running the plan again must not apply the lerp twice."""
    shapes = [(3,), (700,), (40, 30), (5,)] * 3
    fast, slow = random_pairs(8, shapes, fast_dtype, slow_dtype)
    expected_fast, expected_slow = [f.clone() for f in fast], [s.clone() for s in slow]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)
        sync_(expected_fast, expected_slow, 0.3)
        count = len(_sync.sync_steps(fast, slow, 0.3, {}))
        for at in range(count):
            f, s = [t.clone() for t in fast], [t.clone() for t in slow]
            plan = _sync.Plan(_sync.sync_steps(f, s, 0.3, {}))
            step = plan.steps[at]
            real = step[0] if isinstance(step, tuple) else step

            def interrupted(real: _sync.Step = real) -> None:
                real()
                raise KeyboardInterrupt

            plan.steps[at] = (interrupted, step[1]) if isinstance(step, tuple) else interrupted
            with pytest.raises(KeyboardInterrupt):
                plan.run()
            plan.steps[at] = step
            plan.run()
            for x, y in zip(f + s, expected_fast + expected_slow, strict=True):
                assert torch.equal(x, y), at


def test_cpu_sync_allocates_nothing_after_its_scratch() -> None:
    from torch.profiler import ProfilerActivity, profile

    fast, slow = random_pairs(3, [(70_000,)] * 3 + [(300,)] * 50, torch.float32, torch.float32)
    scratch: _sync.Scratch = {}
    sync_(fast, slow, 0.5, scratch=scratch)  # warm-up: allocates the scratch
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        sync_(fast, slow, 0.5, scratch=scratch)
        sync_(fast, slow, 0.5, scratch=scratch)
    events = recorded.profiler.kineto_results.events()  # type: ignore[union-attr]
    allocated = [e.nbytes() for e in events if e.name() == "[memory]" and e.nbytes() > 0]
    assert allocated == []


def test_lists_mixing_dtypes_and_mismatched_pairs() -> None:
    # fp32 and fp64 pairs (two buckets) and one bf16 parameter with an fp32 slow copy.
    gen = torch.Generator().manual_seed(4)
    dtypes = [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
    ]
    fast = [torch.randn(300, generator=gen).to(f) for f, _ in dtypes]
    slow = [torch.randn(300, generator=gen).to(s) for _, s in dtypes]
    expected = reference_sync(fast, slow, 0.25)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)
        sync_(fast, slow, 0.25)
    for f, s, e, (fast_dtype, slow_dtype) in zip(fast, slow, expected, dtypes, strict=True):
        assert s.dtype == slow_dtype and f.dtype == fast_dtype
        torch.testing.assert_close(s.double(), e, rtol=1e-6, atol=1e-6)
        assert torch.equal(f, s.to(fast_dtype))


@pytest.mark.parametrize("numel", [5, 300])  # 300 floats: cut into views of 64 (small blocks)
def test_sync_of_parameters_is_seen_by_autograd(numel: int) -> None:
    """The in-place kernels advance the version counters (also through the views that cut long
    tensors into blocks): a graph that saved a parameter before a sync refuses to backpropagate
    through the changed value."""
    params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(8)]
    slow = [p.detach() + 1.0 for p in params]
    versions = [p._version for p in params]
    loss = sum((p * p).sum() for p in params)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)
        sync_(params, slow, 0.5)
    assert all(torch.equal(p.detach(), s) for p, s in zip(params, slow, strict=True))
    assert all(p._version > v for p, v in zip(params, versions, strict=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # type: ignore[union-attr]
    # And the kernels do not leave parameters needing no grad, nor record a graph.
    assert all(p.requires_grad and p.grad_fn is None for p in params)


def test_mismatched_pairs_allocate_their_scratch_before_changing_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Running out of memory in a sync of bf16 parameters with fp32 slow copies leaves every pair
    as it was: all scratch space is allocated before the first pair changes."""
    fast, slow = random_pairs(5, [(300,), (40,), (700,)], torch.bfloat16, torch.float32)
    before = [t.clone() for t in fast + slow]
    real_empty = torch.empty
    calls = []

    def empty_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 0:
            raise torch.OutOfMemoryError("simulated")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty_then_fail)
    with pytest.raises(torch.OutOfMemoryError):
        sync_(fast, slow, 0.5)
    monkeypatch.undo()
    assert calls and all(torch.equal(a, b) for a, b in zip(fast + slow, before, strict=True))


def test_swap_exchanges_values_exactly_through_a_reused_buffer() -> None:
    shapes = [(3,), (700,), (40, 30), (1,)] * 30 + [(5000,)]
    a, b = random_pairs(6, shapes, torch.float32, torch.float32)
    a[2] = a[2].t()  # non-contiguous
    b[2] = b[2].t()
    a0, b0 = [t.clone() for t in a], [t.clone() for t in b]
    scratch: dict = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)
        for _ in range(2):
            swap_(a, b, scratch)
            assert all(torch.equal(x, y) for x, y in zip(a + b, b0 + a0, strict=True))
            buffer = scratch[(torch.device("cpu"), torch.float32, 0)][0]
            swap_(a, b, scratch)
            assert scratch[(torch.device("cpu"), torch.float32, 0)][0] is buffer
            assert all(torch.equal(x, y) for x, y in zip(a + b, a0 + b0, strict=True))


def test_sync_enters_no_grad_itself() -> None:
    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(3)]
    slow = [p.detach().clone() for p in params]
    sync_(params, slow, 0.25)  # called with grad mode on: still a plain update
    assert all(p.grad_fn is None and s.grad_fn is None for p, s in zip(params, slow, strict=True))
    assert all(torch.equal(p.detach(), s) for p, s in zip(params, slow, strict=True))


def test_swap_views_follow_the_shapes_of_each_call() -> None:
    """The scratch views kept for a count and length of tensors are rebuilt when the shapes
    differ (same total, other layout), so every swap still exchanges exactly."""
    scratch: dict = {}
    for shapes in ([(6,), (2, 3)], [(2, 3), (6,)], [(3, 2), (1, 6)], [(6,), (2, 3)]):
        a, b = random_pairs(7, shapes, torch.float32, torch.float32)
        a0, b0 = [t.clone() for t in a], [t.clone() for t in b]
        swap_(a, b, scratch)
        assert all(torch.equal(x, y) for x, y in zip(a + b, b0 + a0, strict=True))


def test_same_shapes_compares_every_dimension() -> None:
    from torch_lookahead._tensors import same_shapes

    t = torch.zeros
    assert same_shapes([t(2, 3), t(4), t(())], [t(2, 3), t(4), t(())])
    assert not same_shapes([t(2, 3)], [t(3, 2)])
    assert not same_shapes([t(6)], [t(1, 6)])
    assert not same_shapes([t(2, 3), t(4)], [t(2, 3)])
    assert not same_shapes([t(4), t(2, 3, 5)], [t(4), t(2, 3, 4)])


@pytest.mark.parametrize("slow_dtype", [None, torch.float32])
def test_outer_step_groups_by_the_parameters_placement_once_slow_copies_are_placed(
    slow_dtype: torch.dtype | None,
) -> None:
    """The outer step groups its pairs by the parameters' placements alone (``keys=1``): every
    slow copy is first given the slow placement that follows from its parameter's, also one a
    user assigned in another dtype, so a bucket never mixes slow dtypes."""
    from torch_lookahead import Lookahead

    gen = torch.Generator().manual_seed(9)
    dtypes = (torch.float32, torch.bfloat16, torch.float64, torch.bfloat16, torch.float32)
    params = [torch.nn.Parameter(torch.randn(300, generator=gen).to(d)) for d in dtypes]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=100, alpha=0.25, slow_dtype=slow_dtype)
    for p in params:
        p.grad = torch.randn(300, generator=gen).to(p.dtype)
    opt.step()  # captures the slow copies
    state = opt.state
    state[params[4]]["lookahead_slow"] = state[params[4]]["lookahead_slow"].double() + 0.5
    expected = reference_sync(params, [state[p]["lookahead_slow"] for p in params], 0.25)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sync, "SYNC_BLOCK_BYTES", SMALL_BLOCK_BYTES)
        opt.sync()
    for p, e in zip(params, expected, strict=True):
        slow = state[p]["lookahead_slow"]
        wanted = slow_dtype if slow_dtype is not None and p.dtype.itemsize < 4 else p.dtype
        assert slow.dtype == wanted and torch.equal(p.detach(), slow.to(p.dtype))
        tolerance = 1e-2 if slow.dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(slow.double(), e, rtol=tolerance, atol=tolerance)
