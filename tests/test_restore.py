"""Restoring from checkpoints: peers that started from ImageNet weights, and exact fp16 resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dmlkit.analysis.analyze import AnalysisOptions, analyze_run
from dmlkit.cli import main
from dmlkit.config import load_config
from dmlkit.engine.checkpoint import load_checkpoint
from dmlkit.engine.records import EpochFunction
from dmlkit.engine.trainer import Trainer
from dmlkit.models import build_model

from helpers import QUIET

QUIET = [*QUIET, "train.epochs=1", "data.val_fraction=0", "data.train_size=null"]


def _set(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _image_folder(root: Path) -> Path:
    """Two classes of four 32 x 32 RGB images each (distinct colours per image)."""
    from PIL import Image

    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            colour = (60 * i, 200 * c, 30 + 20 * i)
            Image.new("RGB", (32, 32), colour).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run whose mobilenet_v1 peer started from an 'ImageNet' file, since deleted.

    Returns ``(run directory, image folder)``.
    """
    tmp = tmp_path_factory.mktemp("pretrained")
    weights = tmp / "imagenet.pt"
    torch.manual_seed(0)
    torch.save(build_model("mobilenet_v1", 1000, 3).state_dict(), weights)
    images = _image_folder(tmp / "images")
    run = tmp / "teacher"
    data = ["data.name=imagefolder", f"data.root={images}", "data.image_size=32"]
    peer = ["peers=[mobilenet_v1]", f"peers.0.kwargs.pretrained={weights}"]
    assert main(["train", "--out", str(run), *_set(*QUIET, *data, *peer)]) == 0
    assert load_checkpoint(run)["peers"][0]["kwargs"]["pretrained"] == str(weights)
    weights.unlink()  # the checkpoint holds the trained weights: the file is not needed now
    return run, images


def test_kd_teacher_that_started_from_pretrained_weights(pretrained_run, tmp_path):
    teacher, images = pretrained_run
    cfg = load_config(
        None,
        [
            *QUIET,
            "data.name=imagefolder",
            f"data.root={images}",
            "data.image_size=32",
            "method.name=kd",
            f"method.teacher={teacher}",
            "peers=[small_cnn]",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "student")
    saved = load_checkpoint(teacher)["cohort"]["models"][0]
    loaded = trainer.method.teacher.state_dict()
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert trainer.fit()["method"] == "kd"


def test_analysed_run_that_started_from_pretrained_weights(pretrained_run):
    run, _ = pretrained_run
    options = AnalysisOptions(sigmas=[0.0], draws=1, probe_samples=8, entropy_samples=8)
    result = analyze_run(run, options, log=lambda _: None)
    assert result["archs"] == ["mobilenet_v1"]
    # the weights analysed are the trained ones: the test accuracy is the run's own
    summary = json.loads((run / "summary.json").read_text())
    expected = summary["peers"][0]["metrics"]["top1"]
    assert result["test"]["peer0_mobilenet_v1"]["top1"] == pytest.approx(expected, abs=1e-9)


def test_eval_of_a_run_that_started_from_pretrained_weights(pretrained_run):
    run, _ = pretrained_run
    assert main(["eval", str(run)]) == 0


FP16 = [
    *QUIET,
    "data.train_size=128",
    "train.precision=fp16",
    "optim.lr=0.1",
    "peers=[mlp,mlp]",
]


def test_fp16_resume_equals_an_uninterrupted_run(tmp_path):
    """The loss scale is part of the state: resumed fp16 runs skip and scale as the full run."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    epochs = "train.epochs=2"
    assert main(["train", "--out", str(full), *_set(*FP16, epochs)]) == 0
    cfg = load_config(None, [*FP16, epochs])

    def stop_at_1(epoch, _records):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, cut).fit(callbacks=[EpochFunction(stop_at_1)])
    # The first steps overflowed at the initial scale 2^16 and were skipped: a resume that
    # started again from 2^16 would skip another step.
    assert load_checkpoint(cut)["precision"]["scale"] < 2.0**16
    assert main(["train", "--resume", str(cut)]) == 0
    a, b = load_checkpoint(full)["cohort"]["models"], load_checkpoint(cut)["cohort"]["models"]
    for sa, sb in zip(a, b):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
