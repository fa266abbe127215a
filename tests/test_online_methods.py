"""ONE, KDCL, OKDDip and PCL in the trainer: training, bitwise resume, evaluation of every
branch, the ensemble, the method's heads and its deployed model; DML over a multi-branch net."""

from __future__ import annotations

import json

import pytest
import torch

from dmlkit.cli import main
from dmlkit.cohort import Cohort, PeerSpec
from dmlkit.config import MethodConfig, OptimConfig
from dmlkit.methods.online import PCL

from helpers import FAST, records, train, weights

MB = ["peers=[resnet32_mb]", "peers.0.kwargs.depth=8"]
ARMS = {
    "one": MB,
    "okddip": MB,
    "pcl": MB,
    "kdcl": ["peers=[small_cnn,mlp]"],
    "dml": MB,  # DML with a shared trunk: the branches are the peers
    "dml_mean_logits": ["peers=[small_cnn,mlp]"],
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
    if method in ("kdcl", "dml_mean_logits"):
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


def _pcl(mode: str, decay: float = 0.9) -> PCL:
    spec = PeerSpec("net", "resnet32_mb", 4, 1, seed=0, kwargs={"depth": 8, **PCL.model_kwargs})
    cohort = Cohort([spec], [OptimConfig(lr=0.1)], total_epochs=1.0)
    cfg = MethodConfig(name="pcl", temperature=3.0, ema_decay=decay, mean_teacher=mode)
    return PCL(cohort, cfg)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pcl_temporal_mean_follows_the_mean_teacher_warmup(mode) -> None:
    method = _pcl(mode)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    net, mean = method.net, method.net.mean_net

    def own() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("mean")}

    method.train_step(x, y)  # first update: decay 0, the mean is the network
    first = own()
    # (in train mode the running statistics match too: before this first step the mean and
    # the network had the same weights and both ran a train-mode forward on x)
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


def _bn_stats(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k}


def test_pcl_mean_teacher_train_mode_averages_parameters_only() -> None:
    """The reference's temporal mean: targets from a train-mode forward (batch statistics),
    parameters averaged, running statistics its own (moved by its own forward passes)."""
    method = _pcl("train", decay=0.5)
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    for _ in range(2):  # mean and network now differ
        method.train_step(x, y)
    net, mean = method.net, method.net.mean_net
    x2 = torch.randn(8, 1, 8, 8)
    import copy

    probe = copy.deepcopy(mean).train()
    with torch.no_grad():
        expected = probe.branch_logits(x2)  # train mode: batch statistics, stats moved
    got = method._mean_logits(x2)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert mean.training == net.training  # the mode is restored
    after_forward = _bn_stats(mean)
    assert after_forward.keys() == _bn_stats(probe).keys()
    assert all(torch.equal(after_forward[k], _bn_stats(probe)[k]) for k in after_forward)
    before = {k: v.clone() for k, v in mean.named_parameters()}
    net_stats = _bn_stats(net)
    method._update_mean()  # decay 0.5 (after 2 updates: min(0.5, 1 - 1/3))
    own = dict(net.named_parameters())
    for k, v in mean.named_parameters():
        torch.testing.assert_close(v, 0.5 * before[k] + 0.5 * own[k])
    # running statistics untouched by the update, and not the network's
    stats = _bn_stats(mean)
    assert all(torch.equal(stats[k], after_forward[k]) for k in stats)
    assert any(not torch.equal(stats[k], net_stats[k]) for k in stats)


def test_pcl_mean_teacher_eval_mode_averages_running_statistics() -> None:
    method = _pcl("eval", decay=0.5)
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    for _ in range(2):
        method.train_step(x, y)
    net, mean = method.net, method.net.mean_net
    x2 = torch.randn(8, 1, 8, 8)
    stats = _bn_stats(mean)
    with torch.no_grad():
        expected = mean.eval().branch_logits(x2)
    mean.train()
    got = method._mean_logits(x2)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert all(torch.equal(v, _bn_stats(mean)[k]) for k, v in stats.items())  # eval: no move
    net_stats = _bn_stats(net)
    method._update_mean()
    for k, v in _bn_stats(mean).items():
        torch.testing.assert_close(v, 0.5 * stats[k] + 0.5 * net_stats[k])


def test_pcl_mean_teacher_modes_give_different_targets() -> None:
    targets = {}
    for mode in ("train", "eval"):
        method = _pcl(mode)
        torch.manual_seed(1)
        x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
        for _ in range(3):
            method.train_step(x, y)
        targets[mode] = method._mean_logits(torch.randn(8, 1, 8, 8))
    assert not torch.allclose(targets["train"][0], targets["eval"][0], atol=1e-3)
