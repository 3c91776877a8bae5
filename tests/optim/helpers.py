"""Random problems and a driver that replays them through a torch optimizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from torch.optim import Optimizer

from torch_lookahead.optim._base import GroupwiseOptimizer


@dataclass
class Problem:
    """Initial weights per layer and gradients per step and layer (float64, already rounded to
    the dtype under test, so that only the optimizer's arithmetic differs from the oracle)."""

    params0: list[np.ndarray]
    grads: list[list[np.ndarray]]


shapes_strategy = st.lists(
    st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3
)


@st.composite
def problems(draw: st.DrawFn, dtype: torch.dtype, max_steps: int = 8) -> Problem:
    shapes = draw(shapes_strategy)
    steps = draw(st.integers(1, max_steps))
    seed = draw(st.integers(0, 2**32 - 1))
    grad_scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    rng = np.random.default_rng(seed)

    def rounded(a: np.ndarray) -> np.ndarray:
        return torch.from_numpy(a).to(dtype).double().numpy()

    params0 = [rounded(rng.standard_normal(s)) for s in shapes]
    grads = [[rounded(grad_scale * rng.standard_normal(s)) for s in shapes] for _ in range(steps)]
    return Problem(params0, grads)


def replay(
    make: Callable[[list[torch.nn.Parameter]], Optimizer],
    problem: Problem,
    dtype: torch.dtype,
    *,
    decay_lr_after: int | None = None,
    lrs: list[float] | None = None,
) -> tuple[list[np.ndarray], list[float], Optimizer]:
    """Run the optimizer over the problem's gradients; return final weights, lr per step, optimizer.

    With ``decay_lr_after=m`` a MultiStepLR scheduler multiplies the lr by 0.1 after step m;
    with ``lrs``, the group's lr is set to ``lrs[t]`` (a float) before step t.
    """
    params = [torch.nn.Parameter(torch.tensor(p0, dtype=dtype)) for p0 in problem.params0]
    optimizer = make(params)
    scheduler = None
    if decay_lr_after is not None:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[decay_lr_after], gamma=0.1
        )
    used_lrs = []
    for step, step_grads in enumerate(problem.grads):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.from_numpy(g).to(dtype)
        if lrs is not None:
            optimizer.param_groups[0]["lr"] = lrs[step]
        used_lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach().double().numpy() for p in params], used_lrs, optimizer


def assert_close(
    actual: list[np.ndarray], expected: list[np.ndarray], dtype: torch.dtype, what: str = ""
) -> None:
    """float64: within 1e-12 (relative to the weights' scale); float32: within 1e-5 relative."""
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        scale = max(1.0, float(np.max(np.abs(e))))
        error = float(np.max(np.abs(a - e))) / scale
        assert error <= tolerance, f"{what} layer {index}: relative error {error:.3g} > {tolerance}"


def assert_for_loop_and_foreach_agree(
    optimizer_class: Callable[..., Optimizer], kwargs: dict, problem: Problem
) -> None:
    """Final weights and states of the three implementations (for-loop, multi-tensor over lists,
    multi-tensor over flat state buffers) agree to float64 rounding, with the multi-tensor paths
    split into several cache blocks."""
    results = []
    for foreach, flat in ((False, False), (True, False), (True, True)):
        run_kwargs = {**kwargs, "foreach": foreach}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("torch_lookahead.optim._functional.OPTIMIZER_BLOCK_BYTES", 40)
            if not flat:
                patch.setattr(GroupwiseOptimizer, "_flat_state_for", lambda *args: None)
            final, _, optimizer = replay(
                lambda p, run_kwargs=run_kwargs: optimizer_class(p, **run_kwargs),
                problem,
                torch.float64,
            )
        results.append((final, optimizer.state_dict()["state"]))
    loop_final, loop_state = results[0]
    for final, state in results[1:]:
        assert_close(final, loop_final, torch.float64, "foreach vs for-loop")
        for index, entries in loop_state.items():
            for key, value in entries.items():
                torch.testing.assert_close(state[index][key], value, rtol=1e-13, atol=1e-13)


def assert_matches_oracle(
    optimizer_class: Callable[..., Optimizer],
    kwargs: dict,
    oracle: Callable[[list[float]], list[np.ndarray]],
    problem: Problem,
    dtype: torch.dtype,
    decay_lr_after: int | None,
) -> None:
    """Replay the problem (with a scheduler lowering the lr after step ``decay_lr_after``) and
    compare with ``oracle(lr of every step)``."""
    actual, lrs, _ = replay(
        lambda p: optimizer_class(p, **kwargs), problem, dtype, decay_lr_after=decay_lr_after
    )
    if decay_lr_after is not None and len(lrs) > decay_lr_after:
        assert lrs[decay_lr_after] == pytest.approx(0.1 * lrs[0])  # the scheduler did act
    assert_close(actual, oracle(lrs), dtype, f"{optimizer_class.__name__} {kwargs}")
