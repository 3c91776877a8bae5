"""The slow weights of a Lookahead as the tests compare them, read from its state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torch_lookahead import Lookahead


def slow_weights_of(opt: Lookahead) -> list[Tensor]:
    """Copies of the slow weights in the parameters' dtype and device, in param-group order: the
    slow copy where the state holds one, else the parameter (not updated yet, or in eval mode)."""
    copies = []
    for group in opt.param_groups:
        for p in group["params"]:
            slow = opt.state.get(p, {}).get("lookahead_slow")
            source = p if slow is None else slow
            copies.append(source.detach().to(dtype=p.dtype, device=p.device, copy=True))
    return copies


@torch.no_grad()
def load_weights(model: nn.Module, weights: Sequence[Tensor]) -> None:
    """Copy ``weights`` into ``model.parameters()``, in order."""
    params = list(model.parameters())
    assert len(params) == len(weights)
    for p, value in zip(params, weights, strict=True):
        p.copy_(value)
