"""``dml bench`` / ``python -m dmlkit.bench``: plan the cases, run each in its own process,
round after round, and write the JSON and Markdown results."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dmlkit.bench.cases import Case, matmul_peak, plan
from dmlkit.bench.report import markdown, median_round, results_table
from dmlkit.bench.runner import run_case
from dmlkit.machine import environment


def _run_in_subprocess(case: Case) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "dmlkit.bench", "--case", json.dumps(asdict(case))],
        capture_output=True,
        text=True,
    )
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {**asdict(case), "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}


# the first line of the package's docstring (dmlkit/bench/__init__.py)
DESCRIPTION = "Throughput of a DML step, measured side by side in one run (``dml bench``)."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dml bench", description=DESCRIPTION)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--profile",
        choices=["quick", "full"],
        default=None,
        help="quick: the CPU-sized subset (default on CPU); full: every case",
    )
    p.add_argument("--models", default=None, help="comma list (default resnet32,mobilenet)")
    p.add_argument("--variants", default=None, help="comma list of variants to keep")
    p.add_argument("--ks", default=None, help="comma list of cohort sizes")
    p.add_argument("--batches", default=None, help="comma list of batch sizes")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case this many times, round by round; report the "
        "median round (use 3+ on a shared machine)",
    )
    p.add_argument("--out", default="benchmarks/results", help="folder for JSON + Markdown")
    p.add_argument(
        "--name", default=None, help="file stem of the results (default throughput-DEVICE)"
    )
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return p


def _run_one_case(case_json: str) -> int:
    """``--case``: measure one case in this process and print its JSON (the parent reads it)."""
    case = Case(**json.loads(case_json))
    try:
        print(json.dumps(run_case(case)))
    except Exception as exc:  # noqa: BLE001 - reported in the table, not hidden
        print(json.dumps({**asdict(case), "error": f"{type(exc).__name__}: {exc}"}))
    return 0


def _selected_cases(args: argparse.Namespace, profile: str) -> list[Case]:
    """The profile's cases, narrowed by --models/--variants/--ks/--batches."""
    cases = plan(profile, args.device)
    keep = {
        "model": args.models and args.models.split(","),
        "variant": args.variants and args.variants.split(","),
        "k": args.ks and [int(v) for v in args.ks.split(",")],
        "batch": args.batches and [int(v) for v in args.batches.split(",")],
    }
    for field, allowed in keep.items():
        if allowed:
            cases = [c for c in cases if getattr(c, field) in allowed]
    for c in cases:
        c.steps, c.warmup = args.steps, args.warmup
    return cases


def _measure_rounds(
    cases: list[Case], device: str, n_rounds: int
) -> tuple[list[dict[str, Any]], float]:
    """Every case in its own process, ``n_rounds`` times -> (the median round of each case, the
    median matmul peak over the rounds)."""
    peak = matmul_peak(device)
    print(f"matmul peak ({device}, fp32 2048^2): {peak / 1e9:.1f} GFLOP/s; {len(cases)} cases")
    rounds: list[list[dict[str, Any]]] = []
    peaks = [peak]
    for r in range(n_rounds):
        if r:
            peaks.append(matmul_peak(device))
        # Whole rounds, one after another: a burst of load on a shared machine then hits one
        # round of every case, not every round of one case.
        rounds.append([])
        for i, case in enumerate(cases):
            res = _run_in_subprocess(case)
            rounds[-1].append(res)
            shown = f"{1000 * res['step_s']:.1f} ms/step" if "step_s" in res else res["error"][:80]
            print(
                f"[round {r + 1}/{n_rounds}, {i + 1}/{len(cases)}] {case.model} K={case.k} "
                f"B={case.batch} {case.variant}: {shown}",
                flush=True,
            )
    results = [median_round([rnd[i] for rnd in rounds], "step_s") for i in range(len(cases))]
    return results, statistics.median(peaks)  # the peak per round, like the cases


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.case:
        return _run_one_case(args.case)
    profile = args.profile or ("quick" if args.device == "cpu" else "full")
    cases = _selected_cases(args, profile)
    results, peak = _measure_rounds(cases, args.device, args.rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"throughput-{args.device.split(':')[0]}"
    command = "dml bench " + " ".join(argv if argv is not None else sys.argv[1:])
    env = environment(args.device)
    payload = {
        "command": command,
        "environment": env,
        "matmul_peak_flops": peak,
        "profile": profile,
        "rounds": args.rounds,
        "results": results,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text(markdown(payload))
    table = results_table(results, peak)
    print()
    print(table)
    print(f"\nsaved {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0
