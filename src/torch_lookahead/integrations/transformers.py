"""Hugging Face ``Trainer`` glue: checkpoint and export Lookahead's slow weights.

The ``Trainer`` evaluates on the slow weights by itself: it calls ``optimizer.eval()`` at every
evaluation and prediction, and ``optimizer.train()`` before every training step. What it saves is
whatever the parameters hold at that moment. This module makes it save the slow weights φ:

* [TransformersSlowWeightsCallback][torch_lookahead.integrations.transformers.TransformersSlowWeightsCallback],
  for any ``Trainer``: every checkpoint folder holds the slow weights in its model files (the fast
  weights θ in ``optimizer.pt``, so that ``resume_from_checkpoint`` continues exactly), whether or
  not an evaluation ran just before, and training ends with the slow weights in the model (the
  best model's with ``load_best_model_at_end``), for ``save_model()``, ``save_pretrained()`` and
  ``push_to_hub()``;
* [LookaheadTrainer][torch_lookahead.integrations.transformers.LookaheadTrainer], a ``Trainer``
  with that callback whose ``save_model()`` writes the slow weights at any time.

Importing this module imports ``transformers``; install the ``integrations`` extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from torch_lookahead.integrations._adopt import adopt_parameters
from torch_lookahead.integrations.unwrap import find_lookahead

__all__ = ["LookaheadTrainer", "TransformersSlowWeightsCallback"]


class TransformersSlowWeightsCallback(TrainerCallback):  # type: ignore[misc]
    """Put the slow weights into the checkpoints of a ``transformers.Trainer``.

    For the [Lookahead][torch_lookahead.Lookahead] inside ``trainer.optimizer``:

    * **Checkpoints.** When the Trainer is about to save (``control.should_save`` at the end of a
      step or an epoch), ``optimizer.eval()`` swaps the slow weights into the model, as an
      evaluation does. The checkpoint folder then holds the slow weights in its model files and
      the fast weights in ``optimizer.pt`` (flagged ``lookahead_eval_mode``); the Trainer's
      ``optimizer.train()`` before the next step swaps them back, in this run and in a run resumed
      from that folder, so resuming is exact. The callback reads ``control.should_save`` in its
      own hooks: place it after every callback that sets it (a callback added after it gets
      checkpoints of the fast weights). ``LookaheadTrainer`` needs no such care.
    * **End of training.** ``optimizer.eval()``: the model holds the slow weights, so
      ``trainer.save_model()``, ``model.save_pretrained()``, ``push_to_hub()`` and later
      evaluations give the slow model; the Trainer's ``optimizer.train()`` before its next training
      step swaps the fast weights back. With ``load_best_model_at_end``, the Trainer has just loaded
      the best checkpoint's model files (slow weights) into the model; they first become both the
      fast and the slow weights, so that no later ``optimizer.train()`` can put the last fast
      weights over the best model.

    Example:
        >>> trainer = Trainer(..., callbacks=[TransformersSlowWeightsCallback()])  # doctest: +SKIP
    """

    def _before_saving(self, control: TrainerControl, optimizer: object) -> None:
        lookahead = find_lookahead(optimizer)
        if control.should_save and lookahead is not None:
            lookahead.eval()

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: object = None,
        **kwargs: Any,
    ) -> None:
        self._before_saving(control, optimizer)

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: object = None,
        **kwargs: Any,
    ) -> None:
        self._before_saving(control, optimizer)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: object = None,
        **kwargs: Any,
    ) -> None:
        lookahead = find_lookahead(optimizer)
        if lookahead is None:
            return
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            adopt_parameters(lookahead)
        lookahead.eval()

    # ------------------------------------------------------------------ the wrong framework
    @property
    def state_key(self) -> str:
        """Lightning reads it before its first call to a callback: refuse clearly."""
        raise TypeError(
            "TransformersSlowWeightsCallback is a Hugging Face Trainer callback; a Lightning Trainer "
            "takes torch_lookahead.integrations.lightning.LightningSlowWeightsCallback"
        )

    def on_exception(self, *args: Any, **kwargs: Any) -> None:
        """Lightning calls it after the error above; it lets that error through unchanged."""


class LookaheadTrainer(Trainer):  # type: ignore[misc]
    """A ``transformers.Trainer`` that checkpoints and exports Lookahead's slow weights.

    It adds a
    [TransformersSlowWeightsCallback][torch_lookahead.integrations.transformers.TransformersSlowWeightsCallback]
    (unless one was given), writes every checkpoint, ``save_model()`` and ``push_to_hub()`` with
    the slow weights in the model files at any time (the model is left in the mode it was in), and
    puts the fast weights back before ``train()``, so that a second ``train(resume_from_checkpoint=...)``
    can load its optimizer state. Without a Lookahead in ``trainer.optimizer`` it is a plain
    ``Trainer``.

    It takes the ``Trainer``'s arguments. To add the same behaviour to another subclass of
    ``Trainer``, list both: ``class MyTrainer(LookaheadTrainer, OtherTrainer): pass``.

    Example:
        >>> trainer = LookaheadTrainer(model=model, args=args, optimizers=(optimizer, scheduler),
        ...                            train_dataset=data)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> trainer.save_model("slow-model")  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        callbacks = self.callback_handler.callbacks
        if not any(isinstance(cb, TransformersSlowWeightsCallback) for cb in callbacks):
            self.add_callback(TransformersSlowWeightsCallback())

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, from train mode: training ended on the slow weights (eval mode), and
        ``resume_from_checkpoint`` loads the optimizer state before the first training step."""
        lookahead = find_lookahead(self.optimizer)
        if lookahead is not None:
            lookahead.train()
        return super().train(*args, **kwargs)

    @contextlib.contextmanager
    def _on_slow_weights(self) -> Iterator[None]:
        lookahead = find_lookahead(self.optimizer)
        if lookahead is None:
            yield
            return
        with lookahead.slow_weights():
            yield

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model`` with the slow weights in the model files."""
        with self._on_slow_weights():
            super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        # Model files and optimizer.pt are written in one mode: slow weights in the model, fast
        # ones in the optimizer state.
        with self._on_slow_weights():
            super()._save_checkpoint(*args, **kwargs)
