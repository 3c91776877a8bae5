"""Glue between [Lookahead][torch_lookahead.Lookahead] and the training frameworks people use.

The package itself needs only torch: [unwrap_lookahead][torch_lookahead.integrations.unwrap_lookahead]
finds the Lookahead inside a framework's optimizer wrapper. Each submodule imports its framework,
so none is imported by ``import torch_lookahead`` (install the ``integrations`` extra):

* ``torch_lookahead.integrations.lightning``: ``LightningSlowWeightsCallback`` for
  ``lightning.pytorch``;
* ``torch_lookahead.integrations.transformers``: ``TransformersSlowWeightsCallback`` and
  ``LookaheadTrainer`` for the Hugging Face ``Trainer``;
* ``torch_lookahead.integrations.accelerate``: ``SlowWeightsState`` for ``save_state`` and
  ``load_state``;
* ``torch_lookahead.integrations.migrate``: convert timm and pytorch_optimizer Lookahead
  checkpoints into torch-lookahead's standard ``state_dict`` (needs only torch).

In every framework the model weights that are evaluated, checkpointed and exported are the slow
weights, and the fast weights travel in the same checkpoint so that resuming is exact; the
documentation page "Saving, selecting and shipping" states the policy.
"""

from torch_lookahead.integrations.unwrap import unwrap_lookahead

__all__ = ["unwrap_lookahead"]
