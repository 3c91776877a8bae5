"""Train one configuration, or compute many jobs over a process pool, with a cache on disk.

A run is a pure function of its ``RunConfig`` on a given machine: the model initialisation, the
minibatch order and the optimizer all derive from ``config.seed``. A job is a training run or a
point of the noisy quadratic model (``NQMConfig``); finished jobs are stored as
``<cache_dir>/<job.key()>.json`` and read back instead of recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch_lookahead import check_alpha, check_k
from torch_lookahead_lab.nqm import NQMConfig, NQMPoint, nqm_point
from torch_lookahead_lab.optimizers import build_optimizer, validate_inner_optimizer
from torch_lookahead_lab.provenance import job_key
from torch_lookahead_lab.tasks import (
    CharLMTask,
    TaskSettings,
    check_schedule,
    corpus_fingerprint,
    get_task,
    lr_multiplier,
)

__all__ = [
    "Job",
    "RunConfig",
    "RunResult",
    "decode_correct",
    "encode_correct",
    "execute",
    "make_config",
    "run",
    "run_many",
]


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
    schedule: str = "constant"
    unsafe_skip_checksums: bool = False
    warmup_steps: int = 0  # linear learning-rate warm-up before the schedule
    # Grace steps of the confirmatory study's instability rule: when set, the run ends at its
    # first minibatch training loss above its first one (step 0's) from step warmup_steps +
    # stop_unstable_after on, where the rule has already called it unstable
    # (``confirmatory.unstable``); None trains every step.
    stop_unstable_after: int | None = None
    # Also measure the task's held-out test split (``Task.evaluate_test``) at step 0 and at the
    # run's last evaluation, for tasks whose periodic evaluation leaves it out
    # (``Task.test_at_ends``); the history has None for it at the evaluations between.
    evaluate_test: bool = False

    @property
    def uses_lookahead(self) -> bool:
        return self.k is not None

    @property
    def method(self) -> str:
        """``adamw`` or ``lookahead(adamw)``: the optimizer, without its hyper-parameters."""
        return f"lookahead({self.inner})" if self.uses_lookahead else self.inner

    def to_dict(self) -> dict[str, Any]:
        """The fields, without ``stop_unstable_after`` when it is None and ``evaluate_test``
        when it is False: such a run is stored as it was before the field existed."""
        fields = dataclasses.asdict(self)
        for name, default in (("stop_unstable_after", None), ("evaluate_test", False)):
            if fields[name] is default:
                del fields[name]
        return fields

    def key(self) -> str:
        """A digest of the whole configuration and of the code and torch that compute it."""
        return job_key("run", self.to_dict())


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
    schedule: str | None = None,
    unsafe_skip_checksums: bool = False,
    warmup_steps: int = 0,
    stop_unstable_after: int | None = None,
    evaluate_test: bool = False,
) -> RunConfig:
    """Validate the names and hyper-parameters and fill in the task's defaults (its learning
    rate for ``inner`` and its schedule). The data fingerprint of a charlm task is that of the
    corpus, with its test split when ``evaluate_test``."""
    task_spec = get_task(task)
    schedule = check_schedule(task_spec.schedule if schedule is None else schedule)
    validate_inner_optimizer(inner, lookahead=k is not None)
    if lr is None:
        lr = task_spec.learning_rate(inner)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if k is not None:
        k = check_k(k)
    if alpha is not None:
        alpha = check_alpha(alpha)
    if not 0 <= warmup_steps <= settings.steps:
        raise ValueError(
            f"warmup_steps must be between 0 and the run's {settings.steps} steps, "
            f"got {warmup_steps}"
        )
    if stop_unstable_after is not None and not (
        isinstance(stop_unstable_after, int) and stop_unstable_after >= 0
    ):
        raise ValueError(
            f"stop_unstable_after must be None or a non-negative integer (grace steps), "
            f"got {stop_unstable_after!r}"
        )
    if stop_unstable_after is not None and not task_spec.records_step_losses:
        raise ValueError(
            f"stop_unstable_after needs a task that records per-step training losses, got {task!r}"
        )
    if evaluate_test and not task_spec.test_at_ends:
        raise ValueError(
            f"evaluate_test is for tasks that measure their test split at a run's ends "
            f"(charlm and its variants), got {task!r}"
        )
    fingerprint = (
        corpus_fingerprint(with_test=evaluate_test) if isinstance(task_spec, CharLMTask) else ""
    )
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
        schedule=schedule,
        unsafe_skip_checksums=unsafe_skip_checksums,
        warmup_steps=warmup_steps,
        stop_unstable_after=stop_unstable_after,
        evaluate_test=evaluate_test,
    )


@dataclass
class RunResult:
    """The evaluation history of one run (metrics measured on the slow weights for Lookahead).

    ``history[name][i]`` is metric ``name`` after ``steps[i]`` optimizer steps; ``None`` where the
    value was not finite, or for a test metric measured at the run's ends only
    (``RunConfig.evaluate_test``), at the evaluations between. ``diverged_at`` is the first step whose training loss was not finite.
    ``step_losses`` (tasks that record them): the minibatch training loss of every step, the
    first before any update, ``None`` where not finite.
    ``test_correct`` (tasks with a test accuracy, ``Task.test_examples``): which test examples
    the model classified correctly at step 0 and at the run's last evaluation, as
    ``{"examples": m, "steps": [0, last], "correct": [mask, mask]}``, each mask ``encode_correct``'s
    hex string (m bits: 90 characters for digits' 360 test images).
    """

    config: RunConfig
    steps: list[int]
    history: dict[str, list[float | None]]
    diverged_at: int | None = None
    seconds: float = field(default=0.0, compare=False)  # wall time
    cpu_seconds: float = field(default=0.0, compare=False)  # CPU time of the process running it
    threads: int = field(default=1, compare=False)  # torch threads the run computed with
    step_losses: list[float | None] | None = None
    test_correct: dict[str, Any] | None = None

    def final(self, metric: str) -> float | None:
        return self.history[metric][-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "steps": self.steps,
            "history": self.history,
            "diverged_at": self.diverged_at,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "threads": self.threads,
            **({"step_losses": self.step_losses} if self.step_losses is not None else {}),
            **({"test_correct": self.test_correct} if self.test_correct is not None else {}),
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RunResult:
        return cls(
            config=RunConfig(**payload["config"]),
            steps=list(payload["steps"]),
            history={name: list(values) for name, values in payload["history"].items()},
            diverged_at=payload["diverged_at"],
            seconds=float(payload["seconds"]),
            cpu_seconds=float(payload["cpu_seconds"]),
            threads=int(payload["threads"]),
            step_losses=payload.get("step_losses"),
            test_correct=payload.get("test_correct"),
        )


def encode_correct(correct: torch.Tensor) -> str:
    """A boolean vector as hex: bit ``i % 8`` of byte ``i // 8`` is example ``i`` (numpy's
    ``packbits`` with ``bitorder="little"``), the last byte padded with zeros."""
    bits = correct.detach().cpu().numpy().astype(bool).ravel()
    return np.packbits(bits, bitorder="little").tobytes().hex()


def decode_correct(mask: str, examples: int) -> np.ndarray:
    """``encode_correct``'s inverse: the boolean vector of ``examples`` entries."""
    raw = np.frombuffer(bytes.fromhex(mask), dtype=np.uint8)
    if raw.size != (examples + 7) // 8:
        raise ValueError(
            f"a mask of {examples} examples has {(examples + 7) // 8} bytes, got {raw.size}"
        )
    return np.unpackbits(raw, bitorder="little")[:examples].astype(bool)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run(config: RunConfig) -> RunResult:
    """Train ``config`` and return its evaluation history (at step 0, every ``eval_every`` steps
    and at the last step). A run whose training loss stops being finite ends there, and so does
    one whose loss exceeds its first after ``warmup_steps + stop_unstable_after`` steps when
    that is set (evaluated once more at the step it ends)."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    task = get_task(config.task)
    if config.data_fingerprint:  # charlm's text is the running interpreter's standard library
        here = corpus_fingerprint(with_test=config.evaluate_test)
        if here != config.data_fingerprint:
            raise ValueError(
                f"{config.task}: the run's data fingerprint is {config.data_fingerprint}, this "
                f"Python's standard library gives {here}: another Python version's files, so "
                "another corpus (the report says which Python wrote it)"
            )
    torch.manual_seed(config.seed)
    data = task.load(config.data_dir, config.device, verify=not config.unsafe_skip_checksums)
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
    multiplier = lr_multiplier(config.schedule, config.steps, config.warmup_steps)
    base_lrs = [group["lr"] for group in inner.param_groups]
    generator = torch.Generator().manual_seed(config.seed)

    steps: list[int] = []
    history: dict[str, list[float | None]] = {}

    test_names: list[str] = []  # the test metrics, known from step 0's evaluation on
    # The test examples classified correctly at step 0 and at the run's last evaluation.
    correct_steps: list[int] = []
    correct_masks: list[str] = []
    examples = 0

    def measure(step: int, at_end: bool) -> dict[str, float]:
        nonlocal examples
        metrics = task.evaluate(model, data)
        correct = task.test_examples(model, data) if at_end else None
        if correct is not None:
            examples = int(correct.numel())
            correct_steps.append(step)
            correct_masks.append(encode_correct(correct))
        if config.evaluate_test and at_end:
            test = task.evaluate_test(model, data)
            test_names[:] = test
            metrics |= test
        elif config.evaluate_test:
            metrics |= dict.fromkeys(test_names, math.nan)  # recorded as None: not measured
        return metrics

    def record(step: int, at_end: bool = False) -> None:
        """Evaluate the model (its slow weights in Lookahead); ``at_end``: step 0 or the run's
        last evaluation, where the test split is measured too when the config asks for it."""
        model.train(False)
        try:
            with torch.no_grad():
                slow_weights = getattr(optimizer, "slow_weights", None)
                if slow_weights is not None:
                    with slow_weights():
                        metrics = measure(step, at_end)
                else:
                    metrics = measure(step, at_end)
        finally:
            model.train(True)
        steps.append(step)
        for name, value in metrics.items():
            history.setdefault(name, []).append(_finite_or_none(value))

    record(0, at_end=True)
    step_losses: list[float | None] | None = [] if task.records_step_losses else None
    diverged_at: int | None = None
    first_loss = math.inf
    stop_from = (
        math.inf
        if config.stop_unstable_after is None
        else config.warmup_steps + config.stop_unstable_after
    )
    for step in range(1, config.steps + 1):
        if multiplier is not None:
            for group, base_lr in zip(inner.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * multiplier(step - 1)
        batch = task.sample_batch(data, generator, config.batch_size)
        loss = task.loss(model, batch)
        if step_losses is not None:
            step_losses.append(_finite_or_none(float(loss.detach())))
        if not torch.isfinite(loss):
            diverged_at = step
            record(step, at_end=True)
            break
        value = float(loss.detach())
        if step == 1:
            first_loss = value
        elif step - 1 >= stop_from and value > first_loss:
            record(step, at_end=True)  # unstable by the rule: no later step can change that
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if task.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.max_grad_norm)
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            record(step, at_end=step == config.steps)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    threads = torch.get_num_threads()
    test_correct = (
        {"examples": examples, "steps": correct_steps, "correct": correct_masks}
        if correct_masks
        else None
    )
    return RunResult(
        config, steps, history, diverged_at, seconds, cpu_seconds, threads, step_losses,
        test_correct,
    )  # fmt: skip


Job = RunConfig | NQMConfig
JobResult = RunResult | NQMPoint


def execute(job: Job) -> JobResult:
    """Compute one job: a training run or a point of the noisy quadratic model."""
    if isinstance(job, NQMConfig):
        return nqm_point(job)
    return run(job)


def _cache_path(cache_dir: Path, job: Job) -> Path:
    return cache_dir / f"{job.key()}.json"


def load_cached(cache_dir: Path, job: Job) -> JobResult | None:
    """The stored result of ``job``, or None when it is absent, unreadable or for another job."""
    path = _cache_path(cache_dir, job)
    try:
        payload = json.loads(path.read_text())
        if isinstance(job, NQMConfig):
            point = NQMPoint.from_json(payload["nqm_point"])
            return point if point.lr == job.lr else None
        result = RunResult.from_json(payload)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result if result.config == job else None


def store(cache_dir: Path, job: Job, result: JobResult) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cache_path(cache_dir, job)
    payload = {"nqm_point": result.to_json()} if isinstance(result, NQMPoint) else result.to_json()
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload))
    temporary.replace(path)


def _init_worker(threads: int) -> None:
    # The parent decides when to stop: a Ctrl-C sent to the whole process group must not kill
    # workers half-way through writing a result; the parent terminates them instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _execute_indexed(indexed: tuple[int, Job]) -> tuple[int, JobResult]:
    return indexed[0], execute(indexed[1])


ProgressCallback = Callable[[Any, bool], None]


def run_many(
    jobs: Sequence[Job],
    cache_dir: Path | None = None,
    *,
    workers: int | None = None,
    threads: int = 1,
    on_result: ProgressCallback | None = None,
) -> list[Any]:
    """Compute every job (duplicates once), reading and writing ``cache_dir`` when given.

    Independent jobs go to a pool of ``workers`` processes (default ``os.cpu_count()``), each with
    ``threads`` torch threads; with one worker, or one job left, they run in this process with
    ``threads`` threads. ``on_result(result, from_cache)`` is called as each job completes.
    Results come back in the order of ``jobs``. An exception (or Ctrl-C) in this process ends
    the workers at once.
    """
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers}")
    if threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    results: dict[Job, JobResult] = {}
    pending: list[Job] = []
    for job in dict.fromkeys(jobs):
        cached = load_cached(cache_dir, job) if cache_dir is not None else None
        if cached is not None:
            results[job] = cached
            if on_result is not None:
                on_result(cached, True)
        else:
            pending.append(job)

    def finish(job: Job, result: JobResult) -> None:
        results[job] = result
        if cache_dir is not None:
            store(cache_dir, job, result)
        if on_result is not None:
            on_result(result, False)

    if workers == 1 or len(pending) <= 1:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for job in pending:
                finish(job, execute(job))
        finally:
            torch.set_num_threads(previous_threads)
    else:
        # "spawn": a forked child would inherit the parent's torch thread pools. Leaving the
        # with-block, normally or by an exception, terminates the workers (Pool.__exit__).
        context = multiprocessing.get_context("spawn")
        with context.Pool(
            min(workers, len(pending)), initializer=_init_worker, initargs=(threads,)
        ) as pool:
            for index, result in pool.imap_unordered(_execute_indexed, enumerate(pending)):
                finish(pending[index], result)
    return [results[job] for job in jobs]


def run_many_counted(
    jobs: Sequence[Job],
    cache_dir: Path | None,
    *,
    workers: int | None,
    on_result: ProgressCallback | None = None,
) -> tuple[list[Any], int]:
    """``run_many``, also returning how many of the results came from the cache."""
    cached = 0

    def count(result: Any, from_cache: bool) -> None:
        nonlocal cached
        cached += from_cache
        if on_result is not None:
            on_result(result, from_cache)

    results = run_many(jobs, cache_dir, workers=workers, on_result=count)
    return results, cached
