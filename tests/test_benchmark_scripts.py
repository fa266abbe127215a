"""The issue-14 benchmark scripts run end to end at a tiny size (their figures are not checked:
speed is measured in benchmarks/, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, args: list[str], tmp: Path, result: str) -> dict:
    """Run benchmarks/``name`` with ``args``, its data under ``tmp/data`` and results under
    ``tmp/out`` tagged ``tiny``; return the JSON ``tmp/out/{result}-tiny.json`` it wrote."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    where = ["--root", str(tmp / "data"), "--out", str(tmp / "out"), "--tag", "tiny"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args, *where],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "out" / f"{result}-tiny.json").read_text())


@pytest.mark.slow
def test_stream_folder_benchmark_tiny(tmp_path: Path) -> None:
    args = [
        "--images",
        "300",
        "600",
        "--batches",
        "2",
        "--rounds",
        "1",
        "--batch",
        "32",
        "--rss-batches",
        "3",
        "--memory-path",
    ]
    payload = _script("stream_folder.py", args, tmp_path, "stream")
    assert set(payload["throughput"]["median"]) == {"dmlkit stream", "torchvision ImageFolder"}
    runs = {(m["loader"], m["images"]) for m in payload["memory"]}
    assert runs == {("stream", 300), ("stream", 600), ("memory", 300), ("memory", 600)}
    assert all(m["peak_pss_mib"] > 0 and m["read"] == 96 for m in payload["memory"])
    assert (tmp_path / "out" / "stream-tiny.png").stat().st_size > 0


@pytest.mark.slow
def test_dml_epoch_benchmark_tiny(tmp_path: Path) -> None:
    args = [
        "--rounds",
        "1",
        "--train-images",
        "128",
        "--test-images",
        "64",
        "--variants",
        "dmlkit memory",
        "dmlkit stream",
    ]
    payload = _script("dml_epoch.py", args, tmp_path, "dml_epoch")
    assert set(payload["median"]) == {"dmlkit memory", "dmlkit stream"}
    assert all(v > 0 for v in payload["median"].values())
