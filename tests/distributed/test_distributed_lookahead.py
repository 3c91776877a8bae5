"""DistributedLookahead on two gloo ranks: the math against float64 references, the special
cases (one rank = Lookahead, alpha=1 = local SGD), the errors, and exact DCP resume (also from a
save in eval mode)."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from tests._slow import slow_weights_of
from tests.distributed._cluster import Cluster
from tests.distributed._reference import quadratic_worker, reference_across_workers
from tests.distributed._replica_utils import (
    assert_same_on_all_ranks,
    assert_states_equal,
    state_tensors,
)
from torch_lookahead import Lookahead
from torch_lookahead.distributed import (
    OUTER_MOMENTUM_KEY,
    DistributedLookahead,
    DistributedLookaheadState,
    saved_world_size,
)
from torch_lookahead.distributed.lookahead import MEAN_DELTA_KEY

pytestmark = pytest.mark.distributed

SHAPES = [(3, 4), (5,)]
LR, INNER_MOMENTUM, N_STEPS = 0.1, 0.9, 11


def _set_grads(params: list[torch.nn.Parameter], grad_fn) -> None:  # type: ignore[no-untyped-def]
    for p, g in zip(params, grad_fn([p.detach() for p in params]), strict=True):
        p.grad = g


def check_matches_reference(
    rank: int,
    world_size: int,
    k: int,
    alpha: float,
    outer_momentum: float,
    nesterov: bool,
    foreach: bool,
) -> int:
    workers = [quadratic_worker(100 + r, SHAPES) for r in range(world_size)]
    start, grad_fn = workers[rank]  # each rank starts elsewhere; rank 0's start must win
    params = [torch.nn.Parameter(x.clone()) for x in start]
    inner = torch.optim.SGD(
        [{"params": params[:1]}, {"params": params[1:]}],
        lr=LR,
        momentum=INNER_MOMENTUM,
        foreach=foreach,
    )
    opt = DistributedLookahead(
        inner, k=k, alpha=alpha, outer_momentum=outer_momentum, nesterov=nesterov
    )
    assert_same_on_all_ranks(params)
    for t in range(1, N_STEPS + 1):
        _set_grads(params, grad_fn)
        opt.step()
        if t % k == 0:
            assert_same_on_all_ranks(params)
            assert_same_on_all_ranks(slow_weights_of(opt))
    fast, slow, momentum = reference_across_workers(
        workers[0][0],
        [g for _, g in workers],
        N_STEPS,
        lr=LR,
        inner_momentum=INNER_MOMENTUM,
        k=k,
        alpha=alpha,
        outer_momentum=outer_momentum,
        nesterov=nesterov,
    )
    for i, p in enumerate(params):
        torch.testing.assert_close(p.detach(), fast[rank][i], rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["lookahead_slow"], slow[i], rtol=0, atol=1e-12)
        if outer_momentum > 0:
            torch.testing.assert_close(
                opt.state[p][OUTER_MOMENTUM_KEY], momentum[i], rtol=0, atol=1e-12
            )
        else:
            assert OUTER_MOMENTUM_KEY not in opt.state[p]
    return opt.bytes_all_reduced


@pytest.mark.parametrize(
    ("k", "alpha", "outer_momentum", "nesterov", "foreach"),
    [
        (3, 0.5, 0.0, False, True),  # Lookahead on the mean of the workers
        (4, 1.0, 0.0, False, False),  # local SGD
        (3, 0.7, 0.5, False, True),  # SlowMo heavy ball
        (2, 0.7, 0.9, True, False),  # DiLoCo Nesterov
        (2, 0.4, 0.6, True, True),
    ],
)
def test_matches_float64_reference(
    cluster: Cluster, k: int, alpha: float, outer_momentum: float, nesterov: bool, foreach: bool
) -> None:
    bytes_per_rank = cluster.run(
        check_matches_reference, k, alpha, outer_momentum, nesterov, foreach
    )
    n_elements, n_tensors = sum(torch.Size(s).numel() for s in SHAPES), len(SHAPES)
    padded = n_elements + n_elements % 2  # cut into 2 equal chunks
    # Per sync: the weights (float64) and the verdict's int64 sums: a preparation flag, a
    # presence flag a parameter, a committed-sync count, the slow weights' two fingerprint
    # values and their squares a group (2 groups).
    expected = (N_STEPS // k) * (8 * padded + 8 * (1 + n_tensors + 6 * 2))
    assert bytes_per_rank == [expected, expected]


def _tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    x, y = _batch(rank, step)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def check_one_rank_is_lookahead(rank: int, world_size: int) -> None:
    own_group = [dist.new_group([r]) for r in range(world_size)][rank]
    cases = [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    ]
    for optimizer_class, kwargs in cases:
        model = _tiny_model(seed=rank)
        twin = copy.deepcopy(model)
        plain = Lookahead(
            optimizer_class(model.parameters(), **kwargs),
            k=3,
            alpha=0.5,
            pullback_momentum="pullback",
        )
        distributed = DistributedLookahead(
            optimizer_class(twin.parameters(), **kwargs),
            k=3,
            alpha=0.5,
            pullback_momentum="pullback",
            process_group=own_group,
        )
        for step in range(8):
            _train_step(model, plain, rank, step)
            _train_step(twin, distributed, rank, step)
            for a, b in zip(model.parameters(), twin.parameters(), strict=True):
                assert torch.equal(a, b), (optimizer_class.__name__, step)
        assert_states_equal(state_tensors(plain), state_tensors(distributed))
        assert [g["lookahead_step"] for g in plain.param_groups] == [
            g["lookahead_step"] for g in distributed.param_groups
        ]


def test_one_rank_is_exactly_lookahead(cluster: Cluster) -> None:
    cluster.run(check_one_rank_is_lookahead)


def check_alpha_one_is_local_sgd(rank: int, world_size: int) -> None:
    model = _tiny_model(seed=0)
    replicas = [copy.deepcopy(model) for _ in range(world_size)]
    replica_optimizers = [torch.optim.SGD(r.parameters(), lr=0.1, momentum=0.9) for r in replicas]
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, alpha=1.0
    )
    for step in range(1, 8):
        for r, (replica, replica_optimizer) in enumerate(
            zip(replicas, replica_optimizers, strict=True)
        ):
            _train_step(replica, replica_optimizer, r, step)
        _train_step(model, opt, rank, step)
        if step % 3 == 0:  # periodic model averaging
            with torch.no_grad():
                for tensors in zip(*(r.parameters() for r in replicas), strict=True):
                    mean = torch.stack([t.detach() for t in tensors]).sum(0) / world_size
                    for t in tensors:
                        t.copy_(mean)
        for a, b in zip(model.parameters(), replicas[rank].parameters(), strict=True):
            assert torch.equal(a, b), step


def test_alpha_one_without_momentum_is_exactly_local_sgd(cluster: Cluster) -> None:
    cluster.run(check_alpha_one_is_local_sgd)


def check_errors(rank: int, world_size: int) -> None:
    with pytest.raises(
        ValueError, match=r"parameter 0 is \(3, 4\) torch.float32 on rank 0 but \(4, 4\)"
    ):
        DistributedLookahead(torch.optim.SGD(torch.nn.Linear(4, 3 + rank).parameters(), lr=0.1))

    # Rank 1 never uses the second layer, so only rank 0 has a slow copy of it.
    model = _tiny_model(seed=0)
    opt = DistributedLookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=2)
    for step in range(2):
        x, _ = _batch(rank, step)
        out = model(x) if rank == 0 else model[1](model[0](x))
        out.sum().backward()
        if step == 0:
            opt.step()
            opt.zero_grad()
    with pytest.raises(
        ValueError,
        match=r"parameters \[2, 3\] \(counted across the synced parameter groups\) have been updated on some ranks",
    ):
        opt.step()


def test_clear_errors_on_misuse(cluster: Cluster) -> None:
    cluster.run(check_errors)


def test_refuses_to_start_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other tests of this process may have started a group; this one needs none.
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedLookahead(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"outer_momentum": 1.0}, ValueError, r"outer_momentum must be in \[0, 1\)"),
        ({"outer_momentum": "0.9"}, TypeError, "outer_momentum must be a real number"),
        ({"nesterov": True}, ValueError, "nesterov=True needs outer_momentum > 0"),
        ({"outer_momentum": 0.5, "nesterov": 1}, TypeError, "nesterov must be a bool"),
    ],
)
def test_validates_arguments_first(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        DistributedLookahead(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), **kwargs)  # type: ignore[arg-type]


def _build(seed: int, **options: Any) -> tuple[torch.nn.Module, DistributedLookahead]:
    model = _tiny_model(seed)
    opt = DistributedLookahead(
        torch.optim.AdamW(model.parameters(), lr=0.01),
        k=4,
        alpha=0.6,
        outer_momentum=0.5,
        nesterov=True,
        **options,
    )
    return model, opt


class _FirstFormat(DistributedLookaheadState):
    """Saves as the first format did: each rank's blob holds its pending delayed syncs alone."""

    def state_dict(self) -> dict[str, Any]:
        parts = super().state_dict()
        for part in parts.values():
            if "pending_syncs" in part:
                stored = torch.load(io.BytesIO(part["pending_syncs"]), weights_only=True)
                blob = io.BytesIO()
                torch.save(stored["pending"], blob)
                part["pending_syncs"] = blob.getvalue()
        return parts


def check_dcp_resume(rank: int, world_size: int, directory: str) -> None:
    model, opt = _build(seed=0)
    for step in range(6):  # stops mid-cycle: one sync done, two inner steps into the next
        _train_step(model, opt, rank, step)
    assert opt.param_groups[0]["lookahead_step"] == 2
    dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
    for step in range(6, 13):
        _train_step(model, opt, rank, step)
    expected_params = [p.detach().clone() for p in model.parameters()]
    expected_state = state_tensors(opt)

    resumed_model, resumed = _build(seed=1)  # a different start, which the checkpoint overrides
    dcp.load({"train": DistributedLookaheadState(resumed_model, resumed)}, checkpoint_id=directory)
    assert resumed.param_groups[0]["lookahead_step"] == 2
    for step in range(6, 13):
        _train_step(resumed_model, resumed, rank, step)
    for a, b in zip(expected_params, resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_states_equal(expected_state, state_tensors(resumed))

    # A checkpoint in the first format (its blob without the stored number of replicas) loads.
    first_format = f"{directory}-first-format"
    dcp.save({"train": _FirstFormat(model, opt)}, checkpoint_id=first_format)
    again_model, again = _build(seed=1)
    dcp.load({"train": DistributedLookaheadState(again_model, again)}, checkpoint_id=first_format)
    assert_states_equal(state_tensors(opt), state_tensors(again))
    for a, b in zip(model.parameters(), again_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert saved_world_size(first_format) == saved_world_size(directory) == world_size

    keys = dcp.FileSystemReader(directory).read_metadata().state_dict_metadata
    slow_keys = sorted(key for key in keys if "lookahead_slow" in key)
    assert slow_keys and all(key.startswith("train.replicas_from_rank_0.") for key in slow_keys)
    assert any(key.startswith(f"train.rank_{rank}.optimizer.") and "exp_avg" in key for key in keys)
    assert any(key.startswith(f"train.rank_{rank}.model.") for key in keys)


def test_dcp_resume_mid_cycle_is_exact(cluster: Cluster, tmp_path: Path) -> None:
    cluster.run(check_dcp_resume, str(tmp_path / "checkpoint"))


def _tensors(parts: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a (nested) state dict, keyed by their dotted path."""
    found: dict[str, torch.Tensor] = {}
    for key, value in parts.items():
        if isinstance(value, dict):
            found.update(_tensors(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            found[f"{prefix}{key}"] = value.detach().clone()
    return found


def check_eval_mode_save_resumes_exactly(
    rank: int, world_size: int, options: dict[str, Any], directory: str
) -> None:
    model, opt = _build(0, **options)
    for step in range(5):  # one sync launched at step 4 (pending with sync_delay=2), one step on
        _train_step(model, opt, rank, step)
    with opt.slow_weights():
        slow = [p.detach().clone() for p in model.parameters()]
        eval_form = _tensors(DistributedLookaheadState(model, opt).state_dict())
        dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=directory)
        # Nothing live changed: the model still holds the slow weights.
        for a, b in zip(slow, model.parameters(), strict=True):
            assert torch.equal(a, b)
    if options.get("sync_delay"):
        assert any(MEAN_DELTA_KEY in s for s in opt.state.values())  # saved with its mean
    resumed_model, resumed = _build(1, **options)  # a different start, which the load overrides
    dcp.load({"train": DistributedLookaheadState(resumed_model, resumed)}, checkpoint_id=directory)
    assert not resumed.in_eval_mode
    # The same checkpoint as one taken in train mode: each rank's fast weights, the slow weights.
    train_form = _tensors(DistributedLookaheadState(model, opt).state_dict())
    assert eval_form.keys() == train_form.keys()
    for key, value in train_form.items():
        assert torch.equal(value, eval_form[key]), key
    keys = dcp.FileSystemReader(directory).read_metadata().state_dict_metadata
    assert not any("lookahead_fast" in key for key in keys)
    assert any(key.startswith("train.replicas_from_rank_0.") and "slow" in key for key in keys)

    for step in range(5, 13):  # the uninterrupted run and the resumed one
        _train_step(model, opt, rank, step)
        _train_step(resumed_model, resumed, rank, step)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_states_equal(state_tensors(opt), state_tensors(resumed))


@pytest.mark.parametrize(
    "options",
    [{}, {"sync_delay": 2, "compression": "int8", "slow_dtype": torch.float64}],
    ids=["plain", "pending-int8-float64-slow"],
)
def test_dcp_save_in_eval_mode_loads_and_resumes_exactly(
    cluster: Cluster, tmp_path: Path, options: dict[str, Any]
) -> None:
    cluster.run(check_eval_mode_save_resumes_exactly, options, str(tmp_path / "checkpoint"))


def check_reset_add_group_and_copy(rank: int, world_size: int) -> None:
    model = _tiny_model(seed=0)
    opt = DistributedLookahead(
        torch.optim.SGD(model[0].parameters(), lr=0.1), k=4, alpha=0.5, outer_momentum=0.5
    )
    for step in range(6):  # one sync (non-zero outer momentum), then two local steps
        _train_step(model, opt, rank, step)
    weights = [p.detach().clone() for p in model[0].parameters()]
    gathered = [[torch.empty_like(w) for _ in range(world_size)] for w in weights]
    for w, out in zip(weights, gathered, strict=True):
        dist.all_gather(out, w)
    opt.reset_slow()  # restarts on the average of the ranks' weights
    for p, copies in zip(model[0].parameters(), gathered, strict=True):
        torch.testing.assert_close(p.detach(), sum(copies) / world_size, rtol=0, atol=1e-7)
        assert torch.equal(opt.state[p]["lookahead_slow"], p.detach())
        assert not opt.state[p][OUTER_MOMENTUM_KEY].any()
    assert_same_on_all_ranks(model[0].parameters())
    assert opt.param_groups[0]["lookahead_step"] == 0

    with torch.no_grad():
        model[2].weight.fill_(float(rank))  # ranks disagree; the new group takes rank 0's values
    opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.05})
    assert torch.equal(model[2].weight, torch.zeros_like(model[2].weight))
    assert_same_on_all_ranks(model.parameters())

    built = DistributedLookahead.wrap(torch.optim.SGD, k=3, alpha=0.25, outer_momentum=0.5)(
        torch.nn.Linear(2, 2).parameters(), lr=0.1
    )
    assert isinstance(built, DistributedLookahead) and built.outer_momentum == 0.5
    assert built.param_groups[0]["lookahead_k"] == 3

    copied = copy.deepcopy(opt)
    assert copied.outer_momentum == 0.5 and copied.process_group is dist.group.WORLD
    assert repr(opt).startswith("DistributedLookahead(k=4, alpha=0.5,")
    assert (
        "outer_momentum=0.5, nesterov=False, sync_delay=0, compression=None, world_size=2"
        in repr(opt)
    )
    own_group = [dist.new_group([r]) for r in range(world_size)][rank]
    single = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1), process_group=own_group
    )
    with pytest.raises(TypeError, match="custom process group cannot be pickled"):
        copy.deepcopy(single)


def test_reset_slow_add_param_group_and_copies_are_collective(cluster: Cluster) -> None:
    cluster.run(check_reset_add_group_and_copy)


def check_float32_slow_state_of_bfloat16_model(rank: int, world_size: int) -> None:
    def build() -> tuple[torch.nn.Module, DistributedLookahead]:
        model = _tiny_model(seed=0).to(torch.bfloat16)
        opt = DistributedLookahead(
            torch.optim.SGD(model.parameters(), lr=0.1),
            k=2,
            alpha=0.5,
            outer_momentum=0.5,
            slow_dtype=torch.float32,
        )
        return model, opt

    model, opt = build()
    for step in range(5):
        x, y = _batch(rank, step)
        torch.nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16()).backward()
        opt.step()
        opt.zero_grad()
    for p in model.parameters():
        assert opt.state[p]["lookahead_slow"].dtype == torch.float32
        assert opt.state[p][OUTER_MOMENTUM_KEY].dtype == torch.float32
        assert opt.state[p][OUTER_MOMENTUM_KEY].any()
    assert_same_on_all_ranks(slow_weights_of(opt))

    _, resumed = build()
    resumed.load_state_dict(opt.state_dict())  # load_state_dict casts to bf16; the class undoes it
    assert_states_equal(state_tensors(opt), state_tensors(resumed))
    for p in resumed.param_groups[0]["params"]:
        assert resumed.state[p][OUTER_MOMENTUM_KEY].dtype == torch.float32


def test_float32_slow_state_of_a_bfloat16_model(cluster: Cluster) -> None:
    cluster.run(check_float32_slow_state_of_bfloat16_model)


GATHER = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"


def check_one_exchange_per_sync(rank: int, world_size: int) -> None:
    model = _tiny_model(seed=rank)
    params = list(model.parameters())
    inner = torch.optim.SGD(
        [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], lr=0.1, momentum=0.9
    )
    opt = DistributedLookahead(inner, k=2, alpha=0.5)
    calls: list[tuple[str, int]] = []
    originals = {
        name: getattr(dist, name)
        for name in ("all_reduce", "all_to_all_single", GATHER, "broadcast")
    }

    def counting(name: str):  # type: ignore[no-untyped-def]
        def collective(tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append((name, tensor.numel()))
            return originals[name](tensor, *args, **kwargs)

        return collective

    for name in originals:
        setattr(dist, name, counting(name))
    try:
        _train_step(model, opt, rank, 0)
        assert calls == []  # no communication between syncs
        _train_step(model, opt, rank, 1)  # both groups sync at this step
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    n = sum(p.numel() for p in params)  # float32, even: no padding
    # No round trip before the data: the verdict's sums (a preparation flag, a presence flag a
    # parameter, a count, the slow weights' two fingerprint values and their squares a group)
    # travel beside the first phase; then the second phase gathers the mean.
    assert calls == [
        ("all_reduce", 1 + len(params) + 6 * 2),
        ("all_to_all_single", 4 * n),
        (GATHER, 4 * n),
    ]


def test_all_groups_share_one_exchange_per_sync(cluster: Cluster) -> None:
    cluster.run(check_one_exchange_per_sync)


def check_delayed_phases(rank: int, world_size: int) -> list[tuple[int, str, bool]]:
    """The collectives of a delayed sync (k=4, sync_delay=3), by step and whether launched
    asynchronously."""
    model = _tiny_model(seed=rank)
    opt = DistributedLookahead(
        torch.optim.SGD(model.parameters(), lr=0.1), k=4, alpha=0.5, sync_delay=3
    )
    calls: list[tuple[int, str, bool]] = []
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_to_all_single", GATHER)}
    step = 0

    def recording(name: str):  # type: ignore[no-untyped-def]
        def collective(tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append((step, name, bool(kwargs.get("async_op"))))
            return originals[name](tensor, *args, **kwargs)

        return collective

    for name in originals:
        setattr(dist, name, recording(name))
    try:
        for step in range(1, 8):
            _train_step(model, opt, rank, step)
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    assert "lookahead_launch" not in opt.state[next(model.parameters())]  # applied at step 7
    return calls


def test_a_delayed_sync_overlaps_both_phases(cluster: Cluster) -> None:
    """Launched after step 4 (the verdict's sums and the first phase), its second phase is
    launched half-way through the delay, after step 4 + ceil(3 / 2), not when it is applied
    after step 7: both phases overlap inner steps."""
    for calls in cluster.run(check_delayed_phases):
        assert calls == [(4, "all_reduce", True), (4, "all_to_all_single", True), (6, GATHER, True)]
