"""A run folder or checkpoint is data, never code (issue 25; docs/errors.md, "Trust").

Every reader is fed a crafted run (a peer whose arch is ``os:system`` with a command that
creates a marker file, its config.yaml, the checkpoint's saved config and its ``.sha256``
rewritten to agree, as an attacker would) and a crafted lone checkpoint: the marker is never
created, and the CLI answers one line, exit 2, naming the arch and ``--trust-code``. With the
opt-in, the user's own import-path model still works.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dmlkit.cli import main
from dmlkit.errors import UserError

from helpers import FAST, copy_run, sets


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("dml: warning:")]
    assert len(lines) == 1 and lines[0].startswith("dml: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _reseal(ckpt: Path) -> None:
    """Write the ``.sha256`` file that makes ``ckpt`` verify (what an attacker can do too)."""
    data = ckpt.read_bytes()
    ckpt.with_name(ckpt.name + ".sha256").write_text(
        f"{hashlib.sha256(data).hexdigest()}  {len(data)}\n"
    )


def _craft(run: Path, arch: str, kwargs: dict) -> None:
    """Make peer 0 of ``run`` say ``arch`` / ``kwargs`` everywhere a reader looks."""
    for ckpt in (run / "checkpoints").glob("*.pt"):
        state = torch.load(ckpt, weights_only=True)
        state["peers"][0].update(arch=arch, kwargs=kwargs)
        state["config"]["peers"][0].update(arch=arch, kwargs=kwargs)
        torch.save(state, ckpt)
        _reseal(ckpt)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["peers"][0].update(arch=arch, kwargs=kwargs)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture
def crafted(finished, tmp_path) -> tuple[Path, Path, Path]:
    """(crafted run, a lone crafted checkpoint outside any run, the marker its command makes)."""
    marker = tmp_path / "code-ran"
    run = copy_run(finished, tmp_path)
    _craft(run, "os:system", {"command": f"touch {marker}"})
    lone = tmp_path / "elsewhere" / "teacher.pt"
    lone.parent.mkdir()
    shutil.copy(run / "checkpoints" / "epoch_0001.pt", lone)
    _reseal(lone)
    return run, lone, marker


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


READERS = {
    "eval-run": lambda run, lone, tmp: ["eval", str(run)],
    "eval-checkpoint": lambda run, lone, tmp: ["eval", str(run / "checkpoints" / "epoch_0001.pt")],
    "predict-run": lambda run, lone, tmp: ["predict", str(run), str(_image(tmp))],
    "predict-checkpoint": lambda run, lone, tmp: [
        "predict",
        str(run / "checkpoints" / "epoch_0001.pt"),
        str(_image(tmp)),
    ],
    "analyze": lambda run, lone, tmp: ["analyze", str(run), "--samples", "16"],
    "report-analyze": lambda run, lone, tmp: ["report", str(run), "--analyze"],
    "export": lambda run, lone, tmp: ["export", str(run), "--out", str(tmp / "exported")],
    "resume": lambda run, lone, tmp: ["train", "--resume", str(run), *sets("train.epochs=2")],
    "kd-teacher-run": lambda run, lone, tmp: [
        "train",
        "--out",
        str(tmp / "student"),
        *sets(*FAST, "method.name=kd", f"method.teacher={run}"),
    ],
    "kd-teacher-checkpoint": lambda run, lone, tmp: [
        "train",
        "--out",
        str(tmp / "student"),
        *sets(*FAST, "method.name=kd", f"method.teacher={lone}"),
    ],
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_crafted_run_runs_nothing(crafted, tmp_path, capsys, reader):
    run, lone, marker = crafted
    argv = READERS[reader](run, lone, tmp_path)
    assert main(argv) == 2
    line = _one_error(capsys)
    assert not marker.exists(), "the crafted run's command ran"
    assert "'os:system'" in line and "--trust-code" in line, line
    assert not (tmp_path / "student").exists() and not (tmp_path / "exported").exists()
    assert not (run / "analysis").exists()


def test_watch_and_report_read_a_crafted_run_as_data(crafted, capsys):
    run, _, marker = crafted
    assert main(["watch", str(run), "--once"]) == 0
    assert main(["report", str(run), "--out", str(run.parent / "page.md")]) == 0
    assert not marker.exists()


def test_python_readers_run_nothing(crafted, tmp_path):
    import dmlkit
    from dmlkit.engine.checkpoint import load_cohort
    from dmlkit.engine.predict import load_predictor
    from dmlkit.models import build_model

    run, lone, marker = crafted
    for source in (run, lone):
        with pytest.raises(UserError, match="trust_code=True"):
            load_cohort(source)
    with pytest.raises(UserError, match="os:system"):
        load_predictor(run)
    # these two never build a network: they read weights as data, so nothing can run
    fresh = [build_model("small_cnn", 10, 1) for _ in range(2)]
    dmlkit.load_peers(run, fresh)
    dmlkit.export_peer(lone, 1, tmp_path / "peer1.pt")
    assert not marker.exists()


def test_import_path_from_the_current_folder_is_not_imported(
    finished, tmp_path, monkeypatch, capsys
):
    """``dml eval`` of a run naming ``evilmod:build`` imported ./evilmod.py."""
    marker = tmp_path / "imported"
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "evilmod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef build(**kw):\n    raise SystemExit(9)\n"
    )
    run = copy_run(finished, tmp_path)
    _craft(run, "evilmod:build", {})
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(work))])
    assert main(["eval", str(run)]) == 2
    assert "'evilmod:build'" in _one_error(capsys)
    assert not marker.exists() and "evilmod" not in sys.modules


@pytest.mark.parametrize(
    ("arch", "kwargs", "needle"),
    [
        ("timm:test_resnet", {"checkpoint_path": "/etc/passwd"}, "checkpoint_path"),
        ("timm:test_resnet", {"pretrained_cfg_overlay": {"file": "/x.pt"}}, "pretrained_cfg"),
        ("torchvision:resnet18", {"weights_backbone": "DEFAULT"}, "weights_backbone"),
        ("timm:test_resnet", {"drop_path_rate": {"nested": 1}}, "drop_path_rate"),
    ],
    ids=["checkpoint-path", "cfg-overlay", "weights-backbone", "nested-value"],
)
def test_library_archs_take_no_file_kwargs_from_a_run(
    finished, tmp_path, capsys, arch, kwargs, needle
):
    run = copy_run(finished, tmp_path)
    _craft(run, arch, kwargs)
    assert main(["eval", str(run)]) == 2
    line = _one_error(capsys)
    assert needle in line and "--trust-code" in line


def test_callbacks_in_a_run_config_are_not_imported_on_resume(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["callbacks"] = ["evilcb:Callback"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--resume", str(run), *sets("train.epochs=2")]) == 2
    line = _one_error(capsys)
    assert "train.callbacks names 'evilcb:Callback'" in line and "--trust-code" in line


MODULE = """
import torch
from torch import nn


def build(num_classes, in_channels, image_size):
    h, w = image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, num_classes))
"""


@pytest.mark.slow  # five trainings
def test_own_import_path_model_works_with_the_opt_in(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine_trust.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    teacher = ["method.name=kd", f"method.teacher={run}", "peers=[small_cnn]"]
    # the user's own config names it: trusted, no flag needed to train
    assert main(["train", "--out", str(run), *sets(*FAST, "peers=[mine_trust:build]")]) == 0
    capsys.readouterr()
    refused = [
        ["eval", str(run)],
        ["train", "--out", str(tmp_path / "kd"), *sets(*FAST, *teacher)],
        ["train", "--resume", str(run), *sets("train.epochs=2")],
    ]
    for argv in refused:
        assert main(argv) == 2
        assert "'mine_trust:build'" in _one_error(capsys)
    for argv in refused:
        assert main([*argv, "--trust-code"]) == 0, argv
    # the user's own --set naming the arch again is the user's choice: no flag needed
    argv = ["train", "--resume", str(run), *sets("train.epochs=3", "peers=[mine_trust:build]")]
    assert main(argv) == 0
    assert main(["predict", str(run), str(_image(tmp_path)), "--trust-code"]) == 0
    from dmlkit.engine.checkpoint import load_cohort

    cohort, _ = load_cohort(run, trust_code=True)
    assert cohort.specs[0].arch == "mine_trust:build"


def test_printable_escapes_control_characters():
    from dmlkit.trust import printable

    assert printable("peer\x1b[2J\x07") == "peer\\x1b[2J\\x07"
    assert printable("a\u202eb\nc") == "a\\u202eb\\x0ac"
    assert printable("chat é 猫 top1") == "chat é 猫 top1"


ESC = "\x1b[2J\x1b]0;pwned\x07"


def test_names_from_files_are_printed_escaped(finished, tmp_path, capsys):
    """eval (peer names from the checkpoint), watch (peer and metric keys from metrics.jsonl),
    predict --format csv (class names from summary.json), analyze (a grid's run folder names,
    its labels): no raw control character reaches the terminal."""
    import json

    run = copy_run(finished, tmp_path)
    for ckpt in (run / "checkpoints").glob("*.pt"):
        state = torch.load(ckpt, weights_only=True)
        for i, peer in enumerate(state["peers"]):
            peer["name"] = f"evil{i}" + ESC
        torch.save(state, ckpt)
        _reseal(ckpt)
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"split": "val", "peer": "p" + ESC, "epoch": 1, "k" + ESC: 0.5}) + "\n")
    summary = json.loads((run / "summary.json").read_text())
    summary["classes"][0] = "zero" + ESC
    (run / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    image = _image(tmp_path)
    for argv in (
        ["eval", str(run)],
        ["watch", str(run), "--once"],
        ["predict", str(run), str(image), "--format", "csv", "--top-k", "10"],
    ):
        assert main(argv) == 0, argv
        out = capsys.readouterr()
        text = out.out + out.err
        assert "\x1b" not in text and "\x07" not in text, argv
        assert "\\x1b[2J" in text, (argv, text)
    grid = tmp_path / "grid"
    shutil.copytree(finished, grid / ("arm" + ESC) / "seed0")
    argv = ["analyze", str(grid), "--samples", "16", "--draws", "1", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "arm\\x1b[2J" in out.out
