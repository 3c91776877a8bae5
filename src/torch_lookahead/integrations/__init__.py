"""Glue between :class:`torch_lookahead.Lookahead` and the training frameworks people use.

Every submodule imports its framework, so nothing here is imported by ``import torch_lookahead``:

* :mod:`torch_lookahead.integrations.lightning`: ``SlowWeightsCallback``, validation on the slow
  weights under ``lightning.pytorch.Trainer`` (needs the ``integrations`` extra).
* :mod:`torch_lookahead.integrations.migrate`: convert timm and pytorch_optimizer Lookahead
  checkpoints into torch-lookahead's standard ``state_dict`` (needs only torch).

The Hugging Face ``Trainer`` and Accelerate need no glue: they call the optimizer's ``train()`` and
``eval()`` themselves (see the documentation pages of the same names).
"""
