"""Lookahead under lightning.pytorch.Trainer: configure_optimizers, schedules, slow-weight
validation through SlowWeightsCallback, and exact resume through ``fit(ckpt_path=...)``.

Every run is compared with the same training written as a plain PyTorch loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from tests.integrations._tensors import assert_same, parameters_of  # noqa: E402
from torch_lookahead import Lookahead  # noqa: E402
from torch_lookahead.integrations.lightning import SlowWeightsCallback  # noqa: E402

pytestmark = [
    pytest.mark.integrations,
    # Lightning's own use of a torch.utils._pytree API that torch deprecates.
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]

K, ALPHA = 3, 0.5
LR, GAMMA, MOMENTUM = 0.1, 0.9, 0.9
BATCH, SAMPLES = 4, 16
STEPS_PER_EPOCH = SAMPLES // BATCH  # 4: with k=3 every epoch ends mid-cycle
EPOCHS = 2


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 4, generator=gen)
    y = x @ torch.randn(4, 1, generator=gen) + 0.1 * torch.randn(SAMPLES, 1, generator=gen)
    return TensorDataset(x, y)


def _loader() -> DataLoader[tuple[Tensor, ...]]:
    return DataLoader(_data(), batch_size=BATCH, shuffle=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _optimizer_and_schedule(
    params: Iterator[nn.Parameter],
) -> tuple[Lookahead, torch.optim.lr_scheduler.StepLR]:
    optimizer = Lookahead(torch.optim.SGD(params, lr=LR, momentum=MOMENTUM), k=K, alpha=ALPHA)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=GAMMA)


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        # Parameters seen by the first validation batch of each validation run.
        self.validation_snapshots: list[list[Tensor]] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if batch_idx == 0:
            self.validation_snapshots.append(parameters_of(self))
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, schedule = _optimizer_and_schedule(self.parameters())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step"},
        }


def _trainer(max_epochs: int, *, slow_weights_callback: bool = True, **kwargs: Any) -> L.Trainer:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SlowWeightsCallback()] if slow_weights_callback else [],
        **kwargs,
    )


@dataclass
class PlainRun:
    fast: list[Tensor]  # parameters at the end
    slow_per_epoch: list[list[Tensor]]  # slow weights at the end of each epoch
    lr: float


def _plain_loop(epochs: int) -> PlainRun:
    net = _net()
    optimizer, schedule = _optimizer_and_schedule(net.parameters())
    slow_per_epoch = []
    for _ in range(epochs):
        for x, y in _loader():
            optimizer.zero_grad()
            F.mse_loss(net(x), y).backward()
            optimizer.step()
            schedule.step()
        slow_per_epoch.append([s.clone() for s in optimizer.slow_parameters()])
    return PlainRun(
        parameters_of(net),
        slow_per_epoch,
        optimizer.optimizer.param_groups[0]["lr"],
    )


@dataclass
class LightningRun:
    module: Regression
    trainer: L.Trainer


@pytest.fixture(scope="module")
def plain() -> PlainRun:
    return _plain_loop(EPOCHS)


@pytest.fixture(scope="module")
def fitted() -> LightningRun:
    module = Regression()
    trainer = _trainer(EPOCHS, num_sanity_val_steps=1)
    trainer.fit(module, _loader(), _loader())
    return LightningRun(module, trainer)


def test_configure_optimizers_lookahead_trains_like_the_plain_loop(
    fitted: LightningRun, plain: PlainRun
) -> None:
    (optimizer,) = fitted.trainer.optimizers
    assert isinstance(optimizer, Lookahead)
    assert fitted.trainer.global_step == EPOCHS * STEPS_PER_EPOCH
    assert_same(parameters_of(fitted.module), plain.fast)
    assert_same(optimizer.slow_parameters(), plain.slow_per_epoch[-1])


def test_step_schedule_built_on_lookahead_reaches_the_inner_optimizer(
    fitted: LightningRun, plain: PlainRun
) -> None:
    (optimizer,) = fitted.trainer.optimizers
    expected_lr = LR * GAMMA ** (EPOCHS * STEPS_PER_EPOCH)
    assert optimizer.optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr, rel=1e-12)
    assert plain.lr == pytest.approx(expected_lr, rel=1e-12)


def test_slow_weights_callback_validates_on_the_slow_weights(
    fitted: LightningRun, plain: PlainRun
) -> None:
    sanity, *per_epoch = fitted.module.validation_snapshots
    # Before the first step there are no slow weights: validation sees the initial parameters.
    assert_same(sanity, parameters_of(_net()))
    assert len(per_epoch) == EPOCHS
    for seen, slow in zip(per_epoch, plain.slow_per_epoch, strict=True):
        assert_same(seen, slow)
    # Mid-cycle the slow and fast weights differ, so the check above is not vacuous.
    assert not torch.equal(per_epoch[-1][0], plain.fast[0])


class ManualSlowWeights(Regression):
    """Swaps through ``self.optimizers()``, Lightning's proxy: the mode must reach the optimizer."""

    def on_validation_start(self) -> None:
        self.optimizers().eval()

    def on_validation_end(self) -> None:
        self.optimizers().train()


def test_eval_and_train_through_the_lightning_optimizer_proxy(plain: PlainRun) -> None:
    module = ManualSlowWeights()
    trainer = _trainer(EPOCHS, slow_weights_callback=False, num_sanity_val_steps=0)
    trainer.fit(module, _loader(), _loader())

    for seen, slow in zip(module.validation_snapshots, plain.slow_per_epoch, strict=True):
        assert_same(seen, slow)
    assert_same(parameters_of(module), plain.fast)
    (optimizer,) = trainer.optimizers
    assert not any(group["lookahead_eval_mode"] for group in optimizer.param_groups)


def test_fit_from_checkpoint_continues_exactly(fitted: LightningRun, tmp_path: Path) -> None:
    first_half = Regression()
    trainer = _trainer(1, num_sanity_val_steps=0)
    trainer.fit(first_half, _loader(), _loader())
    checkpoint = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(checkpoint)

    saved = torch.load(checkpoint, weights_only=True)
    (optimizer_state,) = saved["optimizer_states"]
    assert all("lookahead_slow" in s for s in optimizer_state["state"].values())
    assert optimizer_state["param_groups"][0]["lookahead_step"] == STEPS_PER_EPOCH % K

    resumed = Regression()
    trainer = _trainer(EPOCHS, num_sanity_val_steps=0)
    trainer.fit(resumed, _loader(), _loader(), ckpt_path=checkpoint)

    (optimizer,) = trainer.optimizers
    (uninterrupted,) = fitted.trainer.optimizers
    assert_same(
        parameters_of(resumed),
        parameters_of(fitted.module),
    )
    assert_same(optimizer.slow_parameters(), uninterrupted.slow_parameters())
    assert (
        optimizer.optimizer.param_groups[0]["lr"] == uninterrupted.optimizer.param_groups[0]["lr"]
    )
