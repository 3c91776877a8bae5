"""What produced a result: the cache key of a job and the provenance a report records."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy
import torch

__all__ = [
    "CACHE_SCHEMA",
    "cpu_model",
    "job_key",
    "lab_version",
    "machine",
    "package_version",
    "record",
    "source_digest",
    "source_roots",
]

# Bumped whenever the stored form of a result changes, so that older cache files are not read.
CACHE_SCHEMA = 4

# Modules that only choose jobs (whose every choice is in the job's configuration, hence its
# key), score or present results: editing them changes no number a job computes.
_PRESENTATION = frozenset(
    {
        "torch_lookahead_lab/cli.py",
        "torch_lookahead_lab/claims.py",
        "torch_lookahead_lab/confirmatory.py",
        "torch_lookahead_lab/console.py",
        "torch_lookahead_lab/experiments.py",
        "torch_lookahead_lab/metrics.py",
        "torch_lookahead_lab/plans.py",
        "torch_lookahead_lab/plots.py",
        "torch_lookahead_lab/provenance.py",
        "torch_lookahead_lab/report.py",
        "torch_lookahead_lab/reproduce.py",
        "torch_lookahead_lab/stability.py",
        "torch_lookahead_lab/stats.py",
    }
)


def source_roots() -> tuple[Path, ...]:
    """The package folders whose sources compute the lab's numbers: the library
    (``torch_lookahead``, which trains every run) and the lab (``torch_lookahead_lab``)."""
    import torch_lookahead

    return (Path(torch_lookahead.__file__).resolve().parent, Path(__file__).resolve().parent)


def source_digest(*, computing_only: bool = False) -> str:
    """SHA-256 (first 16 hex digits) of the Python sources of the library and of the lab
    (``source_roots``); ``computing_only`` leaves out the lab's modules that only present
    results, so that it names what computed the numbers. A change of the library's code
    changes both."""
    return _digest(source_roots(), computing_only)


@functools.lru_cache(maxsize=4)
def _digest(roots: tuple[Path, ...], computing_only: bool) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            relative = f"{root.name}/{path.relative_to(root).as_posix()}"
            if computing_only and relative in _PRESENTATION:
                continue
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def package_version() -> str:
    """The version of torch-lookahead that computes (``torch_lookahead.__version__``)."""
    import torch_lookahead

    return torch_lookahead.__version__


def lab_version() -> str:
    """The version of the lab (``torch_lookahead_lab.__version__``)."""
    import torch_lookahead_lab

    return torch_lookahead_lab.__version__


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


def record(wall_seconds: float, started_at: str = "", finished_at: str = "") -> dict[str, Any]:
    """The provenance a report records: the versions of the library and the lab, digests of
    their sources (all of them, and those that compute the numbers), ``machine()``, the
    command's wall time, numpy's version and, when given, when it started and finished (UTC, ISO 8601)."""
    times = {"started_at": started_at, "finished_at": finished_at} if started_at else {}
    return {
        "version": package_version(),
        "lab_version": lab_version(),
        "source_digest": source_digest(),
        "computing_source_digest": source_digest(computing_only=True),
        **machine(),
        "numpy": numpy.__version__,  # its generator draws the bootstrap's resamples
        "wall_seconds": wall_seconds,
        **times,
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
