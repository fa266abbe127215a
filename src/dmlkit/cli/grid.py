"""``dml grid`` and the launch flags it shares with ``dml reproduce`` (``--jobs``, ``--launcher``).

Nothing heavy at module level: the parsers are built for every ``dml`` command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from dmlkit.cli.summary import ignore_interrupts, plural
from dmlkit.errors import UserError

# What `dml reproduce` and `dml grid` use without --jobs: 1 (the cells one after another in the
# command's own process, as before --jobs existed) until benchmarks/grid_jobs.py has measured
# --jobs 2 / auto against it on a quiet machine; then set it to "auto" (or a number) here and
# update the README's printed time of its first command.
DEFAULT_JOBS: int | str = 1


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--launcher`` and the cluster settings, for ``reproduce`` and ``grid``."""
    g = parser.add_argument_group("where the cells run (docs/distributed.md)")
    g.add_argument(
        "--jobs",
        default=None,
        metavar="N|auto",
        help=f"cells at once, each in its own process (default {DEFAULT_JOBS}; 1: one after "
        "another in this process). auto: one per visible GPU, else one per CPU core (1 thread "
        "each). Locally each cell gets cores/N threads unless train.threads is set. With "
        "--launcher ray / slurm: the most in flight (default: no cap, the cluster decides)",
    )
    g.add_argument(
        "--launcher",
        default="local",
        help="local (default), ray (Ray tasks; RAY_ADDRESS or a local Ray) or slurm (a "
        "submitit job array); ray and slurm need --out on a filesystem the workers share",
    )
    g.add_argument("--cpus-per-cell", type=int, help="ray / slurm: CPUs each cell asks for")
    g.add_argument("--gpus-per-cell", type=int, help="ray / slurm: GPUs each cell asks for")
    g.add_argument("--partition", help="slurm: the partition")
    g.add_argument("--time", type=int, metavar="MINUTES", help="slurm: time limit per cell")
    g.add_argument(
        "--launcher-config",
        metavar="FILE",
        help="YAML with a slurm: block (partition, time, mem_gb, account, qos, constraint, "
        "additional, gpus_per_cell, cpus_per_cell) and/or a ray: block (gpus_per_cell, "
        "cpus_per_cell); a flag that says otherwise is a conflict",
    )


def launch_options(args: argparse.Namespace) -> Any:
    """The :class:`~dmlkit.experiments.launch.LaunchOptions` of the flags (checked)."""
    from dmlkit.config import load_yaml
    from dmlkit.experiments.launch import LaunchOptions, check_launcher, parse_jobs

    check_launcher(args.launcher)
    if args.jobs is not None:
        jobs = parse_jobs(args.jobs)
    else:  # on a cluster the scheduler decides how many run at once: no cap of ours
        jobs = parse_jobs(DEFAULT_JOBS if args.launcher == "local" else "auto")
    block: dict[str, Any] = {}
    if args.launcher_config:
        data = load_yaml(args.launcher_config)
        unknown = sorted(set(data) - {"slurm", "ray"})
        if unknown:
            raise UserError(
                f"--launcher-config {args.launcher_config}: unknown block {unknown[0]!r}; "
                f"use slurm: or ray:"
            )
        block = dict(data.get(args.launcher) or {})
    flags = {
        "cpus_per_cell": args.cpus_per_cell,
        "gpus_per_cell": args.gpus_per_cell,
        "partition": args.partition,
        "time": args.time,
    }
    for key, value in flags.items():
        if value is None:
            continue
        if key in block and block[key] != value:
            raise UserError(
                f"--{key.replace('_', '-')} {value} conflicts with {key}: {block[key]} in "
                f"--launcher-config {args.launcher_config}; set it in one place"
            )
        block[key] = value
    if args.launcher != "slurm" and (block.get("partition") or block.get("time")):
        raise UserError("--partition and --time are for --launcher slurm")
    cpus, gpus = block.pop("cpus_per_cell", None), block.pop("gpus_per_cell", None)
    for flag, v in (("--cpus-per-cell", cpus), ("--gpus-per-cell", gpus)):
        if v is not None and (not isinstance(v, int) or v < (1 if flag[2] == "c" else 0)):
            raise UserError(f"{flag} {v!r}: give a whole number (CPUs >= 1, GPUs >= 0)")
    if args.launcher == "ray" and block:
        raise UserError(f"ray settings: unknown key {sorted(block)[0]!r}")
    return LaunchOptions(
        jobs=jobs,
        launcher=args.launcher,
        cpus_per_cell=cpus,
        gpus_per_cell=gpus,
        slurm=block if args.launcher == "slurm" else {},
    )


def add_grid_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "grid",
        help="your own paired comparison: arms x sweep x seeds, results with 95 %% intervals",
        description="Train every --arm at every --sweep point for --seeds seeds (paired: the "
        "arms of one seed share initial weights and data order), then write results.md and "
        "results.csv with each arm's gain over the baseline and its 95 % interval.",
    )
    g.add_argument("-c", "--config", help="YAML config every run starts from (default: built-in)")
    g.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="an arm and its config changes, e.g. --arm dml:method.name=dml (several "
        "KEY=VALUE separated by spaces, quoted); two or more",
    )
    g.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run every arm at each value, e.g. --sweep method.mimicry_weight=0.5,1,2 "
        "(repeatable: every combination)",
    )
    g.add_argument("--baseline", help="the arm the others are compared with (default: first)")
    g.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    g.add_argument("--out", help="output folder (default: runs/grid-<config name>)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every run (not a key an --arm or --sweep sets)",
    )
    g.add_argument(
        "--scale", type=float, default=1.0, help="shrink epochs and data for a smoke run"
    )
    add_launch_flags(g)


def cmd_grid(args: argparse.Namespace) -> int:
    from dmlkit.config import load_yaml
    from dmlkit.experiments.grid import build_grid

    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale must be in (0, 1], got {args.scale}")
    launch = launch_options(args)
    base = load_yaml(args.config) if args.config else {}
    name = f"grid-{Path(args.config).stem}" if args.config else "grid"
    exp = build_grid(
        base,
        args.arm,
        args.sweep,
        seeds=args.seeds,
        baseline=args.baseline,
        overrides=args.overrides,
        name=name,
    )
    out = Path(args.out) if args.out else Path("runs") / name
    cells = len(exp.arms) * args.seeds
    print(f"{exp.name}: {exp.description}; {plural(cells, 'run')} -> {out}")
    return run_and_report(exp, out, args, launch, seeds=args.seeds, overrides=args.overrides)


def run_and_report(
    exp: Any,
    out: Path,
    args: argparse.Namespace,
    launch: Any,
    *,
    seeds: int,
    overrides: list[str],
) -> int:
    """Run the grid (resuming), print its report (and write ``--docs``' page, where the command
    has that flag); Ctrl-C says how to continue. The one tail of ``dml reproduce`` and ``dml
    grid``."""
    from dmlkit.experiments import comparison_report, run_experiment

    start = time.perf_counter()
    try:
        results = run_experiment(
            exp,
            out,
            seeds=seeds,
            overrides=overrides,
            scale=args.scale,
            progress=not args.no_progress,
            launch=launch,
        )
    except KeyboardInterrupt:
        ignore_interrupts()
        again = shlex.join(["dml", *sys.argv[1:]]) if sys.argv[1:2] == [args.command] else ""
        print(
            f"\ninterrupted; finished runs are kept and the interrupted ones resume: run the "
            f"same command again{': ' + again if again else ''}",
            file=sys.stderr,
        )
        return 130
    report = exp.report or comparison_report
    text = report(exp, results, out, args.scale)
    print()
    print(text)
    if getattr(args, "docs", None):  # dml reproduce --docs DIR
        from dmlkit.analysis.report import publish_experiment

        page = publish_experiment(exp, results, out, Path(args.docs))
        print(f"\nreport page: {page}")
    seconds = time.perf_counter() - start
    print(f"\n{plural(len(results), 'run')} in {seconds:.0f} s; results in {out}")
    return 0
