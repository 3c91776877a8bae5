"""What produced a result: the cache key of a job and the versions a report records."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["CACHE_SCHEMA", "job_key"]

# Bumped whenever the stored form of a result changes, so that older cache files are not read.
CACHE_SCHEMA = 2


def job_key(kind: str, config: dict[str, Any]) -> str:
    """A digest of a job's whole configuration, its kind, the torch version and the cache schema."""
    payload = {"kind": kind, "config": config, "torch": torch.__version__, "schema": CACHE_SCHEMA}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
