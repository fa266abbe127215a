"""The Lightning example (docs/own-models.md, linked from the README) runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "docs" / "own-models.md"  # the README links it


@pytest.mark.slow  # a Python subprocess that imports Lightning
def test_readme_lightning_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    code = next(b for b in blocks if "DMLModule" in b)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    # the per-peer and ensemble accuracies it prints, learnt well above chance (0.1)
    values = dict(re.findall(r"'val/top1/(\w+)': ([0-9.]+)", last))
    assert set(values) == {"peer0_sequential", "peer1_sequential", "ensemble"}  # as the CLI names
    assert all(float(v) > 0.3 for v in values.values()), last
    assert (tmp_path / "lightning_runs" / "lightning_logs").is_dir()
