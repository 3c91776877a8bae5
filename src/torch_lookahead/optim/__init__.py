"""Optimizers to pair with Lookahead, and a name registry for all of them.

* [NovoGrad][torch_lookahead.NovoGrad]: layer-wise normalised SGD with momentum (NeMo semantics).
* [AdaBound][torch_lookahead.AdaBound]: Adam with step sizes clipped into bounds that close on SGD (official update).
* `RAdam`: ``torch.optim.RAdam`` itself, re-exported.
* [Ranger][torch_lookahead.Ranger]: Lookahead over RAdam, constructible from parameters like any optimizer.
* [create_optimizer][torch_lookahead.create_optimizer] / [list_optimizers][torch_lookahead.list_optimizers]: build any of them (or torch's) by name,
  ``"lookahead_"`` prefix included.
"""

from torch.optim import RAdam

from .adabound import AdaBound, AdaBoundHyperparameters, adabound
from .novograd import NovoGrad, NovoGradHyperparameters, novograd
from .ranger import Ranger
from .registry import create_optimizer, list_optimizers

__all__ = [
    "AdaBound",
    "AdaBoundHyperparameters",
    "NovoGrad",
    "NovoGradHyperparameters",
    "RAdam",
    "Ranger",
    "adabound",
    "create_optimizer",
    "list_optimizers",
    "novograd",
]
