"""Experiment grids: scaling for smoke runs, references between arms, data fractions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmlkit.config import Config, DataConfig
from dmlkit.data import build_data
from dmlkit.experiments import Experiment, arm_config, scale_config


def test_scale_config_shrinks_epochs_steps_and_data():
    data = Config().to_dict()
    data["train"]["epochs"] = 200
    data["optim"].update(schedule="multistep", milestones=[60, 120, 160], step_size=60)
    data["peers"] = [{"arch": "mlp", "optim": {"milestones": [100]}}, "small_cnn"]
    small = scale_config(data, 0.01)
    assert small["train"]["epochs"] == 2
    assert small["optim"]["milestones"] == pytest.approx([0.6, 1.2, 1.6])
    assert small["optim"]["step_size"] == pytest.approx(0.6)
    assert small["data"]["fraction"] == pytest.approx(0.01)
    assert small["peers"][0]["optim"]["milestones"] == pytest.approx([1.0])
    assert data["train"]["epochs"] == 200  # the input is not modified
    assert scale_config(data, 1.0) == data


def test_arm_refers_to_an_earlier_arm_run_dir():
    exp = Experiment(
        name="t",
        description="",
        base={},
        arms={
            "teacher": {"method": {"name": "independent"}},
            "student": {"method": {"name": "kd", "teacher": "{run:teacher}"}},
        },
    )
    cfg = arm_config(exp, "student", 3, [], out=Path("grid"))
    assert cfg.method.teacher == str(Path("grid") / "teacher" / "seed3")
    assert cfg.seed == 3


def test_data_fraction_keeps_a_stratified_share_of_every_split():
    full = build_data(DataConfig(), seed=0)
    part = build_data(DataConfig(fraction=0.1), seed=0)
    for a, b in ((full.train, part.train), (full.val, part.val), (full.test, part.test)):
        assert 0.07 * len(a.y) <= len(b.y) <= 0.13 * len(a.y)
        assert set(b.y.tolist()) == set(range(10))  # every class kept
