"""``method.member_views`` (KDCL's and PCL's one augmentation per member) and
``method.rampup_shape``: the loader's views, the methods' use of view k for member k, bitwise
resume, and the one-line refusals."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dmlkit.cli import main
from dmlkit.cohort import Cohort, PeerSpec, StackedCohort
from dmlkit.config import MethodConfig, OptimConfig
from dmlkit.data.core import BatchTransform, TensorLoader
from dmlkit.losses import rampup
from dmlkit.methods import Method
from dmlkit.methods.online import PCL

from helpers import FAST, image_folder, records, sets, train, weights

# constant LR: a 1-epoch run resumed to 2 epochs follows the 2-epoch run's schedule
KDCL = [
    *FAST,
    "optim.schedule=constant",
    "method.name=kdcl",
    "method.temperature=2",
    "peers=[small_cnn,mlp]",
]
VIEWS = "method.member_views=true"


def _loader(views: int, seed: int = 0) -> TensorLoader:
    x = torch.arange(20 * 64, dtype=torch.float32).reshape(20, 1, 8, 8) % 251
    y = torch.arange(20) % 4
    aug = BatchTransform(torch.zeros(1), torch.ones(1), crop_padding=2, hflip=True)
    loader = TensorLoader(x.to(torch.uint8), y, 5, aug, train=True, seed=seed)
    loader.set_views(views)
    return loader


def _epoch(loader: TensorLoader, epoch: int, start: int = 0) -> list[tuple]:
    loader.set_epoch(epoch, start)
    return list(loader)


def test_rampup_shapes_by_hand() -> None:
    assert rampup(5, 10, "linear") == 0.5
    assert rampup(0, 10, "linear") == 0.0
    assert rampup(5, 10, "sigmoid") == pytest.approx(math.exp(-5 * 0.25))  # 0.2865
    assert rampup(2.5, 10, "sigmoid") == pytest.approx(math.exp(-5 * 0.75**2))  # 0.0601
    assert rampup(0, 10, "sigmoid") == pytest.approx(0.006737947)  # exp(-5): not 0
    for shape in ("linear", "sigmoid"):
        assert rampup(12, 10, shape) == 1.0 and rampup(3, 0, shape) == 1.0
    with pytest.raises(ValueError, match="shape"):
        rampup(1, 2, "cubic")


def test_method_weight_follows_the_configured_shape() -> None:
    cfg = MethodConfig(mimicry_weight=2.0, mimicry_rampup=4.0, rampup_shape="sigmoid")
    method = Method(None, cfg)
    method.set_progress(2.0)
    assert method.mimicry_weight == pytest.approx(2 * math.exp(-1.25))
    method.cfg = MethodConfig(mimicry_weight=2.0, mimicry_rampup=4.0)  # linear, the default
    assert method.mimicry_weight == pytest.approx(1.0)


def test_views_differ_per_member_and_are_a_function_of_seed_and_epoch() -> None:
    batches = _epoch(_loader(3), 0)
    x, y = batches[0]
    assert x.shape == (3, 5, 1, 8, 8) and y.shape == (5,)
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])
    again = _epoch(_loader(3), 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = _epoch(_loader(3), 1)
    assert not torch.equal(other[0][0], x)
    assert not torch.equal(_epoch(_loader(3, seed=1), 0)[0][0], x)
    # the data order is the one-view order: same labels batch by batch
    assert [b[1].tolist() for b in _epoch(_loader(0), 0)] == [b[1].tolist() for b in batches]


def test_views_resume_mid_epoch() -> None:
    full, tail = _epoch(_loader(3), 2), _epoch(_loader(3), 2, start=2)
    assert len(tail) == len(full) - 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))


def test_peer_k_sees_view_k() -> None:
    specs = [PeerSpec(f"p{i}", "small_cnn", 4, 1, seed=i) for i in range(3)]
    cohort = Cohort(specs, [OptimConfig()] * 3, total_epochs=1.0).eval()
    xs = torch.randn(3, 6, 1, 8, 8)
    with torch.no_grad():
        got = cohort.forward_views(xs)
        for k, peer in enumerate(cohort.peers):
            torch.testing.assert_close(got[k], peer(xs[k]))
        stacked = StackedCohort(specs, [OptimConfig()] * 3, total_epochs=1.0).eval()
        for a, b in zip(stacked.forward_views(xs), got):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pcl_branch_k_and_its_mean_see_view_k(mode) -> None:
    spec = PeerSpec("net", "resnet32_mb", 4, 1, seed=0, kwargs={"depth": 8, **PCL.model_kwargs})
    cohort = Cohort([spec], [OptimConfig()], total_epochs=1.0).eval()
    method = PCL(cohort, MethodConfig(name="pcl", member_views=True, mean_teacher=mode))
    xs = torch.randn(3, 6, 1, 8, 8)
    with torch.no_grad():
        logits, feats = method._outputs(method.net, xs)
        mean = method._mean_logits(xs)
        for k in range(3):
            alone = method.net.branch_outputs(xs[k])  # every branch on view k
            torch.testing.assert_close(logits[k], alone.logits[k])
            torch.testing.assert_close(feats[k], alone.features[k])
            # the mean teacher's mode (method.mean_teacher): train = batch statistics
            mean_net = method.net.mean_net.train(mode == "train")
            torch.testing.assert_close(mean[k], mean_net.branch_logits(xs[k])[k])
            mean_net.eval()
    assert not torch.equal(logits[0], method.net.branch_outputs(xs[1]).logits[0])


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "method.name=pcl",
            "peers=[resnet32_mb]",
            "peers.0.kwargs.depth=8",
            "method.temperature=3",
        ],
    ],
    ids=["kdcl", "pcl"],
)
def test_run_with_views_resumes_bitwise(tmp_path, extra) -> None:
    args = [*KDCL, VIEWS, "method.mimicry_rampup=1.5", "method.rampup_shape=sigmoid", *extra]
    full, part, plain = tmp_path / "full", tmp_path / "part", tmp_path / "plain"
    assert train(full, *args, "train.epochs=2") == 0
    assert train(part, *args, "train.epochs=1") == 0
    assert main(["train", "--resume", str(part), "--set", "train.epochs=2"]) == 0
    for a, b in zip(weights(full), weights(part), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in records(full, "train")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in records(part, "train")] == strip
    # the views are used: the same run on one shared batch ends elsewhere
    assert train(plain, *[a for a in args if a != VIEWS], "train.epochs=2") == 0
    a, b = weights(full)[0], weights(plain)[0]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    method = "pcl" if extra else "kdcl"
    assert json.loads((full / "summary.json").read_text())["method"] == method


@pytest.mark.slow
def test_kdcl_with_views_killed_mid_epoch_resumes_bitwise(tmp_path) -> None:
    # 4 steps an epoch, a checkpoint after every step, SIGKILL at step 7 (inside epoch 2): the
    # resumed run redraws epoch 2's views from (seed, epoch) and skips the steps it had done
    args = [*KDCL, VIEWS, "data.train_size=256", "train.epochs=2"]
    args += ["train.checkpoint_every_steps=1", "train.eval_every=1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train(whole, *args) == 0
    argv = [sys.executable, "-m", "dmlkit.cli", "train", "--out", str(cut), *sets(*args)]
    proc = subprocess.run(
        argv, env={**env, "DMLKIT_FAULT": "kill-at-step@7"}, capture_output=True, text=True
    )
    assert proc.returncode == -9, proc.stderr
    assert main(["train", "--resume", str(cut)]) == 0
    for a, b in zip(weights(whole), weights(cut), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)

    def strip(run) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records(run)]

    assert strip(cut) == strip(whole)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["method.name=one", "peers=[resnet32_mb]", "peers.0.kwargs.depth=8"], "only kdcl and pcl"),
        (["method.name=dml"], "method.member_views=false"),
        (["method.name=kdcl", "distributed.mode=data"], "distributed.mode=none"),
    ],
    ids=["one", "dml", "distributed"],
)
def test_views_refused_in_one_line(tmp_path, capsys, overrides, needle) -> None:
    run = tmp_path / "run"
    assert train(run, *FAST, VIEWS, *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "member_views" in err[0]
    assert not (run / "config.yaml").exists()


def test_bad_rampup_shape_is_one_line(tmp_path, capsys) -> None:
    assert train(tmp_path / "run", *FAST, "method.rampup_shape=cubic") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.rampup_shape" in err[0] and "'sigmoid'" in err[0]


def test_stream_loader_refuses_views(tmp_path, capsys) -> None:
    root = image_folder(tmp_path / "img", n=10)
    run = tmp_path / "run"
    data = ["data.name=imagefolder", f"data.root={root}", "data.loader=stream"]
    data += ["data.num_workers=0", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]
    data += ["data.train_size=null", "data.batch_size=4"]
    assert train(run, *FAST, *data, "method.name=kdcl", VIEWS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.loader=memory" in err[0], err
    assert not (run / "config.yaml").exists()


def test_eval_reloads_a_branch_method_run(tmp_path, capsys) -> None:
    # the checkpoint's specs carry the method's model kwargs (temporal_mean, fusion), which the
    # saved config's peers do not: the reload must accept them
    run = tmp_path / "pcl"
    assert (
        train(run, *FAST, "method.name=pcl", "peers=[resnet32_mb]", "peers.0.kwargs.depth=8") == 0
    )
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    shown = capsys.readouterr().out
    top1 = json.loads((run / "summary.json").read_text())["peers"][0]["metrics"]["top1"]
    assert f"{100 * top1:.2f}%" in shown
