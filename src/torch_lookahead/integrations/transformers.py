"""Hugging Face ``Trainer`` glue: checkpoint and export Lookahead's slow weights.

The ``Trainer`` evaluates on the slow weights by itself: it calls ``optimizer.eval()`` at every
evaluation and prediction, and ``optimizer.train()`` before every training step. What it saves is
whatever the parameters hold at that moment. This module makes it save the slow weights φ:

* [SlowWeightsCallback][torch_lookahead.integrations.transformers.SlowWeightsCallback], for any
  ``Trainer``: every checkpoint folder holds the slow weights in its model files (the fast weights
  θ in ``optimizer.pt``, so that ``resume_from_checkpoint`` continues exactly), whether or not an
  evaluation ran just before, and training ends in train mode;
* [LookaheadTrainer][torch_lookahead.integrations.transformers.LookaheadTrainer], a ``Trainer``
  with that callback whose ``save_model()`` (and so ``push_to_hub()``) writes the slow weights.

Importing this module imports ``transformers``; install the ``integrations`` extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from torch_lookahead.integrations.unwrap import find_lookahead
from torch_lookahead.lookahead import Lookahead

__all__ = ["LookaheadTrainer", "SlowWeightsCallback"]


@torch.no_grad()
def _adopt_parameters(lookahead: Lookahead) -> None:
    """Make the parameters' current values both the fast and the slow weights, in train mode."""
    params = [p for group in lookahead.param_groups for p in group["params"]]
    current = [p.detach().clone() for p in params]
    lookahead.train()
    for p, value in zip(params, current, strict=True):
        p.copy_(value)
    lookahead.reset_slow()


class SlowWeightsCallback(TrainerCallback):  # type: ignore[misc]
    """Put the slow weights into the checkpoints of a ``transformers.Trainer``.

    For the [Lookahead][torch_lookahead.Lookahead] inside ``trainer.optimizer``:

    * **Checkpoints.** When the Trainer is about to save (``control.should_save`` at the end of a
      step or an epoch), ``optimizer.eval()`` swaps the slow weights into the model, as an
      evaluation does. The checkpoint folder then holds the slow weights in its model files and
      the fast weights in ``optimizer.pt`` (flagged ``lookahead_eval_mode``); the Trainer's
      ``optimizer.train()`` before the next step swaps them back, in this run and in a run resumed
      from that folder, so resuming is exact.
    * **End of training.** ``optimizer.train()``: the model holds the fast weights, and the
      optimizer is ready for more steps. With ``load_best_model_at_end``, the Trainer has just
      loaded the best checkpoint's model files (slow weights) into the model; they become both the
      fast and the slow weights, so the model, ``save_model()`` and later evaluations all give the
      best model.

    Example:
        >>> trainer = Trainer(..., callbacks=[SlowWeightsCallback()])  # doctest: +SKIP
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
            _adopt_parameters(lookahead)
        else:
            lookahead.train()


class LookaheadTrainer(Trainer):  # type: ignore[misc]
    """A ``transformers.Trainer`` that checkpoints and exports Lookahead's slow weights.

    It adds a [SlowWeightsCallback][torch_lookahead.integrations.transformers.SlowWeightsCallback]
    (unless one was given) and writes every checkpoint, ``save_model()`` and ``push_to_hub()``
    with the slow weights in the model files: ``save_model()`` after training writes the slow
    weights whether or not an evaluation ran last, and the model is back on the fast weights
    afterwards. Without a Lookahead in ``trainer.optimizer`` it is a plain ``Trainer``.

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
        if not any(isinstance(cb, SlowWeightsCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(SlowWeightsCallback())

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
