"""torch-lookahead: the Lookahead optimizer for PyTorch, exact to the paper.

``Lookahead(optimizer, k=5, alpha=0.5)`` wraps any ``torch.optim.Optimizer``: after every k inner
steps, ``slow <- slow + alpha*(fast - slow)`` and ``fast <- slow`` (Zhang et al., 2019).
The optimizers Lookahead is usually paired with (RAdam, NovoGrad, AdaBound/AMSBound, Ranger) and a
name registry (``create_optimizer``) come with it.
"""

from torch_lookahead._checks import check_alpha, check_k
from torch_lookahead.lookahead import Lookahead, LookaheadOptions
from torch_lookahead.optim import (
    AdaBound,
    NovoGrad,
    RAdam,
    Ranger,
    create_optimizer,
    list_optimizers,
)
from torch_lookahead.pullback import register_momentum_keys

__all__ = [
    "AdaBound",
    "Lookahead",
    "LookaheadOptions",
    "NovoGrad",
    "RAdam",
    "Ranger",
    "check_alpha",
    "check_k",
    "create_optimizer",
    "list_optimizers",
    "register_momentum_keys",
]

__version__ = "0.1.0"
