"""Lookahead under Accelerate: ``accelerator.prepare``, gradient accumulation, the LR schedule
after ``prepare`` (which round-trips the optimizer's state_dict), ``train()``/``eval()`` through
the AcceleratedOptimizer, exact resume through ``save_state``/``load_state`` in either mode, and
through SlowWeightsState: state folders whose model files hold the slow weights, saved without
switching the optimizer's mode (a failed save changes nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

accelerate = pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from tests._slow import slow_weights_of  # noqa: E402
from tests.integrations._tensors import assert_same, parameters_of  # noqa: E402
from torch_lookahead import Lookahead  # noqa: E402
from torch_lookahead.integrations import unwrap_lookahead  # noqa: E402
from torch_lookahead.integrations.accelerate import SlowWeightsState  # noqa: E402

pytestmark = pytest.mark.integrations

K, ALPHA = 3, 0.5
LR, GAMMA, MOMENTUM = 0.1, 0.8, 0.9
ACCUMULATE, MICRO_BATCH, SAMPLES = 2, 4, 32
STEPS_PER_EPOCH = SAMPLES // (MICRO_BATCH * ACCUMULATE)  # 4: with k=3 epochs end mid-cycle


def _loader() -> DataLoader[tuple[Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 4, generator=gen)
    y = x @ torch.randn(4, 1, generator=gen) + 0.1 * torch.randn(SAMPLES, 1, generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=MICRO_BATCH, shuffle=False)


@dataclass
class Setup:
    model: nn.Module
    lookahead: Lookahead
    optimizer: Any  # what prepare() returned
    schedule: Any
    loader: Any


def _setup(accelerator: Any | None) -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    lookahead = Lookahead(
        torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM), k=K, alpha=ALPHA
    )
    schedule = torch.optim.lr_scheduler.StepLR(lookahead, step_size=1, gamma=GAMMA)
    loader = _loader()
    if accelerator is None:
        return Setup(model, lookahead, lookahead, schedule, loader)
    model, optimizer, schedule, loader = accelerator.prepare(model, lookahead, schedule, loader)
    return Setup(model, lookahead, optimizer, schedule, loader)


def _accelerator() -> Any:
    return accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)


def _accelerated_epoch(accelerator: Any, run: Setup) -> None:
    for x, y in run.loader:
        with accelerator.accumulate(run.model):
            accelerator.backward(F.mse_loss(run.model(x), y))
            run.optimizer.step()
            run.schedule.step()
            run.optimizer.zero_grad()


def _plain_epoch(run: Setup) -> None:
    for index, (x, y) in enumerate(run.loader):
        (F.mse_loss(run.model(x), y) / ACCUMULATE).backward()
        if (index + 1) % ACCUMULATE == 0:
            run.optimizer.step()
            run.schedule.step()
            run.optimizer.zero_grad()


def _inner_lr(run: Setup) -> float:
    return float(run.lookahead.optimizer.param_groups[0]["lr"])


def test_prepare_and_gradient_accumulation_match_the_plain_loop() -> None:
    accelerator = _accelerator()
    accelerated = _setup(accelerator)
    assert accelerated.optimizer.optimizer is accelerated.lookahead
    _accelerated_epoch(accelerator, accelerated)

    plain = _setup(None)
    _plain_epoch(plain)

    assert_same(parameters_of(accelerated.model), parameters_of(plain.model))
    assert_same(slow_weights_of(accelerated.lookahead), slow_weights_of(plain.lookahead))
    # One Lookahead step per accumulated optimizer step, not per micro-batch.
    assert accelerated.lookahead.param_groups[0]["lookahead_step"] == STEPS_PER_EPOCH % K


def test_schedule_keeps_reaching_the_inner_optimizer_after_prepare() -> None:
    accelerator = _accelerator()
    run = _setup(accelerator)
    _accelerated_epoch(accelerator, run)
    assert _inner_lr(run) == pytest.approx(LR * GAMMA**STEPS_PER_EPOCH, rel=1e-12)
    assert run.optimizer.param_groups[0]["lr"] == _inner_lr(run)


def test_accelerated_optimizer_forwards_eval_and_train() -> None:
    accelerator = _accelerator()
    run = _setup(accelerator)
    _accelerated_epoch(accelerator, run)  # ends mid-cycle: slow != fast
    fast = parameters_of(run.model)
    slow = [s.clone() for s in slow_weights_of(run.lookahead)]
    assert any(not torch.equal(f, s) for f, s in zip(fast, slow, strict=True))

    run.optimizer.eval()
    assert_same(parameters_of(run.model), slow)
    run.optimizer.train()
    assert_same(parameters_of(run.model), fast)


def test_save_state_load_state_resumes_exactly(tmp_path: Path) -> None:
    accelerator = _accelerator()
    uninterrupted = _setup(accelerator)
    for _ in range(2):
        _accelerated_epoch(accelerator, uninterrupted)

    # A save_state folder holds every object its Accelerator prepared: one run per Accelerator.
    first_accelerator = _accelerator()
    first = _setup(first_accelerator)
    _accelerated_epoch(first_accelerator, first)
    first_accelerator.save_state(str(tmp_path / "state"))

    resumed_accelerator = _accelerator()
    resumed = _setup(resumed_accelerator)
    resumed_accelerator.load_state(str(tmp_path / "state"))
    assert resumed.lookahead.param_groups[0]["lookahead_step"] == STEPS_PER_EPOCH % K
    _accelerated_epoch(resumed_accelerator, resumed)

    assert_same(parameters_of(resumed.model), parameters_of(uninterrupted.model))
    assert_same(slow_weights_of(resumed.lookahead), slow_weights_of(uninterrupted.lookahead))
    assert _inner_lr(resumed) == pytest.approx(_inner_lr(uninterrupted), rel=1e-12)

    # A run that registers SlowWeightsState before load_state cannot load this folder: it says why.
    one_sided = _accelerator()
    SlowWeightsState(one_sided, _setup(one_sided).optimizer)
    with pytest.raises(RuntimeError, match=r"saved without SlowWeightsState.*before creating"):
        one_sided.load_state(str(tmp_path / "state"))


# ---------------------------------------------------------------------- the slow-weights policy
def _in_eval_mode(lookahead: Lookahead) -> bool:
    return any(group.get("lookahead_eval_mode", False) for group in lookahead.param_groups)


def _model_file(folder: Path, model: nn.Module) -> list[Tensor]:
    saved = load_file(str(folder / "model.safetensors"))
    return [saved[name] for name, _ in model.named_parameters()]


def _saved_fast(folder: Path) -> list[Tensor]:
    """The fast weights in a state folder written in eval mode: named ``lookahead_fast``."""
    state = torch.load(folder / "optimizer.bin", weights_only=True)
    assert all(group["lookahead_eval_mode"] for group in state["param_groups"])
    return [state["state"][i]["lookahead_fast"] for i in sorted(state["state"])]


def _fast_of_slow_weights_state(folder: Path) -> list[Tensor]:
    """The fast weights SlowWeightsState saved for a run in train mode: in its own file."""
    saved = torch.load(folder / "custom_checkpoint_0.pkl", weights_only=True)
    ((group,),) = saved["fast_weights"]  # one optimizer, one group
    return list(group)


@pytest.fixture(scope="module")
def uninterrupted() -> Setup:
    accelerator = _accelerator()
    run = _setup(accelerator)
    for _ in range(2):
        _accelerated_epoch(accelerator, run)
    return run


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_slow_weights_state_saves_the_slow_weights_and_resumes_exactly(
    mode: str, uninterrupted: Setup, tmp_path: Path
) -> None:
    first_accelerator = _accelerator()
    first = _setup(first_accelerator)
    SlowWeightsState(first_accelerator, first.optimizer)
    _accelerated_epoch(first_accelerator, first)  # ends mid-cycle
    fast, slow = parameters_of(first.model), slow_weights_of(first.lookahead)
    assert any(not torch.equal(f, s) for f, s in zip(fast, slow, strict=True))
    if mode == "eval":
        first.optimizer.eval()
    first_accelerator.save_state(str(tmp_path / "state"))

    assert_same(_model_file(tmp_path / "state", first.model), slow)
    if mode == "eval":
        assert_same(_saved_fast(tmp_path / "state"), fast)
    else:  # the optimizer state as it is (slow weights under lookahead_slow), θ beside it
        assert_same(_fast_of_slow_weights_state(tmp_path / "state"), fast)
        optimizer_state = torch.load(tmp_path / "state" / "optimizer.bin", weights_only=True)
        saved_slow = [optimizer_state["state"][i]["lookahead_slow"] for i in range(len(slow))]
        assert_same(saved_slow, slow)
    # Saving leaves the run in the mode it was in.
    assert _in_eval_mode(first.lookahead) == (mode == "eval")
    assert_same(parameters_of(first.model), slow if mode == "eval" else fast)

    resumed_accelerator = _accelerator()
    resumed = _setup(resumed_accelerator)
    SlowWeightsState(resumed_accelerator, resumed.optimizer)
    resumed_accelerator.load_state(str(tmp_path / "state"))
    assert not _in_eval_mode(resumed.lookahead)  # no train() by hand
    assert_same(parameters_of(resumed.model), fast)
    _accelerated_epoch(resumed_accelerator, resumed)

    assert_same(parameters_of(resumed.model), parameters_of(uninterrupted.model))
    assert_same(slow_weights_of(resumed.lookahead), slow_weights_of(uninterrupted.lookahead))


def test_without_slow_weights_state_a_state_saved_in_eval_mode_needs_train_after_loading(
    uninterrupted: Setup, tmp_path: Path
) -> None:
    """The rule the documentation states for plain ``save_state``/``load_state``."""
    first_accelerator = _accelerator()
    first = _setup(first_accelerator)
    _accelerated_epoch(first_accelerator, first)
    slow = slow_weights_of(first.lookahead)
    first.optimizer.eval()
    first_accelerator.save_state(str(tmp_path / "state"))
    assert_same(_model_file(tmp_path / "state", first.model), slow)

    resumed_accelerator = _accelerator()
    resumed = _setup(resumed_accelerator)
    resumed_accelerator.load_state(str(tmp_path / "state"))
    assert _in_eval_mode(resumed.lookahead)
    with pytest.raises(RuntimeError, match=r"call optimizer\.train\(\) first"):
        resumed.optimizer.step()
    resumed.optimizer.train()
    _accelerated_epoch(resumed_accelerator, resumed)
    assert_same(parameters_of(resumed.model), parameters_of(uninterrupted.model))


def test_save_model_inside_slow_weights_exports_the_slow_model(tmp_path: Path) -> None:
    accelerator = _accelerator()
    run = _setup(accelerator)
    _accelerated_epoch(accelerator, run)
    fast, slow = parameters_of(run.model), slow_weights_of(run.lookahead)

    with unwrap_lookahead(run.optimizer).slow_weights():
        accelerator.save_model(run.model, str(tmp_path / "export"))
        torch.save(accelerator.unwrap_model(run.model).state_dict(), tmp_path / "state-dict.pt")
    assert_same(_model_file(tmp_path / "export", run.model), slow)
    state = torch.load(tmp_path / "state-dict.pt", weights_only=True)
    assert_same([state[name] for name, _ in run.model.named_parameters()], slow)
    assert_same(parameters_of(run.model), fast)
    # Outside it, save_model writes the parameters as they are: the fast weights.
    accelerator.save_model(run.model, str(tmp_path / "plain"))
    assert_same(_model_file(tmp_path / "plain", run.model), fast)


def test_slow_weights_state_needs_a_lookahead() -> None:
    accelerator = _accelerator()
    model = nn.Linear(2, 1)
    sgd = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="no Lookahead inside"):
        SlowWeightsState(accelerator, sgd)
    with pytest.raises(ValueError, match="needs the optimizers"):
        SlowWeightsState(accelerator)


@pytest.mark.parametrize(
    "failing_file", ["model.safetensors", "optimizer.bin", "custom_checkpoint"]
)
def test_a_save_that_fails_part_way_leaves_the_run_as_it_was(
    failing_file: str, uninterrupted: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accelerator = _accelerator()
    run = _setup(accelerator)
    SlowWeightsState(accelerator, run.optimizer)
    _accelerated_epoch(accelerator, run)  # ends mid-cycle: slow != fast
    fast, slow = parameters_of(run.model), slow_weights_of(run.lookahead)
    write = accelerate.checkpointing.save

    def failing_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name.startswith(failing_file):
            raise OSError(28, "No space left on device")
        write(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        accelerator.save_state(str(tmp_path / "state"))
    assert not _in_eval_mode(run.lookahead)
    assert_same(parameters_of(run.model), fast)
    assert_same(slow_weights_of(run.lookahead), slow)
    _accelerated_epoch(accelerator, run)  # training goes on: step() does not refuse
    assert_same(parameters_of(run.model), parameters_of(uninterrupted.model))
