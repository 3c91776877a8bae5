"""Lookahead under lightning.pytorch.Trainer: configure_optimizers, schedules, and through
LightningSlowWeightsCallback: validation, test and predict on the slow weights, checkpoints whose
model state holds the slow weights (so that ModelCheckpoint saves the model it ranked), a module
that holds the slow weights after ``fit`` and after loading a checkpoint for a test, and exact
resume through ``fit(ckpt_path=...)``.

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

from tests._slow import load_weights, slow_weights_of  # noqa: E402
from tests.integrations._tensors import assert_same, parameters_of  # noqa: E402
from torch_lookahead import Lookahead  # noqa: E402
from torch_lookahead.integrations import unwrap_lookahead  # noqa: E402
from torch_lookahead.integrations.lightning import LightningSlowWeightsCallback  # noqa: E402

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

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("test_loss", loss)
        return loss

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.net(batch[0])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, schedule = _optimizer_and_schedule(self.parameters())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step"},
        }


def _trainer(
    max_epochs: int,
    *,
    slow_weights_callback: bool = True,
    checkpoints: tuple[Any, ...] = (),
    **kwargs: Any,
) -> L.Trainer:
    """A quiet CPU Trainer; ``checkpoints`` are its ModelCheckpoint callbacks (none by default)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=bool(checkpoints),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LightningSlowWeightsCallback()] * slow_weights_callback + list(checkpoints),
        **kwargs,
    )


def _fast_weights(optimizer: Lookahead) -> list[Tensor]:
    """θ: the parameters in train mode, ``lookahead_fast`` in eval mode (docs/design.md)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not optimizer.in_eval_mode:
        return [p.detach().clone() for p in params]
    return [optimizer.state[p]["lookahead_fast"].clone() for p in params]


@dataclass
class PlainRun:
    fast: list[Tensor]  # parameters at the end
    slow_per_step: list[list[Tensor]]  # slow weights after each step
    fast_per_step: list[list[Tensor]]  # parameters after each step
    lr: float

    @property
    def slow_per_epoch(self) -> list[list[Tensor]]:
        """The slow weights at the end of each epoch."""
        return self.slow_per_step[STEPS_PER_EPOCH - 1 :: STEPS_PER_EPOCH]


def _plain_loop(epochs: int) -> PlainRun:
    net = _net()
    optimizer, schedule = _optimizer_and_schedule(net.parameters())
    slow_per_step, fast_per_step = [], []
    for _ in range(epochs):
        for x, y in _loader():
            optimizer.zero_grad()
            F.mse_loss(net(x), y).backward()
            optimizer.step()
            schedule.step()
            slow_per_step.append(slow_weights_of(optimizer))
            fast_per_step.append(parameters_of(net))
    return PlainRun(
        parameters_of(net),
        slow_per_step,
        fast_per_step,
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
    assert_same(_fast_weights(optimizer), plain.fast)
    assert_same(slow_weights_of(optimizer), plain.slow_per_epoch[-1])
    # fit ends on the slow weights: the module is the slow model.
    assert optimizer.in_eval_mode
    assert_same(parameters_of(fitted.module), plain.slow_per_epoch[-1])


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


def _model_tensors(checkpoint: dict[str, Any]) -> list[Tensor]:
    """The parameters in a checkpoint's model state, in ``Regression().parameters()`` order."""
    names = [name for name, _ in Regression().named_parameters()]
    return [checkpoint["state_dict"][name] for name in names]


def _saved_fast(optimizer_state: dict[str, Any]) -> list[Tensor]:
    """The fast weights of a checkpoint written in eval mode: named ``lookahead_fast``."""
    return [optimizer_state["state"][i]["lookahead_fast"] for i in sorted(optimizer_state["state"])]


def test_every_export_after_fit_holds_the_slow_weights(tmp_path: Path) -> None:
    """save_checkpoint with and without weights_only, and torch.save of the module's state."""
    module = Regression()
    trainer = _trainer(1, num_sanity_val_steps=0)
    trainer.fit(module, _loader(), _loader())
    (optimizer,) = trainer.optimizers
    fast, slow = _fast_weights(optimizer), slow_weights_of(optimizer)
    assert any(not torch.equal(f, s) for f, s in zip(fast, slow, strict=True))  # mid-cycle

    trainer.save_checkpoint(tmp_path / "after-fit.ckpt")
    trainer.save_checkpoint(tmp_path / "weights-only.ckpt", weights_only=True)
    torch.save(module.state_dict(), tmp_path / "state-dict.pt")

    saved = torch.load(tmp_path / "after-fit.ckpt", weights_only=True)
    # The model state holds the slow weights, the optimizer state the fast ones.
    assert_same(_model_tensors(saved), slow)
    (optimizer_state,) = saved["optimizer_states"]
    assert all(group["lookahead_eval_mode"] for group in optimizer_state["param_groups"])
    assert_same(_saved_fast(optimizer_state), fast)
    weights_only = torch.load(tmp_path / "weights-only.ckpt", weights_only=True)
    assert "optimizer_states" not in weights_only
    assert_same(_model_tensors(weights_only), slow)
    assert_same(_model_tensors({"state_dict": torch.load(tmp_path / "state-dict.pt")}), slow)
    # ...and saving changed nothing in the training objects.
    assert_same(_fast_weights(optimizer), fast)
    assert_same(slow_weights_of(optimizer), slow)


def test_a_save_checkpoint_that_fails_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In either mode (train mode: the checkpoint is rewritten on the fly into the eval form)."""
    module = Regression()
    trainer = _trainer(1, num_sanity_val_steps=0)
    trainer.fit(module, _loader(), _loader())
    (optimizer,) = trainer.optimizers

    def failing_save(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.strategy.checkpoint_io, "save_checkpoint", failing_save)
    for to_mode in (optimizer.train, optimizer.eval):
        to_mode()
        mode, parameters = optimizer.in_eval_mode, parameters_of(module)
        fast, slow = _fast_weights(optimizer), slow_weights_of(optimizer)
        with pytest.raises(OSError, match="No space left"):
            trainer.save_checkpoint(tmp_path / "full-disk.ckpt")
        assert optimizer.in_eval_mode == mode
        assert_same(parameters_of(module), parameters)
        assert_same(_fast_weights(optimizer), fast)
        assert_same(slow_weights_of(optimizer), slow)


def test_fit_from_checkpoint_continues_exactly(fitted: LightningRun, tmp_path: Path) -> None:
    """A checkpoint written after fit (train mode, mid-cycle), resumed in a new Trainer."""
    first_half = Regression()
    trainer = _trainer(1, num_sanity_val_steps=0)
    trainer.fit(first_half, _loader(), _loader())
    checkpoint = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(checkpoint)

    saved = torch.load(checkpoint, weights_only=True)
    (optimizer_state,) = saved["optimizer_states"]
    # written in eval form: the fast weights under lookahead_fast, the slow ones in the model
    assert all("lookahead_fast" in s for s in optimizer_state["state"].values())
    assert optimizer_state["param_groups"][0]["lookahead_step"] == STEPS_PER_EPOCH % K

    resumed = Regression()
    trainer = _trainer(EPOCHS, num_sanity_val_steps=0)
    trainer.fit(resumed, _loader(), _loader(), ckpt_path=checkpoint)

    (optimizer,) = trainer.optimizers
    (uninterrupted,) = fitted.trainer.optimizers
    assert_same(_fast_weights(optimizer), _fast_weights(uninterrupted))
    assert_same(slow_weights_of(optimizer), slow_weights_of(uninterrupted))
    assert_same(parameters_of(resumed), parameters_of(fitted.module))
    assert (
        optimizer.optimizer.param_groups[0]["lr"] == uninterrupted.optimizer.param_groups[0]["lr"]
    )


class WithForeignLookahead(Regression):
    """Manual optimization with a second Lookahead, over a network outside the module."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.outside = [nn.Linear(4, 1)]  # in a list: not a submodule

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        own, foreign = self.optimizers()
        x, y = batch
        loss = F.mse_loss(self.net(x), y) + F.mse_loss(self.outside[0](x), y)
        own.zero_grad()
        foreign.zero_grad()
        self.manual_backward(loss)
        own.step()
        foreign.step()

    def configure_optimizers(self) -> list[Lookahead]:  # type: ignore[override]
        return [
            Lookahead(torch.optim.SGD(self.parameters(), lr=LR), k=K),
            Lookahead(torch.optim.SGD(self.outside[0].parameters(), lr=LR), k=K),
        ]


class _OwnWeightsPerStep(L.Callback):  # type: ignore[misc]
    """θ and φ of the first optimizer after each training batch, by ``global_step``."""

    def __init__(self) -> None:
        self.weights: dict[int, tuple[list[Tensor], list[Tensor]]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        own = trainer.optimizers[0]
        self.weights[trainer.global_step] = (_fast_weights(own), slow_weights_of(own))


@pytest.mark.filterwarnings("error:LightningSlowWeightsCallback:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:.*no `val_dataloader`.*", "ignore:.*pre-optimization state.*")
def test_a_lookahead_over_another_module_leaves_the_rewrite_of_the_own(tmp_path: Path) -> None:
    """Checkpoints on training steps: the module's Lookahead is rewritten into the eval form,
    the one over parameters outside the module is left in the train form."""
    by_steps = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    snapshots = _OwnWeightsPerStep()
    trainer = _trainer(1, checkpoints=(by_steps, snapshots))
    trainer.fit(WithForeignLookahead(), _loader())

    # global_step counts the steps of both optimizers: step=2 is the first batch, mid-cycle.
    fast, slow = snapshots.weights[2]
    assert any(not torch.equal(f, s) for f, s in zip(fast, slow, strict=True))
    saved = torch.load(tmp_path / "step=2.ckpt", weights_only=True)
    assert_same(_model_tensors(saved), slow)
    own, foreign = saved["optimizer_states"]
    assert all(group["lookahead_eval_mode"] for group in own["param_groups"])
    assert_same(_saved_fast(own), fast)
    assert not any(group.get("lookahead_eval_mode") for group in foreign["param_groups"])


RANKED_EPOCHS = 3
SAVE_EVERY_STEPS = 5  # with k=3, step 5 is mid-cycle


@dataclass
class RankedRun:
    module: Regression
    trainer: L.Trainer
    ranked: Any  # ModelCheckpoint(monitor="val_loss"), one file per epoch
    by_steps: Any  # ModelCheckpoint(every_n_train_steps=...), saved between validations


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> RankedRun:
    folder = tmp_path_factory.mktemp("ranked")
    # mode="max" ranks the highest loss first, so that the best checkpoint is not the last one:
    # evaluating the last slow weights instead of the best checkpoint's would show.
    ranked = L.callbacks.ModelCheckpoint(
        dirpath=folder / "epochs",
        monitor="val_loss",
        mode="max",
        save_top_k=-1,
        filename="{epoch}",
    )
    by_steps = L.callbacks.ModelCheckpoint(
        dirpath=folder / "steps",
        every_n_train_steps=SAVE_EVERY_STEPS,
        save_top_k=-1,
        filename="{step}",
    )
    module = Regression()
    trainer = _trainer(RANKED_EPOCHS, num_sanity_val_steps=0, checkpoints=(ranked, by_steps))
    trainer.fit(module, _loader(), _loader())
    return RankedRun(module, trainer, ranked, by_steps)


@pytest.fixture(scope="module")
def plain_ranked() -> PlainRun:
    return _plain_loop(RANKED_EPOCHS)


def _validate(module: Regression) -> float:
    """The validation loss of ``module`` in a fresh Trainer (no optimizer, nothing swapped)."""
    (metrics,) = _trainer(1, slow_weights_callback=False).validate(module, _loader(), verbose=False)
    return float(metrics["val_loss"])


def _load_model(path: str | Path) -> Regression:
    module = Regression()
    module.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    return module


def test_model_checkpoint_saves_the_slow_weights_it_ranked(
    ranked: RankedRun, plain_ranked: PlainRun
) -> None:
    files = sorted(Path(ranked.ranked.dirpath).glob("epoch=*.ckpt"))
    assert len(files) == RANKED_EPOCHS
    for epoch, path in enumerate(files):
        saved = torch.load(path, weights_only=True)
        assert saved["epoch"] == epoch
        assert_same(_model_tensors(saved), plain_ranked.slow_per_epoch[epoch])
        (optimizer_state,) = saved["optimizer_states"]
        assert all(group["lookahead_eval_mode"] for group in optimizer_state["param_groups"])
        last_step = (epoch + 1) * STEPS_PER_EPOCH - 1
        assert_same(_saved_fast(optimizer_state), plain_ranked.fast_per_step[last_step])


def test_best_checkpoint_reloads_to_its_recorded_score(ranked: RankedRun) -> None:
    best = _load_model(ranked.ranked.best_model_path)
    assert _validate(best) == float(ranked.ranked.best_model_score)
    for path, score in ranked.ranked.best_k_models.items():
        assert _validate(_load_model(path)) == float(score)


def test_checkpoints_between_validations_hold_the_slow_weights(
    ranked: RankedRun, plain_ranked: PlainRun
) -> None:
    folder = Path(ranked.by_steps.dirpath)
    steps = list(range(SAVE_EVERY_STEPS, RANKED_EPOCHS * STEPS_PER_EPOCH + 1, SAVE_EVERY_STEPS))
    files = [folder / f"step={step}.ckpt" for step in steps]
    assert sorted(folder.iterdir()) == sorted(files)
    for step, path in zip(steps, files, strict=True):
        saved = torch.load(path, weights_only=True)
        assert_same(_model_tensors(saved), plain_ranked.slow_per_step[step - 1])
        (optimizer_state,) = saved["optimizer_states"]
        assert optimizer_state["param_groups"][0]["lookahead_step"] == step % K
        assert_same(_saved_fast(optimizer_state), plain_ranked.fast_per_step[step - 1])
        # Mid-cycle: the model state and the fast weights differ.
        assert any(
            not torch.equal(a, b)
            for a, b in zip(_model_tensors(saved), _saved_fast(optimizer_state), strict=True)
        )


def test_ranked_run_ends_on_the_slow_weights_like_the_plain_loop(
    ranked: RankedRun, plain_ranked: PlainRun
) -> None:
    (optimizer,) = ranked.trainer.optimizers
    assert_same(_fast_weights(optimizer), plain_ranked.fast)
    assert_same(slow_weights_of(optimizer), plain_ranked.slow_per_step[-1])
    assert_same(parameters_of(ranked.module), plain_ranked.slow_per_step[-1])


# The resumed run needs no ModelCheckpoint: Lightning warns that it had some.
@pytest.mark.filterwarnings("ignore:.*callbacks used to create the checkpoint.*")
def test_resume_from_a_ranked_checkpoint_continues_exactly(
    ranked: RankedRun, plain_ranked: PlainRun
) -> None:
    """The epoch-1 checkpoint was written in eval mode, mid-cycle (4 steps, k=3)."""
    first = Path(ranked.ranked.dirpath) / "epoch=0.ckpt"
    resumed = Regression()
    trainer = _trainer(RANKED_EPOCHS, num_sanity_val_steps=1)
    trainer.fit(resumed, _loader(), _loader(), ckpt_path=first)

    (optimizer,) = trainer.optimizers
    assert_same(_fast_weights(optimizer), plain_ranked.fast)
    assert_same(slow_weights_of(optimizer), plain_ranked.slow_per_step[-1])
    assert_same(parameters_of(resumed), parameters_of(ranked.module))


@pytest.mark.parametrize("weights_only", [False, True], ids=["full", "weights-only"])
def test_a_checkpoint_loaded_for_a_test_is_what_later_runs_evaluate_and_save(
    tmp_path: Path, weights_only: bool
) -> None:
    """After test(ckpt_path="best") the Lookahead takes the loaded weights on as θ and φ: a later
    predict or validate without a checkpoint, and save_checkpoint, give the best model too."""
    # mode="max" ranks the highest loss first, so that the best checkpoint is not the last one.
    best = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path,
        monitor="val_loss",
        mode="max",
        save_top_k=1,
        save_weights_only=weights_only,
        filename="{epoch}",
    )
    module = Regression()
    trainer = _trainer(RANKED_EPOCHS, num_sanity_val_steps=0, checkpoints=(best,))
    trainer.fit(module, _loader(), _loader())
    (optimizer,) = trainer.optimizers
    best_weights = _model_tensors(torch.load(best.best_model_path, weights_only=True))
    assert Path(best.best_model_path).name != f"epoch={RANKED_EPOCHS - 1}.ckpt"
    assert any(
        not torch.equal(a, b) for a, b in zip(best_weights, slow_weights_of(optimizer), strict=True)
    )

    (tested,) = trainer.test(module, _loader(), ckpt_path="best", verbose=False)
    assert tested["test_loss"] == float(best.best_model_score)
    predictions = trainer.predict(module, _loader())
    (validated,) = trainer.validate(module, _loader(), verbose=False)
    trainer.save_checkpoint(tmp_path / "after-test.ckpt")

    assert validated["val_loss"] == tested["test_loss"]
    best_net = _net()
    load_weights(best_net, best_weights)
    with torch.no_grad():
        assert_same(predictions or [], [best_net(x) for x, _ in _loader()])
    saved = torch.load(tmp_path / "after-test.ckpt", weights_only=True)
    assert_same(_model_tensors(saved), best_weights)
    assert_same(_saved_fast(saved["optimizer_states"][0]), best_weights)
    assert_same(slow_weights_of(optimizer), best_weights)
    assert_same(_fast_weights(optimizer), best_weights)
    assert_same(parameters_of(module), best_weights)


@pytest.mark.filterwarnings("ignore:.*callbacks used to create the checkpoint.*")
@pytest.mark.parametrize("resumed", [False, True], ids=["wrong-path", "stale-ckpt-path"])
def test_an_evaluation_that_loads_no_checkpoint_changes_nothing(
    tmp_path: Path, resumed: bool
) -> None:
    """Only a checkpoint that was loaded is taken on: a test that fails before loading one (a
    wrong path; ``"best"`` without ModelCheckpoint after a resumed fit, whose checkpoint
    ``trainer.ckpt_path`` still names) leaves θ, φ and the counters as they were."""
    module = Regression()
    trainer = _trainer(EPOCHS, num_sanity_val_steps=0)
    if resumed:
        first = _trainer(1, num_sanity_val_steps=0)
        first.fit(Regression(), _loader(), _loader())
        first.save_checkpoint(tmp_path / "epoch1.ckpt")
        trainer.fit(module, _loader(), _loader(), ckpt_path=tmp_path / "epoch1.ckpt")
        assert trainer.ckpt_path is not None
        ckpt_path, error = "best", ValueError
    else:
        trainer.fit(module, _loader(), _loader())
        ckpt_path, error = str(tmp_path / "typo.ckpt"), FileNotFoundError
    (optimizer,) = trainer.optimizers
    fast, slow = _fast_weights(optimizer), slow_weights_of(optimizer)
    counters = [group["lookahead_step"] for group in optimizer.param_groups]
    assert any(not torch.equal(f, s) for f, s in zip(fast, slow, strict=True))  # mid-cycle

    with pytest.raises(error):
        trainer.test(module, _loader(), ckpt_path=ckpt_path, verbose=False)
    assert optimizer.in_eval_mode
    assert_same(_fast_weights(optimizer), fast)
    assert_same(slow_weights_of(optimizer), slow)
    assert [group["lookahead_step"] for group in optimizer.param_groups] == counters


class FailingTestLoader(Regression):
    def test_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        raise RuntimeError("no test data")


def test_a_checkpoint_loaded_for_a_test_that_fails_is_taken_on(tmp_path: Path) -> None:
    """The test fails after Lightning loaded the checkpoint into the module, before it starts:
    the Lookahead has taken the loaded weights on all the same."""
    first = _trainer(1, num_sanity_val_steps=0)
    first.fit(Regression(), _loader(), _loader())
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    loaded = _model_tensors(torch.load(tmp_path / "epoch1.ckpt", weights_only=True))
    module = FailingTestLoader()
    trainer = _trainer(EPOCHS, num_sanity_val_steps=0)
    trainer.fit(module, _loader(), _loader())
    (optimizer,) = trainer.optimizers
    assert any(not torch.equal(a, b) for a, b in zip(loaded, _fast_weights(optimizer), strict=True))

    with pytest.raises(RuntimeError, match="no test data"):
        trainer.test(module, ckpt_path=tmp_path / "epoch1.ckpt", verbose=False)
    assert optimizer.in_eval_mode
    assert_same(parameters_of(module), loaded)
    assert_same(_fast_weights(optimizer), loaded)
    assert_same(slow_weights_of(optimizer), loaded)


@pytest.fixture(scope="module")
def fresh_fit() -> LightningRun:
    """A fit whose module only evaluations use (they leave the slow weights in place)."""
    module = Regression()
    trainer = _trainer(EPOCHS, num_sanity_val_steps=0)
    trainer.fit(module, _loader(), _loader())
    return LightningRun(module, trainer)


def test_validate_test_and_predict_after_fit_agree_on_the_slow_weights(
    fresh_fit: LightningRun, plain: PlainRun
) -> None:
    trainer, module = fresh_fit.trainer, fresh_fit.module
    slow = plain.slow_per_epoch[-1]
    (validated,) = trainer.validate(module, _loader(), verbose=False)
    assert_same(parameters_of(module), slow)  # still the slow model afterwards
    (tested,) = trainer.test(module, _loader(), verbose=False)
    assert_same(parameters_of(module), slow)
    predictions = trainer.predict(module, _loader())
    assert_same(parameters_of(module), slow)

    slow_net = _net()
    load_weights(slow_net, slow)
    with torch.no_grad():
        expected = [slow_net(x) for x, _ in _loader()]
        slow_loss = torch.stack([F.mse_loss(slow_net(x), y) for x, y in _loader()]).mean()
    assert validated["val_loss"] == tested["test_loss"]
    assert tested["test_loss"] == pytest.approx(float(slow_loss), rel=1e-6)
    assert predictions is not None
    assert_same(predictions, expected)
    fast_net = _net()
    load_weights(fast_net, plain.fast)
    with torch.no_grad():
        fast_loss = torch.stack([F.mse_loss(fast_net(x), y) for x, y in _loader()]).mean()
    assert float(fast_loss) != pytest.approx(float(slow_loss), rel=1e-6)  # not vacuous


def test_a_second_trainer_without_the_optimizer_evaluates_the_slow_weights(
    fresh_fit: LightningRun, plain: PlainRun
) -> None:
    """The Trainer(devices=1) Lightning recommends for testing has no optimizer to swap."""
    tester = _trainer(1, slow_weights_callback=False)
    (tested,) = tester.test(fresh_fit.module, _loader(), verbose=False)
    (reference,) = fresh_fit.trainer.test(fresh_fit.module, _loader(), verbose=False)
    assert tested["test_loss"] == reference["test_loss"]
    assert_same(parameters_of(fresh_fit.module), plain.slow_per_epoch[-1])


def test_resuming_without_the_callback_names_it(tmp_path: Path) -> None:
    """The checkpoint holds the fast weights in its optimizer state, flagged: without the
    callback nothing swaps them back, and Lightning's warning names the callback to add."""
    trainer = _trainer(1, num_sanity_val_steps=0)
    trainer.fit(Regression(), _loader(), _loader())
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = _trainer(EPOCHS, slow_weights_callback=False)
    with (
        pytest.warns(UserWarning, match="LightningSlowWeightsCallback"),
        pytest.raises(RuntimeError, match="eval mode"),
    ):
        resumed.fit(Regression(), _loader(), _loader(), ckpt_path=tmp_path / "epoch1.ckpt")


def test_unwrap_lookahead_reaches_it_through_the_lightning_proxy(fresh_fit: LightningRun) -> None:
    proxy = fresh_fit.module.optimizers()
    (optimizer,) = fresh_fit.trainer.optimizers
    assert proxy is not optimizer and isinstance(proxy, Lookahead)  # a proxy posing as one
    assert unwrap_lookahead(proxy) is optimizer
    assert unwrap_lookahead(optimizer) is optimizer


def test_weights_only_checkpoints_after_validation_hold_the_slow_weights(
    tmp_path: Path, plain: PlainRun
) -> None:
    """Lightning calls no callback for these: they hold the parameters as validation left them."""
    checkpoints = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path,
        monitor="val_loss",
        save_top_k=-1,
        save_weights_only=True,
        filename="{epoch}",
    )
    trainer = _trainer(EPOCHS, num_sanity_val_steps=0, checkpoints=(checkpoints,))
    trainer.fit(Regression(), _loader(), _loader())
    for epoch in range(EPOCHS):
        saved = torch.load(tmp_path / f"epoch={epoch}.ckpt", weights_only=True)
        assert "optimizer_states" not in saved
        assert_same(_model_tensors(saved), plain.slow_per_epoch[epoch])
    assert _validate(_load_model(checkpoints.best_model_path)) == float(
        checkpoints.best_model_score
    )


class Float64SlowWeights(Regression):
    """Slow copies of another dtype than the parameters: eval() keeps the fast weights aside."""

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = Lookahead(
            torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM),
            k=K,
            alpha=ALPHA,
            slow_dtype=torch.float64,
        )
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=GAMMA)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step"},
        }


def test_checkpoint_with_slow_copies_of_another_dtype_resumes_exactly(tmp_path: Path) -> None:
    uninterrupted = Float64SlowWeights()
    reference = _trainer(EPOCHS, num_sanity_val_steps=0)
    reference.fit(uninterrupted, _loader(), _loader())

    first = Float64SlowWeights()
    trainer = _trainer(1, num_sanity_val_steps=0)
    trainer.fit(first, _loader(), _loader())
    (optimizer,) = trainer.optimizers
    fast, slow = _fast_weights(optimizer), slow_weights_of(optimizer)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    saved = torch.load(tmp_path / "epoch1.ckpt", weights_only=True)

    (optimizer_state,) = saved["optimizer_states"]
    assert_same(_model_tensors(saved), slow)  # cast to the parameters' float32
    stashed = [
        optimizer_state["state"][i]["lookahead_fast"] for i in sorted(optimizer_state["state"])
    ]
    assert_same(stashed, fast)
    assert all(
        s["lookahead_slow"].dtype == torch.float64 for s in optimizer_state["state"].values()
    )
    with optimizer.slow_weights():  # what eval() itself would have saved
        live = optimizer.state_dict()
        for i, entry in live["state"].items():
            assert_same(
                [entry["lookahead_fast"], entry["lookahead_slow"]],
                [
                    optimizer_state["state"][i]["lookahead_fast"],
                    optimizer_state["state"][i]["lookahead_slow"],
                ],
            )

    resumed = Float64SlowWeights()
    trainer = _trainer(EPOCHS, num_sanity_val_steps=0)
    trainer.fit(resumed, _loader(), _loader(), ckpt_path=tmp_path / "epoch1.ckpt")
    assert_same(_fast_weights(trainer.optimizers[0]), _fast_weights(reference.optimizers[0]))
    assert_same(_float64_slow(trainer, resumed), _float64_slow(reference, uninterrupted))


def _float64_slow(trainer: L.Trainer, module: Regression) -> list[Tensor]:
    (optimizer,) = trainer.optimizers
    slow = [optimizer.state[p]["lookahead_slow"] for p in module.parameters()]
    assert all(s.dtype == torch.float64 for s in slow)
    return slow
