"""What many test files share: tiny-run overrides, the ``--set`` expander, run-directory readers.

Imported by the test modules (``from helpers import ...``; pytest puts tests/ on ``sys.path``)
and by ``conftest.py``, which holds the shared fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dmlkit.cli import main

# Every run a test starts: no progress bar (its redraws would fill the captured output).
QUIET = ["train.progress=false"]

# The smallest digits run worth training: quiet, 128 training images (2 steps at the default
# batch of 64), one epoch. A test appends the overrides its assertions depend on (a later
# override of the same key wins), so each file states what it changes and why; build on this
# list (``[*FAST, ...]``) rather than writing another, and do not name another list FAST.
FAST = [*QUIET, "data.train_size=128", "train.epochs=1"]

# A re-id cohort of two small CNNs on the 32x16 crops of the synthetic Market fixture: seconds
# on a CPU. Give it ``data.root=`` and the number of epochs.
MARKET_FAST = [
    "data.name=market1501",
    "data.image_height=32",
    "data.image_width=16",
    "data.hflip=true",
    "data.crop_padding=0",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "optim.name=adam",
    "optim.lr=0.002",
    "optim.schedule=constant",
    "peers=[small_cnn,small_cnn]",
    *QUIET,
]


def sets(*overrides: str) -> list[str]:
    """``("a=1", "b=2")`` -> ``["--set", "a=1", "--set", "b=2"]``, the command line's form."""
    return [arg for o in overrides for arg in ("--set", o)]


def copy_run(run: Path, tmp: Path) -> Path:
    """A copy of the run folder ``run`` as ``tmp/run`` (to change without touching the original)."""
    shutil.copytree(run, tmp / "run")
    return tmp / "run"


def train(out: Path, *overrides: str) -> int:
    """``dml train --out OUT --set ...`` in this process; returns the exit status."""
    return main(["train", "--out", str(out), *sets(*overrides)])


def weights(run: Path) -> list[dict[str, torch.Tensor]]:
    """The peers' state dicts in a run's ``checkpoints/last.pt``, one per peer."""
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    return state["cohort"]["models"]


def records(run: Path, split: str | None = None) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` in order; only those of ``split`` if given."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if split is None or r["split"] == split]


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), n: int = 6) -> Path:
    """``root/<class>/<i>.png``: ``n`` 8 x 8 RGB images per class, each class its own colour
    (red, green, blue...) so that a network can learn them in a few steps."""
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = [20 + 5 * i] * 3
            colour[c % 3] = 230
            Image.new("RGB", (8, 8), tuple(colour)).save(root / name / f"{i}.png")
    return root
