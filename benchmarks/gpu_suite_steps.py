"""The steps of benchmarks/gpu_suite.py: each takes the run's context and its time budget in
seconds, and returns the figures it recorded (``status`` is ``ok`` unless it says otherwise).

The work of every step but ``machine`` and ``deps`` runs in child processes, each in its own
process group, killed whole when its time is up (a hung CUDA kernel or compile worker cannot
hold the suite); what a child printed goes to a ``.log`` file beside the results.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
WHEELS = BENCHMARKS / "wheels"

# module -> distribution: what the steps import (tests collection included)
REQUIRED = {
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "numpy": "numpy",
    "PIL": "pillow",
    "sklearn": "scikit-learn",  # the bundled digits (the resume test)
    "matplotlib": "matplotlib",  # imported by test modules at collection
    "pytest": "pytest",
    "hypothesis": "hypothesis",  # likewise
}
OPTIONAL = {"pydml": "pytorch-dml"}  # only the bench's pytorch-dml variant


@dataclass
class Context:
    """What every step needs to know about the run."""

    dry_run: bool
    device: str  # "cuda", or "cpu" in a dry run
    slug: str  # the GPU's name for file names ("nvidia-h200"), "cpu-dry-run"
    out: Path  # results folder
    site: Path  # where carried wheels are installed
    tests: Path  # what pytest collects
    site_used: bool = False

    def env(self) -> dict[str, str]:
        """The environment of the child processes: dmlkit from src/, installed wheels."""
        paths = [str(self.site)] if self.site_used else []
        paths.append(str(ROOT / "src"))
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            # cuBLAS reads it when its first handle is made: set for every process up front,
            # as `dml train` would in a fresh process (deterministic, bitwise resumable runs)
            "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        }


def run_limited(
    cmd: list[str], timeout: float, log: Path, env: dict[str, str]
) -> tuple[int | None, str]:
    """Run ``cmd`` for at most ``timeout`` seconds -> (exit status or None if killed, stdout).

    The child leads its own process group, and the whole group is killed at the time limit.
    Its stderr, then its stdout, are appended to ``log``.
    """
    print(f"$ {' '.join(cmd)}", flush=True)
    with log.open("a", encoding="utf-8") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=max(timeout, 1.0))
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            # the group may have ended between the timeout and the kill
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            code = None
            err.write(f"\n[gpu_suite] killed after {timeout:.0f} s\n")
        err.write(out)
    return code, out


def _tail(text: str, n: int = 12) -> None:
    for line in text.strip().splitlines()[-n:]:
        print(f"  | {line}", flush=True)


# ------------------------------------------------------------------------------------------------
# machine and dependencies


def step_machine(ctx: Context, budget: float) -> dict[str, Any]:
    import torch
    import torchvision

    from dmlkit.machine import cpu_name

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        }
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=min(budget, 30),
            )
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    for key, value in info.items():
        print(f"  {key}: {value}")
    return info


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def step_deps(ctx: Context, budget: float) -> dict[str, Any]:
    """Install the missing packages from benchmarks/wheels (no index, no dependencies)."""
    wanted = {**REQUIRED, **OPTIONAL}
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    carried = {_norm(w.name.split("-")[0]): w for w in sorted(WHEELS.glob("*.whl"))}
    install = [carried[_norm(wanted[m])] for m in missing if _norm(wanted[m]) in carried]
    if install:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--no-cache-dir", "--target", str(ctx.site)]
        log = ctx.out / f"gpu_suite-{ctx.slug}-deps.log"
        code, _ = run_limited([*cmd, *map(str, install)], budget, log, ctx.env())
        if code != 0:
            raise RuntimeError(f"pip install of {[w.name for w in install]} failed ({log.name})")
        ctx.site_used = True
        sys.path.insert(0, str(ctx.site))
        importlib.invalidate_caches()
    still = [m for m in missing if importlib.util.find_spec(m) is None]
    result: dict[str, Any] = {
        "present": [wanted[m] for m in wanted if m not in missing],
        "installed": [w.name for w in install],
        "missing": [wanted[m] for m in still],
        "wheels_carried": [w.name for w in carried.values()],
    }
    print(f"  {json.dumps(result)}")
    required_missing = [REQUIRED[m] for m in still if m in REQUIRED]
    if required_missing:
        result["status"] = "failed"
        result["error"] = f"missing, and no wheel carried: {', '.join(required_missing)}"
    return result


# ------------------------------------------------------------------------------------------------
# the CUDA tests


def _junit_counts(path: Path) -> dict[str, Any]:
    passed, failed, skipped = [], [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append((name, (bad.get("message") or "").splitlines()[:1]))
        elif case.find("skipped") is not None:
            skipped.append(name)
        else:
            passed.append(name)
    return {
        "passed": len(passed),
        "failed": len(failed),
        "skipped": len(skipped),
        "failed_tests": [n for n, _ in failed],
        "failure_messages": {n: (m[0][:300] if m else "") for n, m in failed},
    }


def _verbose_counts(out: str) -> dict[str, Any]:
    """The counts from ``pytest -v`` lines, for a run killed before it wrote its XML."""
    found = re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", out, re.M)
    failed = [n for n, s in found if s in ("FAILED", "ERROR")]
    return {
        "passed": sum(s in ("PASSED", "XPASS") for _, s in found),
        "failed": len(failed),
        "skipped": sum(s in ("SKIPPED", "XFAIL") for _, s in found),
        "failed_tests": failed,
        "failure_messages": {},
    }


def step_tests(ctx: Context, budget: float) -> dict[str, Any]:
    xml = ctx.out / f"gpu_tests-{ctx.slug}.xml"
    log = ctx.out / f"gpu_tests-{ctx.slug}.log"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", str(ctx.tests), "-v", "-rfEs"]
    # rootdir = the tests' folder: junit names a test "module::name" wherever the clone lives
    cmd += ["-p", "no:cacheprovider", f"--junitxml={xml}", f"--rootdir={ctx.tests}"]
    code, out = run_limited(cmd, budget, log, ctx.env())
    _tail(out)
    counts = _junit_counts(xml) if code is not None and xml.is_file() else _verbose_counts(out)
    # 5: nothing collected (no test marked gpu): not a failure of the GPU
    status = "timeout" if code is None else "ok" if code in (0, 5) else "failed"
    if status == "ok" and counts["failed"]:
        status = "failed"
    return {"status": status, "returncode": code, **counts, "files": [xml.name, log.name]}


# ------------------------------------------------------------------------------------------------
# the measurements

STACKED = ["method.update=simultaneous", "train.cohort_impl=stacked"]
CIFAR_ARMS = {
    # arm: --set overrides of the recipe (configs/paper/cifar100_dml_resnet32_resnet32.yaml)
    "paper": [],  # sequential update (the paper's Algorithm 1): the loop cohort
    "stacked": STACKED,
    "stacked-bf16": [*STACKED, "train.precision=bf16"],
}
CIFAR_KEYS = (
    "epoch_seconds",
    "train_loop_seconds",
    "final_eval_seconds",
    "extrapolated_seconds",
    "recipe_epochs",
    "images_per_second",
    "cuda_max_allocated_mib",
)


def step_cifar_epoch(ctx: Context, budget: float) -> dict[str, Any]:
    """One full epoch per arm, the arms in order while the budget lasts (one shared fixture)."""
    end = time.monotonic() + budget
    if ctx.dry_run:
        sizes = ["--train-images", "32", "--test-images", "16", "--batch-size", "16"]
        arms = {"paper": ["peers.0.kwargs.depth=8", "peers.1.kwargs.depth=8"]}
    else:
        sizes, arms = ["--train-images", "50000", "--test-images", "10000"], CIFAR_ARMS
    results: dict[str, Any] = {}
    files: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-suite-cifar-") as root:
        for i, (arm, overrides) in enumerate(arms.items()):
            left = end - time.monotonic()
            if i > 0 and left < 40:  # the first arm always runs: it is the recipe
                results[arm] = {"status": "skipped", "reason": "no time left in the step"}
                continue
            name = f"cifar_epoch-{ctx.slug}-{arm}"
            cmd = [sys.executable, str(BENCHMARKS / "cifar_epoch.py"), "--full-epoch"]
            cmd += ["--device", ctx.device, "--data-root", root, "--out", str(ctx.out)]
            cmd += ["--name", name, *sizes, *[a for o in overrides for a in ("--set", o)]]
            code, out = run_limited(cmd, left, ctx.out / f"{name}.log", ctx.env())
            _tail(out, 4)
            if code != 0:
                results[arm] = {"status": "timeout" if code is None else "failed", "code": code}
                files.append(f"{name}.log")
                continue
            r = json.loads((ctx.out / f"{name}.json").read_text())
            results[arm] = {"status": "ok", **{k: r[k] for k in CIFAR_KEYS}}
            files += [f"{name}.json", f"{name}.md"]
    bad = [r["status"] for r in results.values() if r["status"] in ("failed", "timeout")]
    return {"status": bad[0] if bad else "ok", "arms": results, "files": files}


def step_reid_eval(ctx: Context, budget: float) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCHMARKS / "reid_eval.py"), "--device", ctx.device]
    cmd += ["--tag", ctx.slug, "--out", str(ctx.out)]
    if ctx.dry_run:
        cmd += ["--queries", "50", "--gallery", "300", "--dim", "32", "--ids", "20"]
        cmd += ["--repeats", "1", "--check", "20"]
    log = ctx.out / f"reid_eval-{ctx.slug}.log"
    code, out = run_limited(cmd, budget, log, ctx.env())
    _tail(out, 4)
    if code != 0:
        return {
            "status": "timeout" if code is None else "failed",
            "code": code,
            "files": [log.name],
        }
    r = json.loads((ctx.out / f"reid_eval-{ctx.slug}.json").read_text())
    diff = r["check_max_abs_diff"]
    return {
        # the figures are only worth having if the GPU ranks as the plain numpy reference does
        "status": "ok" if diff is not None and diff < 1e-6 else "failed",
        "size": r["size"],
        "total_s_best": r["total_s_best"],
        "total_s_median": r["total_s_median"],
        "mAP": r["runs"][0]["mAP"],
        "check": f"max |diff| {diff:.1e} vs numpy" if diff is not None else "not run",
        "files": [f"reid_eval-{ctx.slug}.json", f"reid_eval-{ctx.slug}.md"],
    }


# ------------------------------------------------------------------------------------------------
# dml bench, case by case

FIVE = ("loop+cl", "stacked", "independent+cl", "stacked+bf16", "pytorch-dml")
BENCH_ORDER = [  # most telling first: the goal (stacked >= 2x loop at K=4, B=64), then the rest
    ("resnet32", 4, 64, ("loop+cl", "stacked", "independent+cl")),
    ("resnet32", 2, 64, ("loop+cl", "stacked", "independent+cl")),
    ("resnet32", 4, 64, ("stacked+bf16", "loop+bf16", "pytorch-dml", "textbook")),
    ("resnet32", 4, 64, ("stacked+compile",)),
    ("mobilenet", 4, 64, FIVE),
    ("resnet32", 4, 256, FIVE),
    ("resnet32", 2, 64, ("stacked+bf16", "pytorch-dml")),
    ("mobilenet", 2, 64, FIVE),
    ("resnet32", 2, 256, FIVE),
    ("mobilenet", 4, 256, FIVE),
    ("mobilenet", 2, 256, FIVE),
    ("resnet32", 4, 64, ("loop+cl+compile",)),
    ("mobilenet", 4, 64, ("stacked+compile",)),
    ("resnet32", 4, 64, ("loop", "independent")),
]


def bench_cases(dry_run: bool, device: str) -> list[Any]:
    from dmlkit.bench import Case

    if dry_run:
        variants = ("stacked", "pytorch-dml")  # dmlkit's own path, and the carried wheel
        return [Case("small_cnn", 2, 8, v, device, steps=1, warmup=1) for v in variants]
    return [Case(m, k, b, v, device) for m, k, b, variants in BENCH_ORDER for v in variants]


def _bench_case(case: Any, timeout: float, ctx: Context, log: Path) -> dict[str, Any]:
    """One case in its own process (as ``dml bench`` runs it), killed at ``timeout``."""
    cmd = [sys.executable, "-m", "dmlkit.bench", "--case", json.dumps(asdict(case))]
    code, out = run_limited(cmd, timeout, log, ctx.env())
    if code is None:
        return {**asdict(case), "error": f"timed out after {timeout:.0f} s"}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {**asdict(case), "error": f"exit status {code}, no result (see {log.name})"}


def _bench_summary(results: list[dict[str, Any]]) -> dict[str, float]:
    """loop+cl step time / stacked step time, per (model, K, batch) where both ran."""
    by = {(r["model"], r["k"], r["batch"], r["variant"]): r for r in results if "step_s" in r}
    return {
        f"{m} K={k} B={b}": by[(m, k, b, "loop+cl")]["step_s"] / r["step_s"]
        for (m, k, b, v), r in by.items()
        if v == "stacked" and (m, k, b, "loop+cl") in by
    }


def step_bench(ctx: Context, budget: float) -> dict[str, Any]:
    from dmlkit import bench
    from dmlkit.machine import environment

    end = time.monotonic() + budget
    stem = f"throughput-{ctx.slug}"
    log = ctx.out / f"{stem}.log"
    payload: dict[str, Any] = {
        "command": "python benchmarks/gpu_suite.py (step bench)",
        "environment": environment(ctx.device),
        "matmul_peak_flops": bench.matmul_peak(ctx.device),
        "profile": "gpu_suite",
        "rounds": 1,
        "results": [],
        "not_run": [],
    }
    order = {v: i for i, v in enumerate(bench.VARIANTS)}
    for case in bench_cases(ctx.dry_run, ctx.device):
        compiled = "compile" in case.variant
        limit, least = (180.0, 60.0) if compiled else (60.0, 15.0)
        left = end - time.monotonic()
        if left < least and not ctx.dry_run:
            payload["not_run"].append(asdict(case))
            continue
        res = _bench_case(case, min(limit, left), ctx, log)
        shown = f"{1000 * res['step_s']:.1f} ms/step" if "step_s" in res else res["error"]
        print(f"  {case.model} K={case.k} B={case.batch} {case.variant}: {shown}", flush=True)
        payload["results"].append(res)
        payload["results"].sort(key=lambda r: (r["model"], r["k"], r["batch"], order[r["variant"]]))
        (ctx.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (ctx.out / f"{stem}.md").write_text(bench.markdown(payload))
    results = payload["results"]
    # pytorch-dml is another project: its failures are recorded, not counted against dmlkit
    errors = [r for r in results if "error" in r and r["variant"] != "pytorch-dml"]
    named = [f"{r['model']} K={r['k']} B={r['batch']} {r['variant']}: {r['error']}" for r in errors]
    return {
        "status": "failed" if errors else "ok",
        "cases_run": len(results),
        "case_errors": len(errors),
        "external_errors": sum("error" in r and r["variant"] == "pytorch-dml" for r in results),
        "errors": named,
        "cases_skipped": len(payload["not_run"]),
        "stacked_vs_loop": _bench_summary(results),
        "files": [f"{stem}.json", f"{stem}.md", log.name],
    }
