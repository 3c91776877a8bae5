"""AdaBound and AMSBound: Adam whose per-element step size is clipped into bounds closing on SGD's."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .._tensors import group_by_device_and_dtype
from ..pullback import register_momentum_keys
from ._base import GroupwiseOptimizer
from ._flat import FlatState, flatten, unflatten
from ._functional import (
    FunctionalStep,
    StateLists,
    blocks,
    check_float,
    check_hyperparameters,
    check_lr,
    increment_steps_,
    new_step_counter,
    step_value,
    view_as_real_,
)

__all__ = ["AdaBound", "AdaBoundHyperparameters", "adabound"]

#: The group key of gamma0, the lr that ``final_lr`` is scaled by, prefixed as the library's own
#: group keys are (``lookahead_k``): hand-written schedules store their own ``base_lr``.
BASE_LR_KEY = "adabound_base_lr"


class AdaBoundHyperparameters(NamedTuple):
    """The hyper-parameters of one AdaBound step, named as in a parameter group."""

    lr: float | Tensor
    adabound_base_lr: float | Tensor
    betas: tuple[float, float]
    final_lr: float
    gamma: float
    eps: float
    weight_decay: float
    amsbound: bool
    decoupled_weight_decay: bool
    maximize: bool

    @property
    def scheduled_final_lr(self) -> Any:
        r"""$\eta^*_t$: ``final_lr`` scaled by the current over the base learning rate."""
        return self.final_lr * self.lr / self.adabound_base_lr

    @property
    def freezes_weights(self) -> bool:
        """Both bounds are 0: the clipped step size, hence the weight update, is 0. (Unknown for
        a Tensor lr, i.e. while compiling, where the update is computed and is 0.)"""
        if isinstance(self.lr, Tensor):
            return False
        return self.lr == 0 or self.scheduled_final_lr == 0

    def bounds(self, step: float | Tensor) -> tuple[Any, Any, Any]:
        """``(alpha_t, eta_l, eta_u)`` of the update rule at step ``step``."""
        beta1, beta2 = self.betas
        if isinstance(step, Tensor):  # compiling: keep the scalar math in float64, as in eager
            step = step.to(torch.float64)
        step_size = self.lr * (1.0 - beta2**step) ** 0.5 / (1.0 - beta1**step)
        final_lr = self.scheduled_final_lr
        lower_bound = final_lr * (1.0 - 1.0 / (self.gamma * step + 1.0))
        upper_bound = final_lr * (1.0 + 1.0 / (self.gamma * step))
        return step_size, lower_bound, upper_bound

    def denominator_bounds(self, step: float) -> tuple[float, float, float]:
        """``(alpha_t, alpha_t / eta_u, alpha_t / eta_l)``: the step size, and the bounds of
        the denominator for which ``clip(alpha_t / d, eta_l, eta_u) * m == alpha_t * m /
        clip(d, alpha_t / eta_u, alpha_t / eta_l)``, which saves a full pass over the tensor.
        Where ``eta_l`` is 0 (``gamma * t + 1`` rounds to 1 for a tiny ``gamma``), the
        denominator has no upper bound: ``alpha_t / eta_l`` is ``inf``, its limit."""
        step_size, lower_bound, upper_bound = self.bounds(step)
        highest = step_size / lower_bound if lower_bound > 0 else math.inf
        return step_size, step_size / upper_bound, highest


def _single_tensor_adabound(
    params: list[Tensor], grads: list[Tensor], state: StateLists, hyper: AdaBoundHyperparameters
) -> None:
    for index, param in enumerate(params):
        step_t = state["step"][index]
        step_t += 1
        moments = [state[key][index] for key in _moment_keys(hyper.amsbound)]
        grad = _decayed_gradient(grads[index], param, hyper)
        if hyper.decoupled_weight_decay and hyper.weight_decay != 0:
            param.mul_(1.0 - hyper.lr * hyper.weight_decay)
        if torch.is_complex(param):
            param, grad, *moments = (torch.view_as_real(t) for t in (param, grad, *moments))
        second_moment = _update_moments_(grad, *moments, hyper=hyper)
        if hyper.freezes_weights:
            continue

        denom = second_moment.sqrt().add_(hyper.eps)
        step = step_value(step_t)
        if isinstance(step, Tensor):  # compiling: the clip as written, safe for a Tensor lr of 0
            step_size, lower_bound, upper_bound = hyper.bounds(step)
            param.sub_((step_size / denom).clamp_(lower_bound, upper_bound).mul_(moments[0]))
        else:
            step_size, denom_low, denom_high = hyper.denominator_bounds(step)
            param.addcdiv_(moments[0], denom.clamp_(denom_low, denom_high), value=-step_size)


def _moment_keys(amsbound: bool) -> tuple[str, ...]:
    """The state entries of the parameter's shape."""
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsbound else ("exp_avg", "exp_avg_sq")


def _decayed_gradient(grad: Tensor, param: Tensor, hyper: AdaBoundHyperparameters) -> Tensor:
    """The gradient (negated with ``maximize``) plus the L2 weight decay term; never ``grad``
    itself when it has to change."""
    if hyper.maximize:
        grad = -grad
    if hyper.weight_decay != 0 and not hyper.decoupled_weight_decay:
        grad = grad.add(param, alpha=hyper.weight_decay)
    return grad


def _update_moments_(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None = None,
    *,
    hyper: AdaBoundHyperparameters,
) -> Tensor:
    """Update the moments in place; return the second moment to normalise by."""
    beta1, beta2 = hyper.betas
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    if max_exp_avg_sq is None:
        return exp_avg_sq
    return torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)


def _multi_tensor_adabound(
    params: list[Tensor], grads: list[Tensor], state: StateLists, hyper: AdaBoundHyperparameters
) -> None:
    beta1, beta2 = hyper.betas
    lists = [params, grads, state["step"], *(state[key] for key in _moment_keys(hyper.amsbound))]
    for bucket in group_by_device_and_dtype(lists):
        view_as_real_(bucket[0], bucket[1], *bucket[3:])
        for block in blocks(bucket[0]):
            block_params, block_grads, block_steps, block_exp_avgs, block_exp_avg_sqs, *maxima = (
                tensors[block] for tensors in bucket
            )
            increment_steps_(block_steps)
            if hyper.maximize:
                block_grads = list(torch._foreach_neg(block_grads))
            if hyper.weight_decay != 0:
                if hyper.decoupled_weight_decay:
                    torch._foreach_mul_(block_params, 1.0 - hyper.lr * hyper.weight_decay)
                elif hyper.maximize:  # block_grads is already a fresh copy
                    torch._foreach_add_(block_grads, block_params, alpha=hyper.weight_decay)
                else:
                    block_grads = list(
                        torch._foreach_add(block_grads, block_params, alpha=hyper.weight_decay)
                    )

            torch._foreach_lerp_(block_exp_avgs, block_grads, 1.0 - beta1)
            torch._foreach_mul_(block_exp_avg_sqs, beta2)
            torch._foreach_addcmul_(block_exp_avg_sqs, block_grads, block_grads, 1.0 - beta2)
            second_moments = block_exp_avg_sqs
            if maxima:
                second_moments = maxima[0]
                torch._foreach_maximum_(second_moments, block_exp_avg_sqs)
            if hyper.freezes_weights:
                continue

            denoms = torch._foreach_sqrt(second_moments)
            torch._foreach_add_(denoms, hyper.eps)
            steps = torch.stack(block_steps).tolist()
            if steps.count(steps[0]) == len(steps):  # the usual case: one set of scalars
                step_size, denom_low, denom_high = hyper.denominator_bounds(steps[0])
                torch._foreach_clamp_min_(denoms, denom_low)
                torch._foreach_clamp_max_(denoms, denom_high)
                torch._foreach_addcdiv_(block_params, block_exp_avgs, denoms, -step_size)
            else:
                scalars = [hyper.denominator_bounds(step) for step in steps]
                torch._foreach_clamp_min_(denoms, [low for _, low, _ in scalars])
                torch._foreach_clamp_max_(denoms, [high for _, _, high in scalars])
                step_sizes = [-size for size, _, _ in scalars]
                torch._foreach_addcdiv_(block_params, block_exp_avgs, denoms, step_sizes)


def _flat_adabound(
    params: list[Tensor], grads: list[Tensor], flat: FlatState, hyper: AdaBoundHyperparameters
) -> None:
    """The multi-tensor step when the state lives in ``flat``'s buffers; the list kernels run
    instead when the parameters are not all at the same step."""
    steps = flat.buffers["step"]
    if not bool((steps == steps[0]).all()):
        _multi_tensor_adabound(params, grads, flat.views, hyper)
        return
    steps += 1
    step = steps[0].item()
    offset = 0
    for block in blocks(params):
        block_params = params[block]
        size = sum(flat.numels[block])
        region = slice(offset, offset + size)
        offset += size
        grad = _decayed_gradient(flatten(grads[block]), flatten(block_params), hyper)
        if hyper.decoupled_weight_decay and hyper.weight_decay != 0:
            torch._foreach_mul_(block_params, 1.0 - hyper.lr * hyper.weight_decay)
        moments = [flat.buffers[key][region] for key in _moment_keys(hyper.amsbound)]
        second_moment = _update_moments_(grad, *moments, hyper=hyper)
        if hyper.freezes_weights:
            continue
        step_size, denom_low, denom_high = hyper.denominator_bounds(step)
        denom = second_moment.sqrt().add_(hyper.eps).clamp_(denom_low, denom_high)
        denoms = unflatten(denom, block_params)
        torch._foreach_addcdiv_(block_params, flat.views["exp_avg"][block], denoms, -step_size)


adabound = FunctionalStep(_single_tensor_adabound, _multi_tensor_adabound, _flat_adabound)
"""Functional AdaBound (see `FunctionalStep` for the arguments and [AdaBound][torch_lookahead.AdaBound] for
the update rule). ``state`` holds ``"exp_avg"``, ``"exp_avg_sq"`` (and ``"max_exp_avg_sq"``
with ``amsbound``) and the 0-dim step counts ``"step"``, which are incremented here."""


class AdaBound(GroupwiseOptimizer):
    r"""Implements AdaBound and AMSBound (Luo et al., 2019), with the official code's update.

    .. math::
       \begin{aligned}
            &\rule{110mm}{0.4pt}                                                          \\
            &\textbf{input}: \gamma_t \text{ (lr, as scheduled)}, \gamma_0
                \text{ (adabound\_base\_lr)}, \beta_1, \beta_2 \text{ (betas)},
                \eta^* \text{ (final\_lr)}, \kappa \text{ (gamma)},                       \\
            &\hspace{13mm} \theta_0 \text{ (params)}, f(\theta) \text{ (objective)},
                \epsilon \text{ (eps)}, \lambda \text{ (weight decay)}, \:
                \textit{amsbound}, \: \textit{decoupled\_weight\_decay}, \:
                \textit{maximize}                                                         \\
            &\textbf{initialize}: m_0 \leftarrow 0, \: v_0 \leftarrow 0,
                \: v^{max}_0 \leftarrow 0                                                 \\[-1.ex]
            &\rule{110mm}{0.4pt}                                                          \\
            &\textbf{for} \: t=1 \: \textbf{to} \: \ldots \: \textbf{do}                  \\
            &\hspace{5mm}g_t \leftarrow \pm \nabla_{\theta} f_t(\theta_{t-1})
                \quad (- \textbf{ if } \textit{maximize})                                 \\
            &\hspace{5mm}\textbf{if} \: \textit{decoupled\_weight\_decay}: \:
                \theta_{t-1} \leftarrow (1 - \gamma_t \lambda) \theta_{t-1}
                \qquad \textbf{else}: \: g_t \leftarrow g_t + \lambda \theta_{t-1}        \\
            &\hspace{5mm}m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t               \\
            &\hspace{5mm}v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2             \\
            &\hspace{5mm}\textbf{if} \: \textit{amsbound}: \:
                v^{max}_t \leftarrow \max(v^{max}_{t-1}, v_t), \: \hat v_t \leftarrow v^{max}_t
                \qquad \textbf{else}: \: \hat v_t \leftarrow v_t                          \\
            &\hspace{5mm}\alpha_t \leftarrow \gamma_t \sqrt{1 - \beta_2^t} / (1 - \beta_1^t)
                , \qquad \eta^*_t \leftarrow \eta^* \gamma_t / \gamma_0                    \\
            &\hspace{5mm}\eta^l_t \leftarrow \eta^*_t \big(1 - 1 / (\kappa t + 1)\big), \qquad
                \eta^u_t \leftarrow \eta^*_t \big(1 + 1 / (\kappa t)\big)                  \\
            &\hspace{5mm}\theta_t \leftarrow \theta_{t-1} - \mathrm{clip}\big(
                \alpha_t / (\sqrt{\hat v_t} + \epsilon), \eta^l_t, \eta^u_t\big) \, m_t   \\
            &\rule{110mm}{0.4pt}                                                          \\[-1.ex]
            &\bf{return} \: \theta_t                                                      \\[-1.ex]
            &\rule{110mm}{0.4pt}                                                          \\[-1.ex]
       \end{aligned}

    This is the official implementation's rule (Luolc/AdaBound), not the paper's Algorithm 2:
    Adam's bias-corrected step size $\alpha_t$ is clipped before multiplying the raw first
    moment $m_t$, and there is no $1/\sqrt{t}$ factor. The bounds start wide
    ($\eta^u_1 \approx \eta^* / \kappa$) and close on $\eta^*$ as
    $t \to \infty$, turning Adam into SGD with learning rate ``final_lr``.

    ``final_lr`` follows learning-rate schedulers: it is scaled by $\gamma_t / \gamma_0$,
    the current learning rate over the group's ``adabound_base_lr``, the learning rate the
    group was created with (the official code's ``base_lrs``). It is a key of AdaBound's own,
    which no LR scheduler writes (``OneCycleLR`` rewrites ``initial_lr``) and prefixed so that
    a schedule's own ``base_lr`` leaves it, kept per group: groups added with
    `add_param_group` and optimizers restored with `load_state_dict` are scaled correctly,
    where the official code skips the former. A checkpoint without it (the official code's,
    torch-optimizer's) keeps this optimizer's ``adabound_base_lr``, as the official code resumed with
    the same arguments does. ``p.grad`` is never modified.

    Args:
        params (iterable): iterable of parameters or named parameters to optimize, or of dicts
            defining parameter groups.
        lr (float, Tensor, optional): Adam learning rate $\gamma$; must be positive,
            since it is the reference that scales ``final_lr``; a float or a 1-element Tensor
            (see docs/optimizers.md) (default: 1e-3).
        betas (tuple[float, float], optional): coefficients of the running averages of the
            gradient and its square (default: (0.9, 0.999)).
        final_lr (float, optional): $\eta^*$, the SGD learning rate that the bounds close
            on (default: 0.1).
        gamma (float, optional): $\kappa \in (0, 1)$, the speed at which the bounds close
            (default: 1e-3).
        eps (float, optional): added to $\sqrt{\hat v_t}$ (default: 1e-8).
        weight_decay (float, optional): $\lambda$ (default: 0).
        amsbound (bool, optional): use the running maximum of $v_t$ (AMSBound)
            (default: False).
        decoupled_weight_decay (bool, optional): decay the weights AdamW-style,
            $\theta \leftarrow (1 - \gamma_t \lambda)\theta$, instead of adding
            $\lambda\theta$ to the gradient (default: False).
        maximize (bool, optional): maximize the objective instead of minimizing it
            (default: False).
        foreach (bool, optional): use the multi-tensor implementation (cache-blocked on CPU).
            ``None`` picks it whenever all parameters are plain tensors on CPU or a device with
            foreach kernels (default: None).

    Example:
        >>> opt = AdaBound(model.parameters(), lr=1e-3, final_lr=0.1)  # doctest: +SKIP
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30)  # doctest: +SKIP

    Reference: Luo et al., "Adaptive Gradient Methods with Dynamic Bound of Learning Rate",
    ICLR 2019, arXiv:1902.09843.
    """

    _hyperparameters = AdaBoundHyperparameters
    _functional = adabound

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        amsbound: bool = False,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,  # and each group's own adabound_base_lr: see _derived_entries
            "betas": betas,
            "final_lr": final_lr,
            "gamma": gamma,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsbound": amsbound,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def _derived_entries(self, group: dict[str, Any]) -> dict[str, Any]:
        """A new group's ``adabound_base_lr`` is its ``lr`` unless given explicitly."""
        return {BASE_LR_KEY: _copy(group["lr"])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; a group saved without ``adabound_base_lr`` (by the official code
        or torch-optimizer, whose ``base_lrs`` are not saved) keeps the one it has here. A state
        with moments but no ``step`` of its own (another AdaBound, pytorch_optimizer's, counts
        steps per group) raises ValueError and changes nothing."""
        for index, param_state in state_dict["state"].items():
            if "step" not in param_state and "exp_avg" in param_state:
                raise ValueError(
                    f"state_dict['state'][{index!r}] has moments but no per-parameter 'step': "
                    "it was written by another AdaBound implementation (pytorch_optimizer's "
                    "counts steps per group), whose state this AdaBound cannot continue"
                )
        saved = state_dict["param_groups"]
        kept = [
            {BASE_LR_KEY: live[BASE_LR_KEY], **group}
            for live, group in zip(self.param_groups, saved, strict=False)
        ]
        super().load_state_dict({**state_dict, "param_groups": kept + saved[len(kept) :]})

    def _missing_group_entries(self, group: dict[str, Any]) -> dict[str, Any]:
        """Flags take their defaults; ``adabound_base_lr`` (when unpickling a group of an
        earlier version, which had none) is its ``initial_lr``, else its ``lr``."""
        base_lr = _copy(group.get("initial_lr", group["lr"]))
        return {**super()._missing_group_entries(group), BASE_LR_KEY: base_lr}

    def _check_group(self, group: dict[str, Any]) -> None:
        check_hyperparameters(group)
        meaning = "the lr the group starts with, which final_lr is scaled by"
        check_lr(group, BASE_LR_KEY, positive=True, meaning=meaning)
        check_float("final_lr", group["final_lr"], low=0.0)
        check_float("gamma", group["gamma"], low=0.0, high=1.0, low_inclusive=False)

    def _init_state(self, param: Tensor, grad: Tensor) -> dict[str, Tensor]:
        return {
            "step": new_step_counter(),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def _state_keys(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return _moment_keys(group["amsbound"]), ("step",)


def _copy(lr: float | Tensor) -> float | Tensor:
    """``lr`` itself, or a copy of a Tensor ``lr``, which a scheduler fills in place."""
    return lr.clone() if isinstance(lr, Tensor) else lr


register_momentum_keys(AdaBound, ["exp_avg"])
