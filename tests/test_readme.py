"""The README's programs run as written, each in an empty folder (those of docs/own-models.md,
which the README links, too); the README keeps its promises: the two commands, <= 250 lines, links
that exist."""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```(\w+)\n(.*?)\n```", re.S)


PAGES = ("README.md", "docs/own-models.md")  # where the tested programs live


def readme_programs() -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` of the blocks marked ``<!-- readme-test: NAME -->``."""
    text = "\n".join((ROOT / page).read_text(encoding="utf-8") for page in PAGES)
    return {name: (lang, code) for name, lang, code in BLOCK.findall(text)}


def _run(lang: str, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = cwd / ".bin"
    bin_dir.mkdir()
    dml = bin_dir / "dml"  # this checkout's `dml`, whatever is installed
    dml.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c "import sys; from dmlkit.cli import '
        f'main; sys.exit(main())" "$@"\n'
    )
    dml.chmod(dml.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join(
            [str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
    }
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-c", code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


def test_the_readme_has_the_three_programs() -> None:
    programs = readme_programs()
    assert {"own-modules", "timm-stream", "own-loop"} <= set(programs)
    for lang, code in programs.values():
        if lang == "python":
            ast.parse(code)  # fails here, not in a subprocess, on a typo


@pytest.mark.slow
def test_own_modules_program(tmp_path: Path) -> None:
    done = _run(*readme_programs()["own-modules"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "runs/own-modules/summary.json").read_text())
    assert [p["arch"] for p in summary["peers"]] == ["instance:TinyCNN", "instance:Sequential"]
    assert (tmp_path / "tiny_cnn.safetensors").stat().st_size > 0
    assert float(done.stdout.strip().splitlines()[-1]) == summary["ensemble"]["metrics"]["top1"]


@pytest.mark.slow
def test_timm_stream_program(tmp_path: Path) -> None:
    done = _run(*readme_programs()["timm-stream"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "runs/timm-stream/summary.json").read_text())
    assert [p["arch"] for p in summary["peers"]] == ["timm:resnet10t", "timm:mobilenetv3_small_050"]
    top1 = summary["peers"][0]["metrics"]["top1"]
    assert done.stdout.count(f"{100 * top1:.2f}%") >= 2  # printed by dml train and by dml eval


@pytest.mark.slow
def test_own_loop_program(tmp_path: Path) -> None:
    done = _run(*readme_programs()["own-loop"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    accuracies = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert len(accuracies) == 2 and min(accuracies) > 0.8  # chance is 0.25


def test_the_readme_first_screen_and_length() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
    first = "\n".join(lines[:60])  # the two commands, exactly, near the top
    assert "pip install . && dml reproduce digits --seeds 5" in first
    assert "pip install -e '.[test]' && python -m pytest" in first
    # the optional CPU step pins a matching pair: pip cannot mix a CPU torch and a CUDA torchvision
    step = re.search(r"^pip install torch(\S*) torchvision(\S*) --index-url (\S+)$", text, re.M)
    assert step and step.group(1).startswith("==") and step.group(2).startswith("==")
    assert step.group(3) == "https://download.pytorch.org/whl/cpu"


def test_the_readme_links_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target
