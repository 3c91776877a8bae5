"""The options of options.md over a link that the kernel shapes, beside SimulatedLink's model.

Each of the two gloo ranks runs in a network namespace of its own, joined by a veth pair, so
that everything the ranks exchange crosses the pair (on one host, traffic between two local
addresses would go through ``lo`` and bypass it). Each rank shapes its own end of the pair with a
token-bucket filter (``tc qdisc ... tbf rate 16mbit``): 2 MB/s in each direction, as
SimulatedLink's ``--link-mb-per-s 2``, but with real sockets, real queueing and real overlap of
computation and communication. This kernel has no ``netem`` qdisc, so no latency is added: the
model beside it is SimulatedLink at 0 ms (options.md's runs add 20 ms to every collective).

For every seed and option, three runs of the digits task in turn (so that a change in the load of
the shared machine hits the three alike): the unshaped pair ("compute": no link delay at all),
the unshaped pair with SimulatedLink(0 ms, 2 MB/s) ("modelled"), and the shaped pair without the
model ("measured"). First, a plain all-reduce of 4 MB is timed over the unshaped and the shaped
pair, and the bytes its rank sent on its end of the pair are read from the interface's counters:
the check that gloo's traffic goes through the shaped link.

Needs no privileges: the script runs itself in a new user, mount and network namespace
(``unshare -rnm``), creates the two rank namespaces and the veth pair there with ``ip netns``
(over a private tmpfs ``/run``), and everything goes away with it. Run from the repository root::

    PYTHONPATH=src:lab/src nice -n 10 python reports/distributed-digits/shaped_link.py \\
        --seeds 0 1 2 --out reports/distributed-digits

It writes ``shaped_link.md`` and ``shaped_link.json`` into ``--out`` (``--name`` changes the
name). ``--rows`` runs some options only; ``--slow-start-after-idle 0`` turns off TCP's return
to slow start after an idle period (``net.ipv4.tcp_slow_start_after_idle``, on by default) in
the ranks' namespaces.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "examples"))

from distributed_digits import (  # noqa: E402
    OPTIONS_COMPARISON,
    Method,
    SimulatedLink,
    build_task,
    interval_95,
    train,
)

from torch_lookahead.distributed import DistributedLookahead  # noqa: E402
from torch_lookahead.lookahead import STEP_KEY  # noqa: E402

NAMESPACES = ("lookahead_r0", "lookahead_r1")
INTERFACES = ("lookahead_va", "lookahead_vb")
ADDRESSES = ("10.23.0.1", "10.23.0.2")
PORT = 29533
MODES = ("compute", "modelled", "measured")
CHECK_BYTES = 4_000_000
SLOW_START_AFTER_IDLE = "/proc/sys/net/ipv4/tcp_slow_start_after_idle"
SECOND_PHASE_AT_APPLY = " (second phase at apply)"
_DELAYED = Method("lookahead", k=20, alpha=1.0, sync_delay=5)
OPTIONS = [(m.label, m) for m in OPTIONS_COMPARISON] + [
    (_DELAYED.label + SECOND_PHASE_AT_APPLY, _DELAYED)
]
"""The options of options.md, and the delayed one as it was before its second phase overlapped
(commit cfdab35): (label, method)."""


@contextlib.contextmanager
def _second_phase_at_apply(active: bool) -> Iterator[None]:
    """If ``active``, DistributedLookahead applies its due delayed syncs without advancing them
    half-way, so that the exchange's second phase is launched (and waited for) when the sync is
    applied, as before commit cfdab35. Patches a private method: an ablation, not an API."""
    if not active:
        yield
        return
    original = DistributedLookahead._apply_due

    def apply_due(self: DistributedLookahead) -> None:
        for pending in [p for p in self._pending if p.groups[0][STEP_KEY] >= self.sync_delay]:
            self._apply_pending(pending)

    DistributedLookahead._apply_due = apply_due  # type: ignore[method-assign]
    try:
        yield
    finally:
        DistributedLookahead._apply_due = original  # type: ignore[method-assign]


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------- in each rank
def _shape(interface: str, rate_mbit: float | None) -> None:
    """Put this rank's end of the pair behind a tbf of ``rate_mbit`` (None: remove it)."""
    if rate_mbit is None:
        subprocess.run(["tc", "qdisc", "del", "dev", interface, "root"], capture_output=True)
        return
    # burst: 4 KB (two 1,500-byte frames); latency 400 ms bounds the queue (~800 KB).
    _run(
        "tc", "qdisc", "replace", "dev", interface, "root", "tbf",
        "rate", f"{rate_mbit}mbit", "burst", "32kbit", "latency", "400ms",
    )  # fmt: skip


def _sent_bytes(interface: str) -> int:
    return int(Path(f"/sys/class/net/{interface}/statistics/tx_bytes").read_text())


def _qdisc_sent(interface: str) -> int:
    """Bytes the root qdisc of ``interface`` has sent (``tc -s``)."""
    match = re.search(r"Sent (\d+) bytes", _run("tc", "-s", "qdisc", "show", "dev", interface))
    return int(match.group(1)) if match else 0


def _check_link(interface: str, rate_mbit: float) -> dict[str, Any]:
    """Time a plain all-reduce of 4 MB unshaped and shaped (3 times each), with the bytes this
    rank sent for each."""
    tensor = torch.ones(CHECK_BYTES // 4)
    out: dict[str, Any] = {}
    for label, rate in (("unshaped", None), ("shaped", rate_mbit)):
        _shape(interface, rate)
        times = []
        sent, queued = _sent_bytes(interface), _qdisc_sent(interface)
        for _ in range(3):
            dist.barrier()  # the peer has received everything: nothing is left in the queue
            started = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - started)
        dist.barrier()
        out[label] = {
            "seconds": times,
            "interface_bytes_sent": (_sent_bytes(interface) - sent) / 3,
            "qdisc_bytes_sent": (_qdisc_sent(interface) - queued) / 3,
        }
    _shape(interface, None)
    return out


def _communicating_steps(
    logs: list[list[tuple[float, int]]], delay: int, compute_typicals: list[float]
) -> dict[str, Any]:
    """The time that the steps which wait for the link take beyond a typical step.

    Those steps: the steps that exchanged bytes (a sync, or a delayed sync's launch) and, with a
    delay d, the steps d later (where a delayed sync is collected and applied). A typical step:
    the median of this run's other steps, or (DDP, whose every step communicates) of the same
    seed's compute run. At each such step the smaller of the two ranks' excess counts: the rank
    that arrived last waited for the link only, the other also for it. Only those steps enter
    the sum, not the whole run's noise.
    """
    log = logs[0]
    launched = {i for i, (_, sent) in enumerate(log) if sent}
    waiting = set(launched)
    for later in {delay, (delay + 1) // 2}:
        waiting |= {i + later for i in launched if i + later < len(log)}
    typicals = []
    for rank_log, compute_typical in zip(logs, compute_typicals, strict=True):
        others = [t for i, (t, _) in enumerate(rank_log) if i not in waiting]
        typicals.append(statistics.median(others) if others else compute_typical)
    return {
        "communicating_steps": len(waiting),
        "typical_step_s": typicals,
        "communicating_excess_s": sum(
            min(rank_log[i][0] - t for rank_log, t in zip(logs, typicals, strict=True))
            for i in waiting
        ),
    }


def rank_main(args: argparse.Namespace) -> None:
    rank = args.rank
    interface = INTERFACES[rank]
    os.environ.update(
        MASTER_ADDR=ADDRESSES[0], MASTER_PORT=str(PORT), RANK=str(rank), WORLD_SIZE="2",
        GLOO_SOCKET_IFNAME=interface,
    )  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    task = build_task("digits")
    data = task.load(None, "cpu")
    check = _check_link(interface, args.rate_mbit)
    runs: list[dict[str, Any]] = []
    model = SimulatedLink(0.0, args.rate_mbit * 1e6 / 8)
    qdisc_bytes, typicals = 0, [0.0, 0.0]
    try:
        for seed in args.seeds:
            for label, method in [OPTIONS[i] for i in args.rows]:
                for mode in MODES:
                    _shape(interface, args.rate_mbit if mode == "measured" else None)
                    before = _qdisc_sent(interface)
                    log: list[tuple[float, int]] = []
                    with _second_phase_at_apply(label != method.label):
                        curve = train(
                            method, task, data, steps=args.steps, batch_size=64,
                            lr=task.learning_rate("adamw"), eval_every=args.steps, seed=seed,
                            link=model if mode == "modelled" else None, step_log=log,
                        )  # fmt: skip
                    if mode == "measured":
                        qdisc_bytes += _qdisc_sent(interface) - before
                    logs: list[Any] = [None, None]
                    dist.all_gather_object(logs, log)  # after the run: not timed
                    if mode == "compute":
                        typicals = [statistics.median(t for t, _ in x) for x in logs]
                    if rank == 0:
                        final = curve[-1]
                        runs.append(
                            {"seed": seed, "mode": mode, "method": label, **final,
                             **_communicating_steps(logs, method.sync_delay, typicals)}
                        )  # fmt: skip
                        print(
                            f"seed {seed} {mode:<9} {label:<62} {final['train_seconds']:6.1f} s",
                            flush=True,
                        )
    finally:
        _shape(interface, None)
    sent = [torch.tensor(qdisc_bytes)]
    dist.all_reduce(sent[0])
    if rank == 0:
        Path(args.result).write_text(
            json.dumps({"check": check, "runs": runs, "qdisc_bytes_both_ranks": int(sent[0])})
        )
    dist.destroy_process_group()


# ---------------------------------------------------------------------------- the namespaces
def inside_main(args: argparse.Namespace) -> None:
    """In the new user+mount+network namespace: the two rank namespaces, the pair, the ranks."""
    _run("mount", "-t", "tmpfs", "lookahead-netns", "/run")  # private to this mount namespace
    os.makedirs("/run/netns")
    for namespace in NAMESPACES:
        _run("ip", "netns", "add", namespace)
    a, b = INTERFACES
    _run("ip", "link", "add", a, "netns", NAMESPACES[0], "type", "veth", "peer", "name", b,
         "netns", NAMESPACES[1])  # fmt: skip
    for namespace, interface, address in zip(NAMESPACES, INTERFACES, ADDRESSES, strict=True):
        _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", interface)
        _run("ip", "-n", namespace, "link", "set", interface, "up")
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        if args.slow_start_after_idle is not None:  # per network namespace
            _run("ip", "netns", "exec", namespace, "sh", "-c",
                 f"echo {args.slow_start_after_idle} > {SLOW_START_AFTER_IDLE}")  # fmt: skip
    ranks = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                NAMESPACES[rank],
                sys.executable,
                __file__,
                "--rank",
                str(rank),
                *args.forwarded,
            ],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for rank in range(2)
    ]
    codes = [rank.wait() for rank in ranks]
    for namespace in NAMESPACES:
        _run("ip", "netns", "del", namespace)
    if any(codes):
        raise SystemExit(f"ranks exited with {codes}")


# ---------------------------------------------------------------------------- the report
def _seconds(runs: list[dict[str, Any]], label: str, mode: str) -> list[float]:
    return [r["train_seconds"] for r in runs if r["method"] == label and r["mode"] == mode]


def _cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {interval_95(values):.1f}"


def _option_cells(method: Method, label: str) -> str:
    if method.name == "ddp":  # with or without its bf16_compress_hook
        return f"DDP | - | - | {method.compression or 'float32'}"
    delay = f"{method.sync_delay}" + (" (second phase at apply)" if label != method.label else "")
    return (
        f"k={method.k}, alpha={method.alpha} | {method.fragments} | {delay} "
        f"| {method.compression or 'float32 (exact)'}"
    )


def _tcp_text(slow_start_after_idle: int | None) -> str:
    if slow_start_after_idle is None:
        return (
            "TCP as the kernel sets it: `net.ipv4.tcp_slow_start_after_idle` = 1, so a "
            "connection idle for longer than its retransmission timeout restarts in slow start."
        )
    return (
        f"`net.ipv4.tcp_slow_start_after_idle` = {slow_start_after_idle} in the ranks' "
        "namespaces (set by the script; the kernel's default is 1, a connection idle for longer "
        "than its retransmission timeout restarting in slow start)."
    )


def _seconds_list(values: list[float], digits: int) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def write_report(args: argparse.Namespace, result: dict[str, Any], seconds: float) -> None:
    runs, check = result["runs"], result["check"]
    rate = args.rate_mbit * 1e6 / 8
    rows = []
    for label, method in [OPTIONS[i] for i in args.rows]:
        mine = [r for r in runs if r["method"] == label]
        by_mode = {m: [r for r in mine if r["mode"] == m] for m in MODES}
        wall = {m: [r["train_seconds"] for r in by_mode[m]] for m in MODES}
        excess = {m: [r["communicating_excess_s"] for r in by_mode[m]] for m in MODES}
        link = {  # per seed: the communicating steps' excess beyond the compute run's
            m: [a - b for a, b in zip(excess[m], excess["compute"], strict=True)]
            for m in ("modelled", "measured")
        }
        same = all(
            len({r["val_loss"] for r in mine if r["seed"] == seed}) == 1 for seed in args.seeds
        )
        megabytes = mine[0]["bytes_all_reduced"] / 1e6
        rows.append(
            f"| {_option_cells(method, label)} | {megabytes:.2f} | {megabytes * 1e6 / rate:.1f} "
            f"| {_cell(wall['compute'])} | {_cell(wall['modelled'])} | {_cell(wall['measured'])} "
            f"| {mine[0]['communicating_steps']} | {_cell(link['modelled'])} "
            f"| {_cell(link['measured'])} | {'yes' if same else 'NO'} |"
        )
    shaped, unshaped = check["shaped"], check["unshaped"]
    expected = shaped["interface_bytes_sent"] / (args.rate_mbit * 1e6 / 8)
    command = (
        "PYTHONPATH=src:lab/src nice -n 10 python reports/distributed-digits/shaped_link.py "
        + (" ".join(args.command_args))
    )
    tcp = _tcp_text(args.slow_start_after_idle)
    text = f"""# DistributedLookahead's options over a shaped link: measured beside modelled

Produced by

```
{command}
```

in {seconds:.0f} s on {platform.machine()} CPU (torch {torch.__version__}, gloo, 2 ranks on one
machine of 2 cores shared with other jobs while it ran: wall times are noisy), by the script's
own namespaces (its docstring says how; no privileges needed).

**The link.** Each rank runs in its own network namespace; the two are joined by a veth pair, and
each rank's end sends through a token-bucket filter of {args.rate_mbit:g} Mbit/s
({args.rate_mbit / 8:g} MB/s in each direction, as options.md's `--link-mb-per-s 2`). The kernel's
`netem` qdisc is not available here, so **no latency is added** (options.md's model adds 20 ms
to every collective; the modelled column here uses 0 ms to match the shaped link). {tcp} Check: a
plain `all_reduce` of {CHECK_BYTES / 1e6:g} MB took {_seconds_list(unshaped["seconds"], 3)} s over the unshaped
pair and {_seconds_list(shaped["seconds"], 2)} s over the shaped one (three times each); for each, rank 0
sent {shaped["interface_bytes_sent"] / 1e6:.2f} MB on its end of the pair (with a barrier), all through
its filter ({shaped["qdisc_bytes_sent"] / 1e6:.2f} MB; {expected:.2f} s at {args.rate_mbit / 8:g} MB/s).
Over all the measured runs the two ranks' filters passed
{result["qdisc_bytes_both_ranks"] / 1e6:.1f} MB.

**The runs.** The digits task and training of options.md: {args.steps} steps of AdamW, batches of
64 per rank, each rank on its own half of the training set, seeds {args.seeds}; one evaluation,
after the last step. For each seed and option, three runs in turn: "compute" over the unshaped
pair (no link delay at all), "modelled" over the unshaped pair through `SimulatedLink(0 ms,
{rate / 1e6:g} MB/s)` (examples/distributed_digits.py: a blocking collective lasts at least its wire
bytes / bandwidth, an asynchronous one is waited for at least that long after its launch; DDP's
gradient all-reduce sleeps that long in its hook), and "measured" over the shaped pair. The last
row is the delayed option as it ran before commit cfdab35, which launches the exchange's second
phase half-way through the delay: there the second phase waited for the sync's application
(the script patches the private `_apply_due` for it).

"MB per rank": the payload each rank exchanged; with 2 ranks each rank also sends that much on
the wire (a ring all-reduce, or the two phases of DistributedLookahead's exchange, each sending
(W−1)/W of it), so "bytes / rate" is the transfer time if nothing overlapped it. "Wall s": rank
0's time in training steps (mean ± 95% t-interval over the seeds), noisy here: other jobs shared
the 2 cores. "Link s" is steadier: the steps that wait for the link (those that exchanged bytes
and, with a delay d, the steps ⌈d/2⌉ later, where the first phase is waited for and the second
launched, and d later, where the result is collected; their number is in "waiting steps") take
this much longer than a typical step of the same run (the median of its other steps; DDP: of the
compute run), on the rank that waited less at each (the rank that arrived last at a collective
waits for the link only, the other also for the slower rank), minus the same excess in the
compute run of the seed (the collectives' and outer step's own cost): the time the link adds (mean ± 95% over the seeds,
paired). "Same model": the three runs of each seed end with the same validation loss.

| method | fragments F | sync delay d | communication | MB per rank | bytes / rate s | compute wall s | modelled wall s | measured wall s | waiting steps | modelled link s | measured link s | same model |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Raw runs: `{args.name}.json`.
"""
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rate-mbit", type=float, default=16.0)
    parser.add_argument("--out", type=Path, default=REPOSITORY / "reports/distributed-digits")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--rows", type=int, nargs="+", default=list(range(len(OPTIONS))),
        help="the options to run, by index in OPTIONS (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--slow-start-after-idle", type=int, choices=(0, 1), default=None,
        help="set net.ipv4.tcp_slow_start_after_idle in the ranks' namespaces (default: the "
        "kernel's, 1)",
    )  # fmt: skip
    parser.add_argument("--name", default="shaped_link", help="the report's file name, no suffix")
    parser.add_argument(
        "--render", action="store_true", help="rewrite NAME.md from NAME.json, without running"
    )
    args = parser.parse_args()
    if args.render:
        result = json.loads((args.out / f"{args.name}.json").read_text())
        recorded = parser.parse_args(result["command_args"])
        recorded.command_args = result["command_args"]
        recorded.out, recorded.name = args.out, args.name  # written where this command says
        write_report(recorded, result, result["wall_seconds"])
        return
    if args.rank is not None:
        rank_main(args)
        return
    args.forwarded = [
        "--seeds", *map(str, args.seeds), "--steps", str(args.steps),
        "--rate-mbit", f"{args.rate_mbit:g}", "--rows", *map(str, args.rows),
    ]  # fmt: skip
    if args.slow_start_after_idle is not None:
        args.forwarded += ["--slow-start-after-idle", str(args.slow_start_after_idle)]
    if args.inside:
        args.forwarded += ["--result", args.result]
        inside_main(args)
        return
    args.command_args = sys.argv[1:]
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out.resolve() / f"{args.name}.partial.json"
    started = time.perf_counter()
    subprocess.run(
        ["unshare", "-rnm", sys.executable, __file__, "--inside", "--result", str(result_path),
         *args.forwarded],
        check=True,
    )  # fmt: skip
    result = json.loads(result_path.read_text())
    result_path.unlink()
    result["command_args"] = args.command_args
    result["wall_seconds"] = time.perf_counter() - started
    write_report(args, result, result["wall_seconds"])
    print(f"report: {args.out / args.name}.md")


if __name__ == "__main__":
    main()
