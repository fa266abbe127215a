"""benchmarks/gpu_suite.py in its --dry-run mode: every step, tiny, on the CPU.

The GPU run happens rarely and once; these tests make sure the script itself works before then:
each step leaves its figures on disk, and a failing step (a failing CUDA test, a broken
measurement) makes the exit status non-zero while the other steps' results stay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
STEPS = ["machine", "deps", "tests", "cifar_epoch", "reid_eval", "bench"]

# whole runs of the suite (a minute or more of CPU time each): in the full run only
dry_run = pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU's stand-in")


def _dry_run(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--dry-run", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    record = json.loads((out / "gpu_suite-cpu-dry-run.json").read_text())
    return proc, record


@pytest.mark.slow
@dry_run
def test_dry_run_runs_every_step_and_writes_its_results(tmp_path: Path):
    proc, record = _dry_run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = record["steps"]
    assert list(steps) == STEPS
    assert {name: r["status"] for name, r in steps.items()} == dict.fromkeys(STEPS, "ok")
    # each step timed (a quick one rounds to 0.0 s at the record's 2 decimals)
    assert all(r["seconds"] >= 0 for r in steps.values()) and steps["tests"]["seconds"] > 0
    assert steps["machine"]["torch"] == torch.__version__
    assert "pytorch-dml" not in steps["deps"]["missing"]  # present, or installed from its wheel

    tests = steps["tests"]  # the CUDA tests are collected, and skip without a GPU
    assert tests["failed"] == 0 and tests["passed"] == 0 and tests["skipped"] >= 10
    assert (tmp_path / "gpu_tests-cpu-dry-run.xml").is_file()

    paper = steps["cifar_epoch"]["arms"]["paper"]
    assert paper["status"] == "ok" and paper["epoch_seconds"] > 0
    assert paper["extrapolated_seconds"] == pytest.approx(
        paper["recipe_epochs"] * paper["epoch_seconds"] + paper["final_eval_seconds"]
    )
    assert paper["recipe_epochs"] == 200
    cifar = json.loads((tmp_path / "cifar_epoch-cpu-dry-run-paper.json").read_text())
    assert cifar["steps"] == 2 and cifar["config"]["train_images"] == 32  # 32 images, batch 16

    reid = steps["reid_eval"]
    assert reid["check"].startswith("max |diff|") and reid["total_s_best"] > 0
    assert json.loads((tmp_path / "reid_eval-cpu-dry-run.json").read_text())["device"] == "cpu"

    bench = json.loads((tmp_path / "throughput-cpu-dry-run.json").read_text())
    by_variant = {r["variant"]: r for r in bench["results"]}
    assert set(by_variant) == {"stacked", "pytorch-dml"}
    assert all(r["step_s"] > 0 and r["flops_per_s"] > 0 for r in by_variant.values())
    assert steps["bench"]["cases_run"] == 2 and steps["bench"]["case_errors"] == 0

    page = (tmp_path / "gpu_suite-cpu-dry-run.md").read_text()
    assert all(f"| {name} | ok |" in page for name in STEPS)


@pytest.mark.slow
@dry_run
def test_a_failing_step_fails_the_run_and_keeps_the_other_results(tmp_path: Path):
    tests = tmp_path / "cuda_tests"
    tests.mkdir()
    (tests / "test_cuda_paths.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.gpu\ndef test_a_cuda_path_that_works():\n    assert 1 + 1 == 2\n\n\n"
        "@pytest.mark.gpu\ndef test_a_cuda_path_that_breaks():\n"
        "    two = 1 + 1\n    assert two == 3\n"
    )
    out = tmp_path / "out"
    args = ["--steps", "machine,tests,cifar_epoch,reid_eval", "--tests", str(tests)]
    proc, record = _dry_run(out, *args, "--fail-step", "cifar_epoch")
    assert proc.returncode == 1
    assert "FAILED steps: tests, cifar_epoch" in proc.stderr
    steps = record["steps"]
    assert list(steps) == ["machine", "tests", "cifar_epoch", "reid_eval"]

    failed = steps["tests"]
    assert failed["status"] == "failed" and (failed["passed"], failed["failed"]) == (1, 1)
    assert failed["failed_tests"] == ["test_cuda_paths::test_a_cuda_path_that_breaks"]
    assert "assert 2 == 3" in failed["failure_messages"][failed["failed_tests"][0]]
    assert steps["cifar_epoch"]["status"] == "failed"
    assert "injected failure" in steps["cifar_epoch"]["error"]

    # the step after the failures ran, and its results are on disk
    assert steps["reid_eval"]["status"] == "ok" and steps["reid_eval"]["total_s_best"] > 0
    assert (out / "reid_eval-cpu-dry-run.json").is_file()
    assert steps["machine"]["status"] == "ok"
    assert "| tests | failed |" in (out / "gpu_suite-cpu-dry-run.md").read_text()


@pytest.mark.slow  # a 3 s kill of a spawned step, then a deadline
def test_a_step_out_of_time_is_killed_with_its_children(tmp_path: Path):
    """run_limited kills the whole process group at the limit (a hung compile worker or CUDA
    call cannot hold the suite) and keeps what the step printed before."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite_steps import run_limited

    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "step.log"
    code, out = run_limited([sys.executable, "-c", script], 3, log, dict(os.environ))
    assert code is None and out.strip() == "started"
    assert "killed after 3 s" in log.read_text()
    status = Path(f"/proc/{pid_file.read_text()}/status")

    def running() -> bool:  # gone, or a zombie waiting for a reaper: no longer running
        try:
            return "State:\tZ" not in status.read_text()
        except FileNotFoundError:
            return False

    # the SIGKILL is sent; on a loaded machine the child may take a moment to be scheduled out
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()
