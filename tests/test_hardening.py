"""State that changes after construction never makes Lookahead silently wrong.

Each test here pins one way a user, a scheduler or a framework can change groups, state or
checkpoints after the optimizer was built, and what Lookahead does about it.
"""

from __future__ import annotations

import collections
import copy
import gc
import math
import weakref
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from torch_lookahead import Lookahead

K = 3
ALPHA = 0.5


def make(
    seed: int = 0, inner: str = "sgd", **kwargs: Any
) -> tuple[list[torch.nn.Parameter], Lookahead]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, generator=gen)) for _ in range(3)]
    if inner == "sgd":
        base: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    else:
        base = torch.optim.AdamW(params, lr=0.05)
    return params, Lookahead(base, k=K, alpha=ALPHA, **kwargs)


def grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def run(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        grads(params, step)
        opt.step()


def values(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


def snapshot(opt: Lookahead) -> Any:
    return copy.deepcopy((opt.state_dict(), opt.defaults))


def assert_equal(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# ---------------------------------------------------------------- 1. per-group values
BAD_GROUP_VALUES = [
    ("lookahead_alpha", math.nan, ValueError),
    ("lookahead_alpha", math.inf, ValueError),
    ("lookahead_alpha", 1.5, ValueError),
    ("lookahead_alpha", -1.0, ValueError),
    ("lookahead_alpha", "0.5", TypeError),
    ("lookahead_alpha", None, TypeError),
    ("lookahead_k", 0, ValueError),
    ("lookahead_k", -1, ValueError),
    ("lookahead_k", math.nan, TypeError),
    ("lookahead_k", 2.5, TypeError),
    ("lookahead_k", "5", TypeError),
    ("lookahead_k", None, TypeError),
    ("lookahead_step", -2, ValueError),
    ("lookahead_step", 1.5, TypeError),
]


@pytest.mark.parametrize(("key", "value", "error"), BAD_GROUP_VALUES)
def test_a_bad_value_set_in_a_group_after_construction_raises_before_anything_changes(
    key: str, value: object, error: type[Exception]
) -> None:
    params, opt = make()
    run(params, opt, range(2))
    opt.param_groups[0][key] = value
    grads(params, 2)
    before, weights = snapshot(opt), values(params)
    with pytest.raises(error, match=rf"param_groups\[0\]\['{key}'\]"):
        opt.step()
    opt.param_groups[0][key] = before[0]["param_groups"][0][key]
    assert_equal(values(params), weights)
    after = snapshot(opt)
    assert after[0]["param_groups"] == before[0]["param_groups"]
    for index, state in before[0]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(after[0]["state"][index][name], tensor)


def test_a_group_added_to_the_inner_optimizer_with_a_bad_value_is_refused_at_the_next_step() -> (
    None
):
    params, opt = make()
    extra = torch.nn.Parameter(torch.ones(2))
    opt.optimizer.add_param_group({"params": [extra], "lookahead_alpha": 2.0})
    grads(params, 0)
    extra.grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lookahead_alpha'\]"):
        opt.step()
    assert torch.equal(extra.detach(), torch.ones(2))


def test_sync_and_a_bad_default_are_checked_too() -> None:
    params, opt = make()
    run(params, opt, range(1))
    opt.param_groups[0]["lookahead_alpha"] = math.nan
    with pytest.raises(ValueError, match="lookahead_alpha"):
        opt.sync()
    opt.param_groups[0]["lookahead_alpha"] = ALPHA
    opt.defaults["lookahead_k"] = 0
    opt.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lookahead_k'\]"):
        opt.step()


# ---------------------------------------------------------------- 2. state changed underneath
def reference_after_restart(seed: int, restart_at: int, total: int) -> list[Tensor]:
    """A fresh Lookahead started at ``restart_at`` on the same weights and inner state."""
    params, opt = make(seed)
    run(params, opt, range(restart_at))
    restarted = Lookahead(opt.optimizer.__class__(params, lr=0.1, momentum=0.9), k=K, alpha=ALPHA)
    restarted.optimizer.load_state_dict(
        {
            "state": {},
            "param_groups": [
                {k: v for k, v in g.items() if not k.startswith("lookahead")}
                | {"params": list(range(len(params)))}
                for g in opt.optimizer.state_dict()["param_groups"]
            ],
        }
    )
    restarted.param_groups[0]["lookahead_step"] = 0
    run(params, restarted, range(restart_at, total))
    return values(params)


def test_replacing_the_inner_state_restarts_lookahead_instead_of_disabling_it() -> None:
    params, opt = make()
    run(params, opt, range(K))  # ends on a sync: a clean cycle boundary
    opt.optimizer.state = collections.defaultdict(dict)
    run(params, opt, range(K, 4 * K))
    assert all("lookahead_slow" in opt.state[p] for p in params)
    assert_equal(values(params), reference_after_restart(0, K, 4 * K))
    plain_params, plain = make()
    run(plain_params, plain, range(K))
    plain_sgd = torch.optim.SGD(plain_params, lr=0.1, momentum=0.9)
    run(plain_params, plain_sgd, range(K, 4 * K))
    assert not all(torch.equal(a, b) for a, b in zip(params, plain_params, strict=True))


@pytest.mark.parametrize("how", ["clear", "del"])
def test_clearing_the_state_recaptures_and_later_syncs_use_the_copies_the_state_holds(
    how: str,
) -> None:
    params, opt = make()
    run(params, opt, range(K + 1))
    if how == "clear":
        opt.state.clear()
    else:
        for p in params:
            del opt.state[p]
    with opt.slow_weights():  # no KeyError: parameters without slow copies are their own
        pass
    run(params, opt, range(K + 1, 3 * K))  # the counter continues: a sync at 2K and 3K
    for p in params:
        assert torch.equal(opt.state[p]["lookahead_slow"], p.detach())
    state_dict = opt.state_dict()
    assert all("lookahead_slow" in s for s in state_dict["state"].values())


def test_a_slow_copy_assigned_by_hand_is_the_one_the_next_sync_uses() -> None:
    params, opt = make()
    run(params, opt, range(K + 1))
    chosen = [torch.full_like(p, 7.0) for p in params]
    for p, c in zip(params, chosen, strict=True):
        opt.state[p]["lookahead_slow"] = c
    run(params, opt, range(K + 1, 2 * K - 1))
    fast = values(params)
    grads(params, 2 * K - 1)
    opt.step()  # the inner step, then the sync against the assigned copies
    for p, c in zip(params, chosen, strict=True):
        assert c is opt.state[p]["lookahead_slow"]
        assert torch.equal(p.detach(), c)
    assert not all(torch.equal(a, b) for a, b in zip(fast, values(params), strict=True))
    # a copy of the wrong shape is refused, at the latest by the step that would sync, before
    # that step changes anything
    opt.state[params[0]]["lookahead_slow"] = torch.zeros(2)
    for step in range(2 * K, 3 * K):
        weights = values(params)
        grads(params, step)
        if opt.param_groups[0]["lookahead_step"] + 1 < K:
            opt.step()
            continue
        with pytest.raises(ValueError, match="lookahead_slow"):
            opt.step()
        break
    assert_equal(values(params), weights)


def test_a_slow_copy_assigned_to_a_parameter_that_had_none_is_kept() -> None:
    params, opt = make()
    late = torch.nn.Parameter(torch.zeros(5))
    opt.add_param_group({"params": [late]})
    run(params, opt, range(2))  # `late` has no gradient: no slow copy yet
    assert "lookahead_slow" not in opt.state.get(late, {})
    opt.state[late]["lookahead_slow"] = torch.full((5,), 4.0)
    late.grad = torch.ones(5)
    run(params, opt, range(2, 3))  # the third step: `late` moves to -0.1, then the sync
    expected = torch.full((5,), 4.0).lerp_(torch.full((5,), -0.1), ALPHA)
    assert torch.equal(opt.state[late]["lookahead_slow"], expected)
    assert torch.equal(late.detach(), expected)


def test_removing_a_parameter_group_keeps_no_reference_to_it() -> None:
    params, opt = make()
    extra = torch.nn.Parameter(torch.ones(1000))
    opt.add_param_group({"params": [extra]})
    extra.grad = torch.ones(1000)
    run(params, opt, range(2 * K))
    ref = weakref.ref(extra)
    slow_ref = weakref.ref(opt.state[extra]["lookahead_slow"])
    del opt.param_groups[1]
    opt.state.pop(extra)
    del extra
    run(params, opt, range(2 * K, 2 * K + 1))
    gc.collect()
    assert ref() is None and slow_ref() is None


# ---------------------------------------------------------------- 3. loading is all or nothing
@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (lambda sd: sd["param_groups"][0].update(lookahead_k=0), ValueError, "lookahead_k"),
        (lambda sd: sd["param_groups"][0].update(lookahead_alpha=math.nan), ValueError, "alpha"),
        (lambda sd: sd["param_groups"][0].update(lookahead_step=-1), ValueError, "lookahead_step"),
        (lambda sd: sd["state"][0].update(lookahead_slow=None), TypeError, "lookahead_slow"),
        (lambda sd: sd["param_groups"][0].update(lookahead_eval_mode="yes"), TypeError, "eval"),
        # Malformed entries give a clear error, not an AttributeError or a stuck sync later.
        (lambda sd: sd["state"].update({0: None}), ValueError, "dict, got NoneType"),
        (lambda sd: sd["state"].update({0: []}), ValueError, "dict, got list"),
        (
            lambda sd: sd["state"].update({0: torch.zeros(5)}),
            ValueError,
            "must be a parameter.s dict",
        ),
        (lambda sd: sd["state"].update({7: {}}), ValueError, "an id no group lists"),
        (lambda sd: sd["param_groups"][0].update(params=[[0], 1, 2]), ValueError, "distinct"),
        (lambda sd: sd["param_groups"][0].update(params=[0, 0, 1]), ValueError, "distinct"),
        (
            lambda sd: sd["state"][0].update(lookahead_slow=torch.empty(5, device="meta")),
            ValueError,
            "with data",
        ),
        (
            lambda sd: sd["state"][0].update(lookahead_slow=torch.zeros(1).expand(5)),
            ValueError,
            "each element stored once",
        ),
    ],
)
def test_a_bad_checkpoint_changes_nothing(edit: Any, error: type[Exception], words: str) -> None:
    params, opt = make(inner="adamw")
    run(params, opt, range(K + 1))
    checkpoint = opt.state_dict()
    edit(checkpoint)
    other_params, other = make(seed=1, inner="adamw")
    run(other_params, other, range(2))
    before = snapshot(other)
    with pytest.raises(error, match=words):
        other.load_state_dict(checkpoint)
    after = snapshot(other)
    assert after[1] == before[1]
    assert after[0]["param_groups"] == before[0]["param_groups"]
    for index, state in before[0]["state"].items():
        assert state.keys() == after[0]["state"][index].keys()
        for name, tensor in state.items():
            assert torch.equal(after[0]["state"][index][name], tensor)


def test_loading_none_or_a_list_says_what_is_expected() -> None:
    _, opt = make()
    with pytest.raises(TypeError, match="state_dict must be an optimizer state dict"):
        opt.load_state_dict(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'param_groups'"):
        opt.load_state_dict({"state": {}})


def test_the_checkpoint_k_wins_and_defaults_report_it() -> None:
    params, opt = make()
    opt.param_groups[0]["lookahead_k"] = 5
    run(params, opt, range(2))
    checkpoint = opt.state_dict()
    _, fresh = make()
    with pytest.warns(UserWarning, match="lookahead_k=5 replaces this optimizer's 3"):
        fresh.load_state_dict(checkpoint)
    assert fresh.param_groups[0]["lookahead_k"] == 5
    assert fresh.defaults["lookahead_k"] == 5
    fresh.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    assert fresh.param_groups[1]["lookahead_k"] == 5


def test_loading_in_eval_mode_is_refused_and_keeps_eval_mode() -> None:
    params, opt = make()
    run(params, opt, range(K + 1))
    checkpoint = opt.state_dict()
    opt.eval()
    held = values(params)
    with pytest.raises(RuntimeError, match="train"):
        opt.load_state_dict(checkpoint)
    assert opt.param_groups[0]["lookahead_eval_mode"] is True
    assert_equal(values(params), held)


# ---------------------------------------------------------------- 4. global hooks
def test_global_hooks_see_one_step_of_the_wrapper() -> None:
    events: list[tuple[str, str]] = []
    pre = register_optimizer_step_pre_hook(
        lambda o, a, kw: events.append(("pre", type(o).__name__))
    )
    post = register_optimizer_step_post_hook(
        lambda o, a, kw: events.append(("post", type(o).__name__))
    )
    try:
        params, opt = make()
        inner_events: list[str] = []
        opt.optimizer.register_step_pre_hook(lambda o, a, kw: inner_events.append("inner pre"))
        opt.optimizer.register_step_post_hook(lambda o, a, kw: inner_events.append("inner post"))
        run(params, opt, range(1))
    finally:
        pre.remove()
        post.remove()
    assert events == [("pre", "Lookahead"), ("post", "Lookahead")]
    assert inner_events == ["inner pre", "inner post"]


# ---------------------------------------------------------------- 5. round trip via a plain optimizer
# ---------------------------------------------------------------- 6. a sync happens exactly once
@pytest.mark.parametrize("failing_call", range(3))  # save to scratch, lerp, copy
def test_ctrl_c_during_a_sync_is_finished_once_by_the_next_step(
    monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    """A KeyboardInterrupt after any kernel call of the sync (also after the lerp, before the
    copies) leaves a sync that the next step() finishes without applying it twice."""
    params, opt = make()
    reference_params, reference = make()
    run(params, opt, range(K - 1))
    run(reference_params, reference, range(K + 1))
    real_copy, real_lerp, real_cat = torch._foreach_copy_, torch._foreach_lerp_, torch.cat
    calls: list[int] = []

    def interrupted(real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            calls.append(1)
            if len(calls) == failing_call + 1:
                raise KeyboardInterrupt  # arrives right after the kernel, before its record

        return call

    monkeypatch.setattr(torch, "_foreach_copy_", interrupted(real_copy))
    monkeypatch.setattr(torch, "_foreach_lerp_", interrupted(real_lerp))
    monkeypatch.setattr(torch, "cat", interrupted(real_cat))  # saves a block of 1-D tensors
    grads(params, K - 1)
    with pytest.raises(KeyboardInterrupt):
        opt.step()
    monkeypatch.undo()
    assert opt.param_groups[0]["lookahead_step"] == K  # the inner step is counted
    grads(params, K)
    opt.step()  # finishes the sync, then takes its own inner step
    assert opt.param_groups[0]["lookahead_step"] == 1
    assert_equal(values(params), values(reference_params))
    assert_equal(
        [opt.state[p]["lookahead_slow"] for p in params],
        [reference.state[p]["lookahead_slow"] for p in reference_params],
    )


@pytest.mark.parametrize("retry", ["step", "sync"])
def test_a_sync_that_ran_out_of_memory_completes_once_on_retry(
    monkeypatch: pytest.MonkeyPatch, retry: str
) -> None:
    def build(seed: int = 0) -> tuple[list[torch.nn.Parameter], Lookahead]:
        gen = torch.Generator().manual_seed(seed)
        params = [
            torch.nn.Parameter(torch.randn(n, generator=gen).to(torch.bfloat16)) for n in (7, 300)
        ]
        return params, Lookahead(
            torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA, slow_dtype=torch.float32
        )

    params, opt = build()
    reference_params, reference = build()
    run(params, opt, range(K - 1))
    run(reference_params, reference, range(K))
    if retry == "sync":  # sync() finishes the step's sync first, then takes its own outer step
        reference.sync()
    run(reference_params, reference, range(K, K + 1))
    real_empty = torch.empty
    monkeypatch.setattr(
        torch, "empty", lambda *a, **kw: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated"))
    )
    grads(params, K - 1)
    with pytest.raises(torch.OutOfMemoryError):
        opt.step()
    monkeypatch.setattr(torch, "empty", real_empty)
    assert opt.param_groups[0]["lookahead_step"] == K  # the sync is still due
    if retry == "sync":
        opt.sync()
        run(params, opt, range(K, K + 1))
    else:
        run(params, opt, range(K, K + 1))  # completes the sync first, then steps
    assert_equal(values(params), values(reference_params))
    assert_equal(
        [opt.state[p]["lookahead_slow"] for p in params],
        [reference.state[p]["lookahead_slow"] for p in reference_params],
    )


# ---------------------------------------------------------------- 7. early errors
# ---------------------------------------------------------------- NaN at a sync
# ---------------------------------------------------------------- 9. eval()/train() in bulk
def test_eval_and_train_swap_many_small_parameters_with_multi_tensor_copies() -> None:
    from torch.profiler import ProfilerActivity, profile

    params = [torch.nn.Parameter(torch.randn(1)) for _ in range(2000)]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=2)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones(1)
        opt.step()
    fast = values(params)
    slow = values([opt.state[p]["lookahead_slow"] for p in params])
    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        opt.eval()
    assert_equal(values(params), slow)
    opt.train()
    assert_equal(values(params), fast)
    # Three multi-tensor copies per block (the first a concatenation into scratch for 1-D
    # parameters), not three copies launched per parameter.
    events = recorded.events()
    assert sum(event.name in ("aten::_foreach_copy_", "aten::cat") for event in events) >= 3
    per_tensor = [
        event
        for event in events
        if event.name == "aten::copy_"
        and (event.cpu_parent is None or event.cpu_parent.name != "aten::_foreach_copy_")
    ]
    assert len(per_tensor) < 10


@pytest.mark.parametrize(
    "slow",
    [
        lambda: torch.zeros(3).as_strided((2, 2), (1, 1)),  # [0][1] and [1][0] are one element
        lambda: torch.zeros(2, 2).to_sparse(),
        lambda: torch.zeros(1, 2).expand(2, 2),
    ],
)
def test_a_checkpoint_slow_copy_storing_an_element_twice_is_refused(slow: Any) -> None:
    """A sync writing into such a copy would give two weights one value, silently."""
    p = torch.nn.Parameter(torch.randn(2, 2))
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=K, alpha=ALPHA)
    p.grad = torch.ones_like(p)
    opt.step()
    checkpoint = opt.state_dict()
    checkpoint["state"][0] = {**checkpoint["state"][0], "lookahead_slow": slow()}  # not live
    before = opt.state[p]["lookahead_slow"].clone()
    with pytest.raises(ValueError, match="each element stored once"):
        opt.load_state_dict(checkpoint)
    assert torch.equal(opt.state[p]["lookahead_slow"], before)


def test_transposed_and_sliced_slow_copies_in_a_checkpoint_still_load() -> None:
    p = torch.nn.Parameter(torch.randn(2, 3))
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=K, alpha=ALPHA)
    for slow in (torch.randn(3, 2).t(), torch.randn(2, 6)[:, ::2]):
        p.grad = torch.ones_like(p)
        opt.step()
        checkpoint = opt.state_dict()
        checkpoint["state"][0] = {**checkpoint["state"][0], "lookahead_slow": slow}
        opt.load_state_dict(checkpoint)
        assert torch.equal(opt.state[p]["lookahead_slow"], slow)
