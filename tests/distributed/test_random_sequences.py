"""Random sequences of DistributedLookahead operations on two gloo ranks against an uninterrupted run.

Each rank draws the same sequence (the same seed), so collectives line up. The run under test takes
steps (with a closure) and explicit syncs (also twice in a row, where the twin syncs once: sync()
is idempotent), and in between switches to the slow weights and back, saves in eval form while a
sync may be in flight, reloads its state into a freshly built model and optimizer, calls ``reset_slow()``, and has steps interrupted by an exception from the inner
optimizer's step post-hook (after the inner step, before the sync and the delayed syncs due at
that step). A twin on the same ranks takes only the steps, syncs and resets, uninterrupted. At the
end both hold bit-identical fast and slow weights, and the ranks the same slow weights.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
import torch

from tests._slow import slow_weights_of
from tests.distributed._cluster import Cluster
from tests.distributed._replica_utils import assert_same_on_all_ranks
from torch_lookahead.distributed import DistributedLookahead, fragment_param_groups

pytestmark = pytest.mark.distributed

OPERATIONS = {
    "step": 8,
    "sync": 1,
    "sync_twice": 1,
    "eval": 1,
    "train": 1,
    "save_in_eval_form": 1,
    "reload": 1,
    "reset_slow": 1,
    "interrupted_step": 2,
}


class _Interrupted(Exception):
    pass


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _build(model: torch.nn.Module, config: dict[str, Any]) -> DistributedLookahead:
    params: Any = model.parameters()
    if config["fragments"] > 1:
        params = fragment_param_groups(model, config["fragments"])
    return DistributedLookahead(
        torch.optim.SGD(params, lr=0.05, momentum=0.9),
        k=config["k"],
        alpha=0.6,
        outer_momentum=config["outer_momentum"],
        nesterov=config["outer_momentum"] > 0,
        sync_delay=config["sync_delay"],
        compression=config["compression"],
    )


def _step(model: torch.nn.Module, opt: DistributedLookahead, rank: int, index: int) -> None:
    generator = torch.Generator().manual_seed(1000 * rank + index)
    x, y = torch.randn(4, 3, generator=generator), torch.randn(4, 2, generator=generator)

    def closure() -> torch.Tensor:  # the gradient at the weights the step starts from
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)


def _interrupt_next_inner_step(opt: DistributedLookahead) -> None:
    def raise_once(*_: Any) -> None:
        handle.remove()
        raise _Interrupted

    handle = opt.optimizer.register_step_post_hook(raise_once)


def run_sequence(rank: int, world_size: int, seed: int, length: int) -> str:
    draw = random.Random(seed)
    config = {
        "k": draw.choice([2, 3, 4]),
        "fragments": draw.choice([1, 2]),
        "outer_momentum": draw.choice([0.0, 0.5]),
        "compression": draw.choice([None, "bfloat16", "int8"]),
    }
    config["sync_delay"] = draw.randrange(config["k"])
    model, twin = _model(), _model()
    opt, twin_opt = _build(model, config), _build(twin, config)
    names, weights = list(OPERATIONS), list(OPERATIONS.values())
    steps = 0
    done: list[str] = []
    for _ in range(length):
        name = draw.choices(names, weights)[0]
        done.append(name)
        if name in ("step", "interrupted_step", "sync", "sync_twice", "reset_slow", "reload"):
            opt.train()
        if name in ("step", "interrupted_step"):
            if name == "interrupted_step":
                _interrupt_next_inner_step(opt)
                with pytest.raises(_Interrupted):
                    _step(model, opt, rank, steps)
            else:
                _step(model, opt, rank, steps)
            _step(twin, twin_opt, rank, steps)
            steps += 1
        elif name == "sync":
            opt.sync()
            twin_opt.sync()
        elif name == "sync_twice":  # idempotent: the second sync() changes nothing
            opt.sync()
            opt.sync()
            twin_opt.sync()
        elif name == "reset_slow":
            opt.reset_slow()
            twin_opt.reset_slow()
        elif name == "eval":
            opt.eval()
        elif name == "train":
            opt.train()
        elif name == "save_in_eval_form":
            with opt.slow_weights():
                copy.deepcopy(opt.state_dict())
        elif name == "reload":
            saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
            model = _model()
            opt = _build(model, config)  # collective, like the one it replaces
            model.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
    opt.train()
    _step(model, opt, rank, steps)  # completes whatever an interrupted step left
    _step(twin, twin_opt, rank, steps)
    story = f"seed {seed}, {config}: {' '.join(done)}"
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b), story
    for a, b in zip(slow_weights_of(opt), slow_weights_of(twin_opt), strict=True):
        assert torch.equal(a, b), story
    assert_same_on_all_ranks(slow_weights_of(opt))
    return story


def run_sequences(rank: int, world_size: int, seeds: list[int], length: int) -> None:
    for seed in seeds:
        run_sequence(rank, world_size, seed, length)


def test_random_sequences_match_an_uninterrupted_run(cluster: Cluster) -> None:
    cluster.run(run_sequences, list(range(16)), 40)


@pytest.mark.slow
def test_many_long_random_sequences_match_an_uninterrupted_run(cluster: Cluster) -> None:
    cluster.run(run_sequences, list(range(100, 220)), 80, timeout=1800.0)
