"""Train one configuration, or many of them over a process pool, with a cache on disk.

A run is a pure function of its ``RunConfig`` on a given machine: the model initialisation, the
minibatch order and the optimizer all derive from ``config.seed``. Finished runs are stored as
``<cache_dir>/<config.key()>.json`` and read back instead of recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torch_lookahead.lab.optimizers import build_optimizer, validate_inner_optimizer
from torch_lookahead.lab.tasks import TaskSettings, corpus_fingerprint, get_task

__all__ = [
    "CACHE_SCHEMA",
    "RunConfig",
    "RunResult",
    "make_config",
    "run",
    "run_many",
]

CACHE_SCHEMA = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run. ``k=None`` is the plain inner optimizer."""

    task: str
    inner: str
    lr: float
    seed: int
    steps: int
    eval_every: int
    batch_size: int
    k: int | None = None
    alpha: float | None = None
    data_dir: str | None = None
    device: str = "cpu"
    data_fingerprint: str = ""

    @property
    def uses_lookahead(self) -> bool:
        return self.k is not None

    @property
    def method(self) -> str:
        """``adamw`` or ``lookahead(adamw)``: the optimizer, without its hyper-parameters."""
        return f"lookahead({self.inner})" if self.uses_lookahead else self.inner

    def key(self) -> str:
        """A digest of the whole configuration, the torch version and the cache schema."""
        payload = {
            "config": dataclasses.asdict(self),
            "torch": torch.__version__,
            "schema": CACHE_SCHEMA,
        }
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def make_config(
    task: str,
    inner: str,
    *,
    seed: int,
    settings: TaskSettings,
    lr: float | None = None,
    k: int | None = None,
    alpha: float | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
) -> RunConfig:
    """Validate the names and hyper-parameters and fill in the task's defaults."""
    task_spec = get_task(task)
    validate_inner_optimizer(inner, lookahead=k is not None)
    if lr is None:
        lr = task_spec.learning_rate(inner)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if k is not None and k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if alpha is not None and not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    fingerprint = corpus_fingerprint() if task == "charlm" else ""
    return RunConfig(
        task=task,
        inner=inner,
        lr=float(lr),
        seed=seed,
        steps=settings.steps,
        eval_every=settings.eval_every,
        batch_size=settings.batch_size,
        k=k,
        alpha=alpha,
        data_dir=data_dir,
        device=device,
        data_fingerprint=fingerprint,
    )


@dataclass
class RunResult:
    """The evaluation history of one run (metrics measured on the slow weights for Lookahead).

    ``history[name][i]`` is metric ``name`` after ``steps[i]`` optimizer steps; ``None`` where the
    value was not finite. ``diverged_at`` is the first step whose training loss was not finite.
    """

    config: RunConfig
    steps: list[int]
    history: dict[str, list[float | None]]
    diverged_at: int | None = None
    seconds: float = field(default=0.0, compare=False)

    def final(self, metric: str) -> float | None:
        return self.history[metric][-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "steps": self.steps,
            "history": self.history,
            "diverged_at": self.diverged_at,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RunResult:
        return cls(
            config=RunConfig(**payload["config"]),
            steps=list(payload["steps"]),
            history={name: list(values) for name, values in payload["history"].items()},
            diverged_at=payload["diverged_at"],
            seconds=float(payload["seconds"]),
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run(config: RunConfig) -> RunResult:
    """Train ``config`` and return its evaluation history (at step 0, every ``eval_every`` steps
    and at the last step). A run whose training loss stops being finite ends there."""
    started = time.perf_counter()
    task = get_task(config.task)
    torch.manual_seed(config.seed)
    data = task.load(config.data_dir, config.device)
    model = task.build_model().to(config.device)
    optimizer = build_optimizer(
        model.parameters(),
        config.inner,
        config.lr,
        k=config.k,
        alpha=config.alpha,
        overrides=task.optimizer_overrides.get(config.inner),
    )
    inner = getattr(optimizer, "optimizer", optimizer)
    multiplier = task.lr_multiplier(config.steps)
    base_lrs = [group["lr"] for group in inner.param_groups]
    generator = torch.Generator().manual_seed(config.seed)

    steps: list[int] = []
    history: dict[str, list[float | None]] = {}

    def record(step: int) -> None:
        model.train(False)
        try:
            with torch.no_grad():
                slow_weights = getattr(optimizer, "slow_weights", None)
                if slow_weights is not None:
                    with slow_weights():
                        metrics = task.evaluate(model, data)
                else:
                    metrics = task.evaluate(model, data)
        finally:
            model.train(True)
        steps.append(step)
        for name, value in metrics.items():
            history.setdefault(name, []).append(_finite_or_none(value))

    record(0)
    diverged_at: int | None = None
    for step in range(1, config.steps + 1):
        if multiplier is not None:
            for group, base_lr in zip(inner.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * multiplier(step - 1)
        batch = task.sample_batch(data, generator, config.batch_size)
        loss = task.loss(model, batch)
        if not torch.isfinite(loss):
            diverged_at = step
            record(step)
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if task.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.max_grad_norm)
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            record(step)
    return RunResult(config, steps, history, diverged_at, time.perf_counter() - started)


def _cache_path(cache_dir: Path, config: RunConfig) -> Path:
    return cache_dir / f"{config.key()}.json"


def load_cached(cache_dir: Path, config: RunConfig) -> RunResult | None:
    """The stored result of ``config``, or None when it is absent, unreadable or for another config."""
    path = _cache_path(cache_dir, config)
    try:
        result = RunResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result if result.config == config else None


def store(cache_dir: Path, result: RunResult) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cache_path(cache_dir, result.config)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result.to_json()))
    temporary.replace(path)


def _init_worker() -> None:
    torch.set_num_threads(1)


ProgressCallback = Callable[[RunResult, bool], None]


def run_many(
    configs: Sequence[RunConfig],
    cache_dir: Path | None = None,
    *,
    workers: int | None = None,
    on_result: ProgressCallback | None = None,
) -> list[RunResult]:
    """Run every config (duplicates once), reading and writing ``cache_dir`` when given.

    Independent runs go to a pool of ``workers`` processes (default ``os.cpu_count()``), each with
    one torch thread; with one worker, or one run left, they run in this process.
    ``on_result(result, from_cache)`` is called as each run completes. Results come back in the
    order of ``configs``.
    """
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers}")
    results: dict[RunConfig, RunResult] = {}
    pending: list[RunConfig] = []
    for config in dict.fromkeys(configs):
        cached = load_cached(cache_dir, config) if cache_dir is not None else None
        if cached is not None:
            results[config] = cached
            if on_result is not None:
                on_result(cached, True)
        else:
            pending.append(config)

    def finish(result: RunResult) -> None:
        results[result.config] = result
        if cache_dir is not None:
            store(cache_dir, result)
        if on_result is not None:
            on_result(result, False)

    if workers == 1 or len(pending) <= 1:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for config in pending:
                finish(run(config))
        finally:
            torch.set_num_threads(previous_threads)
    else:
        # "spawn": a forked child would inherit the parent's torch thread pools.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(workers, len(pending)), mp_context=context, initializer=_init_worker
        ) as pool:
            futures = [pool.submit(run, config) for config in pending]
            for future in as_completed(futures):
                finish(future.result())
    return [results[config] for config in configs]
