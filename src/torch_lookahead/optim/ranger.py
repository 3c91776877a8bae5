"""Ranger: Lookahead over RAdam, as one optimizer class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.optim import RAdam
from torch.optim.optimizer import ParamsT

from ..lookahead import Lookahead
from ._base import ValidatedGroups
from ._functional import check_hyperparameters, python_number

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..lookahead import LookaheadOptions

__all__ = ["Ranger"]


class Ranger(Lookahead):
    r"""Ranger: [Lookahead][torch_lookahead.Lookahead] wrapped around ``torch.optim.RAdam``.

    ``Ranger(params, ...)`` is exactly
    ``Lookahead(RAdam(params, lr, betas, eps, weight_decay, ...), k, alpha, ...)``: RAdam's
    rectified Adam steps as the fast weights, and after every ``k`` of them

    .. math::
        \phi \leftarrow \phi + \alpha (\theta - \phi), \qquad \theta \leftarrow \phi .

    Being a class that takes ``params`` first, it fits every API that builds an optimizer as
    ``optimizer_class(params, **kwargs)``, and it is both a ``torch.optim.Optimizer`` and a
    [Lookahead][torch_lookahead.Lookahead]: ``state_dict()`` is RAdam's, with the slow weights in
    the per-parameter state.

    The defaults follow the original Ranger (Wright, 2019): ``betas=(0.95, 0.999)``,
    ``eps=1e-5``, ``k=6``, ``alpha=0.5``. The RAdam steps are torch's (rectified when
    $\rho_t > 5$, an SGD-with-momentum step before); there is no gradient centralisation.
    ``lr``, ``betas``, ``eps``, ``weight_decay`` and ``foreach``, the arguments' and those of
    every group (given in ``params`` or added with `add_param_group`), are validated as
    NovoGrad's and AdaBound's are (errors naming the argument; non-finite values, ``betas``
    not a pair and wrong types refused), numpy numbers becoming Python numbers, before RAdam
    takes them. What RAdam accepts passes: 1-element Tensors are checked by their value and
    then left to RAdam's own rules.

    Args:
        params (iterable): parameters or parameter groups, as for any optimizer.
        lr (float, optional): RAdam learning rate (default: 1e-3).
        betas (tuple[float, float], optional): RAdam betas (default: (0.95, 0.999)).
        eps (float, optional): RAdam eps (default: 1e-5).
        weight_decay (float, optional): RAdam weight decay (default: 0).
        k (int, optional): inner steps between syncs (default: 6).
        alpha (float, optional): slow-weights step size (default: 0.5).
        decoupled_weight_decay (bool, optional): RAdamW-style decay (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach (bool, optional): multi-tensor kernels for RAdam (default: None).
        capturable (bool, optional): RAdam's (default: False).
        differentiable (bool, optional): RAdam's (default: False).
        **options: every other keyword option of [Lookahead][torch_lookahead.Lookahead]
            (``pullback_momentum`` acts on RAdam's ``exp_avg``).

    Example:
        >>> opt = Ranger(model.parameters(), lr=1e-3)  # doctest: +SKIP
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        k: int = 6,
        alpha: float = 0.5,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        **options: Unpack[LookaheadOptions],
    ) -> None:
        given = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        hyper: dict[str, Any] = {
            key: python_number(value) for key, value in {**given, "foreach": foreach}.items()
        }
        check_hyperparameters(hyper, tensors=True)  # before RAdam, whose checks name no argument
        inner = _CheckedRAdam(
            params,
            **hyper,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
        )
        super().__init__(inner, k=k, alpha=alpha, **options)


class _CheckedRAdam(ValidatedGroups, RAdam):
    """``torch.optim.RAdam`` whose groups, also those given as dicts or added later, are
    validated and hold Python numbers for numpy ones (see `ValidatedGroups`)."""

    def _check_group(self, group: dict[str, Any]) -> None:
        check_hyperparameters(group, tensors=True)  # RAdam takes 1-element Tensors
