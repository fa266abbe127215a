"""Checkpoints inside an epoch (``train.checkpoint_every_steps``): a run killed mid-epoch goes on
from its last step checkpoint, bitwise as if never interrupted, on the memory and stream paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_stream import write_folder

from dmlkit.cli import main
from dmlkit.engine.checkpoint import epoch_checkpoints, newest_valid_checkpoint, save_checkpoint

from helpers import QUIET, records, sets, weights

COMMON = [*QUIET, "train.epochs=2", "train.eval_every=1", "train.log_every=1"]


def _digits(_: Path) -> list[str]:
    # 4 steps an epoch (256 images at batch 64); a checkpoint after every step
    return ["data.train_size=256", "train.checkpoint_every_steps=1"]


def _stream(tmp: Path) -> list[str]:
    root = write_folder(tmp / "img", per_class=12)  # 36 images: 29 to train, 8 steps of 4
    return [
        "data.name=imagefolder",
        f"data.root={root}",
        "data.loader=stream",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.val_fraction=0.2",
        "data.image_size=10",
        "data.random_resized_crop=[0.3,1.0]",
        "data.hflip=true",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.25,0.25,0.25]",
        "peers=[small_cnn,small_cnn]",
        "train.checkpoint_every_steps=2",
    ]


def _train(
    out: Path, overrides: list[str], fault: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if fault:
        env["DMLKIT_FAULT"] = fault
    argv = ["train", "--out", str(out), *sets(*COMMON, *overrides)]
    return subprocess.run(
        [sys.executable, "-m", "dmlkit.cli", *argv], env=env, capture_output=True, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setup", "kill_at", "newest"),
    [(_digits, 7, "epoch_0001_step_00000006.pt"), (_stream, 13, "epoch_0001_step_00000012.pt")],
    ids=["memory", "stream"],
)
def test_killed_mid_epoch_resumes_bitwise(tmp_path: Path, setup, kill_at, newest) -> None:
    overrides = setup(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _train(whole, overrides).returncode == 0
    proc = _train(cut, overrides, fault=f"kill-at-step@{kill_at}")
    assert proc.returncode == -9, proc.stderr  # SIGKILL inside epoch 2
    ckpts = cut / "checkpoints"
    # the step checkpoint before the kill is the newest; epoch 1's end is still there
    assert newest_valid_checkpoint(ckpts)[0].name == newest
    assert [p.name for p in epoch_checkpoints(ckpts, within=False)] == ["epoch_0001.pt"]
    assert main(["train", "--resume", str(cut)]) == 0
    for a, b in zip(weights(whole), weights(cut)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def strip(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records(run)]

    # every step record once, and epoch 2's train record the mean over all its steps
    assert strip(cut) == strip(whole)
    steps = [r["step"] for r in records(cut, "step") if r["peer"] == records(cut)[0]["peer"]]
    assert steps == sorted(set(steps)) and len(steps) == steps[-1]
    # done: no step checkpoint is left once the epoch's own is written
    assert sorted(p.name for p in ckpts.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]


def test_only_the_newest_step_checkpoint_is_kept(tmp_path: Path) -> None:
    state = {"x": torch.zeros(1)}
    for step in (2, 4):
        save_checkpoint(tmp_path, state, 0, keep=1, step=step)
    assert [p.name for p in epoch_checkpoints(tmp_path)] == ["epoch_0000_step_00000004.pt"]
    save_checkpoint(tmp_path, state, 1, keep=1)
    save_checkpoint(tmp_path, state, 1, keep=1, step=6)
    assert [p.name for p in epoch_checkpoints(tmp_path)] == [
        "epoch_0001_step_00000006.pt",
        "epoch_0001.pt",
    ]
    assert (tmp_path / "last.pt").read_bytes() == (
        tmp_path / "epoch_0001_step_00000006.pt"
    ).read_bytes()
    for epoch in (2, 3):
        save_checkpoint(tmp_path, state, epoch, keep=1)
    # the step checkpoint went with epoch 2's; `keep` counts epoch ends only
    assert [p.name for p in epoch_checkpoints(tmp_path)] == ["epoch_0003.pt", "epoch_0002.pt"]
    assert not list(tmp_path.glob("*step*"))


def test_negative_checkpoint_every_steps_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["train", "--out", str(tmp_path / "r"), *sets("train.checkpoint_every_steps=-1")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train.checkpoint_every_steps must be >= 0" in err[0]
    assert not (tmp_path / "r").exists()
