"""Optimizers to pair with Lookahead, and a name registry for all of them.

* :class:`NovoGrad`: layer-wise normalised SGD with momentum (NeMo semantics).
* :class:`AdaBound`: Adam with step sizes clipped into bounds that close on SGD (official update).
* :class:`RAdam`: ``torch.optim.RAdam`` itself, re-exported.
* :class:`Ranger`: Lookahead over RAdam, constructible from parameters like any optimizer.
* :func:`create_optimizer` / :func:`list_optimizers`: build any of them (or torch's) by name,
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
