"""The lab's inner optimizers: the project's registry, with the lab's own defaults per name.

Every optimizer is built by `torch_lookahead.create_optimizer`; the lab accepts its
names less the ``lookahead_`` variants, because the lab wraps in Lookahead itself when a run asks
for ``k`` and ``alpha``. ``LAB_DEFAULTS`` is what the lab's names mean beyond the registry's: the
lab's "sgd" has heavy-ball momentum 0.9 and its "adamw" weight decay 0.01.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from torch_lookahead.optim import create_optimizer, list_optimizers
from torch_lookahead.optim.registry import LOOKAHEAD_PREFIX

__all__ = [
    "LAB_DEFAULTS",
    "available_inner_optimizers",
    "build_optimizer",
    "inner_settings",
    "validate_inner_optimizer",
]

# Keyword arguments the lab passes before a task's overrides; the committed reports rest on them.
LAB_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "sgd": MappingProxyType({"momentum": 0.9}),
        "adamw": MappingProxyType({"weight_decay": 0.01}),
    }
)


def available_inner_optimizers() -> list[str]:
    """Names ``build_optimizer`` accepts: the registry's, less its ``lookahead_`` variants."""
    return [name for name in list_optimizers() if not name.startswith(LOOKAHEAD_PREFIX)]


def validate_inner_optimizer(name: str, *, lookahead: bool = False) -> str:
    """Return ``name`` if the lab can build it (wrapped in Lookahead when ``lookahead``); raise a
    ValueError listing the accepted names otherwise."""
    accepted = available_inner_optimizers()
    if name not in accepted:
        raise ValueError(
            f"unknown inner optimizer {name!r}; accepted values: {', '.join(accepted)}"
        )
    if lookahead and LOOKAHEAD_PREFIX + name not in list_optimizers():
        wrappable = [n for n in accepted if LOOKAHEAD_PREFIX + n in list_optimizers()]
        raise ValueError(
            f"inner optimizer {name!r} cannot be wrapped in Lookahead (it already is one); "
            f"accepted values with k and alpha: {', '.join(wrappable)}"
        )
    return name


def inner_settings(inner: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments the lab gives ``inner`` beyond the learning rate and the registry's
    defaults: ``LAB_DEFAULTS[inner]``, then ``overrides`` (a task's), later ones winning."""
    return {**LAB_DEFAULTS.get(inner, {}), **(overrides or {})}


def build_optimizer(
    params: Iterable[Tensor],
    inner: str,
    lr: float,
    *,
    k: int | None = None,
    alpha: float | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Optimizer:
    """Build the inner optimizer ``inner`` with learning rate ``lr``, wrapped in Lookahead when
    ``k`` and ``alpha`` are given (``k=None`` means the plain inner optimizer).

    Keyword arguments, later ones winning: the registry's defaults for ``inner``, then
    ``LAB_DEFAULTS[inner]``, then ``overrides`` (a task's weight decay, for example).
    """
    if (k is None) != (alpha is None):
        raise ValueError(
            f"k and alpha must both be given or both be None, got k={k}, alpha={alpha}"
        )
    wrap = k is not None
    validate_inner_optimizer(inner, lookahead=wrap)
    kwargs = inner_settings(inner, overrides)
    if wrap:
        lookahead = {"k": k, "alpha": alpha}
        name = LOOKAHEAD_PREFIX + inner
        return create_optimizer(name, params, lookahead=lookahead, lr=lr, **kwargs)
    return create_optimizer(inner, params, lr=lr, **kwargs)
