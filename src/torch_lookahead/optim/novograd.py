"""NovoGrad: SGD with momentum on gradients normalised by a layer-wise second moment."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .._tensors import group_by_device_and_dtype
from ..pullback import register_momentum_keys
from ._base import GroupwiseOptimizer
from ._flat import FlatState, flatten
from ._functional import (
    FunctionalStep,
    StateLists,
    assign_,
    blocks,
    check_hyperparameters,
    view_as_real_,
)

__all__ = ["NovoGrad", "NovoGradHyperparameters", "novograd"]


class NovoGradHyperparameters(NamedTuple):
    """The hyper-parameters of one NovoGrad step, named as in a parameter group."""

    lr: float | Tensor
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    grad_averaging: bool
    amsgrad: bool
    decoupled_weight_decay: bool
    maximize: bool

    @property
    def signed_momentum_scale(self) -> float:
        """``c`` of the update rule, negated with ``maximize``: it multiplies the raw gradient."""
        scale = (1.0 - self.betas[0]) if self.grad_averaging else 1.0
        return -scale if self.maximize else scale


def _single_tensor_novograd(
    params: list[Tensor], grads: list[Tensor], state: StateLists, hyper: NovoGradHyperparameters
) -> None:
    beta1, beta2 = hyper.betas
    for index, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = (
            grads[index],
            state["exp_avg"][index],
            state["exp_avg_sq"][index],
        )
        if torch.is_complex(param):
            param, grad, exp_avg = (torch.view_as_real(t) for t in (param, grad, exp_avg))

        grad_norm_sq = torch.linalg.vector_norm(grad).square()
        second_moment = torch.lerp(exp_avg_sq, grad_norm_sq, 1.0 - beta2)
        assign_(exp_avg_sq, second_moment)  # not lerp_: see assign_
        if hyper.amsgrad:
            second_moment = torch.maximum(state["max_exp_avg_sq"][index], second_moment)
            assign_(state["max_exp_avg_sq"][index], second_moment)
        grad_scale = hyper.signed_momentum_scale / (second_moment.sqrt() + hyper.eps)

        if hyper.weight_decay != 0 and hyper.decoupled_weight_decay:
            param.mul_(1.0 - hyper.lr * hyper.weight_decay)
        exp_avg.mul_(beta1).addcmul_(grad, grad_scale)
        if hyper.weight_decay != 0 and not hyper.decoupled_weight_decay:
            exp_avg.add_(param, alpha=abs(hyper.signed_momentum_scale) * hyper.weight_decay)
        if isinstance(hyper.lr, Tensor):  # compiling with a Tensor lr
            param.sub_(exp_avg * hyper.lr)
        else:
            param.add_(exp_avg, alpha=-hyper.lr)


def _multi_tensor_novograd(
    params: list[Tensor], grads: list[Tensor], state: StateLists, hyper: NovoGradHyperparameters
) -> None:
    keys = (
        ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hyper.amsgrad else ("exp_avg", "exp_avg_sq")
    )
    for bucket in group_by_device_and_dtype([params, grads, *(state[key] for key in keys)]):
        view_as_real_(bucket[0], bucket[1], bucket[2])
        for block in blocks(bucket[0]):
            block_params, block_grads, block_exp_avgs, *block_scalars = (
                tensors[block] for tensors in bucket
            )
            second_moments = [torch.stack(scalars) for scalars in block_scalars]
            _novograd_block(
                block_params, block_grads, block_exp_avgs, None, *second_moments, hyper=hyper
            )
            for scalars, values in zip(block_scalars, second_moments, strict=True):
                torch._foreach_copy_(scalars, values.unbind(0))


def _flat_novograd(
    params: list[Tensor], grads: list[Tensor], flat: FlatState, hyper: NovoGradHyperparameters
) -> None:
    """The multi-tensor step when the state lives in ``flat``'s buffers: the layer-wise scalars
    and the momentum decay run over whole buffers, the rest per tensor."""
    keys = ("exp_avg_sq", "max_exp_avg_sq") if hyper.amsgrad else ("exp_avg_sq",)
    offset = 0
    for block in blocks(params):
        size = sum(flat.numels[block])
        _novograd_block(
            params[block],
            grads[block],
            flat.views["exp_avg"][block],
            flat.buffers["exp_avg"][offset : offset + size],
            *(flat.buffers[key][block] for key in keys),
            hyper=hyper,
        )
        offset += size


def _novograd_block(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    flat_exp_avg: Tensor | None,
    second_moments: Tensor,
    max_second_moments: Tensor | None = None,
    *,
    hyper: NovoGradHyperparameters,
) -> None:
    """One multi-tensor step over a block of one device and dtype. The layer-wise scalars are
    updated in place as the vectors ``second_moments`` (and ``max_second_moments``); the
    momentum decay and weight decay run once over ``flat_exp_avg`` when the ``exp_avgs`` are
    consecutive views of it."""
    beta1, beta2 = hyper.betas
    grad_norm_sq = torch.stack(torch._foreach_norm(grads)).square_()
    second_moment = second_moments.lerp_(grad_norm_sq, 1.0 - beta2)
    if max_second_moments is not None:
        second_moment = torch.maximum(max_second_moments, second_moment, out=max_second_moments)
    grad_scales = hyper.signed_momentum_scale / (second_moment.sqrt() + hyper.eps)

    if hyper.weight_decay != 0 and hyper.decoupled_weight_decay:
        torch._foreach_mul_(params, 1.0 - hyper.lr * hyper.weight_decay)
    if flat_exp_avg is not None:
        flat_exp_avg.mul_(beta1)
    else:
        torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_addcmul_(exp_avgs, grads, list(grad_scales.unbind(0)))
    if hyper.weight_decay != 0 and not hyper.decoupled_weight_decay:
        decay = abs(hyper.signed_momentum_scale) * hyper.weight_decay
        if flat_exp_avg is not None:
            flat_exp_avg.add_(flatten(params), alpha=decay)
        else:
            torch._foreach_add_(exp_avgs, params, alpha=decay)
    torch._foreach_add_(params, exp_avgs, alpha=-float(hyper.lr))


novograd = FunctionalStep(_single_tensor_novograd, _multi_tensor_novograd, _flat_novograd)
"""Functional NovoGrad (see `FunctionalStep` for the arguments and [NovoGrad][torch_lookahead.NovoGrad] for
the update rule). ``state`` holds ``"exp_avg"`` and the 0-dim ``"exp_avg_sq"`` (and
``"max_exp_avg_sq"`` with ``amsgrad``). Every step blends ``v <- beta2 * v + (1 - beta2) *
||g||^2``: the paper's first step ``v_1 = ||g_1||^2`` is obtained by creating ``v`` equal to
``||g_1||^2``, as [NovoGrad][torch_lookahead.NovoGrad] does, so that there is no step counter and no branch on it."""


class NovoGrad(GroupwiseOptimizer):
    r"""Implements NovoGrad (Ginsburg et al., 2019), with NVIDIA NeMo's semantics.

    .. math::
       \begin{aligned}
            &\rule{110mm}{0.4pt}                                                          \\
            &\textbf{input}: \gamma \text{ (lr)}, \beta_1, \beta_2 \text{ (betas)},
                \theta_0 \text{ (params)}, f(\theta) \text{ (objective)},
                \epsilon \text{ (eps)}, \lambda \text{ (weight decay)},                   \\
            &\hspace{13mm} \textit{grad\_averaging}, \: \textit{amsgrad}, \:
                \textit{decoupled\_weight\_decay}, \: \textit{maximize}                   \\
            &\textbf{initialize}: m_0 \leftarrow 0, \: v^{max}_0 \leftarrow 0,
                \: c \leftarrow 1 - \beta_1 \textbf{ if } \textit{grad\_averaging}
                \textbf{ else } 1                                                         \\[-1.ex]
            &\rule{110mm}{0.4pt}                                                          \\
            &\textbf{for} \: t=1 \: \textbf{to} \: \ldots \: \textbf{do}                  \\
            &\hspace{5mm}g_t \leftarrow \pm \nabla_{\theta} f_t(\theta_{t-1})
                \quad (- \textbf{ if } \textit{maximize})                                 \\
            &\hspace{5mm}\textbf{if} \: t = 1: \: v_t \leftarrow \lVert g_t \rVert^2
                \qquad \textbf{else}: \: v_t \leftarrow \beta_2 v_{t-1}
                + (1 - \beta_2) \lVert g_t \rVert^2                                       \\
            &\hspace{5mm}\textbf{if} \: \textit{amsgrad}: \:
                v^{max}_t \leftarrow \max(v^{max}_{t-1}, v_t), \: \hat v_t \leftarrow v^{max}_t
                \qquad \textbf{else}: \: \hat v_t \leftarrow v_t                          \\
            &\hspace{5mm}u_t \leftarrow g_t / (\sqrt{\hat v_t} + \epsilon)                \\
            &\hspace{5mm}\textbf{if} \: \textit{decoupled\_weight\_decay}: \:
                \theta_{t-1} \leftarrow (1 - \gamma \lambda) \theta_{t-1}
                \qquad \textbf{else}: \: u_t \leftarrow u_t + \lambda \theta_{t-1}        \\
            &\hspace{5mm}m_t \leftarrow \beta_1 m_{t-1} + c \, u_t                        \\
            &\hspace{5mm}\theta_t \leftarrow \theta_{t-1} - \gamma m_t                    \\
            &\rule{110mm}{0.4pt}                                                          \\[-1.ex]
            &\bf{return} \: \theta_t                                                      \\[-1.ex]
            &\rule{110mm}{0.4pt}                                                          \\[-1.ex]
       \end{aligned}

    The second moment $v$ is one scalar per parameter tensor ("layer"), so the state of a
    parameter is one tensor its size (``exp_avg``) plus one scalar (``exp_avg_sq``; a second one,
    ``max_exp_avg_sq``, with amsgrad): about half of Adam's memory, and no step counter.
    $v$ starts from the first gradient's squared norm, so there is no bias correction; a
    gradient that is exactly zero on the first step gives $u_1 = 0$ (no NaN, since
    $\epsilon > 0$).

    Choices where published implementations disagree (see docs/optimizers.md): ``eps`` is added
    outside the square root; the weight decay is added to the normalised gradient, inside the
    momentum (the paper's "decoupled from the normalisation"), unless
    ``decoupled_weight_decay=True`` selects AdamW-style decay; with ``grad_averaging`` the
    factor $1 - \beta_1$ applies on every step, the first included (NeMo,
    torch-optimizer, timm). ``p.grad`` is never modified.

    Args:
        params (iterable): iterable of parameters or named parameters to optimize, or of dicts
            defining parameter groups.
        lr (float, Tensor, optional): learning rate $\gamma$, a float or a 1-element
            Tensor (see docs/optimizers.md) (default: 1e-3).
        betas (tuple[float, float], optional): $\beta_1$ for the momentum and
            $\beta_2$ for the layer-wise second moment (default: (0.95, 0.98)).
        eps (float, optional): added to $\sqrt{\hat v_t}$; must be positive (default: 1e-8).
        weight_decay (float, optional): $\lambda$ (default: 0).
        grad_averaging (bool, optional): scale the new term of the momentum by
            $1 - \beta_1$ (default: False).
        amsgrad (bool, optional): normalise by the running maximum of $v_t$
            (default: False).
        decoupled_weight_decay (bool, optional): decay the weights AdamW-style,
            $\theta \leftarrow (1 - \gamma\lambda)\theta$, instead of adding
            $\lambda\theta$ to the normalised gradient (default: False).
        maximize (bool, optional): maximize the objective instead of minimizing it
            (default: False).
        foreach (bool, optional): use the multi-tensor implementation (cache-blocked on CPU).
            ``None`` picks it whenever all parameters are plain tensors on CPU or a device with
            foreach kernels (default: None).

    Example:
        >>> opt = NovoGrad(model.parameters(), lr=1e-2, weight_decay=1e-3)  # doctest: +SKIP
        >>> loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()  # doctest: +SKIP

    Reference: Ginsburg et al., "Training Deep Networks with Stochastic Gradient Normalized by
    Layerwise Adaptive Second Moments", arXiv:1905.11286.
    """

    _hyperparameters = NovoGradHyperparameters
    _functional = novograd

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        grad_averaging: bool = False,
        amsgrad: bool = False,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "grad_averaging": grad_averaging,
            "amsgrad": amsgrad,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_hyperparameters(group, positive_eps=True)

    def _init_state(self, param: Tensor, grad: Tensor) -> dict[str, Tensor]:
        return {
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            # v_1 = ||g_1||^2: the kernel's blend of v with ||g_1||^2 then leaves it as is.
            "exp_avg_sq": torch.linalg.vector_norm(grad).square(),
        }

    def _state_keys(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        scalars = ("exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg_sq",)
        return ("exp_avg",), scalars


register_momentum_keys(NovoGrad, ["exp_avg"])
