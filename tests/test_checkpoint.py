"""Checkpoints: standard format, weights_only loading, bit-for-bit resume at every phase."""

from __future__ import annotations

import io

import pytest
import torch

from torch_lookahead import Lookahead


def make(seed: int = 0, k: int = 4, **kwargs):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
    opt = Lookahead(
        torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), k=k, alpha=0.5, **kwargs
    )
    return model, opt


def batches(n: int, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)) for _ in range(n)]


def train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def checkpoint_after(data) -> dict:
    """Model and optimizer state after training a fresh pair on ``data``, through torch.save/load."""
    model, opt = make()
    train(model, opt, data)
    return save_load({"model": model.state_dict(), "optim": opt.state_dict()})


def assert_same_weights(model_a, model_b) -> None:
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_dict_is_the_standard_format() -> None:
    model, opt = make()
    train(model, opt, batches(3))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "lookahead_slow"}
    group = sd["param_groups"][0]
    assert (group["lookahead_k"], group["lookahead_alpha"], group["lookahead_step"]) == (4, 0.5, 3)
    save_load(sd)  # loads with weights_only=True


@pytest.mark.parametrize("split", range(0, 10))
def test_resume_is_bit_for_bit_at_every_phase_of_the_cycle(split: int) -> None:
    data = batches(10)
    model, opt = make()
    train(model, opt, data)

    checkpoint = checkpoint_after(data[:split])
    model_b, opt_b = make(seed=123)  # freshly built, different initial weights
    model_b.load_state_dict(checkpoint["model"])
    opt_b.load_state_dict(checkpoint["optim"])
    train(model_b, opt_b, data[split:])
    assert_same_weights(model, model_b)
    for p, q in zip(model.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(opt.state[p]["lookahead_slow"], opt_b.state[q]["lookahead_slow"])


def test_optimizer_built_before_the_model_weights_are_loaded_resumes_exactly() -> None:
    data = batches(9)
    model, opt = make()
    train(model, opt, data)
    checkpoint = checkpoint_after(data[:6])
    model_b, opt_b = make(seed=99)
    opt_b.load_state_dict(checkpoint["optim"])  # optimizer first, then the model
    model_b.load_state_dict(checkpoint["model"])
    train(model_b, opt_b, data[6:])
    assert_same_weights(model, model_b)


def test_plain_inner_checkpoint_loads_and_starts_slow_weights_from_current_weights() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, plain, batches(3))
    plain_sd = save_load(plain.state_dict())
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2), k=2)
    opt.load_state_dict(plain_sd)
    assert opt.param_groups[0]["lookahead_step"] == 0
    assert opt.state[model.weight]["step"].item() == 3
    current = model.weight.detach().clone()
    train(model, opt, batches(1, seed=3))
    assert torch.equal(opt.state[model.weight]["lookahead_slow"], current)


def test_a_group_entry_of_no_meaning_here_is_carried_as_torch_carries_it() -> None:
    """E.g. ``lookahead_synced_at``, written by pre-release versions: loaded and ignored."""
    data = batches(6)
    checkpoint = checkpoint_after(data[:3])
    for group in checkpoint["optim"]["param_groups"]:
        group["lookahead_synced_at"] = 2
    model, opt = make(seed=1)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optim"])
    train(model, opt, data[3:])
    reference_model, reference_opt = make()
    train(reference_model, reference_opt, data)
    assert_same_weights(model, reference_model)


def test_mismatched_checkpoint_raises_clear_errors() -> None:
    model, opt = make()
    train(model, opt, batches(2))
    sd = opt.state_dict()
    other = Lookahead(torch.optim.AdamW(torch.nn.Linear(3, 1).parameters()))
    with pytest.raises(ValueError, match=r"groups have \[4\] parameters, this optimizer's \[2\]"):
        other.load_state_dict(sd)
    two_groups = Lookahead(
        torch.optim.AdamW(
            [
                {"params": [torch.nn.Parameter(torch.zeros(1))]},
                {"params": [torch.nn.Parameter(torch.zeros(1))]},
            ]
        )
    )
    with pytest.raises(
        ValueError, match=r"groups have \[\d+\] parameters, this optimizer's \[\d+, \d+\]"
    ):
        two_groups.load_state_dict(sd)
    torch.manual_seed(0)
    reshaped = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    wrong_shapes = Lookahead(torch.optim.AdamW(reshaped.parameters()))
    with pytest.raises(ValueError, match="lookahead_slow"):
        wrong_shapes.load_state_dict(sd)


def test_counter_k_and_alpha_come_back_from_the_checkpoint() -> None:
    model, opt = make(k=4)
    train(model, opt, batches(3))
    opt.param_groups[0]["lookahead_alpha"] = 0.8
    sd = save_load(opt.state_dict())
    _, opt_b = make(k=9)
    opt_b.load_state_dict(sd)
    group = opt_b.param_groups[0]
    assert (group["lookahead_k"], group["lookahead_alpha"], group["lookahead_step"]) == (4, 0.8, 3)


def test_loading_into_an_optimizer_that_has_already_synced_uses_the_loaded_slow_weights() -> None:
    data = batches(12)
    model, opt = make()
    train(model, opt, data)

    checkpoint = checkpoint_after(data[:6])
    model_b, opt_b = make(seed=5)
    train(model_b, opt_b, batches(9, seed=11))  # has synced twice: its own slow copies exist
    model_b.load_state_dict(checkpoint["model"])
    opt_b.load_state_dict(checkpoint["optim"])
    train(model_b, opt_b, data[6:])
    assert_same_weights(model, model_b)
