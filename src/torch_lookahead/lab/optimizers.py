"""One table of the inner optimizers the lab can run, and the function that builds them.

Each entry names a ``torch.optim`` class and the defaults the lab uses for it; a task supplies the
learning rate. ``register_inner_optimizer`` adds an entry. Names that are not in the table are
looked up in ``torch_lookahead.optim.create_optimizer`` when that registry is installed, so the
project's own optimizers (NovoGrad, AdaBound, ...) become available without a second table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "INNER_OPTIMIZERS",
    "InnerOptimizer",
    "available_inner_optimizers",
    "build_optimizer",
    "register_inner_optimizer",
    "validate_inner_optimizer",
]


@dataclass(frozen=True)
class InnerOptimizer:
    """A named inner optimizer: its class (or factory) and the keyword defaults the lab passes."""

    name: str
    factory: Callable[..., Optimizer]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


INNER_OPTIMIZERS: dict[str, InnerOptimizer] = {
    "sgd": InnerOptimizer(
        "sgd", torch.optim.SGD, MappingProxyType({"momentum": 0.9}), "SGD, heavy-ball momentum 0.9"
    ),
    "adam": InnerOptimizer("adam", torch.optim.Adam, MappingProxyType({}), "Adam"),
    "adamw": InnerOptimizer(
        "adamw", torch.optim.AdamW, MappingProxyType({"weight_decay": 0.01}), "AdamW, decay 0.01"
    ),
    "radam": InnerOptimizer("radam", torch.optim.RAdam, MappingProxyType({}), "RAdam"),
}


def register_inner_optimizer(entry: InnerOptimizer) -> None:
    """Add (or replace) an entry of the lab's optimizer table."""
    INNER_OPTIMIZERS[entry.name] = entry


def _project_registry() -> Callable[..., Optimizer] | None:
    """``torch_lookahead.optim.create_optimizer`` when it is installed, else None."""
    try:
        module = importlib.import_module("torch_lookahead.optim")
    except ImportError:
        return None
    factory = getattr(module, "create_optimizer", None)
    return factory if callable(factory) else None


def _project_registry_names() -> list[str]:
    """The registry's names, less its ``lookahead_`` variants (the lab does the wrapping)."""
    try:
        module = importlib.import_module("torch_lookahead.optim")
    except ImportError:
        return []
    list_optimizers = getattr(module, "list_optimizers", None)
    if not callable(list_optimizers):
        return []
    return sorted(str(n) for n in list_optimizers() if not str(n).startswith("lookahead_"))


def available_inner_optimizers() -> list[str]:
    """Names ``build_optimizer`` accepts: the lab's table plus the project registry's names."""
    return sorted(set(INNER_OPTIMIZERS) | set(_project_registry_names()))


def validate_inner_optimizer(name: str) -> str:
    """Return ``name`` if the lab can build it; raise a ValueError listing the accepted names."""
    if name in INNER_OPTIMIZERS or name in _project_registry_names():
        return name
    accepted = ", ".join(available_inner_optimizers())
    raise ValueError(f"unknown inner optimizer {name!r}; accepted values: {accepted}")


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

    ``overrides`` replace the table's keyword defaults (a task's weight decay, for example).
    """
    validate_inner_optimizer(inner)
    if (k is None) != (alpha is None):
        raise ValueError(
            f"k and alpha must both be given or both be None, got k={k}, alpha={alpha}"
        )
    kwargs: dict[str, Any] = {}
    entry = INNER_OPTIMIZERS.get(inner)
    if entry is not None:
        kwargs.update(entry.defaults)
        kwargs.update(overrides or {})
        optimizer = entry.factory(params, lr=lr, **kwargs)
    else:
        factory = _project_registry()
        if factory is None:  # the name came from a registry that has since disappeared
            raise ValueError(f"unknown inner optimizer {inner!r}")
        kwargs.update(overrides or {})
        optimizer = factory(inner, params, lr=lr, **kwargs)
    if k is None or alpha is None:
        return optimizer
    from torch_lookahead import Lookahead

    return Lookahead(optimizer, k=k, alpha=alpha)
