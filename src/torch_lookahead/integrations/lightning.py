"""Lightning glue: evaluate, checkpoint and export Lookahead's slow weights.

Lightning never calls an optimizer's ``train()`` / ``eval()`` by itself (unlike the Hugging Face
``Trainer`` and Accelerate), so this module provides a callback that does::

    trainer = lightning.pytorch.Trainer(callbacks=[LightningSlowWeightsCallback()])

With it, validation, ``trainer.test()`` and ``trainer.predict()`` run on the slow weights φ, the
model weights of every checkpoint the trainer writes are the slow weights, while the fast weights
θ travel in the optimizer state, so that resuming is exact, and after ``fit`` the module holds the
slow weights. The policy is the same in every integration; the documentation page "Saving,
selecting and shipping" states it.

Importing this module imports ``lightning``; install the ``integrations`` extra.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from torch_lookahead.integrations._adopt import adopt_parameters
from torch_lookahead.lookahead import Lookahead

__all__ = ["LightningSlowWeightsCallback"]


def _lookahead_optimizers(trainer: Trainer) -> list[Lookahead]:
    """The trainer's optimizers that are Lookahead (``trainer.optimizers`` holds the real objects,
    not the ``LightningOptimizer`` proxies whose attribute writes would not reach the optimizer)."""
    return [opt for opt in trainer.optimizers if isinstance(opt, Lookahead)]


def _own_lookaheads(trainer: Trainer, pl_module: LightningModule) -> list[tuple[int, Lookahead]]:
    """The trainer's Lookaheads over parameters of the module only, with their index in
    ``trainer.optimizers`` (that of their state in a checkpoint's ``optimizer_states``)."""
    module_parameters = {id(p) for p in pl_module.parameters()}
    return [
        (index, opt)
        for index, opt in enumerate(trainer.optimizers)
        if isinstance(opt, Lookahead)
        and all(id(p) in module_parameters for g in opt.param_groups for p in g["params"])
    ]


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
    pending = [(i, opt) for i, opt in _own_lookaheads(trainer, pl_module) if not opt.in_eval_mode]
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
        f"LightningSlowWeightsCallback: this checkpoint keeps the fast weights in its model state ({reason})",
        RuntimeWarning,
        stacklevel=3,
    )


class LightningSlowWeightsCallback(Callback):  # type: ignore[misc]
    """Evaluate, checkpoint and export Lookahead's slow weights under ``lightning.pytorch``.

    For every [Lookahead][torch_lookahead.Lookahead] among ``trainer.optimizers`` whose parameters
    are the module's: outside a training batch the module holds the slow weights φ, inside one the
    fast weights θ.

    * **Evaluation.** ``optimizer.eval()`` at the start of validation, of ``trainer.test()`` and of
      ``trainer.predict()`` swaps φ into the parameters, where it stays until the next training
      batch: the checkpoints ``ModelCheckpoint`` writes after validation (ranked by the validation
      metrics) hold the weights that were evaluated.
    * **Training.** ``optimizer.train()`` at the start of training and before every training batch
      swaps θ back, also after loading a checkpoint written in eval mode, so ``fit(ckpt_path=...)``
      continues exactly. At the end of ``fit`` (and on an exception) ``optimizer.eval()``: the
      module is the slow model, for ``trainer.save_checkpoint`` with or without
      ``weights_only``, ``torch.save(model.state_dict())``, and a second ``Trainer`` that has no
      optimizer. The next ``fit`` swaps θ back (or starts a new optimizer from φ).
    * **Checkpoints.** A checkpoint written while the parameters hold θ (``ModelCheckpoint`` on
      training steps) is rewritten on the fly into the form ``optimizer.eval()`` gives it: φ in the
      model state, θ in the optimizer state. The training objects are not touched. The callback's
      own state in the checkpoint makes Lightning name it when a run resumes without it.
    * **Loaded checkpoints.** When a test, prediction or validation run loads its weights from a
      checkpoint (``trainer.test(ckpt_path="best")``), those weights become both θ and φ of the
      Lookahead (its counters restart), so that later evaluations, checkpoints and exports give
      the loaded model, not the end of training. A run that fails before loading its
      checkpoint (a wrong path) changes nothing; one that fails after it has taken it on.

    Optimizers that are not Lookahead, and Lookaheads over parameters of another module, are left
    alone. Lightning calls no callback for ``save_weights_only`` checkpoints: those hold the
    parameters as they are (φ after validation or ``fit``, θ on training steps).

    Example:
        >>> trainer = Trainer(callbacks=[LightningSlowWeightsCallback()])  # doctest: +SKIP
    """

    # ------------------------------------------------------------------ the slow weights
    def _to_slow_weights(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for _, optimizer in _own_lookaheads(trainer, pl_module):
            optimizer.eval()

    def _take_on_loaded_weights(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Outside ``fit``, a loaded checkpoint's weights become θ and φ (idempotent)."""
        if trainer.state.fn != TrainerFn.FITTING:
            for _, optimizer in _own_lookaheads(trainer, pl_module):
                adopt_parameters(optimizer)

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Lightning calls it right after loading a checkpoint's model state (one that holds
        callback states: not a ``weights_only`` one), even if the run then fails."""
        self._take_on_loaded_weights(trainer, pl_module)

    def _start_evaluation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Lightning starts an evaluation only once it has loaded the checkpoint its ``ckpt_path``
        names (``trainer.ckpt_path`` is then this run's), ``weights_only`` ones included."""
        if trainer.ckpt_path is not None:
            self._take_on_loaded_weights(trainer, pl_module)
        self._to_slow_weights(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_evaluation(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_evaluation(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_evaluation(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_slow_weights(trainer, pl_module)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._to_slow_weights(trainer, pl_module)

    # ------------------------------------------------------------------ the fast weights
    def _to_fast_weights(self, trainer: Trainer) -> None:
        for optimizer in _lookahead_optimizers(trainer):
            optimizer.train()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_fast_weights(trainer)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._to_fast_weights(trainer)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        _write_eval_form(trainer, pl_module, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoints hold; being non-empty, it makes Lightning warn, naming this
        callback, when a run resumes from one of them without it (and so without the
        ``optimizer.train()`` that swaps θ back before the first step)."""
        return {"model_state": "slow weights", "optimizer_state": "fast weights (lookahead_fast)"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the optimizer state records the mode."""

    # ------------------------------------------------------------------ the wrong framework
    def on_init_end(self, *args: Any, **kwargs: Any) -> None:
        """The Hugging Face Trainer's first call to its callbacks: refuse clearly."""
        raise TypeError(
            "LightningSlowWeightsCallback is a Lightning callback; the Hugging Face Trainer takes "
            "torch_lookahead.integrations.transformers.TransformersSlowWeightsCallback"
        )
