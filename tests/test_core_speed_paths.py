"""The fast paths of ``eval()``/``train()`` on many small tensors (issue 21): the state read
without hashing where it lists the parameters in order, the shapes checked once and their counts
reused by the swap, the dtype split. Each gives what the plain path gives, and every edit of the
groups and the state is still seen (docs/design.md: nothing is cached between calls)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from torch_lookahead import Lookahead, _sync
from torch_lookahead._tensors import same_shapes
from torch_lookahead.lookahead import FAST_KEY, SLOW_KEY

K = 3
SHAPES = ((5,), (2, 3), (), (1,), (4, 1))


def trained(edit: str = "none") -> tuple[list[Any], Lookahead]:
    """A Lookahead(SGD) after one cycle and a step, its state edited as ``edit`` says."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    opt = Lookahead(torch.optim.SGD(params[:4], lr=0.1), k=K, alpha=0.5)
    opt.add_param_group({"params": params[4:]})
    for _ in range(K + 1):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    assert list(opt.state) == params  # the order the fast path reads without hashing
    state = opt.state
    if edit == "reordered":  # the same entries, listed in another order
        entries = [state.pop(p) for p in params]
        for p, entry in reversed(list(zip(params, entries, strict=True))):
            state[p] = entry
    elif edit == "extra entry":  # an entry for a tensor that is no parameter
        state[torch.zeros(1)] = {SLOW_KEY: torch.zeros(1)}
    elif edit == "cleared":
        state[params[2]].clear()
    elif edit == "deleted":
        del state[params[3]]
    elif edit == "replaced":
        state[params[1]] = {SLOW_KEY: torch.full((2, 3), 9.0)}
    elif edit == "params edited":  # a parameter dropped from its group's list
        opt.param_groups[0]["params"].pop(0)
    return params, opt


def values(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


def assert_equal(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y), (x, y)


@pytest.mark.parametrize(
    "edit", ["none", "reordered", "extra entry", "cleared", "deleted", "replaced", "params edited"]
)
def test_eval_and_train_exchange_exactly_whatever_the_state_lists(edit: str) -> None:
    params, opt = trained(edit)
    listed = [p for group in opt.param_groups for p in group["params"]]
    held = [p for p in listed if SLOW_KEY in opt.state.get(p, {})]
    fast, slow = values(params), values([opt.state[p][SLOW_KEY] for p in held])
    kept = [i for i, p in enumerate(params) if all(p is not q for q in held)]
    opt.eval()
    assert_equal(values(held), slow)  # the parameters hold their own slow weights
    fast_held = [f for f, p in zip(fast, params, strict=True) if any(p is q for q in held)]
    assert_equal(values([opt.state[p][FAST_KEY] for p in held]), fast_held)
    assert_equal(values([params[i] for i in kept]), [fast[i] for i in kept])
    opt.train()
    assert_equal(values(params), fast)
    assert_equal(values([opt.state[p][SLOW_KEY] for p in held]), slow)
    assert all(FAST_KEY not in opt.state[p] for p in held)


def test_a_group_added_in_eval_mode_is_left_to_its_own_mode() -> None:
    params, opt = trained()
    fast = values(params)
    opt.eval()
    extra = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra]})
    opt.state[extra][SLOW_KEY] = torch.zeros(3)  # in train mode: its slow copy stays a slow copy
    opt.train()
    assert_equal(values([*params, extra]), [*fast, torch.ones(3)])
    assert torch.equal(opt.state[extra][SLOW_KEY], torch.zeros(3))


@pytest.mark.parametrize("how", ["resized", "not a tensor", "resized in the second group"])
def test_eval_refuses_an_entry_of_another_shape_before_anything_changes(how: str) -> None:
    params, opt = trained()
    if how == "not a tensor":
        opt.state[params[1]][SLOW_KEY] = 3.0
    else:
        params[1 if how == "resized" else 4].data = torch.zeros(7)
    fast = values(params)
    slow = [opt.state[p][SLOW_KEY] for p in params]
    slow_values = [s.clone() if isinstance(s, Tensor) else s for s in slow]
    for _ in range(2):  # refused the same way again: nothing was left pending
        with pytest.raises(ValueError, match="must be a tensor of the parameter's shape"):
            opt.eval()
        assert not opt.in_eval_mode
        assert_equal(values(params), fast)
        assert [opt.state[p][SLOW_KEY] for p in params] == slow  # the same objects
        for s, v in zip(slow, slow_values, strict=True):
            assert not isinstance(s, Tensor) or torch.equal(s, v)


@pytest.mark.parametrize("block_bytes", [None, 16])
def test_eval_swaps_where_the_dtypes_agree_and_copies_elsewhere(
    block_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After part of a model went to float64 (as ``model.double()`` does, through ``.data``), its
    float32 slow copies are kept and the fast weights go to new float64 copies: nothing rounded.
    With blocks of 4 floats the swap of the others is cut into several blocks."""
    if block_bytes is not None:
        monkeypatch.setattr(_sync, "SYNC_BLOCK_BYTES", block_bytes)
    params, opt = trained()
    for p in params[1:3]:
        p.data = p.data.double() + 1e-12  # not representable in float32
    fast = values(params)
    slow = values([opt.state[p][SLOW_KEY] for p in params])
    opt.eval()
    assert_equal(values(params), [s.to(p.dtype) for s, p in zip(slow, params, strict=True)])
    assert [SLOW_KEY in opt.state[p] for p in params] == [False, True, True, False, False]
    assert_equal(values([opt.state[p][FAST_KEY] for p in params]), fast)
    opt.train()
    assert_equal(values(params), fast)
    assert_equal(values([opt.state[p][SLOW_KEY] for p in params]), slow)


class Sharded(Tensor):
    """Stands for a DTensor: its local shard (``to_local``) is the first half of its elements."""

    def to_local(self) -> Tensor:
        return self.as_subclass(Tensor).view(-1)[: self.numel() // 2]


@pytest.mark.filterwarnings("error")  # e.g. torch's "An output ... was resized"
def test_a_swap_of_shards_counts_the_shards_not_the_tensors() -> None:
    """The element counts given to a swap are those of the tensors; where the kernels get local
    shards, the swap counts the shards."""
    gen = torch.Generator().manual_seed(1)
    a = [torch.randn(n, generator=gen).as_subclass(Sharded) for n in (4, 6, 2)]
    b = [torch.randn(n, generator=gen).as_subclass(Sharded) for n in (4, 6, 2)]
    before_a, before_b = (
        values([t.as_subclass(Tensor) for t in a]),
        values([t.as_subclass(Tensor) for t in b]),
    )
    _sync.Plan(_sync.swap_steps(a, b, {}, same_shapes(b, a))).run()
    for x, y, x0, y0 in zip(a, b, before_a, before_b, strict=True):
        half = x.numel() // 2
        x, y = x.as_subclass(Tensor), y.as_subclass(Tensor)
        assert torch.equal(x[:half], y0[:half]) and torch.equal(y[:half], x0[:half])
        assert torch.equal(x[half:], x0[half:]) and torch.equal(y[half:], y0[half:])


@pytest.mark.parametrize("entry", [None, 3.0])
def test_a_slow_copy_that_is_no_tensor_is_refused_at_the_sync_and_by_eval(entry: Any) -> None:
    """An entry that is not a tensor, None too, is a bad slow copy, not a missing one (the scan of
    every step tests presence only): the step that syncs and eval() refuse it before anything
    changes, and reset_slow() replaces it."""
    params, opt = trained()
    opt.state[params[1]][SLOW_KEY] = entry
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # between syncs: the slow copies are not read
    fast = values(params)
    for call in (opt.step, opt.eval):
        with pytest.raises(ValueError, match=f"parameter 1 in parameter group 0 .* got {entry}"):
            call()
        assert_equal(values(params), fast)
        assert not opt.in_eval_mode and opt.state[params[1]][SLOW_KEY] is entry
    opt.reset_slow()
    assert_equal([opt.state[params[1]][SLOW_KEY]], [params[1].detach()])
