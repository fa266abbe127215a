"""benchmarks/transformer_step.py runs end to end at a tiny size and writes its files (its
figures are not checked: speed is measured on a quiet machine, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_transformer_step_benchmark_tiny(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    args = ["--layers", "1", "--d", "32", "--heads", "2", "--seq", "16", "--batch", "2"]
    args += ["--vocab", "100", "300", "--steps", "1", "--repeats", "1", "--threads", "1"]
    args += ["--memory", "--out", str(tmp_path), "--tag", "tiny"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "transformer_step.py"), *args],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "transformer_step-tiny.json").read_text())
    assert [r["vocab"] for r in payload["rows"]] == [100, 300]
    for row in payload["rows"]:
        assert set(row["seconds"]) == {"dml", "2x independent", "hf loop"}
        assert row["ratio_to_independent"]["2x independent"] == 1.0
        assert row["saved_bvt_tensors"] <= 2  # at most one [B, T, V] per peer
        assert all(v > 0 for v in row["peak_rss_mib"].values())
    assert "| 300 | dml |" in (tmp_path / "transformer_step-tiny.md").read_text()
