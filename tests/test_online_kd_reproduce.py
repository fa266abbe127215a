"""``dml reproduce online-kd-table`` end to end at a smoke scale on the CIFAR fixture, and
``digits-online-kd``: every arm runs, the report pairs each arm with independent training."""

from __future__ import annotations

import csv
import functools
import warnings

import pytest
import torch

from dmlkit import paper
from dmlkit.cli import main
from dmlkit.data.cifar100 import DataIntegrityWarning
from dmlkit.experiments import EXPERIMENTS, arm_config
from dmlkit.models import MODELS
from dmlkit.models.cifar import CifarResNet
from dmlkit.models.multibranch import resnet32_mb
from dmlkit.testing import write_cifar100

ARMS = ["independent", "dml", "dml_e", "kdcl", "one", "okddip", "pcl"]


def test_the_table_arms_and_schedule() -> None:
    exp = EXPERIMENTS.get("online-kd-table")
    assert list(exp.arms) == ARMS
    cfg = arm_config(exp, "okddip", 0, [])
    assert cfg.method.temperature == 3.0 and cfg.peers[0].kwargs["branches"] == 4
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.optim.milestones) == (300, 128, [150, 225])
    assert [p.arch for p in arm_config(exp, "dml", 0, []).peers] == ["resnet32"] * 3
    assert set(paper.ONLINE_KD_CIFAR100_RESNET32) <= set(exp.arms)


def test_the_recipes_take_the_authors_views_and_ramp_up() -> None:
    for name, ramp in (("online-kd-table", 80.0), ("digits-online-kd", 2.0)):
        exp = EXPERIMENTS.get(name)
        for arm in exp.arms:
            m = arm_config(exp, arm, 0, []).method
            assert m.member_views == (arm in ("kdcl", "pcl")), (name, arm)
            sigmoid = arm in ("okddip", "pcl")
            assert m.rampup_shape == ("sigmoid" if sigmoid else "linear"), (name, arm)
            assert m.mimicry_rampup == (ramp if sigmoid else 0.0), (name, arm)


def _read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_online_kd_table_end_to_end_on_the_fixture(tmp_path, monkeypatch) -> None:
    root, out = tmp_path / "cifar", tmp_path / "table"
    write_cifar100(root, n_train=600, n_test=200, num_classes=10, seed=1)
    # the real networks at depth 8: the recipe's path, seconds instead of hours
    monkeypatch.setitem(MODELS._items, "resnet32", functools.partial(CifarResNet, depth=8))
    monkeypatch.setitem(MODELS._items, "resnet32_mb", functools.partial(resnet32_mb, depth=8))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataIntegrityWarning)  # fixture MD5s differ
            argv = ["reproduce", "online-kd-table", "--data-root", str(root), "--scale", "0.01",
                    "--out", str(out), "--no-progress"]  # fmt: skip
            assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    rows = _read(out / "results.csv")
    assert [r["arm"] for r in rows] == ARMS
    md = (out / "results.md").read_text()
    assert "Smoke run at --scale 0.01" in md and "unverified" in md
    for arm, value in paper.ONLINE_KD_CIFAR100_RESNET32.items():
        line = next(x for x in md.splitlines() if x.startswith(f"| {arm} |"))
        assert line.rstrip(" |").endswith(f"{value:.2f}")
    assert rows[ARMS.index("pcl")]["deployed_top1"] != ""
    assert rows[ARMS.index("one")]["deployed_top1"] == ""


@pytest.mark.slow
def test_digits_online_kd_pairs_every_arm_with_independent(tmp_path) -> None:
    out = tmp_path / "digits"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["reproduce", "digits-online-kd", "--scale", "0.07", "--seeds", "2",
                "--out", str(out), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    rows = _read(out / "results.csv")
    assert sorted({r["arm"] for r in rows}) == sorted([*ARMS, "dml_shared"])
    assert len(rows) == 2 * 8
    by = {(r["arm"], r["seed"]): float(r["students_top1"]) for r in rows}
    md = (out / "results.md").read_text()
    # the paired gain in the table is the mean of the per-seed differences
    gains = [by[("dml", s)] - by[("independent", s)] for s in ("0", "1")]
    line = next(x for x in md.splitlines() if x.startswith("| dml |"))
    assert f"{sum(gains) / 2:+.2f}" in line
    assert (out / "gains.png").stat().st_size > 0 and "![paired gains](gains.png)" in md
    # agreement and entropy per arm: the entropy change is the mean of the per-seed differences
    post = _read(out / "posteriors.csv")
    assert len(post) == 2 * 8 and (out / "posteriors.png").stat().st_size > 0
    ent = {(r["arm"], r["seed"]): float(r["entropy_nats"]) for r in post}
    assert all(r["agreement_percent"] == "" for r in post if r["arm"] == "independent")
    assert all(0 <= float(r["agreement_percent"]) <= 100 for r in post if r["arm"] == "pcl")
    change = [ent[("kdcl", s)] - ent[("independent", s)] for s in ("0", "1")]
    line = next(x for x in md.splitlines() if x.startswith("| kdcl |") and "±" in x.split("|")[4])
    assert line.split("|")[4].strip().startswith(f"{sum(change) / 2:+.3f}")
