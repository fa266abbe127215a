"""Trainer details: iteration budgets, LR schedules, evaluation cadence, unwritable output."""

from __future__ import annotations

import math

import pytest

from dmlkit.cohort import LRSchedule
from dmlkit.config import OptimConfig, load_config
from dmlkit.engine.trainer import Trainer

from helpers import FAST, records, train

# 256 images at batch 64: 4 steps per epoch
RUN = [*FAST, "data.train_size=256", "data.batch_size=64"]


def test_iteration_budget_stops_mid_epoch(tmp_path):
    # 256 images / 64 = 4 steps per epoch; 6 iterations = one epoch and a half
    cfg = load_config(None, [*RUN, "train.iterations=6", "train.epochs=100"])
    summary = Trainer(cfg, tmp_path / "r").fit()
    assert summary["iterations"] == 6 and summary["epochs"] == 2


def test_schedules():
    cos = LRSchedule(OptimConfig(schedule="cosine"), total_epochs=10)
    assert cos.factor(0) == 1.0 and cos.factor(5) == pytest.approx(0.5) and cos.factor(10) == 0
    step = LRSchedule(OptimConfig(schedule="step", step_size=60, gamma=0.1), total_epochs=200)
    assert [step.factor(e) for e in (0, 59.99, 60, 119, 120)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01]
    )
    multi = LRSchedule(OptimConfig(schedule="multistep", milestones=[2, 5], gamma=0.5), 10)
    assert [multi.factor(e) for e in (1.9, 2, 4.9, 5, 9)] == pytest.approx(
        [1, 0.5, 0.5, 0.25, 0.25]
    )
    assert LRSchedule(OptimConfig(schedule="constant"), 10).factor(7) == 1.0


def test_lr_follows_the_schedule_per_iteration(tmp_path):
    cfg = load_config(None, [*RUN, "train.epochs=4", "optim.lr=0.1", "optim.schedule=cosine"])
    Trainer(cfg, tmp_path / "r").fit()
    lrs = [r["lr"] for r in records(tmp_path / "r", "train")][::2]
    # the LR logged for epoch e is the one of its last step: iteration 4e - 1 of 16
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * (4 * e - 1) / 16)) for e in (1, 2, 3, 4)]
    assert lrs == pytest.approx(expected)


def test_per_peer_optimizers(tmp_path):
    cfg = load_config(
        None,
        [
            *RUN,
            "train.epochs=1",
            "peers.1.optim.name=adam",
            "peers.1.optim.lr=0.001",
            "peers.1.optim.schedule=constant",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "r")
    trainer.fit()
    opt0, opt1 = trainer.cohort.optimizers
    assert type(opt0).__name__ == "SGD" and type(opt1).__name__ == "Adam"
    assert opt1.param_groups[0]["lr"] == pytest.approx(0.001)


def test_validation_cadence_and_test_only_at_the_end(tmp_path):
    cfg = load_config(None, [*RUN, "train.epochs=5", "train.eval_every=2"])
    Trainer(cfg, tmp_path / "r").fit()
    recs = records(tmp_path / "r")
    assert sorted({r["epoch"] for r in recs if r["split"] == "val"}) == [2, 4, 5]
    assert {r["epoch"] for r in recs if r["split"] == "test"} == {5}


def test_unwritable_out_dir_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot create a folder inside a file
    assert train(blocker / "run", *RUN) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write the run directory" in err and len(err.splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def test_mimicry_rampup_scales_the_weight_linearly():
    from dmlkit.cohort import Cohort, PeerSpec
    from dmlkit.config import MethodConfig
    from dmlkit.methods import DML

    specs = [PeerSpec(f"p{i}", "mlp", 3, 1, seed=i, image_size=(2, 2)) for i in range(2)]
    cohort = Cohort(specs, [OptimConfig()] * 2, total_epochs=10)
    method = DML(cohort, MethodConfig(mimicry_weight=2.0, mimicry_rampup=4.0))
    weights = []
    for epoch in (0.0, 1.0, 3.0, 4.0, 9.0):
        method.set_progress(epoch)
        weights.append(method.mimicry_weight)
    assert weights == pytest.approx([0.0, 0.5, 1.5, 2.0, 2.0])
    # at epoch 0 the step is pure cross-entropy: the log's loss equals its ce
    method.set_progress(0.0)
    import torch

    logs = method.train_step(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,)))
    assert all(float(log["loss"]) == pytest.approx(float(log["ce"])) for log in logs)
    assert all(float(log["mimicry"]) > 0 for log in logs)
