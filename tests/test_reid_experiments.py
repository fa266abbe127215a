"""Re-id end to end on the synthetic Market-1501 fixture: training, `dml eval`, the recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dmlkit.cli import main
from dmlkit.cohort import Cohort, peer_specs
from dmlkit.config import load_config
from dmlkit.data import build_data
from dmlkit.engine.evaluation import evaluate_reid
from dmlkit.engine.trainer import Trainer
from dmlkit.errors import ConfigError, UserError
from dmlkit.experiments import EXPERIMENTS, arm_config
from dmlkit.models import MODELS
from dmlkit.models.small import SmallCNN
from dmlkit.testing import write_market_fixture

from helpers import MARKET_FAST, records, sets, train

pytestmark = pytest.mark.filterwarnings("ignore:.*counts differ from the published")

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "paper"
REID_KEYS = {"mAP", "rank1", "rank5", "rank10", "rank20"}


@pytest.fixture(scope="module")
def tiny_market(tmp_path_factory):
    return write_market_fixture(
        tmp_path_factory.mktemp("tiny"), train_ids=5, test_ids=4, cameras=3, train_per_camera=3
    )


@pytest.fixture(scope="module")
def trained(market, tmp_path_factory):
    """A DML run of two small CNNs on the fixture (val carved from training images)."""
    out = tmp_path_factory.mktemp("runs") / "dml"
    overrides = [*MARKET_FAST, f"data.root={market.path}", "train.epochs=12", "train.eval_every=4"]
    cfg = load_config(None, [*overrides, "data.val_fraction=0.125"])
    summary = Trainer(cfg, out).fit()
    return out, cfg, summary


@pytest.mark.slow
def test_summary_has_retrieval_metrics(trained):
    _, _, summary = trained
    assert summary["method"] == "dml" and summary["update"] == "simultaneous"
    assert [p["arch"] for p in summary["peers"]] == ["small_cnn", "small_cnn"]
    for m in [p["metrics"] for p in summary["peers"]] + [summary["ensemble"]["metrics"]]:
        assert set(m) >= REID_KEYS
        assert all(0 <= m[k] <= 1 for k in REID_KEYS)
        assert m["rank1"] <= m["rank5"] <= m["rank10"] <= m["rank20"]
        assert m["entropy"] > 0
        assert "top1" not in m


@pytest.mark.slow
def test_validation_uses_training_identities_test_uses_query_gallery(trained):
    out, _, _ = trained
    val, test = records(out, "val"), records(out, "test")
    assert {r["epoch"] for r in val} == {4, 8, 12}
    assert all("top1" in r and "mAP" not in r for r in val)  # classification accuracy
    assert len(test) == 3 and all("mAP" in r for r in test)


@pytest.mark.slow
def test_the_fixture_is_learnable(trained, market):
    """Trained features retrieve unseen identities far better than untrained ones."""
    _, cfg, summary = trained
    data = build_data(cfg.data, seed=0)
    specs = peer_specs(cfg, data.num_classes, 3, data.image_size)
    untrained = evaluate_reid(Cohort(specs, [cfg.peer_optim(i) for i in range(2)], 1.0), data.test)
    for p in summary["peers"]:
        assert p["metrics"]["mAP"] > 0.6
        assert p["metrics"]["mAP"] > untrained[p["name"]]["mAP"] + 0.15


@pytest.mark.slow
def test_dml_eval_prints_map_and_ranks(trained, capsys):
    out, _, summary = trained
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    for word in ("mAP", "Rank-1", "Rank-5", "Rank-10", "Rank-20", "peer0_small_cnn", "ensemble"):
        assert word in printed
    again = json.loads((out / "eval_test.json").read_text())
    for a, b in zip(again["peers"], summary["peers"]):
        assert a["metrics"]["mAP"] == pytest.approx(b["metrics"]["mAP"], abs=1e-6)
    ens = summary["ensemble"]["metrics"]
    assert f"{100 * ens['mAP']:9.2f}{100 * ens['rank1']:9.2f}" in printed
    # the val split of a re-id run is classification
    assert main(["eval", str(out), "--split", "val"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_multi_query_and_stacked_cohort(market, tmp_path, capsys):
    """Multiple query adds mq_ metrics; the stacked cohort's re-id evaluation equals the loop's."""
    out = tmp_path / "mq"
    overrides = [
        *MARKET_FAST,
        f"data.root={market.path}",
        "train.epochs=2",
        "data.multi_query=true",
    ]
    assert train(out, *overrides, "train.cohort_impl=stacked") == 0
    assert "MQ mAP" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    m = summary["ensemble"]["metrics"]
    assert {"mq_mAP", "mq_rank1"} <= set(m) and 0 <= m["mq_mAP"] <= 1
    assert main(["eval", str(out)]) == 0  # the loop cohort, rebuilt from the checkpoint
    again = json.loads((out / "eval_test.json").read_text())
    for a, b in zip(again["peers"], summary["peers"]):
        assert a["metrics"]["mAP"] == pytest.approx(b["metrics"]["mAP"], abs=1e-5)
        assert a["metrics"]["mq_mAP"] == pytest.approx(b["metrics"]["mq_mAP"], abs=1e-5)


def test_peer_without_features_fails_before_training(tiny_market, tmp_path):
    cfg = load_config(None, [*MARKET_FAST, f"data.root={tiny_market.path}", "peers=[mlp]"])
    with pytest.raises(UserError, match="no features"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# config helpers used by the recipes


def test_set_wildcard_applies_to_every_peer():
    cfg = load_config(None, ["peers=[small_cnn,mlp,small_cnn]", "peers.*.kwargs.dropout=0.1"])
    assert [p.kwargs for p in cfg.peers] == [{"dropout": 0.1}] * 3
    assert [p.arch for p in cfg.peers] == ["small_cnn", "mlp", "small_cnn"]
    with pytest.raises(ConfigError, match="'\\*' needs a list"):
        load_config(None, ["optim.*.lr=1"])


@pytest.mark.parametrize(
    "name, experiment, arm",
    [
        ("market1501_independent", "market1501-table", "independent"),
        ("market1501_dml", "market1501-table", "dml"),
        ("market1501_independent_pretrained", "market1501-table", "independent_pretrained"),
        ("market1501_dml_pretrained", "market1501-table", "dml_pretrained"),
        ("market1501_dml_k5", "market1501-cohort-size", "dml_k5"),
        ("market1501_dml_k5", "market1501-dml-e", "dml"),
        ("market1501_dml_e_k5", "market1501-dml-e", "dml_e"),
    ],
)
def test_paper_configs_are_the_recipes(name, experiment, arm):
    from_file = load_config(CONFIGS / f"{name}.yaml")
    from_grid = arm_config(EXPERIMENTS.get(experiment), arm, 0, [])
    assert from_file.to_dict() == from_grid.to_dict()
    assert from_grid.optim.lr == 2e-4 and from_grid.optim.betas == [0.5, 0.999]
    assert from_grid.data.batch_size == 16 and from_grid.train.iterations == 100_000


# ---------------------------------------------------------------------------------------------
# the recipes at a tiny scale


def tiny_net(num_classes: int, in_channels: int = 3, **kwargs) -> torch.nn.Module:
    """Stands in for mobilenet_v1: the same features()/classifier contract, 1000x smaller."""
    return SmallCNN(num_classes, in_channels, width=8, dropout=0.1)


def reproduce(name: str, root: Path, out: Path, *extra: str) -> int:
    args = ["reproduce", name, "--data-root", str(root), "--out", str(out), "--no-progress"]
    args += ["--scale", "0.0001"]
    args += sets(
        "data.fraction=1",
        "data.image_height=32",
        "data.image_width=16",
        "data.eval_batch_size=64",
        "train.iterations=4",
    )
    return main([*args, *extra])


def assert_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200


@pytest.mark.slow
def test_table_recipe(tiny_market, tmp_path, monkeypatch, capsys):
    # without ImageNet weights the pretrained arms stop at once, before any training
    monkeypatch.delenv("DMLKIT_MOBILENET_V1_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert reproduce("market1501-table", tiny_market.path, tmp_path / "t0") == 2
    err = capsys.readouterr().err
    assert "DMLKIT_MOBILENET_V1_WEIGHTS" in err and "Traceback" not in err
    assert not (tmp_path / "t0" / "independent").exists()

    monkeypatch.setitem(MODELS._items, "mobilenet_v1", tiny_net)
    out = tmp_path / "t1"
    assert reproduce("market1501-table", tiny_market.path, out, "--arms", "independent,dml") == 0
    printed = capsys.readouterr().out
    assert "| scratch | independent |" in printed and "| scratch | dml |" in printed
    assert "DML − independent" in printed
    md = (out / "results.md").read_text()
    assert "ensemble mAP" in md and "paper mAP / Rank-1" in md
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("arm,seed,member,mAP,rank1")
    assert len(rows) == 1 + 2 * 3  # two runs x (two peers + ensemble)
    summary = json.loads((out / "dml" / "seed0" / "summary.json").read_text())
    assert set(summary["peers"][0]["metrics"]) >= REID_KEYS
    assert main(["reproduce", "market1501-table", "--arms", "nope", "--data-root", "x"]) == 2
    assert "its arms: independent_pretrained" in capsys.readouterr().err


@pytest.mark.slow
def test_cohort_size_recipe(tiny_market, tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS._items, "mobilenet_v1", tiny_net)
    out = tmp_path / "k"
    assert reproduce("market1501-cohort-size", tiny_market.path, out) == 0
    md = (out / "results.md").read_text()
    for k in range(1, 6):
        assert f"\n| {k} | " in md
    assert_png(out / "cohort_size.png")
    summary = json.loads((out / "dml_k5" / "seed0" / "summary.json").read_text())
    assert len(summary["peers"]) == 5 and summary["method"] == "dml"


@pytest.mark.slow
def test_dml_e_recipe(tiny_market, tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS._items, "mobilenet_v1", tiny_net)
    out = tmp_path / "e"
    assert reproduce("market1501-dml-e", tiny_market.path, out) == 0
    md = (out / "results.md").read_text()
    assert "| DML |" in md and "| DML_e |" in md and "entropy" in md
    assert_png(out / "dml_e.png")
    summary = json.loads((out / "dml_e" / "seed0" / "summary.json").read_text())
    assert summary["method"] == "dml_e" and len(summary["peers"]) == 5


class MapNet(torch.nn.Module):
    """features() returns a conv map [B, C, H, W]; the classifier takes the pooled vector."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 6, 3, padding=1))
        self.classifier = torch.nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def test_conv_map_features_are_pooled(tiny_market, monkeypatch):
    monkeypatch.setitem(MODELS._items, "map_net", MapNet)
    cfg = load_config(None, [*MARKET_FAST, f"data.root={tiny_market.path}", "peers=[map_net]"])
    data = build_data(cfg.data, seed=0)
    specs = peer_specs(cfg, data.num_classes, 3, data.image_size)
    cohort = Cohort(specs, [cfg.peer_optim(0)], 1.0)
    out = evaluate_reid(cohort, data.test)
    name = specs[0].name
    assert 0 <= out[name]["mAP"] <= 1
    # the entropy comes from forward(), not from the classifier applied to the unpooled map
    with torch.no_grad():
        p = torch.softmax(cohort.peers[0].eval()(next(iter(data.test.query))[0]), dim=1)
    first_batch_entropy = float(-(p * p.log()).sum(1).mean())
    assert len(data.test.query.y) <= 64  # one batch: the mean is over exactly these images
    assert out[name]["entropy"] == pytest.approx(first_batch_entropy, rel=1e-4)
