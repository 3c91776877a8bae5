"""What the integrations do when a checkpoint's model weights are loaded into a trained model."""

from __future__ import annotations

import warnings

import torch

from torch_lookahead.lookahead import WRITTEN_IN_EVAL_MODE, Lookahead


@torch.no_grad()
def adopt_parameters(lookahead: Lookahead) -> None:
    """Make the values the parameters hold now both the fast and the slow weights, in train mode.

    A framework that loads a checkpoint's model files into the model (the HF Trainer's
    ``load_best_model_at_end``, Lightning's ``trainer.test(ckpt_path=...)``) writes slow weights
    φ of that checkpoint into the parameters, next to a Lookahead that still holds the fast and
    slow weights of the end of training. Afterwards φ = θ = the loaded values, the counters
    restart (``reset_slow()``), so that evaluation, checkpoints and exports all give the loaded
    model and a later ``train()`` cannot put the old fast weights over it.
    """
    if lookahead.in_eval_mode:
        params = [p for group in lookahead.param_groups for p in group["params"]]
        loaded = [p.detach().clone() for p in params]
        with warnings.catch_warnings():  # what it warns of is what this function undoes
            warnings.filterwarnings("ignore", message=f".*{WRITTEN_IN_EVAL_MODE}")
            lookahead.train()  # the stale fast weights come back into the parameters...
        for p, value in zip(params, loaded, strict=True):
            p.copy_(value)  # ...and are overwritten by the loaded ones
    lookahead.reset_slow()
