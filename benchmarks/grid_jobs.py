"""``dml reproduce`` wall time with ``--jobs N`` against ``--jobs 1``, side by side.

Issue 27's claim to measure: on 2 cores, ``dml reproduce digits --seeds 5`` (10 cells) with
``--jobs 2`` (two worker processes, one thread each) is >= 1.5x faster than ``--jobs 1`` (one
process, the cells one after another, ``train.threads=auto``); the same for digits-pairs. Run on
a quiet machine (nothing else running: the load average is recorded with the result)::

    python benchmarks/grid_jobs.py --grids digits digits-pairs --seeds 5 --jobs 1 2 --rounds 3

Every run is a fresh ``dml reproduce`` process into a fresh folder (nothing reused); in each
round the variants run one after another, their order rotated each round so that neither
always runs first. The median round is reported, with the speed-up over ``--jobs 1``, and
whether each variant's results.csv equals ``--jobs 1``'s (bit for bit only when ``train.threads``
is the same in both: pass ``--set train.threads=1`` to check that; with ``auto``, ``--jobs 1``
uses every core and the last digits of a CPU run depend on the thread count).
Results: ``benchmarks/results/grid_jobs[-TAG].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dmlkit.experiments import EXPERIMENTS

from _report import environment, load_text, save

ROOT = Path(__file__).resolve().parents[1]


def run_grid(
    name: str, seeds: int, jobs: str, folder: Path, sets: list[str], scale: float
) -> float:
    """Seconds of one fresh ``dml reproduce NAME --jobs J`` (a failure stops the benchmark)."""
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "dmlkit.cli", "reproduce", name, "--seeds", str(seeds)]
    cmd += ["--jobs", jobs, "--out", str(folder), "--no-progress", "--scale", str(scale)]
    cmd += [arg for s in sets for arg in ("--set", s)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", nargs="+", default=["digits", "digits-pairs"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--jobs", nargs="+", default=["1", "2"], help="variants; the first is the base")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0, help="dml reproduce --scale (smoke runs)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="for every run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. tiny)")
    p.add_argument("--root", type=Path, default=None, help="where the grids go (default: temp)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="grid_jobs-", dir=args.root))
    times: dict[str, dict[str, list[float]]] = {g: {j: [] for j in args.jobs} for g in args.grids}
    same: dict[str, dict[str, bool]] = {g: {} for g in args.grids}
    try:
        for r in range(args.rounds):
            for grid in args.grids:
                order = args.jobs[r % len(args.jobs) :] + args.jobs[: r % len(args.jobs)]
                for jobs in order:
                    folder = work / f"r{r}" / grid / f"jobs{jobs}"
                    t = run_grid(grid, args.seeds, jobs, folder, args.sets, args.scale)
                    times[grid][jobs].append(t)
                    print(f"round {r + 1}: {grid} --jobs {jobs}: {t:.1f} s", flush=True)
                base = (work / f"r{r}" / grid / f"jobs{args.jobs[0]}" / "results.csv").read_bytes()
                for jobs in args.jobs[1:]:
                    csv = (work / f"r{r}" / grid / f"jobs{jobs}" / "results.csv").read_bytes()
                    same[grid][jobs] = same[grid].get(jobs, True) and csv == base
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env = environment()
    median = {g: {j: statistics.median(ts) for j, ts in by.items()} for g, by in times.items()}
    base = args.jobs[0]
    lines = [
        f"# dml reproduce --jobs: {', '.join(args.grids)}, {args.seeds} seeds",
        "",
        f"{env['cpu']}, {env['cores']} cores; load average at the end {load_text(env)}; "
        f"{args.rounds} round(s), median; --scale {args.scale:g}; extra settings: "
        f"{' '.join(args.sets) or 'none'}.",
        f"Command: `{env['command']}`",
        "",
        "| grid | cells | " + " | ".join(f"--jobs {j} (s)" for j in args.jobs)
        + " | " + " | ".join(f"speed-up --jobs {j}" for j in args.jobs[1:])
        + " | " + " | ".join(f"results.csv --jobs {j} = --jobs {base}" for j in args.jobs[1:])
        + " |",
        "|" + "---|" * (2 + 3 * len(args.jobs) - 2),
    ]  # fmt: skip
    for grid in args.grids:
        cells = str(len(EXPERIMENTS.get(grid).arms) * args.seeds)
        row = [grid, cells, *[f"{median[grid][j]:.1f}" for j in args.jobs]]
        row += [f"{median[grid][base] / median[grid][j]:.2f}x" for j in args.jobs[1:]]
        row += ["yes" if same[grid][j] else "no" for j in args.jobs[1:]]
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    payload = {
        "environment": env,
        "grids": args.grids,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "sets": args.sets,
        "scale": args.scale,
        "seconds": times,
        "median": median,
        "results_csv_equal": same,
    }
    save(args.out, "grid_jobs" + (f"-{args.tag}" if args.tag else ""), payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
