"""Outputs that clobber or tear, FIFOs among images, and what ``dml predict`` trusts in a
summary.json (issue 25; docs/errors.md, "Trust" section rows).

``dml predict --out`` and ``dml export --out`` never replace a file dmlkit did not write
without ``--force``, write every file whole or not at all (temporary name, then rename), and
answer a full disk in one line. Only regular files are read as images.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from dmlkit.cli import main

from helpers import copy_run, image_folder, sets


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("dml: warning:")]
    assert len(lines) == 1 and lines[0].startswith("dml: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _image(path: Path, colour=(200, 10, 10)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


@pytest.fixture
def run(finished, tmp_path) -> Path:
    return copy_run(finished, tmp_path)


# -- dml predict --out -------------------------------------------------------------------------


def test_predict_out_never_replaces_what_it_did_not_write(run, tmp_path, capsys):
    img = _image(tmp_path / "x.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    before = {p: p.read_bytes() for p in (img, notes, run / "config.yaml")}
    for target in (img, notes, run / "config.yaml"):
        assert main(["predict", str(run), str(img), "--out", str(target)]) == 2
        line = _one_error(capsys)
        assert "--force" in line or "is one of the inputs" in line, line
    assert {p: p.read_bytes() for p in before} == before
    # its own input stays refused even with --force; a file of the user's is replaced with it
    assert main(["predict", str(run), str(img), "--out", str(img), "--force"]) == 2
    assert "is one of the inputs" in _one_error(capsys)
    assert main(["predict", str(run), str(img), "--out", str(notes), "--force"]) == 0
    assert json.loads(notes.read_text())["predictions"][0]["file"] == str(img)
    # an earlier output of dml predict (json or csv) is replaced without --force
    for fmt in ("json", "csv", "json"):
        assert main(["predict", str(run), str(img), "--out", str(notes), "--format", fmt]) == 0
    assert not list(tmp_path.glob(".notes.txt.*.tmp"))


def test_predict_out_on_a_full_disk_is_one_line(run, tmp_path, capsys, monkeypatch):
    img = _image(tmp_path / "x.png")
    out = tmp_path / "p.json"
    monkeypatch.setenv("DMLKIT_FAULT", "enospc-in-export@1")
    assert main(["predict", str(run), str(img), "--out", str(out)]) == 2
    assert "No space left on device" in _one_error(capsys)
    assert not out.exists() and not list(tmp_path.glob(".p.json.*"))


# -- dml export --out --------------------------------------------------------------------------


def test_export_out_never_replaces_what_it_did_not_write(run, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.json").write_text('{"mine": true}')
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "model.json is there and was not written by dml export" in _one_error(capsys)
    assert (out / "model.json").read_text() == '{"mine": true}'
    assert main(["export", str(run), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "model.json").read_text())["which"] == "ensemble"
    # an earlier export is replaced without --force; nothing half-written is left
    assert main(["export", str(run), "--out", str(out), "--peer", "0"]) == 0
    assert json.loads((out / "model.json").read_text())["which"] != "ensemble"
    assert not list(out.glob(".*.tmp"))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["export", str(run), "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in _one_error(capsys)


def test_export_on_a_full_disk_leaves_the_earlier_export_whole(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setenv("DMLKIT_FAULT", "enospc-in-export@1")
    assert main(["export", str(run), "--out", str(out), "--peer", "1"]) == 2
    line = _one_error(capsys)
    assert "No space left on device" in line and "free space" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp, no mix


# -- FIFOs among images ------------------------------------------------------------------------


class _Hung(Exception):
    pass


@pytest.fixture
def alarm():
    """Fail (instead of hanging the suite) if the test blocks for more than 120 s."""

    def hung(*_):
        raise _Hung("blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_a_fifo_named_like_an_image_is_not_read(tmp_path, alarm, loader):
    root = image_folder(tmp_path / "img")
    os.mkfifo(root / "cat" / "zz.png")
    argv = [
        "train",
        "--out",
        str(tmp_path / "run"),
        *sets(
            "train.progress=false",
            "train.epochs=1",
            "data.name=imagefolder",
            f"data.root={root}",
            f"data.loader={loader}",
            "data.num_workers=0",
            "data.batch_size=4",
            "data.val_fraction=0",
        ),
    ]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_classes"] == 3


def test_predict_reads_only_regular_files(run, tmp_path, capsys, alarm):
    folder = tmp_path / "imgs"
    _image(folder / "a.png")
    os.mkfifo(folder / "b.png")
    assert main(["predict", str(run), str(folder)]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [Path(r["file"]).name for r in rows] == ["a.png"]
    assert main(["predict", str(run), str(folder / "b.png")]) == 2
    assert "b.png: not a regular file" in _one_error(capsys)


# -- dml predict --skip-bad (issue 29) ---------------------------------------------------------


def test_predict_skip_bad_lists_what_it_skipped(run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    _image(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    _image(folder / "c.png", (10, 200, 10))
    assert main(["predict", str(run), str(folder)]) == 2
    assert "b.png: cannot decode the image" in _one_error(capsys)
    assert main(["predict", str(run), str(folder), "--skip-bad"]) == 0
    out = capsys.readouterr()
    assert [Path(r["file"]).name for r in json.loads(out.out)["predictions"]] == ["a.png", "c.png"]
    skipped = [ln for ln in out.err.splitlines() if ln.startswith("dml: skipped ")]
    assert len(skipped) == 1 and "b.png: cannot decode" in skipped[0]


# -- what predict takes from summary.json ------------------------------------------------------


def _edit_summary(run: Path, change) -> None:
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    change(summary)
    path.write_text(json.dumps(summary))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda s: s["preprocess"].update(std=[0.0]), "preprocess.std holds 0.0"),
        (lambda s: s.update(classes=s["classes"][:3]), "says 3 classes"),
        (lambda s: s["preprocess"].update(in_channels=3), "preprocess.mean is"),
        (
            lambda s: s["preprocess"].update(in_channels=3, mean=[0, 0, 0], std=[1, 1, 1]),
            "the peers take 1 channels",
        ),
        (lambda s: s["preprocess"].update(image_size=[5000, 5000]), "preprocess.image_size"),
    ],
    ids=["zero-std", "short-classes", "channels-mean", "wrong-channels", "giant-size"],
)
def test_predict_checks_what_summary_json_says(run, tmp_path, capsys, change, needle):
    _edit_summary(run, change)
    assert main(["predict", str(run), str(_image(tmp_path / "x.png"))]) == 2
    line = _one_error(capsys)
    assert needle in line and "delete it" in line, line


# -- dml analyze / export: where the outputs go, checked before any work ------------------------


def test_analyze_out_a_file_is_one_line(run, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["analyze", str(run), "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in _one_error(capsys)
    assert a_file.read_text() == "x"


def test_read_only_run_folder_is_refused_before_work(run, tmp_path, capsys, monkeypatch):
    """A read-only run folder (simulated: the tests may run as root, whom chmod does not stop)."""
    import dmlkit.analysis.analyze as analyze_module

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != run and real(p, mode))
    measured = []
    monkeypatch.setattr(analyze_module, "analyze_run", lambda *a, **k: measured.append(a))
    assert main(["analyze", str(run)]) == 2
    assert "is read-only or not a folder); give a writable --out" in _one_error(capsys)
    assert not measured and not (run / "analysis").exists()
    assert main(["export", str(run), "--out", str(run / "exported")]) == 2
    assert f"{run} is not a writable folder" in _one_error(capsys)


# -- data.on_bad_image=skip: counted, and a class that loses every image stops the run ------------


def _stream_argv(out: Path, root: Path) -> list[str]:
    return [
        "train",
        "--out",
        str(out),
        *sets(
            "train.progress=false",
            "train.epochs=1",
            "data.name=imagefolder",
            f"data.root={root}",
            "data.loader=stream",
            "data.num_workers=0",
            "data.batch_size=4",
            "data.val_fraction=0",
            "data.mean=[0.5,0.5,0.5]",
            "data.std=[0.25,0.25,0.25]",
            "data.on_bad_image=skip",
        ),
    ]


def test_skipped_images_are_counted_in_summary_json(tmp_path, capsys):
    root = image_folder(tmp_path / "img")
    for path in (root / "fox" / "1.png", root / "fox" / "4.png", root / "cat" / "2.png"):
        path.write_bytes(b"garbage")
    assert main(_stream_argv(tmp_path / "run", root)) == 0
    skipped = json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_images"]
    assert set(skipped) == {"train", "test"} and sum(skipped.values()) == 3  # each file once


def test_a_class_that_loses_every_image_stops_the_run(tmp_path, capsys):
    root = image_folder(tmp_path / "img")
    for path in (root / "dog").iterdir():
        path.write_bytes(b"garbage")  # as if the folder's files went away mid-training
    assert main(_stream_argv(tmp_path / "run", root)) == 2
    err = capsys.readouterr().err.splitlines()
    line = [ln for ln in err if not ln.startswith(("dml: skipping", "dml: warning"))]
    assert len(line) == 1 and "Traceback" not in "".join(err)
    line = line[0]
    assert "every image of class 'dog'" in line and "the class is gone" in line
    assert not (tmp_path / "run" / "summary.json").exists()


def test_eval_of_a_read_only_run_is_refused_before_evaluating(run, capsys, monkeypatch):
    import dmlkit.engine.checkpoint as checkpoint

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != run and real(p, mode))
    monkeypatch.setattr(checkpoint, "load_cohort", lambda *a, **k: pytest.fail("evaluated"))
    assert main(["eval", str(run)]) == 2
    assert "is read-only, and dml eval writes eval_test.json there" in _one_error(capsys)
