"""What produced a result: the cache key of a job and the provenance a report records."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["CACHE_SCHEMA", "cpu_model", "job_key", "machine", "package_version", "source_digest"]

# Bumped whenever the stored form of a result changes, so that older cache files are not read.
CACHE_SCHEMA = 4

_PACKAGE = Path(__file__).resolve().parents[1]
# Modules that only present results: editing them changes no number a job computes.
_PRESENTATION = frozenset(
    {
        "cli.py",
        "lab/claims.py",
        "lab/plots.py",
        "lab/provenance.py",
        "lab/report.py",
        "lab/stability.py",
        "lab/stats.py",
    }
)


@functools.lru_cache(maxsize=2)
def source_digest(*, computing_only: bool = False) -> str:
    """SHA-256 (first 16 hex digits) of the package's Python sources; ``computing_only`` leaves
    out the modules that only present results, so that it names what computed the numbers."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        relative = path.relative_to(_PACKAGE).as_posix()
        if computing_only and relative in _PRESENTATION:
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def package_version() -> str:
    """The version of torch-lookahead that computes (``torch_lookahead.__version__``)."""
    import torch_lookahead

    return torch_lookahead.__version__


@functools.cache
def cpu_model() -> str:
    """The CPU's model name with its family, model and stepping numbers (from /proc/cpuinfo on
    Linux), or ``platform.processor()`` elsewhere; "unknown" when neither says."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    if "model name" in fields:
        numbers = ", ".join(
            f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping") if key in fields
        )
        return f"{fields['model name']} ({numbers})" if numbers else fields["model name"]
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """What the numbers of a run depend on beyond the code: torch, Python, the CPU kernels and
    the CPU model."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(terse=True),
    }


def job_key(kind: str, config: dict[str, Any]) -> str:
    """A digest of a job's whole configuration and kind, the code that computes it, the torch
    version, the CPU kernels and CPU model (rounding differs between them) and the cache
    schema: a cached result is reused only when all of them match."""
    payload = {
        "kind": kind,
        "config": config,
        "code": source_digest(computing_only=True),
        "torch": torch.__version__,
        "kernels": [torch.backends.cpu.get_cpu_capability(), cpu_model()],
        "schema": CACHE_SCHEMA,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
