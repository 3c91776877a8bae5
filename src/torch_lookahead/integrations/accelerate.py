"""Accelerate glue: ``save_state`` writes Lookahead's slow weights into the model files.

``AcceleratedOptimizer`` forwards ``eval()`` and ``train()`` to the Lookahead, and
``accelerator.save_state`` / ``load_state`` save and restore its state (slow weights, counters,
mode). What the model files hold is whatever the parameters hold when ``save_state`` runs: the
fast weights θ in train mode, the slow weights φ between ``optimizer.eval()`` and
``optimizer.train()`` (and then the loaded optimizer is in eval mode: call ``optimizer.train()``
after ``load_state`` before the next step).

[SlowWeightsState][torch_lookahead.integrations.accelerate.SlowWeightsState] makes that one rule:
every ``save_state`` writes the slow weights into the model files (the fast ones travel in the
optimizer state), and every ``load_state`` ends in train mode, ready for the next step, so that
resuming is exact in either mode.

Importing this module imports ``accelerate``; install the ``integrations`` extra.
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn

from torch_lookahead.integrations.unwrap import unwrap_lookahead
from torch_lookahead.lookahead import Lookahead

__all__ = ["SlowWeightsState"]

# These save the model before the pre-save hooks run, or through an engine of their own.
_UNSUPPORTED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


class SlowWeightsState:
    """Make ``accelerator.save_state``/``load_state`` save the slow weights and resume exactly.

    Create it once per ``Accelerator``, after ``prepare`` and before ``load_state``, in the run
    that saves and in the run that resumes:

    * before ``save_state`` writes anything, every given Lookahead in train mode is put in eval
      mode, so the model files hold the slow weights φ and the optimizer files the fast weights θ
      (in the slow slots, with ``lookahead_eval_mode``); once the optimizers are written, those
      Lookaheads go back to train mode. One in eval mode already stays so.
    * after ``load_state`` has loaded the models and optimizers, every given Lookahead is put in
      train mode: the fast weights come back into the model, ready for the next step.

    It registers itself with ``accelerator.register_for_checkpointing`` (so the state folder holds
    one more ``custom_checkpoint_<i>.pkl``, and the resuming run must register the same objects in
    the same order) and with ``accelerator.register_save_state_pre_hook``.

    Args:
        accelerator: the ``Accelerator`` whose ``save_state``/``load_state`` to extend.
        *optimizers: the optimizers ``prepare`` returned (or the Lookaheads themselves).

    Raises:
        TypeError: if an optimizer has no Lookahead inside.
        ValueError: if no optimizer is given.
        NotImplementedError: under FSDP, DeepSpeed and Megatron-LM, which write the model before
            the hook runs (there, wrap ``save_state`` in ``with lookahead.slow_weights():`` and
            call ``optimizer.train()`` after ``load_state``).

    Example:
        >>> model, optimizer = accelerator.prepare(model, optimizer)  # doctest: +SKIP
        >>> SlowWeightsState(accelerator, optimizer)  # doctest: +SKIP
        >>> accelerator.save_state("state")  # doctest: +SKIP
    """

    def __init__(self, accelerator: Accelerator, *optimizers: object) -> None:
        if not optimizers:
            raise ValueError("SlowWeightsState needs the optimizers whose slow weights to save")
        lookaheads = [unwrap_lookahead(optimizer) for optimizer in optimizers]
        kind = accelerator.distributed_type
        if kind in {DistributedType[name] for name in _UNSUPPORTED}:
            raise NotImplementedError(
                f"SlowWeightsState does not support {kind}: the model is saved before the "
                "save_state hooks run; wrap save_state in `with lookahead.slow_weights():` and "
                "call optimizer.train() after load_state instead"
            )
        self.lookaheads = lookaheads
        self._swapped_for_saving: list[Lookahead] = []
        accelerator.register_save_state_pre_hook(self._before_saving)
        accelerator.register_for_checkpointing(self)

    def _before_saving(
        self, models: list[nn.Module], weights: list[dict[str, Any]], _: str
    ) -> None:
        """Accelerate's pre-save hook: the model states are collected, nothing is written yet."""
        in_train_mode = [la for la in self.lookaheads if not la.in_eval_mode]
        # The collected model states must be views of the parameters for the swap to reach them.
        swapped = {id(p) for la in in_train_mode for g in la.param_groups for p in g["params"]}
        for model, state in zip(models, weights, strict=False):
            for name, tensor in model.state_dict(keep_vars=True).items():
                entry = state.get(name)
                if id(tensor) in swapped and not (
                    isinstance(entry, Tensor) and entry.data_ptr() == tensor.data_ptr()
                ):
                    raise RuntimeError(
                        f"SlowWeightsState: the saved model state holds a copy of {name!r}, not the "
                        "parameter; the slow weights cannot be swapped into it"
                    )
        for lookahead in in_train_mode:
            lookahead.eval()
        self._swapped_for_saving = in_train_mode

    def state_dict(self) -> dict[str, Any]:
        """Called by ``save_state`` once the models and optimizers are written: train mode again."""
        for lookahead in self._swapped_for_saving:
            lookahead.train()
        self._swapped_for_saving = []
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by ``load_state`` once the models and optimizers are loaded: train mode."""
        for lookahead in self.lookaheads:
            lookahead.train()
