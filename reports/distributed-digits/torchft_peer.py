"""torchft's DiLoCo beside DistributedLookahead on the digits task, at DiLoCo's settings.

Two replica groups of one process each, each on its own half of the training set, 400 AdamW steps
(lr 2e-3, batches of 64), H = 20 inner steps between two syncs of each fragment; then, in the
same two processes, on the same data, the same run with DistributedLookahead (``k = H``,
``alpha`` = the outer learning rate, ``outer_momentum`` and ``nesterov`` as torchft's outer
``torch.optim.SGD``). The settings (``SETTINGS``): periodic averaging (outer lr 1, no
momentum), DiLoCo's outer step (outer lr 0.7, Nesterov momentum 0.9, the DiLoCo row of
report.md), the same with two streaming fragments (torchft: one outer SGD a fragment, its list
form; and one outer SGD over the whole model), and with a delay of 2 inner steps.

Fragments: torchft's are modules, ``model.features`` and ``model.classifier``; its fragment ``i``
syncs first at step ``(i + 1) H / F`` and then every H steps, which is DistributedLookahead's
fragment ``(i + 1) % F`` (first at ``f H / F``, fragment 0 at H), so the groups are tagged so.
The delay is a different rule in each: torchft (``fragment_sync_delay`` tau) launches a
fragment's all-reduce tau inner steps *before* its sync step and at the sync step replaces the
fragment by the new global weights (``fragment_update_alpha = 0``, its default: the tau local
steps are dropped); DistributedLookahead (``sync_delay`` d) launches at the sync step and applies
the outer step d inner steps later, keeping the local progress made meanwhile. So the last row
compares two algorithms, not two implementations of one. At the end each implementation's global
weights are evaluated: torchft's fragments restored to their last synced weights, and
DistributedLookahead's slow weights after applying a delayed sync launched at the last step.

torchft with F > 1 and a single outer optimizer over the whole model: at a fragment's sync, the
outer ``step()`` also moves the other fragments' parameters, whose ``.grad`` still holds the last
inner step's gradient (the inner loop zeroes gradients before the backward pass, as torchft's
examples do). The list form (one outer optimizer a fragment) does not; the row with the single
optimizer shows what it costs.

For each run, the parameters are compared after every sync step (up to the delay): the largest
difference after the first sync says whether one sync is the same computation (it is, up to
float rounding: torchft averages the pseudo-gradients, DistributedLookahead the weights), the one
at step 2H whether the outer momentum is (a first sync sees an empty buffer), and the one at the
end how far 400 chaotic AdamW steps carry that rounding.

torchft 0.2.0's ``should_quantize`` (its quantised all-reduce) is not compared: it needs Triton
and a GPU, and without Triton ``Manager.allreduce`` sends float32 (``should_quantize and
IS_TRITON_AVAILABLE``), silently.

torchft is not a dependency of this package; it runs in a throwaway virtual environment whose
torch is the one of the constraints (torchft itself without its dependencies, which would pull
another torch)::

    python3 -m venv /tmp/tft
    /tmp/tft/bin/pip install -c constraints.txt torch==2.13.0 scikit-learn scipy \\
        "opentelemetry-sdk>=1.39" "opentelemetry-exporter-otlp-proto-http>=1.39"
    /tmp/tft/bin/pip install --no-deps torchft==0.2.0
    OMP_NUM_THREADS=1 PYTHONPATH=src:lab/src nice -n 10 /tmp/tft/bin/python \\
        reports/distributed-digits/torchft_peer.py --seeds 0 1 2 > reports/distributed-digits/torchft_peer.md
"""

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

import torch
import torch.multiprocessing as mp


@dataclasses.dataclass(frozen=True)
class Setting:
    outer_lr: float
    momentum: float = 0.0
    fragments: int = 1
    delay: int = 0
    shared_outer: bool = False
    """torchft with F > 1: one outer optimizer over the whole model, not one a fragment."""

    @property
    def label(self) -> str:
        text = f"outer lr {self.outer_lr}"
        text += f", Nesterov {self.momentum}" if self.momentum else ", no momentum"
        if self.fragments > 1:
            text += f", F={self.fragments}"
        if self.delay:
            text += f", delay {self.delay}"
        if self.shared_outer:
            text += " (torchft: one outer SGD for both fragments)"
        return text


SETTINGS = (
    Setting(1.0),
    Setting(0.7, 0.9),
    Setting(0.7, 0.9, fragments=2),
    Setting(0.7, 0.9, fragments=2, shared_outer=True),
    Setting(0.7, 0.9, fragments=2, delay=2),
)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _replica(index: int, seed: int) -> tuple[Any, Any, torch.nn.Module, torch.Generator]:
    from torch_lookahead_lab.tasks import DigitsTask

    task = DigitsTask()
    data = task.load(None, "cpu")
    shard = dataclasses.replace(
        data, train_inputs=data.train_inputs[index::2], train_targets=data.train_targets[index::2]
    )
    torch.manual_seed(seed)
    return (
        task,
        (data, shard),
        task.build_model(),
        torch.Generator().manual_seed(10_000 * seed + index),
    )


def _train(
    task: Any,
    shard: Any,
    generator: torch.Generator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    every: int,
) -> dict[int, torch.Tensor]:
    """``steps`` steps on batches of 64; the parameters after every ``every``-th step."""
    snapshots = {}
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        task.loss(model, task.sample_batch(shard, generator, 64)).backward()
        optimizer.step()
        if step % every == 0:
            snapshots[step] = _flat(model)
    return snapshots


def _torchft_run(
    index: int, lighthouse: str, setting: Setting, steps: int, k: int, seed: int
) -> tuple[dict[int, torch.Tensor], dict[str, float], float]:
    from torch.distributed import TCPStore
    from torchft import Manager, ProcessGroupGloo
    from torchft.local_sgd import DiLoCo

    task, (data, shard), model, generator = _replica(index, seed)
    inner = torch.optim.AdamW(model.parameters(), lr=2e-3)
    fragments = [model] if setting.fragments == 1 else [model.features, model.classifier]

    def outer_sgd(module: torch.nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(
            module.parameters(),
            lr=setting.outer_lr,
            momentum=setting.momentum,
            nesterov=setting.momentum > 0,
        )

    outer: Any = outer_sgd(model)
    if not setting.shared_outer:
        outer = [outer_sgd(fragment) for fragment in fragments]
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
        init_sync=False,  # the replicas start alike (same seed); else replica 1 would load
        # replica 0's model and inner state at the first quorum (the first sync)
        timeout=timeout,
        quorum_timeout=timeout,
        connect_timeout=timeout,
    )
    started = time.perf_counter()
    with DiLoCo(
        manager, fragments, inner, outer, sync_every=k, fragment_sync_delay=setting.delay
    ) as diloco:
        snapshots = _train(task, shard, generator, model, inner, steps, k // setting.fragments)
    seconds = time.perf_counter() - started
    # The global weights (each fragment's at its last sync), as DistributedLookahead's slow
    # weights: its restore_parameters() (a method of the fragments, not a public API).
    diloco._restore_parameters()
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, data)
    manager.shutdown(wait=False)
    return snapshots, metrics, seconds


def _our_run(
    index: int, setting: Setting, steps: int, k: int, seed: int
) -> tuple[dict[int, torch.Tensor], dict[str, float], float]:
    from torch_lookahead.distributed import DistributedLookahead

    task, (data, shard), model, generator = _replica(index, seed)
    if setting.fragments == 1:
        params: Any = model.parameters()
    else:  # torchft's fragment i is this fragment (i + 1) % F (the module docstring)
        params = [
            {"params": list(module.parameters()), "lookahead_fragment": (i + 1) % 2}
            for i, module in enumerate((model.features, model.classifier))
        ]
    opt = DistributedLookahead(
        torch.optim.AdamW(params, lr=2e-3),
        k=k,
        alpha=setting.outer_lr,
        outer_momentum=setting.momentum,
        nesterov=setting.momentum > 0,
        sync_delay=setting.delay,
    )
    started = time.perf_counter()
    snapshots = _train(task, shard, generator, model, opt, steps, k // setting.fragments)
    seconds = time.perf_counter() - started
    # A delayed sync launched at the last step is applied now (with no local progress after it),
    # as torchft's last sync was: the private _apply_pending, since sync() would add a sync.
    for pending in list(opt._pending):
        opt._apply_pending(pending)
    model.eval()
    with torch.no_grad(), opt.slow_weights():
        metrics = task.evaluate(model, data)
    return snapshots, metrics, seconds


def run_replica(
    index: int, lighthouse: str, setting: Setting, steps: int, k: int, seed: int, store: str,
    results: Any,
) -> None:  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    theirs = _torchft_run(index, lighthouse, setting, steps, k, seed)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=index, world_size=2)
    ours = _our_run(index, setting, steps, k, seed)
    dist.destroy_process_group()
    differences = {
        step: float((theirs[0][step] - ours[0][step]).abs().max()) for step in sorted(theirs[0])
    }
    results.put((index, differences, theirs[1:], ours[1:]))


def interval_95(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5


def _largest(values: list[float]) -> float:
    """The largest value, NaN if there is one."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _cell(values: list[float]) -> str:
    diverged = sum(not math.isfinite(v) for v in values)
    if diverged:
        return f"NaN ({diverged} of {len(values)} seeds)"
    return f"{statistics.fmean(values):.4f} ± {interval_95(values):.4f}"


def main() -> None:
    from torchft._torchft import LighthouseServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    context = mp.get_context("spawn")
    rows, per_seed, differing = [], [], []
    for setting in SETTINGS:
        outcomes = []
        for seed in args.seeds:
            lighthouse = LighthouseServer(bind="[::]:0", min_replicas=2)
            results = context.Queue()
            with tempfile.TemporaryDirectory() as directory:
                store = os.path.join(directory, "store")
                replicas = [
                    context.Process(
                        target=run_replica,
                        args=(
                            i,
                            lighthouse.address(),
                            setting,
                            args.steps,
                            args.k,
                            seed,
                            store,
                            results,
                        ),
                    )
                    for i in range(2)
                ]
                for replica in replicas:
                    replica.start()
                outcome = sorted(results.get(timeout=900) for _ in replicas)
                for replica in replicas:
                    replica.join(timeout=30)
            lighthouse.shutdown()
            outcomes.append(outcome)
        first_sync = [o[r][1][min(o[r][1])] for o in outcomes for r in (0, 1)]
        # At step 2H every fragment has synced twice: the outer momentum has acted on a buffer.
        second_sync = [o[r][1][2 * args.k] for o in outcomes for r in (0, 1)]
        last_sync = [o[r][1][max(o[r][1])] for o in outcomes for r in (0, 1)]
        theirs = [o[0][2][0] for o in outcomes]
        ours = [o[0][3][0] for o in outcomes]
        for i, name in ((2, "torchft"), (3, "DistributedLookahead")):
            if any(o[0][i][0] != o[1][i][0] for o in outcomes):  # NaN != NaN, too
                differing.append(
                    f"{name}'s replicas did not end with the same weights, or these hold NaN: "
                    + setting.label
                )
        compared = " | ".join(f"{_largest(d):.1e}" for d in (first_sync, second_sync, last_sync))
        if setting.delay:
            compared = "(two rules) | (two rules) | (two rules)"
        rows.append(
            f"| {setting.label} | {compared} "
            f"| {_cell([m['val_accuracy'] for m in theirs])} "
            f"| {_cell([m['val_accuracy'] for m in ours])} "
            f"| {_cell([m['val_loss'] for m in theirs])} | {_cell([m['val_loss'] for m in ours])} "
            f"| {statistics.fmean(o[0][2][1] for o in outcomes):.1f} "
            f"| {statistics.fmean(o[0][3][1] for o in outcomes):.1f} |"
        )
        per_seed.append(
            f"- {setting.label}: "
            + ", ".join(
                f"seed {seed} ({a['val_loss']:.4f}, {b['val_loss']:.4f})"
                for seed, a, b in zip(args.seeds, theirs, ours, strict=True)
            )
        )
    from importlib.metadata import version

    print("# torchft's DiLoCo beside DistributedLookahead on the digits task\n")
    print("Produced by `reports/distributed-digits/torchft_peer.py` (its docstring has the setup")
    print(
        f"and the settings) with `{' '.join(sys.argv[1:]) or '(defaults)'}`, torchft "
        f"{version('torchft')}, torch {torch.__version__}, gloo on CPU.\n"
    )
    print(
        f"{args.steps} AdamW steps (lr 2e-3, batches of 64) on each of 2 replicas, H = k = "
        f"{args.k}, seeds {args.seeds}; the same data and initial weights for both. "
        "Evaluated: the global weights, which both replicas share (DistributedLookahead: the "
        "slow weights; torchft: each fragment's weights at its last sync). "
        '"Max abs difference": the largest difference '
        "between the two implementations' parameters after the first sync step, at step 2H "
        "(where the outer momentum has acted on a non-zero buffer) and after the last one (over "
        "both replicas and the seeds); the delayed row is two different rules "
        "(module docstring). Wall s: each run's training time on this shared 2-core machine "
        "(torchft's includes its quorum with the lighthouse at every sync), no link.\n"
    )
    print(
        "| setting | max abs difference after the first sync | at step 2H (every fragment "
        "synced twice) | after the last | torchft val accuracy | ours | torchft val loss | ours "
        "| torchft wall s | ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if differing:  # a model with NaN counts as different
        print("\n" + "\n".join(f"- {line}" for line in differing))
    print("\nFinal val loss per seed (torchft, ours):\n")
    print("\n".join(per_seed))


if __name__ == "__main__":
    main()
