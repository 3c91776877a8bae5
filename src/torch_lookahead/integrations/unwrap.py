"""Find the Lookahead inside the wrappers that training frameworks put around an optimizer."""

from __future__ import annotations

from torch_lookahead.lookahead import Lookahead

__all__ = ["unwrap_lookahead"]


def _wrapped(optimizer: object) -> object | None:
    """The optimizer one wrapper holds, or None if ``optimizer`` is not a known kind of wrapper.

    Lightning's and Fabric's proxies keep the real optimizer in ``_optimizer``; Accelerate's
    ``AcceleratedOptimizer``, its DeepSpeed wrapper and DeepSpeed's ZeRO optimizers in
    ``optimizer``. Lightning's proxy is an instance of a subclass of the optimizer's own class, so
    the proxy check comes before the Lookahead check.
    """
    attributes: dict[str, object] = getattr(optimizer, "__dict__", {})
    proxied = attributes.get("_optimizer")
    if proxied is not None:
        return proxied
    if isinstance(optimizer, Lookahead):
        return None
    inner: object | None = getattr(optimizer, "optimizer", None)
    return inner


def unwrap_lookahead(optimizer: object) -> Lookahead:
    """Return the [Lookahead][torch_lookahead.Lookahead] that ``optimizer`` is or wraps.

    Frameworks hand back their own wrapper of the optimizer they were given: the HF Trainer's
    ``trainer.optimizer`` and ``accelerator.prepare(...)`` return an ``AcceleratedOptimizer``,
    Lightning's ``self.optimizers()`` a ``LightningOptimizer``, DeepSpeed its ZeRO optimizer. The
    wrappers forward ``step()``, ``eval()``/``train()`` and the state, but not the rest of the
    Lookahead API (``slow_weights()``, ``sync()``, ...); this function
    follows them down to the Lookahead itself.

    Args:
        optimizer: a Lookahead, or a framework's wrapper of one (wrappers of wrappers too).

    Returns:
        The Lookahead object itself, never a proxy.

    Raises:
        TypeError: if there is no Lookahead inside ``optimizer``; the message lists the types met.

    Example:
        >>> lookahead = unwrap_lookahead(trainer.optimizer)  # doctest: +SKIP
        >>> with lookahead.slow_weights():  # doctest: +SKIP
        ...     trainer.model.save_pretrained("slow-model")
    """
    lookahead, met = _follow(optimizer)
    if lookahead is None:
        found = " -> ".join(met) or repr(optimizer)
        raise TypeError(f"no Lookahead inside this optimizer: found {found}")
    return lookahead


def find_lookahead(optimizer: object) -> Lookahead | None:
    """[unwrap_lookahead][torch_lookahead.integrations.unwrap_lookahead], or None where it raises."""
    return _follow(optimizer)[0]


def _follow(optimizer: object) -> tuple[Lookahead | None, list[str]]:
    """The Lookahead inside ``optimizer`` (or None) and the qualified names of the types met."""
    met: list[str] = []
    current: object | None = optimizer
    while current is not None and len(met) < 16:  # a wrapper chain is short; a cycle is not
        met.append(type(current).__qualname__)
        inner = _wrapped(current)
        if inner is None and isinstance(current, Lookahead):
            return current, met
        current = inner
    return None, met
