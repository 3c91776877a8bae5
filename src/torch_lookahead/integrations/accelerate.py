"""Accelerate glue: ``save_state`` writes Lookahead's slow weights into the model files.

``AcceleratedOptimizer`` forwards ``eval()`` and ``train()`` to the Lookahead, and
``accelerator.save_state`` / ``load_state`` save and restore its state (slow weights, counters,
mode). What the model files hold is whatever the parameters hold when ``save_state`` runs: the
fast weights θ in train mode, the slow weights φ between ``optimizer.eval()`` and
``optimizer.train()`` (and then the loaded optimizer is in eval mode: call ``optimizer.train()``
after ``load_state`` before the next step).

[SlowWeightsState][torch_lookahead.integrations.accelerate.SlowWeightsState] makes that one rule:
every ``save_state`` writes the slow weights into the model files and keeps the fast ones in the
same folder, without switching the optimizer's mode (a save that fails part-way changes nothing),
and every ``load_state`` ends in train mode, ready for the next step, so that resuming is exact.

Importing this module imports ``accelerate``; install the ``integrations`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn

from torch_lookahead.integrations.unwrap import unwrap_lookahead

__all__ = ["SlowWeightsState"]

# These save the model before the pre-save hooks run, or through an engine of their own.
_UNSUPPORTED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")
_EVAL_KEY = "lookahead_eval_mode"  # the per-group mode flag (docs/design.md)


def _in_train_mode(group: dict[str, Any]) -> bool:
    return not group.get(_EVAL_KEY, False)


class SlowWeightsState:
    """Make ``accelerator.save_state``/``load_state`` save the slow weights and resume exactly.

    Create it once per ``Accelerator``, after ``prepare`` and before ``load_state``, in the run
    that saves and in the run that resumes:

    * ``save_state`` writes the slow weights φ into the model files in place of the parameters of
      every parameter group in train mode, and the fast weights θ (the parameters) into this
      object's ``custom_checkpoint_<i>.pkl``; the optimizer files are the optimizers'
      ``state_dict()``. Nothing live is switched or changed, so a save that fails part-way (an I/O
      error) leaves the run exactly as it was. Groups in eval mode (after ``optimizer.eval()``)
      are saved as they are: φ in the parameters, θ under ``lookahead_fast``.
    * ``load_state``, once it has loaded the models (φ) and the optimizers, puts θ back: from
      this object's file into the groups saved in train mode, by ``optimizer.train()`` into those
      saved in eval mode. It ends in train mode, ready for the next step.

    It registers itself with ``accelerator.register_for_checkpointing`` (the resuming run must
    register the same objects in the same order) and with the save and load pre-hooks.

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
        accelerator.register_save_state_pre_hook(self._before_saving)
        accelerator.register_load_state_pre_hook(self._before_loading)
        accelerator.register_for_checkpointing(self)

    def _before_saving(
        self, models: list[nn.Module], weights: list[dict[str, Any]], output_dir: str
    ) -> None:
        """Accelerate's pre-save hook: replace the parameters' entries of the collected model
        states (nothing is written yet) by the slow weights. The live objects are not touched."""
        slow_of: dict[int, Tensor] = {}
        for lookahead in self.lookaheads:
            pairs = lookahead.eval_state_dict()[1]  # (parameter, φ) of the groups in train mode
            slow_of.update((id(p), slow) for p, slow in pairs)
        replaced: set[int] = set()
        for model, state in zip(models, weights, strict=False):
            for name, tensor in model.state_dict(keep_vars=True).items():
                if id(tensor) in slow_of and name in state:
                    state[name] = slow_of[id(tensor)]  # tied names get the same tensor
                    replaced.add(id(tensor))
        missing = slow_of.keys() - replaced
        if missing:
            raise RuntimeError(
                f"SlowWeightsState: {len(missing)} parameters of the Lookahead are in none of the "
                "model states save_state writes; prepare their model with this Accelerator"
            )

    def state_dict(self) -> dict[str, Any]:
        """The fast weights of the groups in train mode (the parameters), None for the others."""
        return {
            "fast_weights": [
                [[p.detach() for p in g["params"]] if _in_train_mode(g) else None for g in groups]
                for groups in (lookahead.param_groups for lookahead in self.lookaheads)
            ]
        }

    def _before_loading(self, _: list[nn.Module], input_dir: str) -> None:
        """Accelerate's pre-load hook: name the cause when the folder was saved without this."""
        if not any(Path(input_dir).glob("custom_checkpoint_*.pkl")):
            raise RuntimeError(
                f"SlowWeightsState: {input_dir} was saved without SlowWeightsState (it has no "
                "custom_checkpoint_<i>.pkl); load it with accelerator.load_state before creating "
                "SlowWeightsState, then call optimizer.train()"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by ``load_state`` once the models and optimizers are loaded: θ back, train mode."""
        saved = state_dict.get("fast_weights")
        if not isinstance(saved, list) or len(saved) != len(self.lookaheads):
            raise ValueError(
                "SlowWeightsState: the saved state does not hold the fast weights of "
                f"{len(self.lookaheads)} optimizers"
            )
        copies: list[tuple[Tensor, Tensor]] = []
        for index, (lookahead, groups) in enumerate(zip(self.lookaheads, saved, strict=True)):
            if not isinstance(groups, list) or len(groups) != len(lookahead.param_groups):
                raise ValueError(
                    f"SlowWeightsState: optimizer {index} has {len(lookahead.param_groups)} "
                    "parameter groups; the saved fast weights do not match them"
                )
            for group, fast in zip(lookahead.param_groups, groups, strict=True):
                if not _in_train_mode(group):
                    continue  # saved in eval mode: θ is in the optimizer state
                if fast is None or [t.shape for t in fast] != [p.shape for p in group["params"]]:
                    raise ValueError(
                        f"SlowWeightsState: the saved fast weights of optimizer {index} do not "
                        "match its parameters or its loaded mode"
                    )
                copies += zip(group["params"], fast, strict=True)
        with torch.no_grad():
            for p, fast in copies:
                p.copy_(fast)
        for lookahead in self.lookaheads:
            lookahead.train()
