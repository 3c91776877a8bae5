"""Streaming fragments, the sync delay (overlap) and compressed communication of
DistributedLookahead on two gloo ranks, against the plainly written references of _reference.py."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from hypothesis import given, settings

from tests.distributed._cluster import Cluster
from tests.distributed._reference import (
    compressed_mean_reference,
    quadratic_worker,
    reference_streaming,
)
from tests.distributed._replica_utils import (
    assert_same_on_all_ranks,
    assert_states_equal,
    state_tensors,
)
from torch_lookahead.distributed import (
    FRAGMENT_KEY,
    DistributedLookahead,
    DistributedLookaheadState,
    fragment_param_groups,
)
from torch_lookahead.distributed._exchange import INT8_BLOCK, decode, encode, start_mean
from torch_lookahead.distributed.fragments import _cut

pytestmark = pytest.mark.distributed

SHAPES = [(3, 4), (5,), (2, 3), (7,)]
LR, INNER_MOMENTUM = 0.1, 0.9


def _set_grads(params: list[torch.nn.Parameter], grad_fn: Any) -> None:
    for p, g in zip(params, grad_fn([p.detach() for p in params]), strict=True):
        p.grad = g


def _tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6), torch.nn.Linear(6, 2)
    )


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x, y = torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


# ---------------------------------------------------------------- fragment_param_groups
def test_fragment_groups_are_contiguous_balanced_and_tagged() -> None:
    model = torch.nn.Sequential(*(torch.nn.Linear(10, 10) for _ in range(4)))  # 4 x 110 elements
    groups = fragment_param_groups(model, 2, weight_decay=0.1)
    assert [g[FRAGMENT_KEY] for g in groups] == [0, 1]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1]
    assert [p for g in groups for p in g["params"]] == list(model.parameters())
    assert [sum(p.numel() for p in g["params"]) for g in groups] == [220, 220]
    # by module, a layer's weight and bias stay together; by size, they may be cut apart
    by_module = fragment_param_groups(model, 8 // 2)
    assert [len(g["params"]) for g in by_module] == [2, 2, 2, 2]
    by_size = fragment_param_groups(model, 8, by="size")
    assert [len(g["params"]) for g in by_size] == [1] * 8
    with pytest.raises(
        ValueError, match=r"cannot cut 4 modules with parameters into 5 .*by='size'"
    ):
        fragment_param_groups(model, 5)
    # one unit larger than 1/F of the model: it stays whole, the others share the rest
    lopsided = torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(40, 40), torch.nn.Linear(2, 2)
    )
    sizes = [sum(p.numel() for p in g["params"]) for g in fragment_param_groups(lopsided, 3)]
    assert sizes == [12, 1640, 6]
    sizes = [sum(p.numel() for p in g["params"]) for g in fragment_param_groups(lopsided, 4)]
    assert sizes == [6, 6, 1640, 6]
    with pytest.raises(ValueError, match="fragments must be a positive int"):
        fragment_param_groups(model, 0)
    with pytest.raises(ValueError, match="by must be"):
        fragment_param_groups(model, 2, by="layer")  # type: ignore[arg-type]


# ---------------------------------------------------------------- F = 1 is the plain class
def check_one_fragment_is_the_plain_class(rank: int, world_size: int) -> None:
    model, twin = _tiny_model(0), _tiny_model(0)
    plain = DistributedLookahead(
        torch.optim.AdamW(model.parameters(), lr=0.01), k=3, alpha=0.6, outer_momentum=0.5
    )
    fragmented = DistributedLookahead(
        torch.optim.AdamW(fragment_param_groups(twin, 1), lr=0.01),
        k=3,
        alpha=0.6,
        outer_momentum=0.5,
    )
    for step in range(10):
        _train_step(model, plain, rank, step)
        _train_step(twin, fragmented, rank, step)
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b), step
    assert_states_equal(state_tensors(plain), state_tensors(fragmented))
    assert plain.bytes_all_reduced == fragmented.bytes_all_reduced


def test_one_fragment_is_the_plain_class_bit_for_bit(cluster: Cluster) -> None:
    cluster.run(check_one_fragment_is_the_plain_class)


# ---------------------------------------------------------------- against the reference
def check_streaming_matches_reference(
    rank: int,
    world_size: int,
    k: int,
    fragments: int,
    sync_delay: int,
    compression: str | None,
    n_steps: int,
    outer_momentum: float = 0.0,
    nesterov: bool = False,
) -> list[int]:
    workers = [quadratic_worker(200 + r, SHAPES) for r in range(world_size)]
    start, grad_fn = workers[rank]
    params = [torch.nn.Parameter(x.clone()) for x in start]
    per_fragment = len(SHAPES) // fragments
    groups = [
        {"params": params[f * per_fragment : (f + 1) * per_fragment], FRAGMENT_KEY: f}
        for f in range(fragments)
    ]
    opt = DistributedLookahead(
        torch.optim.SGD(groups, lr=LR, momentum=INNER_MOMENTUM),
        k=k,
        alpha=0.7,
        sync_delay=sync_delay,
        compression=compression,  # type: ignore[arg-type]
        outer_momentum=outer_momentum,
        nesterov=nesterov,
    )
    offsets = [((i // per_fragment) * k) // fragments for i in range(len(SHAPES))]
    bytes_per_step = []
    for _ in range(n_steps):
        _set_grads(params, grad_fn)
        before = opt.bytes_all_reduced
        opt.step()
        bytes_per_step.append(opt.bytes_all_reduced - before)
    assert_same_on_all_ranks(opt.slow_parameters())
    fast, slow = reference_streaming(
        workers[0][0],
        [g for _, g in workers],
        n_steps,
        lr=LR,
        inner_momentum=INNER_MOMENTUM,
        k=k,
        alpha=0.7,
        offsets=offsets,
        sync_delay=sync_delay,
        compression=compression,
        outer_momentum=outer_momentum,
        nesterov=nesterov,
    )
    for i, p in enumerate(params):
        torch.testing.assert_close(opt.state[p]["lookahead_slow"], slow[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(p.detach(), fast[rank][i], rtol=0, atol=1e-12)
    return bytes_per_step


@pytest.mark.parametrize(
    ("k", "fragments", "sync_delay", "compression"),
    [
        (4, 2, 0, None),  # streaming: fragment 1 syncs at steps 2, 6, 10, ...
        (3, 4, 0, None),  # more fragments than... offsets 0, 0, 1, 2
        (4, 1, 2, None),  # overlap: applied two inner steps after the launch
        (4, 2, 1, None),  # both
        (3, 1, 0, "bfloat16"),
        (3, 2, 1, "int8"),
    ],
)
def test_streaming_overlap_and_compression_match_reference(
    cluster: Cluster, k: int, fragments: int, sync_delay: int, compression: str | None
) -> None:
    n_steps = 13
    per_rank = cluster.run(
        check_streaming_matches_reference, k, fragments, sync_delay, compression, n_steps
    )
    assert per_rank[0] == per_rank[1]
    syncing = [step for step, sent in enumerate(per_rank[0], start=1) if sent]
    per_fragment = len(SHAPES) // fragments
    expected_steps = sorted(
        {
            t
            for f in range(fragments)
            for t in range(1, n_steps + 1)
            if t % k == ((f * k) // fragments) % k
        }
    )
    assert syncing == expected_steps
    if compression is None and fragments == 2:
        sizes = {sum(torch.Size(s).numel() for s in SHAPES[f * per_fragment :][:per_fragment])
                 for f in range(fragments)}  # fmt: skip
        # each sync moves one fragment's float64 weights (plus a 4-byte flag per tensor)
        assert set(per_rank[0]) - {0} == {8 * n + 4 * per_fragment for n in sizes}


# ---------------------------------------------------------------- the compressed exchange
def check_compressed_mean(rank: int, world_size: int, compression: str) -> None:
    generator = torch.Generator().manual_seed(7)
    shapes = [(40, 60), (333,), (5, 7)]  # 2,768 values: int8 pads to 2 x 2 blocks
    slow = [torch.randn(s, generator=generator) for s in shapes]
    fasts = [[s + 0.01 * torch.randn(s.shape, generator=generator) for s in slow] for _ in "ab"]
    fasts[0][0][0, 0] = 5.0  # an outlier in one block
    exchange = start_mean(
        fasts[rank],
        dist.group.WORLD,
        compression=compression,
        references=slow,  # type: ignore[arg-type]
    )
    means = exchange.wait()
    expected = compressed_mean_reference(slow, fasts, compression)
    for got, want in zip(means, expected, strict=True):
        assert torch.equal(got, want)
    assert_same_on_all_ranks(means)
    n = sum(torch.Size(s).numel() for s in shapes)
    padded = 2 * INT8_BLOCK * 2 if compression == "int8" else n + n % 2
    assert exchange.payload_bytes == (
        2 * padded if compression == "bfloat16" else padded + 4 * padded // INT8_BLOCK
    )
    exact = [(a + b) / 2 for a, b in zip(*fasts, strict=True)]
    error = max((m - e).abs().max().item() for m, e in zip(means, exact, strict=True))
    assert 0 < error < (0.05 if compression == "int8" else 0.01)


@pytest.mark.parametrize("compression", ["bfloat16", "int8"])
def test_compressed_mean_matches_reference_bit_for_bit(cluster: Cluster, compression: str) -> None:
    cluster.run(check_compressed_mean, compression)


def test_encodings_round_trip_within_half_a_step() -> None:
    values = torch.randn(3 * INT8_BLOCK, generator=torch.Generator().manual_seed(0))
    values[:INT8_BLOCK] *= 1000  # blocks have their own scales
    for compression in ("bfloat16", "int8"):
        decoded = decode(encode(values, compression), values.numel(), compression)  # type: ignore[arg-type]
        if compression == "bfloat16":
            assert torch.equal(decoded, values.to(torch.bfloat16).float())
        else:
            scales = values.view(-1, INT8_BLOCK).abs().amax(1) / 127
            bound = (scales / 2 * (1 + 1e-6)).repeat_interleave(INT8_BLOCK)
            assert ((decoded - values).abs() <= bound).all()
    assert torch.equal(decode(encode(torch.zeros(INT8_BLOCK), "int8"), INT8_BLOCK, "int8"),
                       torch.zeros(INT8_BLOCK))  # fmt: skip


# ---------------------------------------------------------------- checkpoints
def _build(model: torch.nn.Module, sync_delay: int) -> DistributedLookahead:
    return DistributedLookahead(
        torch.optim.AdamW(fragment_param_groups(model, 2), lr=0.01),
        k=4,
        alpha=0.6,
        outer_momentum=0.5,
        nesterov=True,
        sync_delay=sync_delay,
    )


def check_checkpoint_resumes_fragments_and_pending_syncs(
    rank: int, world_size: int, sync_delay: int, directory: str | None
) -> None:
    model = _tiny_model(0)
    opt = _build(model, sync_delay)
    assert [g["lookahead_step"] for g in opt.param_groups] == [0, 2]  # offsets 0 and 2
    for step in range(7):  # fragment 1 launched at step 6: pending if sync_delay > 0
        _train_step(model, opt, rank, step)
    buffer = io.BytesIO()
    if directory is None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    else:
        dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    if sync_delay:
        assert any("lookahead_launch_mean" in s for s in opt.state.values())
    for step in range(7, 15):
        _train_step(model, opt, rank, step)
    resumed_model = _tiny_model(1)
    resumed = _build(resumed_model, sync_delay)
    if directory is None:
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        resumed_model.load_state_dict(saved["model"])
        resumed.load_state_dict(saved["opt"])
    else:
        state = DistributedLookaheadState(resumed_model, resumed)
        dcp.load({"train": state}, checkpoint_id=directory)
    assert [g["lookahead_step"] for g in resumed.param_groups] == [3, 1]
    for step in range(7, 15):
        _train_step(resumed_model, resumed, rank, step)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_states_equal(state_tensors(opt), state_tensors(resumed))
    assert [g["lookahead_step"] for g in opt.param_groups] == [
        g["lookahead_step"] for g in resumed.param_groups
    ]


@pytest.mark.parametrize(
    ("sync_delay", "compression", "nesterov"),
    [(2, None, True), (1, "bfloat16", False)],
)
def test_outer_momentum_with_fragments_delay_and_compression_matches_reference(
    cluster: Cluster, sync_delay: int, compression: str | None, nesterov: bool
) -> None:
    cluster.run(check_streaming_matches_reference, 4, 2, sync_delay, compression, 13, 0.6, nesterov)


@pytest.mark.parametrize("sync_delay", [0, 2])
@pytest.mark.parametrize("via", ["torch.save", "dcp"])
def test_checkpoint_resumes_fragment_phases_and_pending_syncs(
    cluster: Cluster, tmp_path: Path, sync_delay: int, via: str
) -> None:
    directory = str(tmp_path / "checkpoint") if via == "dcp" else None
    cluster.run(check_checkpoint_resumes_fragments_and_pending_syncs, sync_delay, directory)


def check_explicit_sync_applies_pending(rank: int, world_size: int) -> None:
    model = _tiny_model(0)
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1), k=3, alpha=0.5, sync_delay=2
    )
    for step in range(4):  # launched at step 3, pending until step 5
        _train_step(model, opt, rank, step)
    assert any("lookahead_launch" in s for s in opt.state.values())
    opt.sync()
    assert not any("lookahead_launch" in s for s in opt.state.values())
    assert_same_on_all_ranks(model.parameters())
    for p in model.parameters():
        assert torch.equal(p, opt.state[p]["lookahead_slow"])


def test_explicit_sync_applies_pending_syncs_first(cluster: Cluster) -> None:
    cluster.run(check_explicit_sync_applies_pending)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sync_delay": 5}, ValueError, "sync_delay must be smaller than k=5"),
        ({"sync_delay": -1}, TypeError, "sync_delay must be a non-negative int"),
        ({"compression": "fp8"}, ValueError, "compression must be None or one of"),
    ],
)
def test_validates_new_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        DistributedLookahead(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), **kwargs)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=9),
    fragments=st.integers(1, 9),
)
def test_cut_makes_the_largest_fragment_as_small_as_any_contiguous_cut(
    sizes: list[int], fragments: int
) -> None:
    if fragments > len(sizes):
        return
    assignment = _cut(sizes, fragments)
    assert assignment == sorted(assignment)  # contiguous runs, in order
    assert set(assignment) == set(range(fragments))  # none empty
    largest = max(
        sum(s for s, f in zip(sizes, assignment, strict=True) if f == g) for g in range(fragments)
    )
    best = min(
        max(sum(sizes[a:b]) for a, b in itertools.pairwise((0, *cuts, len(sizes))))
        for cuts in itertools.combinations(range(1, len(sizes)), fragments - 1)
    )
    assert largest == best
