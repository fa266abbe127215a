"""Peers by name from timm, torchvision and import paths: build, train, rebuild in `dml eval`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmlkit.cli import main
from dmlkit.errors import ConfigError, UserError
from dmlkit.models import build_model
from dmlkit.models.external import load_pretrained

from helpers import FAST

TINY_RUN = [*FAST, "data.train_size=200", "optim.lr=0.05"]


def _write_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] = 40 * c  # a class signal
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


def _train(out: Path, *overrides: str) -> int:
    args = ["train", "--out", str(out)]
    for o in (*TINY_RUN, *overrides):
        args += ["--set", o]
    return main(args)


def _eval_matches_summary(run: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> None:
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", *flags]) == 0
    printed = capsys.readouterr().out
    for peer in summary["peers"]:
        assert peer["name"] in printed
        assert f"{100 * peer['metrics']['top1']:.2f}" in printed


def test_timm_peers_train_and_rebuild_in_eval(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(run, "peers=[timm:test_resnet, small_cnn]") == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["peers"][0]["arch"] == "timm:test_resnet"
    assert any("stem" in k or "conv1" in k for k in state["cohort"]["models"][0])
    _eval_matches_summary(run, capsys)


def test_torchvision_peer_on_an_imagefolder(tmp_path: Path, capsys) -> None:
    root = _write_folder(tmp_path / "images")
    run = tmp_path / "run"
    code = _train(
        run,
        "data.name=imagefolder",
        f"data.root={root}",
        "data.train_size=null",
        "data.batch_size=8",
        "peers=[torchvision:mobilenet_v3_small, small_cnn]",
    )
    assert code == 0
    _eval_matches_summary(run, capsys)


def test_torchvision_refuses_one_channel_images(tmp_path: Path, capsys) -> None:
    assert _train(tmp_path / "run", "peers=[torchvision:resnet18]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3-channel" in err[0]


def test_import_path_arch(tmp_path: Path, monkeypatch, capsys) -> None:
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "zoo.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(num_classes, width=4):  # no in_channels: it is not passed
                return nn.Sequential(
                    nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes)
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert _train(run, "peers=[mynets.zoo:build, small_cnn]", "peers.0.kwargs={width: 6}") == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["cohort"]["models"][0]["1.weight"].shape == (6, 64)
    # a run names code to import: reading it back needs the opt-in (docs/errors.md, "Trust")
    _eval_matches_summary(run, capsys, "--trust-code")


@pytest.mark.parametrize(
    "arch, words",
    [
        ("no_such_pkg.models:build", ["'no_such_pkg.models'", "cannot import"]),
        ("json:no_such_function", ["has no 'no_such_function'"]),
        ("timm:no_such_net", ["timm has no model 'no_such_net'"]),
        ("torchvision:no_such_net", ["torchvision has no model"]),
    ],
)
def test_bad_external_arch_is_one_line_exit_2(tmp_path: Path, capsys, arch, words) -> None:
    run = tmp_path / "run"
    assert _train(run, f"peers=[{arch}, small_cnn]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "peers.0.arch" in err[0], err
    assert all(w in err[0] for w in words), err
    assert not run.exists()


def test_pretrained_from_a_local_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    donor = build_model("timm:test_resnet", num_classes=7, in_channels=3)
    path = tmp_path / "donor.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = build_model("timm:test_resnet", 3, 3, pretrained=str(path))
    ref = donor.state_dict()
    got = model.state_dict()
    fresh = [k for k in got if got[k].shape != ref[k].shape]
    assert fresh and all(k.startswith("fc.") or "head" in k for k in fresh)
    assert all(torch.equal(got[k], ref[k]) for k in got if k not in fresh)
    # a .pt file of another architecture is refused, naming the file
    other = tmp_path / "other.pt"
    torch.save(build_model("small_cnn", 3, 3).state_dict(), other)
    with pytest.raises(UserError, match="other.pt does not fit"):
        load_pretrained(build_model("timm:test_resnet", 3, 3), other, "timm:test_resnet")
    with pytest.raises(UserError, match="nothing is downloaded"):
        build_model("timm:test_resnet", 3, 3, pretrained="imagenet")


def test_wrong_constructor_kwargs(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="check the constructor's arguments"):
        build_model("torchvision:resnet18", 3, 3, no_such_arg=1)


def test_kd_teacher_rebuilt_from_a_timm_run(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    assert _train(teacher, "method.name=independent", "peers=[timm:test_resnet]") == 0
    student = tmp_path / "student"
    code = _train(student, "method.name=kd", f"method.teacher={teacher}", "peers=[small_cnn]")
    assert code == 0
    from dmlkit.engine.checkpoint import load_cohort

    cohort, _ = load_cohort(teacher)  # what the kd teacher, dml eval and dml analyze rebuild
    saved = torch.load(teacher / "checkpoints" / "last.pt", weights_only=True)
    assert cohort.specs[0].arch == "timm:test_resnet"
    weights = cohort.peers[0].state_dict()
    assert all(torch.equal(v, saved["cohort"]["models"][0][k]) for k, v in weights.items())
