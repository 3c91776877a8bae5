"""Shared setup of the framework tests: offline hubs, quiet loggers, fresh Accelerate singletons."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# transformers reads these when it is imported: set them before any test module imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """Accelerate keeps process-wide singletons (also used by the HF Trainer): reset them around
    each test so that one test's gradient-accumulation setting never leaks into the next."""
    yield
    try:
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:
        return
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
