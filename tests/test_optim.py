"""Optimizers by torch.optim name with kwargs; warm-up + cosine and one-cycle schedules."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dmlkit.cli import main
from dmlkit.cohort import Cohort, PeerSpec, stacking_problem
from dmlkit.config import OptimConfig, load_config
from dmlkit.errors import ConfigError
from dmlkit.optim import LRSchedule, build_optimizer

from helpers import QUIET


def _grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def test_adamw_by_name_with_kwargs_is_torch_adamw() -> None:
    cfg = OptimConfig(name="AdamW", lr=0.01, weight_decay=0.05, betas=[0.8, 0.99])
    cfg.kwargs = {"amsgrad": True, "eps": 1e-6}
    model = nn.Linear(4, 3)
    ref = copy.deepcopy(model)
    opt = build_optimizer(model.parameters(), cfg)
    expect = torch.optim.AdamW(
        ref.parameters(), lr=0.01, weight_decay=0.05, betas=(0.8, 0.99), amsgrad=True, eps=1e-6
    )
    assert type(opt) is torch.optim.AdamW
    for step in range(3):
        _grads(model, step), _grads(ref, step)
        opt.step(), expect.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_rmsprop_takes_its_own_momentum_from_kwargs() -> None:
    cfg = OptimConfig(name="rmsprop", lr=0.01, kwargs={"momentum": 0.5, "alpha": 0.9})
    opt = build_optimizer(nn.Linear(2, 2).parameters(), cfg)
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.RMSprop
    assert (group["momentum"], group["alpha"], group["weight_decay"]) == (0.5, 0.9, 5e-4)


def test_per_peer_optimizers() -> None:
    cfg = load_config(
        None, ["peers.1.optim={name: AdamW, lr: 0.001}", "peers.0.optim={name: Adagrad}"]
    )
    specs = [PeerSpec(f"p{i}", "small_cnn", 3, 1, seed=i) for i in range(2)]
    cohort = Cohort(specs, [cfg.peer_optim(i) for i in range(2)], total_epochs=1)
    assert [type(o).__name__ for o in cohort.optimizers] == ["Adagrad", "AdamW"]
    assert cohort.optimizers[1].param_groups[0]["initial_lr"] == 0.001


@pytest.mark.parametrize(
    "setting, words",
    [
        ("optim.name=AdamX", ["optim.name: 'AdamX' is not a torch.optim optimizer", "Adam"]),
        ("peers.1.optim={name: Lion}", ["peers.1.optim.name: 'Lion'", "valid:"]),
    ],
)
def test_unknown_optimizer_is_one_line_exit_2(tmp_path: Path, capsys, setting, words) -> None:
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not run.exists()


def test_bad_optimizer_kwargs_name_the_optimizer() -> None:
    with pytest.raises(ConfigError, match="optim.kwargs for AdamW"):
        build_optimizer(nn.Linear(2, 2).parameters(), OptimConfig(name="AdamW", kwargs={"x": 1}))


def test_warmup_then_cosine() -> None:
    cfg = OptimConfig(schedule="cosine", warmup_epochs=2, warmup_factor=0.1)
    s = LRSchedule(cfg, total_epochs=10)
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(1) == pytest.approx(0.55)
    assert s.factor(2) == pytest.approx(1.0)
    assert s.factor(6) == pytest.approx(0.5)  # the cosine spans epochs 2..10
    assert s.factor(10) == pytest.approx(0.0, abs=1e-12)
    # warm-up in front of a step schedule keeps the step's own epochs
    step = LRSchedule(OptimConfig(schedule="step", step_size=3, warmup_epochs=1), 10)
    assert step.factor(0.5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert step.factor(2) == 1.0 and step.factor(3) == pytest.approx(0.1)


def test_onecycle_follows_torch_onecyclelr() -> None:
    steps, per_epoch = 1000, 100
    cfg = OptimConfig(schedule="onecycle", lr=0.4, pct_start=0.25)
    ours = LRSchedule(cfg, total_epochs=steps / per_epoch)
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.4)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.4, total_steps=steps, pct_start=0.25, cycle_momentum=False
    )
    worst = 0.0
    for i in range(steps):
        worst = max(worst, abs(0.4 * ours.factor(i / per_epoch) - opt.param_groups[0]["lr"]))
        opt.step()
        ref.step()
    assert worst < 0.4 * math.pi / steps * 2  # one step's difference in where the phases end
    assert ours.factor(0) == pytest.approx(1 / 25)
    assert ours.factor(2.5) == pytest.approx(1.0)
    assert ours.factor(10) == pytest.approx(1 / 25 / 1e4)


def test_stacking_needs_an_elementwise_optimizer() -> None:
    specs = [PeerSpec(f"p{i}", "small_cnn", 3, 1, seed=i) for i in range(2)]
    assert stacking_problem(specs, [OptimConfig(name="AdamW")] * 2) is None
    assert "element by element" in stacking_problem(specs, [OptimConfig(name="LBFGS")] * 2)


def test_train_with_adamw_and_onecycle(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["optim.name=AdamW", "optim.lr=0.003", "optim.schedule=onecycle", "train.epochs=2"]
    sets += ["data.train_size=256", *QUIET]
    args = ["train", "--out", str(run)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "exp_avg" in state["cohort"]["optimizers"][0]["state"][0]
    sched = LRSchedule(load_config(run / "config.yaml").optim, total_epochs=2)
    last_step = (state["iteration"] - 1) / (state["iteration"] / 2)  # epoch of the last step
    assert state["lr"][0] == pytest.approx(0.003 * sched.factor(last_step))
    assert state["lr"][0] < 0.1 * 0.003  # step 8 of 8: far down the falling half
