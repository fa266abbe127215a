"""Hostile and unlucky inputs: image folders, config files and values, the other
commands' inputs, interrupts and full disks. Each: one line naming the problem, no traceback."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from dmlkit.cli import main
from dmlkit.config import DataConfig
from dmlkit.data.imagefolder import build_imagefolder
from dmlkit.errors import UserError

from helpers import FAST, copy_run, sets

FAST_ARGS = sets(*FAST)


def _image_folder(root: Path, classes: dict[str, int]) -> Path:
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(root / cls / f"{i}.png")
    return root


def _imagefolder_cfg(root: Path) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=8, val_fraction=0)


# -- image folders -------------------------------------------------------------------------


def test_imagefolder_skips_hidden_entries(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": 4, "b": 4, ".ipynb_checkpoints": 2})
    (root / "a" / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / "a" / ".hidden" / "x.png")
    Image.new("RGB", (8, 8)).save(root / "b" / ".x.png")
    bundle = build_imagefolder(_imagefolder_cfg(root), seed=0)
    assert bundle.num_classes == 2  # not the notebook's checkpoint folder
    total = len(bundle.train.x) + len(bundle.test.x)
    assert total == 8


def test_imagefolder_refuses_an_empty_class(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    (root / "empty").mkdir()
    with pytest.raises(UserError, match=r"the class folder .*empty holds no images"):
        build_imagefolder(_imagefolder_cfg(root), seed=0)


def test_imagefolder_unreadable_class_folder_is_an_error(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    real = os.scandir

    def scandir(path="."):  # as for a folder without read permission (the tests run as root)
        if Path(path) == root / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match=r"cannot read '.*/b' \(Permission denied\)"):
        build_imagefolder(_imagefolder_cfg(root), seed=0)


# -- the other commands' inputs --------------------------------------------------------------


def _one_error(capsys, prefix: str = "dml: error: ") -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith(("dml: warning:", "dml: resum"))]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_device_typo_on_eval_and_analyze(finished, capsys, command):
    assert main([command, str(finished), "--device", "foo"]) == 2
    assert "--device='foo': not a device" in _one_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_gpu_blames_the_flag(finished, capsys):
    assert main(["eval", str(finished), "--device", "cuda"]) == 2
    assert "--device=cuda: CUDA is not available here" in _one_error(capsys)


def test_report_to_an_unwritable_path(finished, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    page = tmp_path / "a-file" / "report.md"
    assert main(["report", str(finished), "--out", str(page)]) == 2
    assert "cannot write there" in _one_error(capsys)


@pytest.mark.parametrize("name", ["summary.json", "env.json"])
def test_report_of_a_truncated_json_file(finished, tmp_path, capsys, name):
    run = copy_run(finished, tmp_path)
    path = run / name
    path.write_text(path.read_text()[:40])
    assert main(["report", str(run), "--out", str(tmp_path / "r.md")]) == 2
    assert f"{path}: unreadable" in _one_error(capsys)
    assert not (tmp_path / "r.md").exists()


def test_analyze_of_a_truncated_summary(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "summary.json").write_text('{"method": "dml", "pee')
    argv = ["analyze", str(run), "--out", str(tmp_path / "a"), "--draws", "1", "--samples", "64"]
    assert main(argv) == 2
    assert "summary.json: unreadable" in _one_error(capsys)


def test_reproduce_with_a_truncated_summary(tmp_path, capsys):
    grid = tmp_path / "grid"
    argv = ["reproduce", "digits", "--seeds", "1", "--scale", "0.05", "--out", str(grid)]
    argv += ["--arms", "independent", "--no-progress"]
    assert main(argv) == 0
    summary = grid / "independent" / "seed0" / "summary.json"
    summary.write_text(summary.read_text()[:30])
    capsys.readouterr()
    assert main(argv) == 2
    assert f"{summary}: unreadable" in _one_error(capsys)


def test_malformed_metrics_line_is_skipped_by_every_reader(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1:1] = ["{not json", "5", '{"epoch": 1}']  # damaged, not an object, not a record
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="line 2 is not a record; skipped"):
        assert main(["report", str(run), "--out", str(tmp_path / "r.md")]) == 0
    (run / "summary.json").unlink()
    with pytest.warns(UserWarning, match="is not a record"):
        assert main(["train", "--resume", str(run)]) == 0  # re-evaluates the test split
    assert all('"split"' in ln for ln in (run / "metrics.jsonl").read_text().splitlines())


# -- interrupts ------------------------------------------------------------------------------


@pytest.fixture
def sigint_restored():
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_ctrl_c_during_reproduce_is_one_line_with_the_way_on(
    tmp_path, capsys, monkeypatch, sigint_restored
):
    import dmlkit.experiments

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dmlkit.experiments, "run_experiment", interrupted)
    assert main(["reproduce", "digits", "--out", str(tmp_path / "g")]) == 130
    err = capsys.readouterr().err
    assert "interrupted; finished runs are kept" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a second Ctrl-C is ignored


def test_second_ctrl_c_after_train_is_interrupted_is_ignored(
    tmp_path, capsys, monkeypatch, sigint_restored
):
    from dmlkit.engine.trainer import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    assert main(["train", "--out", str(tmp_path / "r"), *FAST_ARGS]) == 130
    assert "continue with: dml train --resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


# -- full disks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "file"),
    [("enospc-in-metrics@1", "metrics.jsonl"), ("enospc-in-summary@1", "summary.json")],
    ids=["metrics-append", "summary"],
)
def test_full_disk_while_training_is_one_line(tmp_path, capsys, monkeypatch, fault, file):
    run = tmp_path / "run"
    monkeypatch.setenv("DMLKIT_FAULT", fault)
    assert main(["train", "--out", str(run), *FAST_ARGS]) == 1
    line = _one_error(capsys, "dml: training stopped: ")
    assert f"cannot write {run / file} (No space left on device)" in line
    assert "dml train --resume" in line
    monkeypatch.delenv("DMLKIT_FAULT")
    assert main(["train", "--resume", str(run)]) == 0  # free space, resume: done


def test_full_disk_at_resume_is_one_line(finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path)
    (run / "summary.json").unlink()
    monkeypatch.setenv("DMLKIT_FAULT", "enospc-in-resume@1")
    assert main(["train", "--resume", str(run)]) == 1
    assert "metrics.jsonl (No space left on device)" in _one_error(
        capsys, "dml: training stopped: "
    )


def test_full_disk_at_eval_is_one_line(finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path)
    monkeypatch.setenv("DMLKIT_FAULT", "enospc-in-eval@1")
    assert main(["eval", str(run)]) == 2
    assert "eval_test.json (No space left on device)" in _one_error(capsys)
    assert not (run / "eval_test.json").exists()
