"""The outer step of Lookahead across workers with outer momentum, as a pure in-place function.

After the fast weights of all workers have been averaged, the slow weights take one step on the
pseudo-gradient ``delta = slow - mean(fast)``::

    heavy ball (SlowMo):   buf  <- mu * buf + delta
                           slow <- slow - alpha * buf
    Nesterov (DiLoCo):     buf  <- mu * buf + delta
                           slow <- slow - alpha * (delta + mu * buf)
    then:                  fast <- slow

With ``mu = 0`` both are Lookahead's ``slow <- slow + alpha*(mean(fast) - slow)``; the class uses the
core sync for that case. The heavy-ball form is SlowMo's (Wang et al., 2020) with its learning-rate
factors cancelled, which is the same update for a constant inner learning rate; the Nesterov form is
torch ``SGD(nesterov=True)`` on the pseudo-gradient, as in DiLoCo (Douillard et al., 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torch_lookahead.distributed._replicas import buckets

__all__ = ["momentum_outer_step_"]


def momentum_outer_step_(
    fast: Sequence[Tensor],
    slow: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    alpha: float,
    outer_momentum: float,
    nesterov: bool,
    foreach: bool,
) -> None:
    """One outer momentum step in place, from ``fast`` (already the mean over workers) to ``slow``.

    Args:
        fast: the averaged fast weights (the parameters); they hold the new slow weights on return.
        slow: the slow weights, same shapes; dtype and device may differ from ``fast``.
        momentum_buffers: the outer momentum buffers, same dtype and device as ``slow``.
        alpha: the outer step size (Lookahead's alpha, DiLoCo's outer learning rate).
        outer_momentum: ``mu`` in the update rule above.
        nesterov: take the Nesterov form of the step.
        foreach: use the vectorised ``torch._foreach_*`` kernels where devices and dtypes match.
    """
    fast, slow, momentum_buffers = list(fast), list(slow), list(momentum_buffers)
    matched = [
        i
        for i, (f, s) in enumerate(zip(fast, slow, strict=True))
        if (f.device, f.dtype) == (s.device, s.dtype)
    ]
    if matched:
        grouped = buckets(
            [fast[i] for i in matched],
            [slow[i] for i in matched],
            [momentum_buffers[i] for i in matched],
        )
        for bucket_fast, bucket_slow, bucket_buffers in grouped:
            _momentum_step_(
                bucket_fast,
                bucket_slow,
                bucket_buffers,
                alpha=alpha,
                outer_momentum=outer_momentum,
                nesterov=nesterov,
                foreach=foreach,
            )
    for i in sorted(set(range(len(fast))) - set(matched)):
        # The arithmetic happens in the slow copy's precision, on the slow copy's device.
        mean_fast = fast[i].to(device=slow[i].device, dtype=slow[i].dtype)
        _momentum_step_(
            [mean_fast],
            [slow[i]],
            [momentum_buffers[i]],
            alpha=alpha,
            outer_momentum=outer_momentum,
            nesterov=nesterov,
            foreach=False,
        )
        fast[i].copy_(slow[i])


def _momentum_step_(
    fast: list[Tensor],
    slow: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    alpha: float,
    outer_momentum: float,
    nesterov: bool,
    foreach: bool,
) -> None:
    """[momentum_outer_step_][torch_lookahead.distributed.momentum_outer_step_] for same-placement lists; ``fast`` is scratch, then the result."""
    if foreach:
        torch._foreach_sub_(fast, slow)
        torch._foreach_neg_(fast)  # fast now holds delta = slow - mean(fast)
        torch._foreach_mul_(momentum_buffers, outer_momentum)
        torch._foreach_add_(momentum_buffers, fast)
        if nesterov:
            torch._foreach_add_(fast, momentum_buffers, alpha=outer_momentum)
            torch._foreach_add_(slow, fast, alpha=-alpha)
        else:
            torch._foreach_add_(slow, momentum_buffers, alpha=-alpha)
        torch._foreach_copy_(fast, slow)
        return
    for f, s, buf in zip(fast, slow, momentum_buffers, strict=True):
        delta = f.sub_(s).neg_()
        buf.mul_(outer_momentum).add_(delta)
        if nesterov:
            s.add_(delta.add_(buf, alpha=outer_momentum), alpha=-alpha)
        else:
            s.add_(buf, alpha=-alpha)
        f.copy_(s)
