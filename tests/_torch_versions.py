"""Skips for tests of features that need a newer torch than the oldest supported one (torch 2.6,
pyproject.toml's ``dependencies``; ``make test-oldest`` runs the tests there). Each minimum is
stated in docs/getting-started.md ("Supported torch versions")."""

from __future__ import annotations

import pytest
import torch

needs_fsdp2_on_cpu = pytest.mark.skipif(
    torch.__version__ < "2.7",
    reason="FSDP2 runs on CPU from torch 2.7 (torch 2.6's fully_shard calls record_event on a "
    "CPU stream, which has none)",
)

traces_the_core_without_breaks = pytest.mark.skipif(
    torch.__version__ < "2.13",
    reason="torch 2.6's dynamo breaks the graph at plain Python in the core (dict.get, vars(), "
    "`is` between dicts) that torch 2.13's traces; versions between were not measured",
)
