"""AdaBound and AMSBound: Adam whose per-element step size is clipped into bounds closing on SGD's."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ..pullback import register_momentum_keys
from ._base import GroupwiseOptimizer
from ._flat import FlatState, flatten, unflatten
from ._functional import (
    cache_blocks,
    check_betas,
    check_float,
    check_foreach,
    default_to_foreach,
    group_by_device_and_dtype,
    increment_steps_,
    new_step_counter,
    step_value,
    view_as_real_,
)

__all__ = ["AdaBound", "adabound"]


class AdaBound(GroupwiseOptimizer):
    r"""Implements AdaBound and AMSBound (Luo et al., 2019), with the official code's update.

    .. math::
       \begin{aligned}
            &\rule{110mm}{0.4pt}                                                          \\
            &\textbf{input}: \gamma_t \text{ (lr, as scheduled)}, \gamma_0
                \text{ (initial\_lr)}, \beta_1, \beta_2 \text{ (betas)},
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
    Adam's bias-corrected step size :math:`\alpha_t` is clipped before multiplying the raw first
    moment :math:`m_t`, and there is no :math:`1/\sqrt{t}` factor. The bounds start wide
    (:math:`\eta^u_1 \approx \eta^* / \kappa`) and close on :math:`\eta^*` as
    :math:`t \to \infty`, turning Adam into SGD with learning rate ``final_lr``.

    ``final_lr`` follows learning-rate schedulers: it is scaled by :math:`\gamma_t / \gamma_0`,
    the current learning rate over the group's ``initial_lr``. Every group keeps its own
    ``initial_lr`` (the learning rate it was added with, the same key torch's LR schedulers use),
    so groups added with :meth:`add_param_group` and optimizers restored with
    :meth:`load_state_dict` are scaled correctly; the official code silently skips the
    former and forgets the latter. ``p.grad`` is never modified.

    Args:
        params (iterable): iterable of parameters or named parameters to optimize, or of dicts
            defining parameter groups.
        lr (float, optional): Adam learning rate :math:`\gamma`; must be positive, since it is
            the reference that scales ``final_lr`` (default: 1e-3).
        betas (tuple[float, float], optional): coefficients of the running averages of the
            gradient and its square (default: (0.9, 0.999)).
        final_lr (float, optional): :math:`\eta^*`, the SGD learning rate that the bounds close
            on (default: 0.1).
        gamma (float, optional): :math:`\kappa \in (0, 1)`, the speed at which the bounds close
            (default: 1e-3).
        eps (float, optional): added to :math:`\sqrt{\hat v_t}` (default: 1e-8).
        weight_decay (float, optional): :math:`\lambda` (default: 0).
        amsbound (bool, optional): use the running maximum of :math:`v_t` (AMSBound)
            (default: False).
        decoupled_weight_decay (bool, optional): decay the weights AdamW-style,
            :math:`\theta \leftarrow (1 - \gamma_t \lambda)\theta`, instead of adding
            :math:`\lambda\theta` to the gradient (default: False).
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

    _flag_defaults: ClassVar[dict[str, Any]] = {
        "amsbound": False,
        "decoupled_weight_decay": False,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
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
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "final_lr": final_lr,
            "gamma": gamma,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsbound": amsbound,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": False,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; its ``initial_lr`` is its ``lr`` unless given explicitly."""
        param_group.setdefault("initial_lr", param_group.get("lr", self.defaults["lr"]))
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def _check_group(self, group: dict[str, Any]) -> None:
        check_float("lr", group["lr"], low=0.0)
        check_float(
            "initial_lr (the lr the group starts with, which final_lr is scaled by)",
            group["initial_lr"],
            low=0.0,
            low_inclusive=False,
        )
        check_betas(group["betas"])
        check_float("final_lr", group["final_lr"], low=0.0)
        check_float("gamma", group["gamma"], low=0.0, high=1.0, low_inclusive=False)
        check_float("eps", group["eps"], low=0.0)
        check_float("weight_decay", group["weight_decay"], low=0.0)
        check_foreach(group["foreach"])

    def _init_state(self, group: dict[str, Any], param: Tensor, grad: Tensor) -> dict[str, Tensor]:
        return {
            "step": new_step_counter(),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        amsbound = group["amsbound"]
        params, grads, states = self._params_with_grad(
            group, "max_exp_avg_sq" if amsbound else None
        )
        tensor_keys = (
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsbound else ("exp_avg", "exp_avg_sq")
        )
        flat = self._flat_state_for(group, params, states, tensor_keys, ("step",))
        beta1, beta2 = group["betas"]
        adabound(
            params,
            grads,
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            [state["max_exp_avg_sq"] for state in states] if amsbound else [],
            [state["step"] for state in states],
            foreach=group["foreach"],
            lr=group["lr"],
            initial_lr=group["initial_lr"],
            beta1=beta1,
            beta2=beta2,
            final_lr=group["final_lr"],
            gamma=group["gamma"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            amsbound=amsbound,
            decoupled_weight_decay=group["decoupled_weight_decay"],
            maximize=group["maximize"],
            flat_state=flat,
        )


register_momentum_keys(AdaBound, ["exp_avg"])


class _Hyperparameters(NamedTuple):
    """The scalars of one AdaBound step (see :class:`AdaBound`); ``final_lr`` already scaled."""

    lr: float
    beta1: float
    beta2: float
    scheduled_final_lr: float
    gamma: float
    eps: float
    weight_decay: float
    amsbound: bool
    decoupled_weight_decay: bool
    maximize: bool

    @property
    def freezes_weights(self) -> bool:
        """Both bounds are 0: the clipped step size, hence the weight update, is 0."""
        return self.lr == 0 or self.scheduled_final_lr == 0

    def bounded_step(self, step: float | Tensor) -> tuple[Any, Any, Any]:
        """``(alpha_t, alpha_t / eta_u, alpha_t / eta_l)``: step size and denominator bounds.

        ``clip(alpha_t / d, eta_l, eta_u) * m == alpha_t * m / clip(d, alpha_t / eta_u,
        alpha_t / eta_l)``, which saves a full pass over the tensor.
        """
        if isinstance(step, Tensor):  # compiling: keep the scalar math in float64, as in eager
            step = step.to(torch.float64)
        step_size = self.lr * (1.0 - self.beta2**step) ** 0.5 / (1.0 - self.beta1**step)
        lower_bound = self.scheduled_final_lr * (1.0 - 1.0 / (self.gamma * step + 1.0))
        upper_bound = self.scheduled_final_lr * (1.0 + 1.0 / (self.gamma * step))
        return step_size, step_size / upper_bound, step_size / lower_bound


def adabound(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    foreach: bool | None = None,
    *,
    lr: float,
    initial_lr: float,
    beta1: float,
    beta2: float,
    final_lr: float,
    gamma: float,
    eps: float,
    weight_decay: float,
    amsbound: bool,
    decoupled_weight_decay: bool,
    maximize: bool,
    flat_state: FlatState | None = None,
) -> None:
    r"""Functional AdaBound: one step over parallel lists, updating everything in place.

    ``final_lr`` is the group's value; it is scaled by ``lr / initial_lr`` here.
    ``state_steps`` are 0-dim step counts, incremented here. ``flat_state``, when the state
    tensors are views of its buffers (see :mod:`torch_lookahead.optim._flat`), lets the
    multi-tensor path run the element-wise math over whole buffers. See :class:`AdaBound` for
    the update rule.
    """
    hyper = _Hyperparameters(
        lr,
        beta1,
        beta2,
        final_lr * lr / initial_lr,
        gamma,
        eps,
        weight_decay,
        amsbound,
        decoupled_weight_decay,
        maximize,
    )
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
    if foreach is None:
        foreach = default_to_foreach(params, differentiable=False)
    # The compiler fuses the loop itself; the for-loop form traces without data-dependent code.
    if foreach and not torch.compiler.is_compiling():
        if flat_state is not None and _steps_agree(flat_state.buffers["step"]):
            _flat_adabound(params, grads, flat_state, hyper)
        else:
            _multi_tensor_adabound(*lists, hyper)
    else:
        _single_tensor_adabound(*lists, hyper)


def _single_tensor_adabound(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    hyper: _Hyperparameters,
) -> None:
    for index, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[index], exp_avgs[index], exp_avg_sqs[index]
        step_t = state_steps[index]
        step_t += 1
        if hyper.maximize:
            grad = -grad
        if hyper.weight_decay != 0:
            if hyper.decoupled_weight_decay:
                param.mul_(1.0 - hyper.lr * hyper.weight_decay)
            else:
                grad = grad.add(param, alpha=hyper.weight_decay)
        if torch.is_complex(param):
            param, grad, exp_avg, exp_avg_sq = (
                torch.view_as_real(t) for t in (param, grad, exp_avg, exp_avg_sq)
            )

        exp_avg.lerp_(grad, 1.0 - hyper.beta1)
        exp_avg_sq.mul_(hyper.beta2).addcmul_(grad, grad, value=1.0 - hyper.beta2)
        second_moment = exp_avg_sq
        if hyper.amsbound:
            max_exp_avg_sq = max_exp_avg_sqs[index]
            if torch.is_complex(max_exp_avg_sq):
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second_moment = max_exp_avg_sq
        if hyper.freezes_weights:
            continue

        step_size, denom_low, denom_high = hyper.bounded_step(step_value(step_t))
        denom = second_moment.sqrt().add_(hyper.eps).clamp_(denom_low, denom_high)
        if isinstance(step_size, Tensor):
            param.sub_(exp_avg * step_size / denom)
        else:
            param.addcdiv_(exp_avg, denom, value=-step_size)


def _multi_tensor_adabound(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    hyper: _Hyperparameters,
) -> None:
    if not params:
        return
    lists = [params, grads, exp_avgs, exp_avg_sqs, state_steps]
    if hyper.amsbound:
        lists.append(max_exp_avg_sqs)
    for bucket in group_by_device_and_dtype(lists):
        view_as_real_(*bucket[:4], *bucket[5:])
        for block in cache_blocks(bucket[0]):
            device_params, device_grads, device_exp_avgs, device_exp_avg_sqs, device_steps = (
                tensors[block] for tensors in bucket[:5]
            )
            increment_steps_(device_steps)
            if hyper.maximize:
                device_grads = list(torch._foreach_neg(device_grads))
            if hyper.weight_decay != 0:
                if hyper.decoupled_weight_decay:
                    torch._foreach_mul_(device_params, 1.0 - hyper.lr * hyper.weight_decay)
                elif hyper.maximize:  # device_grads is already a fresh copy
                    torch._foreach_add_(device_grads, device_params, alpha=hyper.weight_decay)
                else:
                    device_grads = list(
                        torch._foreach_add(device_grads, device_params, alpha=hyper.weight_decay)
                    )

            torch._foreach_lerp_(device_exp_avgs, device_grads, 1.0 - hyper.beta1)
            torch._foreach_mul_(device_exp_avg_sqs, hyper.beta2)
            torch._foreach_addcmul_(
                device_exp_avg_sqs, device_grads, device_grads, 1.0 - hyper.beta2
            )
            second_moments = device_exp_avg_sqs
            if hyper.amsbound:
                second_moments = bucket[5][block]
                torch._foreach_maximum_(second_moments, device_exp_avg_sqs)
            if hyper.freezes_weights:
                continue

            denoms = torch._foreach_sqrt(second_moments)
            torch._foreach_add_(denoms, hyper.eps)
            steps = torch.stack(device_steps).tolist()
            if steps.count(steps[0]) == len(steps):  # the usual case: one set of scalars
                step_size, denom_low, denom_high = hyper.bounded_step(steps[0])
                torch._foreach_clamp_min_(denoms, denom_low)
                torch._foreach_clamp_max_(denoms, denom_high)
                torch._foreach_addcdiv_(device_params, device_exp_avgs, denoms, -step_size)
            else:
                scalars = [hyper.bounded_step(step) for step in steps]
                torch._foreach_clamp_min_(denoms, [low for _, low, _ in scalars])
                torch._foreach_clamp_max_(denoms, [high for _, _, high in scalars])
                step_sizes = [-size for size, _, _ in scalars]
                torch._foreach_addcdiv_(device_params, device_exp_avgs, denoms, step_sizes)


def _steps_agree(steps: Tensor) -> bool:
    return bool((steps == steps[0]).all())


def _flat_adabound(
    params: list[Tensor], grads: list[Tensor], flat: FlatState, hyper: _Hyperparameters
) -> None:
    """The multi-tensor step when the state lives in ``flat``'s buffers, all at the same step."""
    steps = flat.buffers["step"]
    steps += 1
    step_size, denom_low, denom_high = hyper.bounded_step(steps[0].item())
    exp_avg_views = flat.views["exp_avg"]
    offset = 0
    for block in cache_blocks(params):
        device_params, device_grads = params[block], grads[block]
        size = sum(flat.numels[block])
        region = slice(offset, offset + size)
        offset += size
        exp_avg, exp_avg_sq = flat.buffers["exp_avg"][region], flat.buffers["exp_avg_sq"][region]
        grad = flatten(device_grads)
        if hyper.maximize:
            grad = -grad
        if hyper.weight_decay != 0:
            if hyper.decoupled_weight_decay:
                torch._foreach_mul_(device_params, 1.0 - hyper.lr * hyper.weight_decay)
            else:
                grad = grad.add(flatten(device_params), alpha=hyper.weight_decay)

        exp_avg.lerp_(grad, 1.0 - hyper.beta1)
        exp_avg_sq.mul_(hyper.beta2).addcmul_(grad, grad, value=1.0 - hyper.beta2)
        second_moment = exp_avg_sq
        if hyper.amsbound:
            second_moment = flat.buffers["max_exp_avg_sq"][region]
            torch.maximum(second_moment, exp_avg_sq, out=second_moment)
        if hyper.freezes_weights:
            continue
        denom = second_moment.sqrt().add_(hyper.eps).clamp_(denom_low, denom_high)
        denoms = unflatten(denom, device_params)
        torch._foreach_addcdiv_(device_params, exp_avg_views[block], denoms, -step_size)
