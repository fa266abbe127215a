"""``dml reproduce cifar100-table``: the recipes, the YAML files, and the whole grid at a tiny
scale on a generated CIFAR-100-format dataset.

The grid runs with the four architecture names mapped to tiny CNNs (the real networks are
tested in test_cifar_models.py); everything else is the real path: the cifar100 loader, the
trainer, the kd teacher taken from an earlier arm, the report.
"""

from __future__ import annotations

import csv
import json
import statistics
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from dmlkit.cli import main
from dmlkit.cohort import LRSchedule
from dmlkit.config import load_config
from dmlkit.data.cifar100 import DataIntegrityWarning
from dmlkit.experiments import EXPERIMENTS, arm_config
from dmlkit.experiments import cifar100 as table
from dmlkit.models import MODELS
from dmlkit.models.small import SmallCNN
from dmlkit.testing import write_cifar100

PAPER_DIR = Path(__file__).parents[1] / "configs" / "paper"
SEEDS = 2
SCALE = 0.02  # 200 epochs -> 4; 100 training images per class -> 2


# ------------------------------------------------------------------------------------------------
# recipes and the YAML files


def test_grid_arms():
    exp = EXPERIMENTS.get("cifar100-table")
    assert exp is table.CIFAR100_TABLE and exp.needs_data_root
    pairs = {tuple(p["arch"] for p in arm["peers"]) for arm in exp.arms.values()}
    assert set(table.PAIRS) <= pairs and len(table.PAIRS) == 6
    assert len(exp.arms) == 2 * 6 + 1
    arms = list(exp.arms)
    kd = table.kd_arm_name("wrn28_10", "resnet32")
    # the kd student's teacher is Net1 of an independent arm that runs before it
    assert exp.arms[kd]["method"]["teacher"] == "{run:independent_wrn28_10_resnet32}"
    assert arms.index("independent_wrn28_10_resnet32") < arms.index(kd)
    cfg = arm_config(exp, kd, 4, [], out=Path("grid"))
    assert cfg.method.teacher == str(Path("grid") / "independent_wrn28_10_resnet32" / "seed4")
    assert [p.arch for p in cfg.peers] == ["resnet32"] and cfg.method.teacher_peer == 0


def test_paper_schedule():
    cfg = arm_config(table.CIFAR100_TABLE, "dml_resnet32_resnet32", 0, ["data.root=x"])
    o, d = cfg.optim, cfg.data
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.1, 0.9, True, 5e-4)
    assert (cfg.train.epochs, d.batch_size, d.crop_padding, d.hflip) == (200, 64, 4, True)
    assert (d.name, d.val_fraction, cfg.method.update) == ("cifar100", 0.0, "sequential")
    assert (cfg.method.temperature, cfg.method.mimicry_weight) == (1.0, 1.0)
    sched = LRSchedule(o, total_epochs=200)
    lrs = [0.1 * sched.factor(e) for e in (0, 59.9, 60, 119.9, 120, 180, 199.9)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-4, 1e-4])
    # two peers of one architecture start from different weights
    assert cfg.peer_seed(0) != cfg.peer_seed(1)


def test_paper_yaml_files_are_the_grid_recipes():
    """configs/paper/cifar100_*.yaml are generated from the recipes: same files, same text,
    same configs as the runs of the grid."""
    exp = table.CIFAR100_TABLE
    files = {p.name for p in PAPER_DIR.glob("cifar100_*.yaml")}
    assert files == {table.config_filename(arm) for arm in exp.arms}
    for arm in exp.arms:
        path = PAPER_DIR / table.config_filename(arm)
        assert path.read_text(encoding="utf-8") == table.render_yaml(arm), (
            f"{path} differs from the recipe; run python configs/paper/generate.py"
        )
        from_file = load_config(path, ["data.root=/data"])
        grid = arm_config(exp, arm, 0, ["data.root=/data"], out=table.DEFAULT_OUT)
        assert from_file.to_dict() == grid.to_dict(), arm
        assert yaml.safe_load(path.read_text())["data"]["root"] is None


# ------------------------------------------------------------------------------------------------
# the whole grid at a tiny scale


def tiny(width: int):
    def build(num_classes: int, in_channels: int = 3, **kwargs) -> SmallCNN:
        return SmallCNN(num_classes, in_channels, width=width)

    return build


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    out = tmp_path_factory.mktemp("grid") / "table"
    write_cifar100(root, n_train=1000, n_test=300, num_classes=10, seed=1)
    argv = [
        "reproduce", "cifar100-table", "--data-root", str(root), "--seeds", str(SEEDS),
        "--scale", str(SCALE), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    # Tiny networks on tiny batches: one thread is faster (and steadier on a busy machine).
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, width in (("resnet32", 4), ("mobilenet", 6), ("wrn28_10", 8)):
                mp.setitem(MODELS._items, name, tiny(width))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataIntegrityWarning)  # fixture MD5s differ
                rc = main(argv)
                yield {"out": out, "argv": argv, "rc": rc, "main": main}
    finally:
        torch.set_num_threads(threads)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def summary(out: Path, arm: str, seed: int) -> dict:
    return json.loads((out / arm / f"seed{seed}" / "summary.json").read_text())


@pytest.mark.slow
def test_grid_writes_every_run_and_the_results(grid):
    out = grid["out"]
    assert grid["rc"] == 0
    for arm in table.CIFAR100_TABLE.arms:
        for seed in range(SEEDS):
            s = summary(out, arm, seed)
            assert s["epochs"] == round(200 * SCALE)
            assert s["method"] == arm.split("_")[0]
    kd_cfg = yaml.safe_load((out / "kd_wrn28_10_to_resnet32" / "seed1" / "config.yaml").read_text())
    assert kd_cfg["method"]["teacher"] == str(out / "independent_wrn28_10_resnet32" / "seed1")
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()


@pytest.mark.slow
def test_results_csv_values_are_the_run_summaries(grid):
    out = grid["out"]
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == table.CSV_HEADER
    assert len(rows) == SEEDS * (12 * 2 + 1)
    seen = set()
    for row in rows:
        s = summary(out, row["arm"], int(row["seed"]))
        peer = 0 if row["peer"] == "student" else int(row["peer"][-1]) - 1
        assert float(row["top1_percent"]) == 100 * s["peers"][peer]["metrics"]["top1"]
        assert row["arch"] == s["peers"][peer]["arch"]
        assert row["scale"] == f"{SCALE:g}"
        method, net1, net2 = table.arm_info()[row["arm"]]
        assert (row["method"], row["net1"], row["net2"]) == (method, net1, net2)
        if method == "kd":
            assert row["paper_top1_percent"] == ""
        else:
            paper = table.PAPER_TOP1[(net1, net2)][method][peer]
            assert float(row["paper_top1_percent"]) == paper
        seen.add((row["arm"], row["seed"], row["peer"]))
    assert len(seen) == len(rows)
    # e.g. the paper's ResNet-32 pair
    r = {(x["arm"], x["peer"]): x["paper_top1_percent"] for x in rows if x["seed"] == "0"}
    assert r[("dml_resnet32_resnet32", "Net1")] == "71.19"
    assert r[("independent_wrn28_10_mobilenet", "Net2")] == "73.65"


@pytest.mark.slow
def test_results_md_has_every_pair_with_mean_std_and_the_paper(grid):
    out = grid["out"]
    md = (out / "results.md").read_text()
    assert f"--scale {SCALE:g}" in md and "Not comparable with the paper" in md
    for net1, net2 in table.PAIRS:
        assert table.pair_title(net1, net2) in md
    for paper in ("68.99", "71.19", "70.75", "78.96", "70.73", "76.13", "71.10", "76.21"):
        assert paper in md
    for paper in ("76.10", "80.28", "77.39", "80.08", "78.69", "73.65"):
        assert paper in md
    # the MobileNet / ResNet-32 row: Net2's DML mean ± std over seeds, and the paired gain
    dml = [100 * summary(out, "dml_mobilenet_resnet32", s)["peers"][1]["metrics"]["top1"]
           for s in range(SEEDS)]  # fmt: skip
    ind = [100 * summary(out, "independent_mobilenet_resnet32", s)["peers"][1]["metrics"]["top1"]
           for s in range(SEEDS)]  # fmt: skip
    gain = [a - b for a, b in zip(dml, ind)]
    line = next(
        x for x in md.splitlines() if x.startswith("|  | Net2 ResNet-32 |") and "71.10" in x
    )
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == f"{statistics.fmean(ind):.2f} ± {statistics.stdev(ind):.2f}"
    assert cells[3] == f"{statistics.fmean(dml):.2f} ± {statistics.stdev(dml):.2f}"
    sign = "" if statistics.fmean(gain) < 0 else "+"
    assert cells[4] == f"{sign}{statistics.fmean(gain):.2f} ± {statistics.stdev(gain):.2f}"
    assert cells[5:] == ["68.99", "71.10"]
    kd_line = next(x for x in md.splitlines() if x.startswith("| WRN-28-10 → ResNet-32"))
    kd = [100 * summary(out, "kd_wrn28_10_to_resnet32", s)["peers"][0]["metrics"]["top1"]
          for s in range(SEEDS)]  # fmt: skip
    assert f"{statistics.fmean(kd):.2f} ± {statistics.stdev(kd):.2f}" in kd_line


@pytest.mark.slow
def test_rerun_reuses_and_an_interrupted_grid_continues(grid, capsys):
    out = grid["out"]
    before = (out / "results.csv").read_text()
    # an interrupted run: its summary was never written
    victim = out / "dml_wrn28_10_wrn28_10" / "seed1" / "summary.json"
    old = json.loads(victim.read_text())
    victim.unlink()
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        for name, width in (("resnet32", 4), ("mobilenet", 6), ("wrn28_10", 8)):
            mp.setitem(MODELS._items, name, tiny(width))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataIntegrityWarning)
            assert grid["main"](grid["argv"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused finished run") == SEEDS * 13 - 1
    assert "[dml_wrn28_10_wrn28_10 seed 1] test top-1" in printed
    assert json.loads(victim.read_text())["peers"] == old["peers"]  # resumed, same result
    assert (out / "results.csv").read_text() == before


def test_reproduce_needs_the_data(tmp_path, capsys):
    assert main(["reproduce", "cifar100-table", "--out", str(tmp_path / "g")]) == 2
    assert "--data-root" in capsys.readouterr().err
    rc = main(
        ["reproduce", "cifar100-table", "--data-root", str(tmp_path), "--out", str(tmp_path / "g")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cifar-100-python" in err
