"""A small pool of processes joined in a gloo process group, reused across tests.

Starting processes and importing torch dominates the cost of a distributed test on CPU, so the
ranks are started once per test session and each test sends them a module-level function to run:
``cluster.run(check, *args)`` calls ``check(rank, world_size, *args)`` on every rank and returns the
per-rank results, or raises with every failing rank's traceback. A failed or hung run tears the
pool down; the next run starts a fresh one.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 60


def _serve(rank: int, world_size: int, store_path: str, tasks: Any, results: Any) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            function, args = task
            try:
                results.put((rank, True, function(rank, world_size, *args)))
            except BaseException:  # report everything, including assertion failures
                results.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class Cluster:
    """``world_size`` ranks over gloo on CPU, started lazily and reused between runs."""

    def __init__(self, world_size: int = 2) -> None:
        self.world_size = world_size
        self._processes: list[Any] = []

    def _start(self) -> None:
        context = mp.get_context("spawn")
        self._directory = tempfile.mkdtemp(prefix="lookahead-cluster-")
        store_path = os.path.join(self._directory, "store")
        self._tasks = [context.Queue() for _ in range(self.world_size)]
        self._results = context.Queue()
        self._processes = [
            context.Process(
                target=_serve,
                args=(rank, self.world_size, store_path, self._tasks[rank], self._results),
                daemon=True,
            )
            for rank in range(self.world_size)
        ]
        for process in self._processes:
            process.start()

    def run(self, function: Callable[..., Any], *args: Any, timeout: float = 180.0) -> list[Any]:
        """Run ``function(rank, world_size, *args)`` on every rank; the results in rank order."""
        if not self._processes:
            self._start()
        for task_queue in self._tasks:
            task_queue.put((function, args))
        outcomes: dict[int, tuple[bool, Any]] = {}
        try:
            while len(outcomes) < self.world_size:
                rank, ok, value = self._results.get(timeout=timeout)
                outcomes[rank] = (ok, value)
        except queue.Empty:
            self.stop()
            raise TimeoutError(
                f"{function.__name__} did not finish on ranks "
                f"{sorted(set(range(self.world_size)) - set(outcomes))} within {timeout} s"
            ) from None
        failures = [f"--- rank {r} ---\n{v}" for r, (ok, v) in sorted(outcomes.items()) if not ok]
        if failures:
            self.stop()
            raise AssertionError(f"{function.__name__} failed:\n" + "\n".join(failures))
        return [outcomes[rank][1] for rank in range(self.world_size)]

    def stop(self) -> None:
        """Ask the ranks to exit; terminate the ones that do not (e.g. stuck in a collective)."""
        for task_queue in getattr(self, "_tasks", []):
            task_queue.put(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._processes = []
        if hasattr(self, "_directory"):
            shutil.rmtree(self._directory, ignore_errors=True)
