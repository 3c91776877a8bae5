"""Shared setup of the framework tests: offline hubs, quiet loggers, fresh Accelerate singletons."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integrations._accelerate_state import reset_accelerate_state

# transformers reads these when it is imported: set them before any test module imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """Each test starts and ends without Accelerate singletons, so that one test's settings
    (gradient accumulation, CPU) never leak into the next."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
