"""A training job for torchrun that checkpoints with DCP and resumes from its last checkpoint.

    torchrun --standalone --nproc_per_node=2 --max-restarts=1 tests/distributed/_fault_job.py \\
        --out DIR [--kill-at STEP]

With ``--kill-at``, rank 1 of the first attempt kills itself with SIGKILL after that step; torchrun
restarts both ranks, which resume from the last complete checkpoint. Rank 0 writes the final
weights, slow weights and counters to ``DIR/final.pt``. Each step's data depend on (rank, step)
only, so an interrupted job and an uninterrupted one that checkpointed at the same steps end with
the same bits.
"""

from __future__ import annotations

import argparse
import os
import signal
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from tests._slow import slow_weights_of
from torch_lookahead.distributed import (
    DistributedLookahead,
    DistributedLookaheadState,
    fragment_param_groups,
)

DONE = "complete"


def _build() -> tuple[torch.nn.Module, DistributedLookahead]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Linear(16, 3)
    )
    opt = DistributedLookahead(
        torch.optim.AdamW(fragment_param_groups(model, 2), lr=0.01),
        k=4,
        alpha=0.7,
        outer_momentum=0.6,
        nesterov=True,
        sync_delay=1,
    )
    return model, opt


def _last_checkpoint(root: Path) -> tuple[int, Path] | None:
    complete = [p for p in root.glob("step_*") if (p / DONE).exists()]
    if not complete:
        return None
    latest = max(complete, key=lambda p: int(p.name.split("_")[1]))
    return int(latest.name.split("_")[1]), latest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    # The restarted ranks meet in the same store as the first attempt did: without a prefix of
    # its own, gloo's rendezvous may read an address that a dead rank published.
    store, rank, world_size = next(dist.rendezvous("env://"))
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore(f"attempt_{attempt}", store),
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=30),
    )
    model, opt = _build()
    root = args.out / "checkpoints"
    start = 0
    found = _last_checkpoint(root)
    if found is not None:
        start, path = found
        dcp.load({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=str(path))
    if rank == 0:
        with open(args.out / "attempts.txt", "a") as log:
            log.write(f"attempt {attempt} starts at step {start}\n")
    for step in range(start, args.steps):
        generator = torch.Generator().manual_seed(1000 * rank + step)
        x = torch.randn(16, 6, generator=generator)
        y = torch.randn(16, 3, generator=generator)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        done = step + 1
        if done % args.every == 0:
            path = root / f"step_{done}"
            dcp.save({"train": DistributedLookaheadState(model, opt)}, checkpoint_id=str(path))
            dist.barrier()
            if rank == 0:
                (path / DONE).touch()
        if args.kill_at == done and attempt == 0 and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    if rank == 0:
        torch.save(
            {
                "params": [p.detach().clone() for p in model.parameters()],
                "slow": slow_weights_of(opt),
                "steps": [g["lookahead_step"] for g in opt.param_groups],
            },
            args.out / "final.pt",
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
