"""torchft's DiLoCo as the peer of DistributedLookahead on the digits task (options.md's setting).

Two replica groups of one process each, each on its own half of the training set, 400 AdamW
steps (lr 2e-3, batches of 64), an outer SGD step every 20 steps with learning rate 1 and no
momentum (periodic averaging, as the k=20, alpha=1 rows of options.md), no simulated link.
torchft needs its lighthouse, which this script runs in the parent process.

torchft is not a dependency of this package; it ran in a throwaway virtual environment:

    python3 -m venv /tmp/tftvenv
    /tmp/tftvenv/bin/pip install -c constraints.txt torch==2.13.0 scikit-learn \\
        "opentelemetry-sdk>=1.39" "opentelemetry-exporter-otlp-proto-http>=1.39"
    /tmp/tftvenv/bin/pip install --no-deps torchft==0.2.0
    OMP_NUM_THREADS=1 PYTHONPATH=src:lab/src /tmp/tftvenv/bin/python \\
        reports/distributed-digits/torchft_peer.py --seeds 0 1 2 3 4 > reports/distributed-digits/torchft_peer.md
"""

import argparse
import dataclasses
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

import torch
import torch.multiprocessing as mp


def run_replica(index: int, lighthouse: str, steps: int, k: int, seed: int, results: Any) -> None:
    torch.set_num_threads(1)
    from torch.distributed import TCPStore
    from torchft import Manager, ProcessGroupGloo
    from torchft.local_sgd import DiLoCo

    from torch_lookahead_lab.tasks import DigitsTask

    task = DigitsTask()
    data = task.load(None, "cpu")
    shard = dataclasses.replace(
        data, train_inputs=data.train_inputs[index::2], train_targets=data.train_targets[index::2]
    )
    torch.manual_seed(seed)
    model = task.build_model()
    inner = torch.optim.AdamW(model.parameters(), lr=2e-3)
    outer = torch.optim.SGD(model.parameters(), lr=1.0)
    store = TCPStore("localhost", 0, is_master=True, wait_for_workers=False)

    def state_dict() -> dict[str, Any]:
        return {"model": model.state_dict(), "inner": inner.state_dict()}

    def load_state_dict(state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        inner.load_state_dict(state["inner"])

    timeout = timedelta(seconds=60)
    manager = Manager(
        pg=ProcessGroupGloo(timeout=timeout),
        min_replica_size=2,
        use_async_quorum=False,  # DiLoCo needs the synchronous quorum
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        replica_id=f"replica_{index}",
        store_addr="localhost",
        store_port=store.port,
        rank=0,
        world_size=1,
        lighthouse_addr=lighthouse,
        timeout=timeout,
        quorum_timeout=timeout,
        connect_timeout=timeout,
    )
    generator = torch.Generator().manual_seed(10_000 * seed + index)
    started = time.perf_counter()
    with DiLoCo(manager, [model], inner, outer, sync_every=k):
        for _ in range(steps):
            inner.zero_grad()
            task.loss(model, task.sample_batch(shard, generator, 64)).backward()  # type: ignore[no-untyped-call]
            inner.step()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, data)
    results.put((index, seconds, metrics))
    manager.shutdown(wait=False)


def interval_95(values: list[float]) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5


def main() -> None:
    from torchft._torchft import LighthouseServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    context = mp.get_context("spawn")
    finals = []
    for seed in args.seeds:
        lighthouse = LighthouseServer(bind="[::]:0", min_replicas=2)
        results = context.Queue()
        replicas = [
            context.Process(
                target=run_replica,
                args=(i, lighthouse.address(), args.steps, args.k, seed, results),
            )
            for i in range(2)
        ]
        for replica in replicas:
            replica.start()
        outcome = sorted(results.get(timeout=600) for _ in replicas)
        for replica in replicas:
            replica.join(timeout=30)
        lighthouse.shutdown()
        assert outcome[0][2] == outcome[1][2], "the replicas ended with different models"
        finals.append(outcome[0])
    accuracy = [metrics["val_accuracy"] for _, _, metrics in finals]
    loss = [metrics["val_loss"] for _, _, metrics in finals]
    seconds = [s for _, s, _ in finals]
    from importlib.metadata import version

    print("# torchft's DiLoCo on the digits task (the peer of options.md)\n")
    print("Produced by `reports/distributed-digits/torchft_peer.py` (its docstring has the setup)")
    print(
        f"with `{' '.join(sys.argv[1:]) or '(defaults)'}`, torchft {version('torchft')}, torch "
        f"{torch.__version__}.\n"
    )
    print(f"{args.steps} steps, outer step every {args.k}, outer SGD lr 1, seeds {args.seeds}.")
    print("Both replicas ended with the same model in every seed.\n")
    print(
        "| final val accuracy (mean ± 95%) | final val loss (mean ± 95%) | "
        "training wall s (no simulated link) |"
    )
    print("|---|---|---|")
    print(
        f"| {statistics.fmean(accuracy):.4f} ± {interval_95(accuracy):.4f} "
        f"| {statistics.fmean(loss):.4f} ± {interval_95(loss):.4f} "
        f"| {statistics.fmean(seconds):.1f} |\n"
    )
    print(
        "Per seed (accuracy, loss): "
        + ", ".join(f"({a:.4f}, {b:.4f})" for a, b in zip(accuracy, loss, strict=True))
    )


if __name__ == "__main__":
    main()
