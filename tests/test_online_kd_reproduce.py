"""``dml reproduce online-kd-table`` end to end at a smoke scale on the CIFAR fixture, and
``digits-online-kd``: every arm runs, the report pairs each arm with independent training."""

from __future__ import annotations

import csv
import functools
import json
import math
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

ARMS = ["independent", "dml", "dml_e", "dml_logits_t3", "kdcl", "one", "okddip", "pcl"]


def test_the_table_arms_and_schedule() -> None:
    exp = EXPERIMENTS.get("online-kd-table")
    assert list(exp.arms) == ARMS
    cfg = arm_config(exp, "okddip", 0, [])
    assert cfg.method.temperature == 3.0 and cfg.peers[0].kwargs["branches"] == 4
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.optim.milestones) == (300, 128, [150, 225])
    assert [p.arch for p in arm_config(exp, "dml", 0, []).peers] == ["resnet32"] * 3
    assert set(paper.ONLINE_KD_CIFAR100_RESNET32) <= set(exp.arms)


def test_the_recipes_take_the_authors_views_ramp_up_shortcuts_and_mean_teacher() -> None:
    for name, ramp in (("online-kd-table", 80.0), ("digits-online-kd", 2.0)):
        exp = EXPERIMENTS.get(name)
        for arm in exp.arms:
            cfg = arm_config(exp, arm, 0, [])
            m = cfg.method
            assert m.member_views == (arm in ("kdcl", "pcl")), (name, arm)
            sigmoid = arm in ("one", "okddip", "pcl")
            assert m.rampup_shape == ("sigmoid" if sigmoid else "linear"), (name, arm)
            assert m.mimicry_rampup == (ramp if sigmoid else 0.0), (name, arm)
            # 1x1-conv shortcuts in every arm, as the online-distillation codes build them
            assert all(p.kwargs["shortcut"] == "conv" for p in cfg.peers), (name, arm)
        assert arm_config(exp, "pcl", 0, []).method.mean_teacher == "train"
        dml3 = arm_config(exp, "dml_logits_t3", 0, []).method
        assert (dml3.name, dml3.temperature) == ("dml_mean_logits", 3.0)


def test_the_cifar_recipe_optimizer_is_nesterov_sgd_and_tests_every_epoch() -> None:
    from dmlkit.cohort import Cohort, PeerSpec

    exp = EXPERIMENTS.get("online-kd-table")
    for arm in ("okddip", "pcl", "one", "dml"):
        cfg = arm_config(exp, arm, 0, [])
        assert cfg.optim.nesterov and cfg.optim.momentum == 0.9, arm
        assert cfg.train.test_every == 1, arm
    cfg = arm_config(exp, "okddip", 0, [])
    spec = PeerSpec("net", "resnet32_mb", 10, 3, seed=0, kwargs={"depth": 8, "branches": 4})
    cohort = Cohort([spec], [cfg.optim], total_epochs=1.0)
    (opt,) = cohort.optimizers
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"] is True
    # the digits recipe keeps the validation split: no test-set evaluation during training
    assert arm_config(EXPERIMENTS.get("digits-online-kd"), "one", 0, []).train.test_every == 0


@pytest.mark.parametrize(("epoch", "weight"), [(0.0, math.exp(-5.0)), (80.0, 1.0)])
def test_one_recipe_ramps_its_distillation_term_up(epoch, weight) -> None:
    """The ONE arm's step minimises CE + w * distill with w the sigmoid ramp-up of ONE's script
    (--consistency_rampup 80): exp(-5) at epoch 0, 1 from epoch 80 (SGD, no momentum or decay
    here, so the step is -lr times that gradient)."""
    import copy

    from dmlkit.cohort import Cohort, PeerSpec
    from dmlkit.config import OptimConfig
    from dmlkit.losses.online import one_loss
    from dmlkit.methods.online import ONE

    mcfg = arm_config(EXPERIMENTS.get("online-kd-table"), "one", 0, []).method
    kwargs = {"depth": 8, "branches": 3, "shortcut": "conv", **ONE.model_kwargs}
    spec = PeerSpec("net", "resnet32_mb", 10, 3, seed=0, kwargs=kwargs)
    plain = OptimConfig(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    method = ONE(Cohort([spec], [plain], total_epochs=100.0), mcfg)
    method.set_progress(epoch)
    assert method.mimicry_weight == pytest.approx(weight)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    net = method.net
    ref = copy.deepcopy(net)
    out = ref.branch_outputs(x)
    terms = one_loss(out.logits, ref.gate(out.trunk), y, 3.0)
    (terms.ce + weight * terms.distill).backward()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    method.train_step(x, y)
    for (k, p), (_, q) in zip(net.named_parameters(), ref.named_parameters(), strict=True):
        if q.grad is not None:
            torch.testing.assert_close((before[k] - p.detach()) / 0.1, q.grad, atol=1e-5, rtol=1e-4)
    # the distillation term matters: the two weights give different steps
    assert terms.distill.item() > 0


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
    # last and best epoch of the member each paper reports; the best is recomputed here from
    # the run's test records (after every epoch: train.test_every=1, and the final test)
    assert "best epoch (selected on the test set, as the papers report)" in md
    assert "issue" not in md.lower()  # sources are papers and repositories
    epochs = 3  # 300 x 0.01
    for r in rows:
        last, best = float(r["reported_last_top1"]), float(r["reported_best_top1"])
        assert best >= last and 1 <= int(r["reported_best_epoch"]) <= epochs
    one = rows[ARMS.index("one")]
    assert one["reported_member"] == "first"
    recs = [
        json.loads(x) for x in (out / "one" / "seed0" / "metrics.jsonl").read_text().splitlines()
    ]
    first = [
        (100 * x["top1"], x["epoch"])
        for x in recs
        if x["split"] in ("test_epoch", "test") and x["peer"].endswith(".b1")
    ]
    assert sorted(e for _, e in first) == list(range(1, epochs + 1))
    value, epoch = max(first, key=lambda v: (v[0], -v[1]))
    assert float(one["reported_best_top1"]) == pytest.approx(value)
    assert int(one["reported_best_epoch"]) == epoch
    assert (
        rows[ARMS.index("okddip")]["reported_last_top1"]
        == rows[ARMS.index("okddip")]["deployed_top1"]
    )


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
    assert len(rows) == 2 * 9
    by = {(r["arm"], r["seed"]): float(r["students_top1"]) for r in rows}
    md = (out / "results.md").read_text()
    # the paired gain in the table is the mean of the per-seed differences
    gains = [by[("dml", s)] - by[("independent", s)] for s in ("0", "1")]
    line = next(x for x in md.splitlines() if x.startswith("| dml |"))
    assert f"{sum(gains) / 2:+.2f}" in line
    assert (out / "gains.png").stat().st_size > 0 and "![paired gains](gains.png)" in md
    # agreement and entropy per arm: the entropy change is the mean of the per-seed differences
    post = _read(out / "posteriors.csv")
    assert len(post) == 2 * 9 and (out / "posteriors.png").stat().st_size > 0
    ent = {(r["arm"], r["seed"]): float(r["entropy_nats"]) for r in post}
    assert all(r["agreement_percent"] == "" for r in post if r["arm"] == "independent")
    assert all(0 <= float(r["agreement_percent"]) <= 100 for r in post if r["arm"] == "pcl")
    change = [ent[("kdcl", s)] - ent[("independent", s)] for s in ("0", "1")]
    line = next(x for x in md.splitlines() if x.startswith("| kdcl |") and "±" in x.split("|")[4])
    assert line.split("|")[4].strip().startswith(f"{sum(change) / 2:+.3f}")
