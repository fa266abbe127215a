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


def test_every_paper_config_is_generated_from_the_recipes(tmp_path):
    """configs/paper/*.yaml are exactly the files the generator writes from the experiments'
    recipes (CIFAR-100 and Market-1501 alike): no file missing, none extra, none edited."""
    from dmlkit.experiments import cifar100, market1501
    from dmlkit.experiments.recipes import write_paper_configs

    folder = Path(__file__).resolve().parents[1] / "configs" / "paper"
    configs = [*cifar100.paper_configs(), *market1501.paper_configs()]
    written = write_paper_configs(tmp_path, configs)
    assert {p.name for p in folder.glob("*.yaml")} == {p.name for p in written}
    assert any(p.name.startswith("market1501_") for p in written)
    for path in written:
        assert (folder / path.name).read_bytes() == path.read_bytes(), (
            f"configs/paper/{path.name} differs from its recipe; run python "
            "configs/paper/generate.py"
        )
