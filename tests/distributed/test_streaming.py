"""Streaming fragments, the sync delay (overlap) and compressed communication of
DistributedLookahead on two gloo ranks, against the plainly written references of _reference.py."""

from __future__ import annotations

import copy
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

from tests._slow import slow_weights_of
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
    OUTER_MOMENTUM_KEY,
    DistributedLookahead,
    DistributedLookaheadState,
    fragment_param_groups,
)
from torch_lookahead.distributed._exchange import (
    INT8_BLOCK,
    decode,
    encode,
    mean_of_pieces,
    start_mean,
)
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
    assert_same_on_all_ranks(slow_weights_of(opt))
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
        # each sync moves one fragment's float64 weights (padded to 2 equal chunks) and the
        # verdict's int64 sums (a preparation flag, a flag per tensor, a count, two fingerprint
        # values and their squares)
        verdict = 8 * (1 + per_fragment + 6)
        assert set(per_rank[0]) - {0} == {8 * (n + n % 2) + verdict for n in sizes}


# ---------------------------------------------------------------- the compressed exchange
def check_compressed_mean(rank: int, world_size: int, compression: str) -> None:
    generator = torch.Generator().manual_seed(7)
    shapes = [(40, 60), (333,), (5, 7)]  # int8: 3 + 1 + 1 blocks, padded to 2 x 3 blocks
    slow = [torch.randn(s, generator=generator) for s in shapes]
    fasts = [[s + 0.01 * torch.randn(s.shape, generator=generator) for s in slow] for _ in "ab"]
    fasts[0][0][0, 0] = 5.0  # an outlier in one block
    exchange = start_mean(
        fasts[rank],
        dist.group.WORLD,
        compression=compression,  # type: ignore[arg-type]
        references=slow,
    )
    verdict, deltas = exchange.wait()
    assert verdict.committed
    means = [s - d for s, d in zip(slow, deltas, strict=True)]  # type: ignore[operator]
    expected = compressed_mean_reference(slow, fasts, compression)
    for got, want in zip(means, expected, strict=True):
        assert torch.equal(got, want)
    assert_same_on_all_ranks(means)
    n = sum(torch.Size(s).numel() for s in shapes)
    padded = 6 * INT8_BLOCK if compression == "int8" else n + n % 2
    verdict_bytes = 8 * (1 + len(shapes))
    assert exchange.payload_bytes == verdict_bytes + (
        2 * padded if compression == "bfloat16" else padded + 4 * padded // INT8_BLOCK
    )
    exact = [(a + b) / 2 for a, b in zip(*fasts, strict=True)]
    error = max((m - e).abs().max().item() for m, e in zip(means, exact, strict=True))
    assert 0 < error < (0.05 if compression == "int8" else 0.01)


@pytest.mark.parametrize("compression", ["bfloat16", "int8"])
def test_compressed_mean_matches_reference_bit_for_bit(cluster: Cluster, compression: str) -> None:
    cluster.run(check_compressed_mean, compression)


def check_int8_scales_stay_inside_a_tensor(rank: int, world_size: int) -> None:
    # A large-update tensor and a small one that would share a block if scales spanned tensors.
    large = torch.full((1000,), 1.0 + rank)
    small = torch.full((6,), 1e-4 * (1 + rank))
    references = [torch.zeros(1000), torch.zeros(6)]
    _, deltas = start_mean(
        [large, small], dist.group.WORLD, compression="int8", references=references
    ).wait()
    exact = -(1e-4 * 1.5)  # the mean pseudo-gradient of the small tensor: 0 - mean(small)
    step = 2e-4 / 127  # the quantisation step of the small tensor's own scale
    assert deltas[1] is not None
    assert (deltas[1] - exact).abs().max().item() <= step


def test_int8_moves_a_small_tensor_next_to_a_large_one_as_the_exact_mean(
    cluster: Cluster,
) -> None:
    cluster.run(check_int8_scales_stay_inside_a_tensor)


def check_bfloat16_weights_travel_in_bfloat16(rank: int, world_size: int) -> int:
    weights = torch.tensor([1.0, 3.0, 256.0]).add(rank / 64).to(torch.bfloat16)
    exchange = start_mean([weights], dist.group.WORLD)
    _, (mean,) = exchange.wait()
    assert mean is not None and mean.dtype == torch.bfloat16
    both = [torch.tensor([1.0, 3.0, 256.0]).add(r / 64).to(torch.bfloat16) for r in range(2)]
    assert torch.equal(mean, ((both[0].float() + both[1].float()) / 2).to(torch.bfloat16))
    return exchange.payload_bytes


def test_exact_mode_sends_bfloat16_weights_in_bfloat16(cluster: Cluster) -> None:
    sent = cluster.run(check_bfloat16_weights_travel_in_bfloat16)
    assert sent == [2 * 4 + 8 * 2] * 2  # 3 values padded to 4, 2 bytes each; the verdict's sums


def test_exact_mean_of_many_bfloat16_replicas_is_rounded_once() -> None:
    # 512 workers' bfloat16 weights near 1: summed in bfloat16 the error would grow with the
    # number of workers; summed in float32 the mean is the exact mean rounded once to bfloat16.
    generator = torch.Generator().manual_seed(0)
    replicas = (1 + 0.01 * torch.randn(512, 256, generator=generator)).to(torch.bfloat16)
    pieces = [encode(r, torch.bfloat16) for r in replicas]
    mean = mean_of_pieces(pieces, 256, torch.bfloat16)
    assert mean.dtype == torch.float32
    exact = replicas.double().mean(0)
    assert (mean.double() - exact).abs().max().item() < 1e-6  # float32 accumulation error
    rounded = mean.to(torch.bfloat16).double()
    assert torch.equal(rounded, exact.to(torch.bfloat16).double())


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


# ---------------------------------------------------------------- phases, eval-form saves, loads
def check_fragment_phases_survive_sync_reset_and_plain_loads(rank: int, world_size: int) -> None:
    model = torch.nn.Sequential(*(torch.nn.Linear(3, 3) for _ in range(4)))
    opt = DistributedLookahead(
        torch.optim.SGD(fragment_param_groups(model, 4), lr=0.1), k=8, alpha=0.5
    )
    phases = [0, 6, 4, 2]  # fragment f starts at (k - f * k // F) % k
    assert [g["lookahead_step"] for g in opt.param_groups] == phases
    for step in range(2):
        _train_step_on(model, opt, rank, step, inputs=3)
    assert [g["lookahead_step"] for g in opt.param_groups] == [2, 0, 6, 4]
    opt.sync()  # every fragment synced now: each restarts at its phase, not all at 0
    assert [g["lookahead_step"] for g in opt.param_groups] == phases
    _train_step_on(model, opt, rank, 2, inputs=3)
    opt.reset_slow()
    assert [g["lookahead_step"] for g in opt.param_groups] == phases
    # A checkpoint of the plain inner optimizer (no counters) starts each fragment at its phase.
    plain = torch.optim.SGD(fragment_param_groups(model, 4), lr=0.1)
    opt.load_state_dict(plain.state_dict())
    assert [g["lookahead_step"] for g in opt.param_groups] == phases


def test_fragment_phases_survive_sync_reset_slow_and_plain_checkpoints(cluster: Cluster) -> None:
    cluster.run(check_fragment_phases_survive_sync_reset_and_plain_loads)


def _train_step_on(
    model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, step: int, inputs: int
) -> None:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(8, inputs, generator=generator)
    model(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("compression", [None, "bfloat16", "int8"])
def test_saving_in_eval_form_while_a_sync_is_in_flight_changes_nothing(
    cluster: Cluster, compression: str | None
) -> None:
    cluster.run(check_eval_form_save_while_pending, compression)


def check_eval_form_save_while_pending(rank: int, world_size: int, compression: str | None) -> None:
    def build() -> tuple[torch.nn.Module, DistributedLookahead]:
        model = _tiny_model(0)
        opt = DistributedLookahead(
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            k=4,
            alpha=0.5,
            sync_delay=2,
            compression=compression,  # type: ignore[arg-type]
        )
        return model, opt

    (model, opt), (twin, twin_opt) = build(), build()
    for step in range(5):  # the sync launched at step 4 is in flight
        _train_step(model, opt, rank, step)
        _train_step(twin, twin_opt, rank, step)
    assert "lookahead_launch" in opt.state[next(model.parameters())]
    with opt.slow_weights():  # what every integration does to save the slow weights
        saved = copy.deepcopy(opt.state_dict())
    result = "lookahead_launch_mean" if compression is None else "lookahead_launch_mean_delta"
    assert all(result in entry for entry in saved["state"].values())  # received, not in flight
    assert all(g["lookahead_eval_mode"] is True for g in saved["param_groups"])  # eval form
    for step in range(5, 12):
        _train_step(model, opt, rank, step)
        _train_step(twin, twin_opt, rank, step)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(slow_weights_of(opt), slow_weights_of(twin_opt), strict=True):
        assert torch.equal(a, b)
    assert_same_on_all_ranks(slow_weights_of(opt))


def check_load_without_slow_weights_drops_their_outer_momentum(rank: int, world_size: int) -> None:
    model = _tiny_model(0)
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=2, outer_momentum=0.9
    )
    for step in range(4):  # saved at a sync: the weights, so a new slow copy, agree on all ranks
        _train_step(model, opt, rank, step)
    saved = copy.deepcopy(opt.state_dict())
    first, second = saved["param_groups"][0]["params"][:2]
    del saved["state"][first]["lookahead_slow"]  # stale slow weights dropped from the checkpoint
    saved["param_groups"][0]["lr"] = 0.05
    opt.load_state_dict(saved)  # no KeyError half-way: the whole checkpoint is in
    params = list(model.parameters())
    assert opt.param_groups[0]["lr"] == 0.05
    assert OUTER_MOMENTUM_KEY not in opt.state[params[0]]  # restarts with new slow weights
    assert torch.equal(
        opt.state[params[1]][OUTER_MOMENTUM_KEY], saved["state"][second][OUTER_MOMENTUM_KEY]
    )
    for step in range(4, 8):
        _train_step(model, opt, rank, step)
    assert not opt.state[params[0]][OUTER_MOMENTUM_KEY].isnan().any()
    assert_same_on_all_ranks(slow_weights_of(opt))


def test_a_load_that_drops_slow_weights_is_all_or_nothing(cluster: Cluster) -> None:
    cluster.run(check_load_without_slow_weights_drops_their_outer_momentum)
