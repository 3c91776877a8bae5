"""unwrap_lookahead: from a framework's wrapper down to the Lookahead (needs only torch; the
real wrappers are exercised by the framework tests)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from torch_lookahead import Lookahead
from torch_lookahead.integrations import unwrap_lookahead


def _lookahead() -> Lookahead:
    return Lookahead(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1))


class Proxy(Lookahead):
    """Like Lightning's LightningOptimizer: an instance of a subclass of the optimizer's class
    that holds the real optimizer in ``_optimizer`` and is not initialised itself."""

    def __init__(self, optimizer: Lookahead) -> None:
        self._optimizer = optimizer


def test_a_lookahead_is_its_own_lookahead() -> None:
    lookahead = _lookahead()
    assert unwrap_lookahead(lookahead) is lookahead


def test_wrappers_of_wrappers_are_followed() -> None:
    lookahead = _lookahead()
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(optimizer=lookahead))
    assert unwrap_lookahead(wrapped) is lookahead


def test_a_proxy_posing_as_a_lookahead_is_seen_through() -> None:
    lookahead = _lookahead()
    proxy = Proxy(lookahead)
    assert isinstance(proxy, Lookahead)
    assert unwrap_lookahead(proxy) is lookahead
    assert unwrap_lookahead(SimpleNamespace(optimizer=proxy)) is lookahead


def test_no_lookahead_inside_raises_and_names_what_was_found() -> None:
    sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"found SimpleNamespace -> SGD$"):
        unwrap_lookahead(SimpleNamespace(optimizer=sgd))
    cycle = SimpleNamespace()
    cycle.optimizer = cycle
    with pytest.raises(TypeError, match="no Lookahead inside"):
        unwrap_lookahead(cycle)
    with pytest.raises(TypeError, match=r"found None$"):
        unwrap_lookahead(None)
