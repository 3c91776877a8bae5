from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.distributed._cluster import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Two ranks over gloo on CPU, shared by every distributed test of this session."""
    pool = Cluster(world_size=2)
    yield pool
    pool.stop()
