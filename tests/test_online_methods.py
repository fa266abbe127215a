"""ONE, KDCL, OKDDip and PCL in the trainer: training, bitwise resume, evaluation of every
branch, the ensemble, the method's heads and its deployed model; DML over a multi-branch net."""

from __future__ import annotations

import json

import pytest
import torch

from dmlkit.cli import main
from dmlkit.cohort import Cohort, PeerSpec
from dmlkit.config import MethodConfig, OptimConfig
from dmlkit.online_methods import PCL

from helpers import FAST, records, train, weights

MB = ["peers=[resnet32_mb]", "peers.0.kwargs.depth=8"]
ARMS = {
    "one": MB,
    "okddip": MB,
    "pcl": MB,
    "kdcl": ["peers=[small_cnn,mlp]"],
    "dml": MB,  # DML with a shared trunk: the branches are the peers
}
# constant LR: a 1-epoch run resumed to 2 epochs follows the 2-epoch run's schedule
BASE = [*FAST, "optim.schedule=constant", "method.temperature=3"]


@pytest.mark.parametrize("method", sorted(ARMS))
def test_trains_evaluates_and_resumes_bitwise(tmp_path, method) -> None:
    args = [*BASE, f"method.name={method}", *ARMS[method]]
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, *args, "train.epochs=2") == 0
    assert train(part, *args, "train.epochs=1") == 0
    assert main(["train", "--resume", str(part), "--set", "train.epochs=2"]) == 0
    for a, b in zip(weights(full), weights(part), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the 1-epoch run also evaluated after its last epoch: compare training and final test
    def same(split: str) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k != "seconds"}
            for r in records(full, split)
            if r["epoch"] == 2 or split == "train"
        ]

    for split in ("train", "test"):
        mine = [{k: v for k, v in r.items() if k != "seconds"} for r in records(part, split)]
        assert [r for r in mine if r["epoch"] == 2 or split == "train"] == same(split)
    summary = json.loads((full / "summary.json").read_text())
    names = [p["name"] for p in summary["peers"]]
    if method == "kdcl":
        assert names == ["peer0_small_cnn", "peer1_mlp"]
    else:  # every branch evaluated as a member
        assert names == [f"peer0_resnet32_mb.b{i}" for i in (1, 2, 3)]
    assert 0 <= summary["ensemble"]["metrics"]["top1"] <= 1
    test = {r["peer"] for r in records(full, "test")}
    assert set(names) | {"ensemble"} <= test


def test_heads_and_deployed_models_are_evaluated(tmp_path) -> None:
    expect = {
        "one": ({"peer0_resnet32_mb.gate"}, None),
        "okddip": (set(), "peer0_resnet32_mb.b3"),  # the group leader
        "pcl": (
            {"peer0_resnet32_mb.fusion"} | {f"peer0_resnet32_mb.mean.b{i}" for i in (1, 2, 3)},
            "peer0_resnet32_mb.mean.b1",
        ),
    }
    for method, (heads, deployed) in expect.items():
        run = tmp_path / method
        assert train(run, *BASE, f"method.name={method}", *MB) == 0
        summary = json.loads((run / "summary.json").read_text())
        assert set(summary.get("heads", {})) == heads
        assert summary.get("deployed", {}).get("name") == deployed
        if deployed:
            assert (
                summary["deployed"]["metrics"]
                == (summary.get("heads", {}).get(deployed) or summary["peers"][-1])["metrics"]
            )


def test_pcl_temporal_mean_follows_the_mean_teacher_warmup() -> None:
    spec = PeerSpec("net", "resnet32_mb", 4, 1, seed=0, kwargs={"depth": 8, **PCL.model_kwargs})
    cohort = Cohort([spec], [OptimConfig(lr=0.1)], total_epochs=1.0)
    method = PCL(cohort, MethodConfig(name="pcl", temperature=3.0, ema_decay=0.9))
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    net, mean = method.net, method.net.mean_net

    def own() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("mean")}

    method.train_step(x, y)  # first update: decay 0, the mean is the network
    first = own()
    assert all(torch.equal(mean.state_dict()[k], first[k]) for k in mean.state_dict())
    method.train_step(x, y)  # second: decay min(0.9, 1 - 1/2) = 0.5
    second = own()
    w = "branch_nets.0.0.0.conv1.weight"
    torch.testing.assert_close(mean.state_dict()[w], 0.5 * first[w] + 0.5 * second[w])
    assert int(net.mean_updates) == 2
    assert not torch.equal(first[w], second[w])  # the network itself moved


@pytest.mark.parametrize("method", ["one", "okddip", "pcl"])
def test_branch_method_on_a_plain_cohort_fails_in_one_line(tmp_path, method, capsys) -> None:
    run = tmp_path / "run"
    assert train(run, *FAST, f"method.name={method}", "peers=[small_cnn,small_cnn]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multi-branch" in err[0] and "peers=[resnet32_mb]" in err[0]
    assert not (run / "config.yaml").exists()


def test_sequential_dml_over_a_multibranch_peer_is_refused(tmp_path, capsys) -> None:
    args = [*FAST, "method.name=dml", "method.update=sequential", *MB]
    assert train(tmp_path / "run", *args) == 2
    assert "method.update=simultaneous" in capsys.readouterr().err
