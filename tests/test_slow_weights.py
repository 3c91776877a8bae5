"""Evaluating, steering and exporting the slow weights; slow copies in another dtype or device."""

from __future__ import annotations

import io

import pytest
import torch

from torch_lookahead import Lookahead
from torch_lookahead.lookahead import SLOW_KEY


def make(seed: int = 0, k: int = 4, dtype: torch.dtype = torch.float32, **kwargs):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(
        dtype
    )
    opt = Lookahead(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=k, alpha=0.5, **kwargs
    )
    return model, opt


def train(model, opt, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(n):
        x = torch.randn(8, 3, generator=gen).to(dtype)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def slow_of(opt, model):
    return [opt.state[p]["lookahead_slow"].clone() for p in model.parameters()]


@pytest.mark.parametrize("slow_dtype", [None, torch.float32])
def test_slow_weights_context_swaps_in_and_restores_exactly(slow_dtype) -> None:
    dtype = torch.bfloat16 if slow_dtype else torch.float32
    model, opt = make(dtype=dtype, slow_dtype=slow_dtype)
    train(model, opt, 6)  # mid-cycle: fast != slow
    fast, slow = snapshot(model), slow_of(opt, model)
    assert any(not torch.equal(f, s.to(f.dtype)) for f, s in zip(fast, slow, strict=True))
    with opt.slow_weights():
        for p, s in zip(model.parameters(), slow, strict=True):
            assert torch.equal(p.detach(), s.to(p.dtype))
        with opt.slow_weights():  # nesting is safe
            pass
        for p, s in zip(model.parameters(), slow, strict=True):
            assert torch.equal(p.detach(), s.to(p.dtype))
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), fast, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(slow_of(opt, model), slow, strict=True))


def test_fast_weights_come_back_when_the_body_raises() -> None:
    model, opt = make()
    train(model, opt, 3)
    fast = snapshot(model)
    with pytest.raises(KeyError), opt.slow_weights():
        raise KeyError("evaluation failed")
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), fast, strict=True))
    train(model, opt, 1)  # back in train mode


def test_eval_and_train_are_idempotent_and_step_refuses_eval_mode() -> None:
    model, opt = make()
    train(model, opt, 3)
    fast, slow = snapshot(model), slow_of(opt, model)
    opt.eval()
    opt.eval()
    assert all(torch.equal(p, s) for p, s in zip(snapshot(model), slow, strict=True))
    with pytest.raises(RuntimeError, match="train"):
        opt.step()
    with pytest.raises(RuntimeError, match="train"):
        opt.sync()
    opt.train()
    opt.train()
    assert all(torch.equal(p, f) for p, f in zip(snapshot(model), fast, strict=True))


def test_repeated_swaps_allocate_nothing_after_the_first() -> None:
    model, opt = make()
    train(model, opt, 3)
    opt.eval()
    opt.train()
    scratch_ids = {key: id(buf) for key, (buf, _) in opt._scratch.items()}
    slow_ptrs = [opt.state[p]["lookahead_slow"].data_ptr() for p in model.parameters()]
    for _ in range(3):
        with opt.slow_weights():
            pass
    assert {key: id(buf) for key, (buf, _) in opt._scratch.items()} == scratch_ids
    assert [opt.state[p]["lookahead_slow"].data_ptr() for p in model.parameters()] == slow_ptrs


@pytest.mark.parametrize("slow_dtype", [None, torch.float32])
def test_checkpoint_saved_in_eval_mode_resumes_like_one_saved_in_train_mode(slow_dtype) -> None:
    dtype = torch.bfloat16 if slow_dtype else torch.float32
    model, opt = make(dtype=dtype, slow_dtype=slow_dtype)
    train(model, opt, 6)
    reference_model, reference_opt = make(dtype=dtype, slow_dtype=slow_dtype)
    train(reference_model, reference_opt, 6)
    train(reference_model, reference_opt, 5, seed=2)

    opt.eval()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model_b, opt_b = make(seed=5, dtype=dtype, slow_dtype=slow_dtype)
    model_b.load_state_dict(checkpoint["model"])
    opt_b.load_state_dict(checkpoint["optim"])
    opt_b.train()
    train(model_b, opt_b, 5, seed=2)
    for a, b in zip(reference_model.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sync_takes_an_outer_step_now_and_restarts_the_cycle() -> None:
    model, opt = make(k=4)
    train(model, opt, 2)
    fast, slow = snapshot(model), slow_of(opt, model)
    opt.sync()
    for p, f, s in zip(model.parameters(), fast, slow, strict=True):
        expected = s + 0.5 * (f - s)
        torch.testing.assert_close(p.detach(), expected)
        assert torch.equal(opt.state[p]["lookahead_slow"], p.detach())
    assert opt.param_groups[0]["lookahead_step"] == 0


def test_reset_slow_recaptures_from_the_current_parameters() -> None:
    model, opt = make(k=4)
    train(model, opt, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # model surgery / new weights
    opt.reset_slow()
    recaptured = snapshot(model)
    for p in model.parameters():
        assert torch.equal(opt.state[p]["lookahead_slow"], p.detach())
    assert opt.param_groups[0]["lookahead_step"] == 0
    train(model, opt, 3)
    fast = snapshot(model)
    opt.sync()  # the next outer step starts from the re-captured weights
    for p, start, end in zip(model.parameters(), recaptured, fast, strict=True):
        torch.testing.assert_close(p.detach(), start + 0.5 * (end - start), rtol=0, atol=1e-6)


def test_changing_k_mid_cycle_ends_the_cycle_once_it_has_the_new_k_steps() -> None:
    p = torch.nn.Parameter(torch.zeros(()))
    opt = Lookahead(torch.optim.SGD([p], lr=1.0), k=5, alpha=0.5)
    for _ in range(2):
        p.grad = torch.ones(())
        opt.step()
    opt.param_groups[0]["lookahead_k"] = 3  # 2 steps done: the cycle ends after one more
    p.grad = torch.ones(())
    opt.step()
    assert p.item() == -1.5 and opt.param_groups[0]["lookahead_step"] == 0
    opt.param_groups[0]["lookahead_k"] = 2
    for _ in range(2):
        p.grad = torch.ones(())
        opt.step()
    assert p.item() == -2.5
    # lowering k below the steps already taken syncs at the next step
    p.grad = torch.ones(())
    opt.step()
    opt.param_groups[0]["lookahead_k"] = 1
    p.grad = torch.ones(())
    opt.step()
    assert p.item() == -3.5


def test_changing_alpha_applies_from_the_next_sync() -> None:
    p = torch.nn.Parameter(torch.zeros(()))
    opt = Lookahead(torch.optim.SGD([p], lr=1.0), k=2, alpha=0.5)
    p.grad = torch.ones(())
    opt.step()
    opt.param_groups[0]["lookahead_alpha"] = 0.25
    p.grad = torch.ones(())
    opt.step()
    assert p.item() == -0.5


def test_fp32_slow_copies_survive_a_state_dict_round_trip() -> None:
    model, opt = make(dtype=torch.bfloat16, slow_dtype=torch.float32)
    train(model, opt, 3)
    assert all(opt.state[p]["lookahead_slow"].dtype == torch.float32 for p in model.parameters())
    sd = opt.state_dict()
    model_b, opt_b = make(seed=3, dtype=torch.bfloat16, slow_dtype=torch.float32)
    opt_b.load_state_dict(sd)
    for p, q in zip(model.parameters(), model_b.parameters(), strict=True):
        assert opt_b.state[q]["lookahead_slow"].dtype == torch.float32
        assert torch.equal(opt_b.state[q]["lookahead_slow"], opt.state[p]["lookahead_slow"])


def test_slow_dtype_only_widens() -> None:
    p64 = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([p64], lr=0.1), slow_dtype=torch.float32)
    p64.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    assert opt.state[p64]["lookahead_slow"].dtype == torch.float64


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_bf16_with_fp32_slow_copies_tracks_fp32_closer_than_bf16_slow_copies(alpha) -> None:
    """Each inner step moves a weight by one bf16 unit, but alpha*(fast - slow) is a fraction of
    a unit: bf16 slow copies round it at every sync and drift, fp32 slow copies keep it."""

    def run(dtype, slow_dtype):
        p = torch.nn.Parameter(torch.full((8,), 0.75, dtype=dtype))
        opt = Lookahead(torch.optim.SGD([p], lr=2**-8), k=5, alpha=alpha, slow_dtype=slow_dtype)
        for _ in range(200):
            p.grad = torch.ones(8, dtype=dtype)
            opt.step()
        return opt.state[p]["lookahead_slow"].double()

    reference = run(torch.float32, None)
    error_fp32_slow = (run(torch.bfloat16, torch.float32) - reference).abs().max().item()
    error_bf16_slow = (run(torch.bfloat16, None) - reference).abs().max().item()
    assert error_fp32_slow < 0.1 * error_bf16_slow


def test_a_new_slow_copy_takes_its_parameters_layout_not_its_sources() -> None:
    """A slow copy made again from the old one (the model's dtype changed, or a checkpoint's
    copy of another dtype and layout) has its parameter's strides, so the sync's kernels run
    on like layouts."""
    conv = torch.nn.Conv2d(4, 4, 3)
    opt = Lookahead(torch.optim.SGD(conv.parameters(), lr=0.01), k=100)
    for p in conv.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    conv.to(memory_format=torch.channels_last).double()
    opt.sync()  # float64 slow copies, made from the float32 ones
    slow = opt.state[conv.weight][SLOW_KEY]
    assert slow.dtype == torch.float64 and slow.stride() == conv.weight.stride()

    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=2)
    p.grad = torch.ones_like(p)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0][SLOW_KEY] = torch.randn(4, 3, dtype=torch.float64).t()
    opt.load_state_dict(saved)
    assert opt.state[p][SLOW_KEY].stride() == p.stride()
    torch.testing.assert_close(opt.state[p][SLOW_KEY], saved["state"][0][SLOW_KEY].float())
