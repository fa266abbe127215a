"""Crash safety: kills at several points, full disks, corrupt checkpoints, NaNs, unsafe pickles."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main
from dmlkit.config import load_config
from dmlkit.engine.checkpoint import (
    load_checkpoint,
    newest_valid_checkpoint,
    verify_checkpoint,
)
from dmlkit.engine.trainer import Trainer
from dmlkit.errors import UserError

from helpers import FAST, records, sets, weights

# 4 epochs of 4 steps (256 images at batch 64), every epoch's checkpoint kept: room to kill a
# run mid-epoch, between epochs and inside a checkpoint write.
RUN = [
    *FAST,
    "data.train_size=256",
    "train.epochs=4",
    "train.eval_every=2",
    "train.keep_checkpoints=10",
]


def _set_args(*overrides: str) -> list[str]:
    return sets(*RUN, *overrides)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", "--out", str(run), *_set_args()]) == 0
    return run


def _run_with_fault(out: Path, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DMLKIT_FAULT": fault}
    return subprocess.run(
        [sys.executable, "-m", "dmlkit.cli", "train", "--out", str(out), *_set_args()],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    ["kill-at-step@6", "kill-after-checkpoint@2", "kill-in-checkpoint@3"],
    ids=["mid-epoch", "between-epochs", "during-checkpoint-write"],
)
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted, fault):
    run = tmp_path / "run"
    proc = _run_with_fault(run, fault)
    assert proc.returncode == -9, proc.stderr  # killed by SIGKILL
    assert not (run / "summary.json").exists()
    if fault.startswith("kill-in-checkpoint"):
        # the half-written epoch 3 never became a checkpoint; epoch 2 still verifies
        assert not (run / "checkpoints" / "epoch_0003.pt").exists()
        assert newest_valid_checkpoint(run / "checkpoints")[0].name == "epoch_0002.pt"
    assert main(["train", "--resume", str(run)]) == 0
    for a, b in zip(weights(uninterrupted), weights(run)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    metrics, full = records(run), records(uninterrupted)
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in metrics] == [
        {k: v for k, v in r.items() if k not in strip} for r in full
    ]


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setenv("DMLKIT_FAULT", "enospc-in-checkpoint@3")
    assert main(["train", "--out", str(run), *_set_args()]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "epoch_0002.pt is intact" in err
    ckpts = run / "checkpoints"
    assert verify_checkpoint(ckpts / "epoch_0002.pt") is None
    assert not (ckpts / "epoch_0003.pt").exists()
    assert not list(ckpts.glob(".*.tmp"))  # the partial file was removed
    monkeypatch.delenv("DMLKIT_FAULT")
    assert main(["train", "--resume", str(run)]) == 0  # and the run goes on


@pytest.mark.slow
def test_resume_skips_a_corrupted_newest_checkpoint(tmp_path, uninterrupted, capsys):
    run = tmp_path / "run"
    proc = _run_with_fault(run, "kill-after-checkpoint@3")
    assert proc.returncode == -9
    newest = run / "checkpoints" / "epoch_0003.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert "checksum mismatch" in verify_checkpoint(newest)
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint epoch_0003.pt: checksum mismatch" in err
    assert "resuming from" in err and "epoch_0002.pt" in err
    for a, b in zip(weights(uninterrupted), weights(run)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_loss_stops_at_the_step_and_names_the_peer(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), *_set_args("optim.lr=1e12", "train.epochs=3")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite loss at step" in err and "peer 'peer0_small_cnn'" in err
    assert not (run / "summary.json").exists()
    for path in (run / "checkpoints").glob("epoch_*.pt"):  # whatever was saved is finite
        assert verify_checkpoint(path) is None
        for sd in torch.load(path, weights_only=True)["cohort"]["models"]:
            assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())


def test_nonfinite_skip_policy_skips_the_step(tmp_path, monkeypatch):
    from dmlkit import methods

    cfg = load_config(None, [*RUN, "train.nonfinite=skip", "train.epochs=1"])
    trainer = Trainer(cfg, tmp_path / "run")
    real = trainer.method.train_step
    calls = {"n": 0}

    def flaky(x, y):
        calls["n"] += 1
        if calls["n"] == 2:
            raise methods.NonFiniteLoss("peer1_small_cnn", {"loss": float("nan")})
        return real(x, y)

    monkeypatch.setattr(trainer.method, "train_step", flaky)
    trainer.fit()
    assert trainer.skipped_steps == 1 and trainer.iteration == 4


def test_nonfinite_check_happens_before_the_step():
    """A NaN loss raises before any optimizer step: the weights are untouched."""
    from dmlkit.cohort import Cohort, PeerSpec
    from dmlkit.config import MethodConfig, OptimConfig
    from dmlkit.methods import DML, NonFiniteLoss

    specs = [PeerSpec(f"p{i}", "mlp", 3, 1, seed=i, image_size=(2, 2)) for i in range(2)]
    cohort = Cohort(specs, [OptimConfig()] * 2, total_epochs=1)
    before = [{k: v.clone() for k, v in p.state_dict().items()} for p in cohort.peers]
    x = torch.randn(4, 1, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    for update in ("simultaneous", "sequential"):
        with pytest.raises(NonFiniteLoss, match="p0"):
            DML(cohort, MethodConfig(update=update)).train_step(x, torch.tensor([0, 1, 2, 0]))
        for peer, sd in zip(cohort.peers, before):
            assert all(torch.equal(peer.state_dict()[k], v) for k, v in sd.items())


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evil = run / "checkpoints" / "last.pt"
    torch.save({"format": "dmlkit-cohort", "payload": _Evil()}, evil, pickle_protocol=2)
    with pytest.raises(UserError, match="not a readable dmlkit checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "plain.pt")
    assert not marker.exists()
