"""Lightning glue: evaluate, checkpoint and export Lookahead's slow weights.

Lightning never calls an optimizer's ``train()`` / ``eval()`` by itself (unlike the Hugging Face
``Trainer`` and Accelerate), so this module provides a callback that does::

    trainer = lightning.pytorch.Trainer(callbacks=[SlowWeightsCallback()])

With it, validation, ``trainer.test()`` and ``trainer.predict()`` run on the slow weights φ, and
the model weights of every checkpoint the trainer writes are the slow weights, while the fast
weights θ travel in the optimizer state, so that resuming is exact. The policy is the same in every
integration; the documentation page "Saving, selecting and shipping" states it.

Importing this module imports ``lightning``; install the ``integrations`` extra.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from torch_lookahead.lookahead import Lookahead

__all__ = ["SlowWeightsCallback"]


def _lookahead_optimizers(trainer: Trainer) -> list[Lookahead]:
    """The trainer's optimizers that are Lookahead (``trainer.optimizers`` holds the real objects,
    not the ``LightningOptimizer`` proxies whose attribute writes would not reach the optimizer)."""
    return [opt for opt in trainer.optimizers if isinstance(opt, Lookahead)]


def _aliases(entry: object, p: Tensor) -> bool:
    """Whether a model state-dict entry is a view of the parameter itself (not a copy)."""
    return (
        isinstance(entry, Tensor)
        and entry.data_ptr() == p.data_ptr()
        and entry.shape == p.shape
        and entry.dtype == p.dtype
        and entry.device == p.device
    )


def _write_eval_form(
    trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
) -> None:
    """Rewrite a checkpoint taken in train mode as ``optimizer.eval()`` would have written it.

    ``Lookahead.eval_state_dict`` gives the optimizer state in the eval form (docs/design.md) and
    the slow weights, which replace the parameters' model entries. Tensors are referenced, not
    copied (except slow copies of another dtype or device, cast to the parameter's), and the live
    optimizer and model are left as they are.
    """
    model_state = checkpoint.get("state_dict")
    optimizer_states = checkpoint.get("optimizer_states")
    if model_state is None or optimizer_states is None:
        return
    pending = [
        (index, opt)
        for index, opt in enumerate(trainer.optimizers)
        if isinstance(opt, Lookahead) and not opt.in_eval_mode
    ]
    if not pending:
        return
    names: dict[int, list[str]] = {}
    for name, tensor in pl_module.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)

    # Plan every change first: the checkpoint is rewritten completely or not at all.
    model_updates: dict[str, Tensor] = {}
    rewritten: list[tuple[int, dict[str, Any]]] = []
    for index, optimizer in pending:
        saved = optimizer_states[index]
        try:
            eval_form, slow_weights = optimizer.eval_state_dict(saved)
        except (ValueError, KeyError):
            _leave_fast(f"optimizer {index}'s saved state does not match its groups")
            return
        for p, slow in slow_weights:
            entries = names.get(id(p), [])
            if not entries or not all(_aliases(model_state.get(n), p) for n in entries):
                _leave_fast("the strategy's model state is not the module's parameters")
                return
            model_updates.update(dict.fromkeys(entries, slow))
        rewritten.append((index, eval_form))
    model_state.update(model_updates)
    for index, eval_form in rewritten:
        optimizer_states[index] = eval_form


def _leave_fast(reason: str) -> None:
    warnings.warn(
        f"SlowWeightsCallback: this checkpoint keeps the fast weights in its model state ({reason})",
        RuntimeWarning,
        stacklevel=3,
    )


class SlowWeightsCallback(Callback):  # type: ignore[misc]
    """Evaluate, checkpoint and export Lookahead's slow weights under ``lightning.pytorch``.

    For every [Lookahead][torch_lookahead.Lookahead] among ``trainer.optimizers``:

    * **Evaluation.** ``optimizer.eval()`` at the start of validation, of ``trainer.test()`` and of
      ``trainer.predict()`` swaps the slow weights φ into the parameters. ``optimizer.train()``
      swaps the fast weights θ back at the end of a test, a prediction or a validation outside
      ``fit``. Inside ``fit`` the slow weights stay in place until the next training batch, so that
      the checkpoints ``ModelCheckpoint`` writes after validation (it ranks them by the validation
      metrics) hold the weights that were evaluated.
    * **Checkpoints.** A checkpoint written while the parameters hold the fast weights (a
      ``ModelCheckpoint`` saving on training steps, ``trainer.save_checkpoint`` after ``fit``) is
      rewritten on the fly into the form ``optimizer.eval()`` gives it: the model state holds the
      slow weights, the optimizer state the fast ones. The training objects are not touched.
    * **Resuming.** ``optimizer.train()`` at the start of training and before every training batch
      swaps the fast weights back in, also after loading a checkpoint written in eval mode, so
      ``fit(ckpt_path=...)`` continues exactly. Training ends in train mode (fast weights in the
      parameters); ``on_exception`` restores train mode as well.

    A test, prediction or validation run that loads its weights from a checkpoint
    (``trainer.test(ckpt_path="best")``) evaluates those weights as they are: they are the slow
    weights already. Optimizers that are not Lookahead, and Lookaheads over parameters of another
    module, are left alone.

    Lightning does not call callbacks for ``save_weights_only`` checkpoints: those hold the
    parameters as they are, which are the slow weights when written after validation (the usual
    ``ModelCheckpoint(monitor=...)`` case) and the fast ones otherwise.

    Example:
        >>> trainer = Trainer(callbacks=[SlowWeightsCallback()])  # doctest: +SKIP
    """

    # ------------------------------------------------------------------ evaluation
    def _evaluate_on_slow_weights(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING and trainer.ckpt_path is not None:
            return  # the weights were just loaded from a checkpoint: they are the slow weights
        module_parameters = {id(p) for p in pl_module.parameters()}
        for optimizer in _lookahead_optimizers(trainer):
            if all(id(p) in module_parameters for g in optimizer.param_groups for p in g["params"]):
                optimizer.eval()

    def _back_to_fast_weights(self, trainer: Trainer) -> None:
        for optimizer in _lookahead_optimizers(trainer):
            optimizer.train()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate_on_slow_weights(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._back_to_fast_weights(trainer)
        # During fit: ModelCheckpoint saves after this hook; the next training batch swaps back.

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate_on_slow_weights(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._back_to_fast_weights(trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate_on_slow_weights(trainer, pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._back_to_fast_weights(trainer)

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._back_to_fast_weights(trainer)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._back_to_fast_weights(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._back_to_fast_weights(trainer)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._back_to_fast_weights(trainer)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        _write_eval_form(trainer, pl_module, checkpoint)
