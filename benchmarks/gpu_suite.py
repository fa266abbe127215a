"""The GPU run in one command: every CUDA path of dmlkit tested, every GPU figure measured.

    bash benchmarks/gpu_suite.sh               # on a GPU machine (benchmarks/README.md)
    python benchmarks/gpu_suite.py --dry-run   # the same steps at a tiny size, on the CPU

Steps, in this order, each in its own time budget so that the whole stays under ``--budget``
(460 s: the run fits 8 minutes on one H100/H200):

1. ``machine``: GPU, driver, torch, CUDA and cuDNN versions (printed and recorded).
2. ``deps``: the Python packages the steps import; any that is missing is installed from the
   wheels carried in benchmarks/wheels/ into a temporary folder put on PYTHONPATH (the GPU
   machine has no package index). dmlkit itself runs from src/, never installed.
3. ``tests``: ``pytest -m gpu tests`` (tests/test_gpu.py and the other CUDA tests).
4. ``cifar_epoch``: one whole epoch of the paper's ResNet-32 pair on a CIFAR-format fixture of
   the real size, the 200 epochs extrapolated (benchmarks/cifar_epoch.py --full-epoch); then the
   same with the stacked cohort, and in bf16, while the step's budget lasts.
5. ``reid_eval``: the Market-1501-size re-id evaluation on the GPU (benchmarks/reid_eval.py).
6. ``bench``: ``dml bench`` cases, most telling first, each in its own process, until the time
   left is spent: ResNet-32 and MobileNet, K = 2 and 4, batch 64 and 256; loop vs stacked vs
   compile vs bf16 vs K independent vs pytorch-dml (the cases are in :func:`bench_cases`).

Each step's result is written as soon as it finishes (``gpu_suite-<gpu>.json`` and ``.md``
under ``--out``, beside the files of the steps, all named after the GPU); a step that fails or
runs out of time is recorded as such and the suite goes on. Exit status: 1 if any step failed
(a CUDA test failed, a measurement broke, a step ran out of time), 2 if there is no GPU and no
``--dry-run``, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "src"))  # dmlkit from the source tree: nothing to install

from gpu_suite_steps import (  # noqa: E402
    Context,
    step_bench,
    step_cifar_epoch,
    step_deps,
    step_machine,
    step_reid_eval,
    step_tests,
)

STEPS: dict[str, tuple[Callable[[Context, float], dict[str, Any]], float]] = {
    # name: (function, most seconds it may take); bench takes whatever time is left
    "machine": (step_machine, 30),
    "deps": (step_deps, 60),
    "tests": (step_tests, 150),
    "cifar_epoch": (step_cifar_epoch, 150),
    "reid_eval": (step_reid_eval, 60),
    "bench": (step_bench, float("inf")),
}
MIN_START_S = 10.0  # a step is not started with less time than this left


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': the GPU's name as it goes into file names."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


class Suite:
    """Runs the steps in order and rewrites the record after each one."""

    def __init__(self, ctx: Context, budget: float, fail_step: str | None) -> None:
        self.ctx = ctx
        self.start = time.monotonic()
        self.deadline = self.start + budget
        self.fail_step = fail_step
        self.record: dict[str, Any] = {
            "suite": "gpu_suite",
            "dry_run": ctx.dry_run,
            "device": ctx.device,
            "gpu_slug": ctx.slug,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_s": budget,
            "steps": {},
        }
        self.json_path = ctx.out / f"gpu_suite-{ctx.slug}.json"
        self.md_path = ctx.out / f"gpu_suite-{ctx.slug}.md"

    def run(self, name: str) -> None:
        fn, cap = STEPS[name]
        left = self.deadline - time.monotonic()
        budget = min(cap, left)
        print(f"\n=== {name} (budget {budget:.0f} s, {left:.0f} s left in all) ===", flush=True)
        start = time.monotonic()
        if left < MIN_START_S:
            result: dict[str, Any] = {"status": "skipped", "reason": "no time left"}
        else:
            try:
                if name == self.fail_step:  # for the suite's own test: a step that breaks
                    raise RuntimeError(f"injected failure of step {name!r} (--fail-step)")
                result = {"status": "ok", **fn(self.ctx, budget)}
            except Exception as exc:  # noqa: BLE001 - recorded, and the suite goes on
                traceback.print_exc()
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.monotonic() - start, 2)
        result["budget_s"] = None if budget == float("inf") else round(budget, 1)
        self.record["steps"][name] = result
        self.record["elapsed_s"] = round(time.monotonic() - self.start, 2)
        self.write()
        print(f"--- {name}: {result['status']} in {result['seconds']:.1f} s", flush=True)

    def write(self) -> None:
        """The record as JSON and Markdown, each replaced whole (never half-written)."""
        for path, text in (
            (self.json_path, json.dumps(self.record, indent=2) + "\n"),
            (self.md_path, markdown(self.record)),
        ):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.record["steps"].items() if r["status"] in ("failed", "timeout")]


def _summary(name: str, r: dict[str, Any]) -> str:
    """One cell of figures for a step's row in the Markdown page."""
    if r["status"] == "skipped" or "error" in r:
        return r.get("error") or r.get("reason", "")
    if name == "machine":
        return f"{r.get('gpu') or r.get('cpu')}; torch {r['torch']}, CUDA {r.get('cuda')}"
    if name == "deps":
        return f"installed from wheels: {', '.join(r['installed']) or 'none'}; " + (
            f"missing: {', '.join(r['missing'])}" if r["missing"] else "none missing"
        )
    if name == "tests":
        return f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped" + (
            f" (failed: {', '.join(r['failed_tests'][:5])})" if r["failed_tests"] else ""
        )
    if name == "cifar_epoch":
        return "; ".join(
            f"{a}: epoch {v['epoch_seconds']:.1f} s, {v['recipe_epochs']} epochs "
            f"~{v['extrapolated_seconds'] / 60:.1f} min"
            if "epoch_seconds" in v
            else f"{a}: {v['status']}"
            for a, v in r["arms"].items()
        )
    if name == "reid_eval":
        return f"best {r['total_s_best']:.2f} s, mAP {r['mAP']:.4f}, check {r['check']}"
    if name == "bench":
        speed = "; ".join(f"{k}: stacked {v:.2f}x loop+cl" for k, v in r["stacked_vs_loop"].items())
        return (
            f"{r['cases_run']} cases ({r['case_errors']} errors, {r['cases_skipped']} not run)"
            + (f"; {speed}" if speed else "")
        )
    return ""


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a '|' in it would end the cell)."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(record: dict[str, Any]) -> str:
    rows = [
        f"| {name} | {r['status']} | {r['seconds']:.1f} | {r['budget_s'] or '-'} | "
        f"{_cell(_summary(name, r))} | {', '.join(r.get('files', []))} |"
        for name, r in record["steps"].items()
    ]
    kind = "dry run on the CPU (tiny sizes)" if record["dry_run"] else f"on {record['device']}"
    return "\n".join(
        [
            f"# gpu_suite: {record['gpu_slug']}",
            "",
            f"{kind}; started {record['started_utc']}; {record.get('elapsed_s', 0):.0f} s of a "
            f"{record['budget_s']:.0f} s budget. Command: `{record['command']}`",
            "",
            "| step | status | seconds | budget s | figures | files |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every step, tiny, on the CPU")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/; "
                   "with --dry-run a new temporary folder)")  # fmt: skip
    p.add_argument("--budget", type=float, default=460.0, help="seconds for all steps (460)")
    p.add_argument(
        "--steps", default=",".join(STEPS), help=f"comma list of steps (default {','.join(STEPS)})"
    )
    p.add_argument("--tests", default="tests", help="what pytest collects (default tests)")
    p.add_argument("--fail-step", default=None, help=argparse.SUPPRESS)  # the suite's own test
    args = p.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        p.error(f"--steps: unknown {', '.join(sorted(unknown))}; valid: {', '.join(STEPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_suite: no CUDA device here; run it on a GPU machine, or use --dry-run",
            file=sys.stderr,
        )
        return 2
    device = "cpu" if args.dry_run else "cuda"
    name = "cpu-dry-run" if args.dry_run else slug(torch.cuda.get_device_name(0))
    if args.out:
        out = Path(args.out)
    elif args.dry_run:  # never mixed into the committed results
        out = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    else:
        out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="gpu-suite-site-"))  # wheels installed here, if any
    ctx = Context(args.dry_run, device, name, out, site, Path(args.tests))
    suite = Suite(ctx, args.budget, args.fail_step)
    try:
        for step in (s for s in STEPS if s in args.steps.split(",")):
            suite.run(step)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    print(f"\nresults in {out} (gpu_suite-{name}.json/.md and the steps' own files)")
    if suite.failed:
        print(f"FAILED steps: {', '.join(suite.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
