"""Step time of a DML cohort in one process vs spread over N processes (torch.distributed).

What is timed: ``--steps`` DML training steps (after ``--warmup`` untimed ones) of a cohort of
``--peers`` on a synthetic batch (``--batch`` images of 3 x ``--image-size``^2, ``--classes``
classes), through dmlkit's own step (``dmlkit.methods.DML.train_step``):

* ``single``: one process holds every peer (``torch.get_num_threads()`` threads on the CPU: all
  cores, unless OMP_NUM_THREADS says otherwise);
* ``cohort``: ``--nproc`` processes launched with ``torchrun`` (one thread each on the CPU, as
  torchrun sets it; one GPU each on CUDA), K / N peers per process, logits exchanged with one
  all_gather per step (:class:`dmlkit.distributed.CohortParallel`);
* ``data`` (with ``--modes single,cohort,data``): every process holds the whole cohort and
  ``batch / N`` images, gradients all-reduced.

Reported: median and mean milliseconds per step (rank 0's clock; the exchange makes every
rank wait for the slowest), and the ratio to ``single`` (> 1: the processes are faster).
``--rounds R`` measures every mode R times, round by round (a burst of load on a shared machine
then hits one round of each mode), and reports the median round. With ``--out FILE.json`` the
rows are also written as JSON, and the table next to it as ``FILE.md``.

Where to expect a gain: on the CPU, N processes of one thread compete with one process of N
threads for the same cores, so cohort mode wins only where a peer's kernels do not use the
threads well (small convolutions, small batches). On N GPUs every peer gets its own device.
The ``sequential`` update makes the processes take turns (peer k+1 waits for peer k's new
logits), so it gains little from more processes; ``simultaneous`` is the default here.

    python benchmarks/distributed_cpu.py                       # 2 processes, ResNet-32 pair
    python benchmarks/distributed_cpu.py --peers small_cnn,small_cnn --steps 5   # smoke
    python benchmarks/distributed_cpu.py --device cuda --nproc 2   # one GPU per process
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dmlkit.bench import median_round
from dmlkit.machine import cpu_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", default="resnet32,resnet32", help="comma-separated architectures")
    p.add_argument("--nproc", type=int, default=2, help="processes of the distributed modes")
    p.add_argument("--modes", default="single,cohort", help="any of single,cohort,data")
    p.add_argument("--update", default="simultaneous", choices=["simultaneous", "sequential"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every mode; median reported")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last peers, as dml train runs them (train.channels_last)",
    )
    p.add_argument("--out", help="also write the rows as JSON to this file (and FILE.md)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # single | cohort | data
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)  # where rank 0 writes
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# one measurement, in this process (the single mode, or one rank under torchrun)


def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Time ``args.steps`` steps of the cohort in ``mode``; rank 0's numbers."""
    from dmlkit.cohort import Cohort, PeerSpec
    from dmlkit.config import DistributedConfig, MethodConfig, OptimConfig
    from dmlkit.distributed import init_distributed
    from dmlkit.methods import DML

    device = torch.device(args.device)
    dist_mode = "none" if mode == "single" else mode
    ctx = init_distributed(DistributedConfig(mode=dist_mode, timeout_s=300), device)
    archs = args.peers.split(",")
    size = (args.image_size, args.image_size)
    specs = [
        PeerSpec(f"peer{i}_{a}", a, args.classes, 3, seed=1 + 17 * i, image_size=size)
        for i, a in enumerate(archs)
    ]
    optim = [OptimConfig(schedule="constant")] * len(specs)
    mine = ctx.peer_slice(len(specs))
    local = Cohort(specs[mine], optim[mine], 1.0, ctx.device, channels_last=args.channels_last)
    cohort = ctx.wrap_cohort(local, specs, optim, 1.0)
    method = DML(cohort, MethodConfig(update=args.update), sync=ctx.step_sync(args.batch))
    g = torch.Generator().manual_seed(0)  # the same batch in every process
    x = torch.randn(args.batch, 3, *size, generator=g).to(ctx.device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(ctx.device)
    x, y = ctx.shard(x, y)
    cohort.train()

    def sync() -> None:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        if ctx.world > 1:
            torch.distributed.barrier()

    for _ in range(args.warmup):
        method.train_step(x, y)
    sync()
    times = []
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        method.train_step(x, y)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        times.append(time.perf_counter() - t0)
    sync()
    total = time.perf_counter() - start
    row = {
        "mode": mode,
        "processes": ctx.world,
        "threads_per_process": torch.get_num_threads(),
        "peers": len(specs),
        "peers_per_process": len(local),
        "batch_per_process": len(y),
        "update": args.update,
        "channels_last": args.channels_last,
        "ms_per_step_median": 1000 * statistics.median(times),
        "ms_per_step_mean": 1000 * total / args.steps,
        "device": str(ctx.device),
    }
    ctx.close()
    return row


# ------------------------------------------------------------------------------------------------
# the driver: each mode in its own process(es), then the table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _passthrough(args: argparse.Namespace) -> list[str]:
    keys = ["peers", "update", "batch", "classes", "image_size", "steps", "warmup", "device"]
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in keys]
    return [*flags, "--channels-last" if args.channels_last else "--no-channels-last"]


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Run one mode in fresh processes (no state shared between the measurements)."""
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        worker = [script, *_passthrough(args), f"--worker={mode}", f"--result={result}"]
        if mode == "single":
            cmd = [sys.executable, *worker]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={args.nproc}",
                "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}",
                *worker,
            ]
        env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0 or not result.is_file():
            sys.exit(f"{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        row = measure(args, args.worker)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(args.result).write_text(json.dumps(row))
        return 0
    if args.device.startswith("cuda") and args.nproc > torch.cuda.device_count():
        sys.exit(
            f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPU(s) here (NCCL: one each)"
        )
    k = len(args.peers.split(","))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "cohort" in modes and k % args.nproc:
        sys.exit(f"cohort mode: {k} peers do not split over {args.nproc} processes")
    rounds = []
    for r in range(args.rounds):
        rounds.append([run_mode(args, m) for m in modes])
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{row['mode']} {row['ms_per_step_median']:.1f} ms" for row in rounds[-1]),
            file=sys.stderr,
            flush=True,
        )
    rows = [
        median_round([rnd[i] for rnd in rounds], "ms_per_step_median") for i in range(len(modes))
    ]
    base = next((r for r in rows if r["mode"] == "single"), None)
    for r in rows:
        r["speedup_vs_single"] = (
            base["ms_per_step_median"] / r["ms_per_step_median"] if base else None
        )
    cpu = cpu_name()
    lines = [
        f"# {args.peers} ({args.update}), batch {args.batch}, {args.image_size}x"
        f"{args.image_size}, {args.classes} classes, "
        f"{'channels-last' if args.channels_last else 'NCHW'}; {args.steps} steps after "
        f"{args.warmup}; median of {args.rounds} round(s); {args.device} ({cpu}, "
        f"{os.cpu_count()} cores), torch {torch.__version__}",
        "",
        "Command: `python benchmarks/distributed_cpu.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
    ]
    head = ["mode", "processes x threads", "peers/process", "batch/process", "ms/step median"]
    lines.append("| " + " | ".join([*head, "mean", "vs single", "every round"]) + " |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['speedup_vs_single']:.2f}x" if r["speedup_vs_single"] else "-"
        every = ", ".join(f"{v:.0f}" for v in r["round_ms_per_step_median"])
        lines.append(
            f"| {r['mode']} | {r['processes']} x {r['threads_per_process']} | "
            f"{r['peers_per_process']} | {r['batch_per_process']} | "
            f"{r['ms_per_step_median']:.1f} | {r['ms_per_step_mean']:.1f} | {ratio} | {every} |"
        )
    print("\n".join(lines))
    if args.out:
        meta = {
            "argv": sys.argv,
            "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
