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


def _script(name: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


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
        "--root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        "--tag",
        "tiny",
    ]
    done = _script("stream_folder.py", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "out" / "stream-tiny.json").read_text())
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
        "--root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        "--tag",
        "tiny",
    ]
    done = _script("dml_epoch.py", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "out" / "dml_epoch-tiny.json").read_text())
    assert set(payload["median"]) == {"dmlkit memory", "dmlkit stream"}
    assert all(v > 0 for v in payload["median"].values())
