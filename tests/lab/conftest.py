"""Every test of the lab carries the ``lab`` marker and needs the lab's package (lab/)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch_lookahead_lab")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("typer")
pytest.importorskip("rich")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.lab)
