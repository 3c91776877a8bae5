"""Helpers that run inside the cluster's ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor


def assert_same_on_all_ranks(
    tensors: Iterable[Tensor], group: dist.ProcessGroup | None = None
) -> None:
    """Assert that every rank holds bit-identical copies of ``tensors``."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, flat, group=group)
    for rank, other in enumerate(gathered[1:], start=1):
        assert torch.equal(gathered[0], other), f"rank {rank} differs from rank 0"


def state_tensors(optimizer: torch.optim.Optimizer) -> dict[tuple[int, str], Tensor]:
    """Every tensor of the optimizer state, keyed by (parameter position, state key)."""
    positions = {
        id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])
    }
    return {
        (positions[id(p)], key): value.detach().clone()
        for p, param_state in optimizer.state.items()
        for key, value in param_state.items()
        if isinstance(value, Tensor)
    }


def assert_states_equal(a: dict[tuple[int, str], Tensor], b: dict[tuple[int, str], Tensor]) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for key in a:
        assert torch.equal(_local(a[key]), _local(b[key])), key


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


@contextlib.contextmanager
def unprepared(active: bool = True) -> Iterator[None]:
    """Inside, if ``active``: this rank cannot prepare its part of an exchange (its payload raises
    an injected out-of-memory error), so it takes part with zeros and says so."""
    from torch_lookahead.distributed import _exchange

    original = _exchange._payload

    def out_of_memory(*args: object, **kwargs: object) -> Tensor:
        raise RuntimeError("injected: out of memory")

    if active:
        _exchange._payload = out_of_memory
    try:
        yield
    finally:
        _exchange._payload = original
