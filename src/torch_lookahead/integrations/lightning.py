"""Lightning glue: run validation on Lookahead's slow weights.

Lightning never calls an optimizer's ``train()`` / ``eval()`` by itself (unlike the Hugging Face
``Trainer`` and Accelerate), so this module provides a callback that does::

    trainer = lightning.pytorch.Trainer(callbacks=[SlowWeightsCallback()])

During every validation run (the sanity check included) the parameters of the model hold the slow
weights φ of every :class:`~torch_lookahead.Lookahead` the module's ``configure_optimizers``
returned; the fast weights θ are back in place before training resumes and before
``ModelCheckpoint`` saves (Lightning runs checkpoint callbacks after all the others).

Importing this module imports ``lightning``; install the ``integrations`` extra.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from torch_lookahead import Lookahead

__all__ = ["SlowWeightsCallback"]


def _lookahead_optimizers(trainer: Trainer) -> list[Lookahead]:
    """The trainer's optimizers that are Lookahead (``trainer.optimizers`` holds the real objects,
    not the ``LightningOptimizer`` proxies whose attribute writes would not reach the optimizer)."""
    return [opt for opt in trainer.optimizers if isinstance(opt, Lookahead)]


class SlowWeightsCallback(Callback):  # type: ignore[misc]
    """Evaluate on the slow weights: ``optimizer.eval()`` before validation, ``train()`` after.

    For every :class:`~torch_lookahead.Lookahead` among ``trainer.optimizers``:

    * ``on_validation_start``: ``optimizer.eval()`` swaps the slow weights φ into the parameters;
    * ``on_validation_end`` and ``on_exception``: ``optimizer.train()`` swaps the fast weights θ
      back.

    The swap is in place (no copy of the model is allocated) and the mode is recorded in the
    optimizer's param groups, so a checkpoint written in either mode resumes exactly. Optimizers
    that are not Lookahead are left alone, and so is a ``trainer.validate()`` run outside
    ``fit`` (the trainer then holds no optimizer).

    Example:
        >>> trainer = Trainer(callbacks=[SlowWeightsCallback()])  # doctest: +SKIP
    """

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for optimizer in _lookahead_optimizers(trainer):
            optimizer.eval()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for optimizer in _lookahead_optimizers(trainer):
            optimizer.train()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # Leave the fast weights in the parameters whatever happened during validation.
        self.on_validation_end(trainer, pl_module)
