"""``dml watch``: the live table of a run's latest metrics."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dmlkit.cli import main
from dmlkit.cli.watch import Watcher, watch
from dmlkit.engine.lock import FolderLock


def _run_dir(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 4\n")
    (tmp_path / "metrics.jsonl").touch()
    return tmp_path


def _append(path: Path, records: list[dict], tail: str = "") -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + tail)


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()}


def test_table_follows_the_file_as_it_grows(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    metrics = run / "metrics.jsonl"
    lock = FolderLock(run, "run").acquire()  # a live run holds its folder's lock
    w = Watcher(run)
    assert not w.poll() and "(no records yet)" in w.table()
    _append(
        metrics,
        [
            {"split": "step", "peer": "a", "epoch": 1, "step": 5, "loss": 2.5, "ce": 2.0},
            {"split": "step", "peer": "b", "epoch": 1, "step": 5, "loss": 3.25, "ce": 3.0},
        ],
        tail='{"split": "step", "peer": "a", "ep',  # a line the run is still writing
    )
    assert w.poll()
    table = w.table()
    assert table.splitlines()[0] == f"{run}  epoch 1/4  step 5  running"
    rows = _rows(table)
    assert rows["peer"] == ["loss", "ce"]
    assert rows["a"] == ["2.5", "2"] and rows["b"] == ["3.25", "3"]
    # The half-written line is completed, an evaluation comes: the table shows both.
    with metrics.open("a") as f:
        f.write('och": 1, "step": 10, "loss": 1.5, "ce": 1.25}\n')
    _append(
        metrics,
        [
            {"split": "val", "peer": "a", "epoch": 1, "step": 10, "top1": 0.5},
            {"split": "val", "peer": "b", "epoch": 1, "step": 10, "top1": 0.25},
            {"split": "val", "peer": "ensemble", "epoch": 1, "step": 10, "top1": 0.625}
            | {"all_agree": 0.75, "pairwise_kl": 0.125},
        ],
    )
    assert w.poll()
    table = w.table()
    rows = _rows(table)
    assert rows["peer"] == ["loss", "ce", "val", "top1"]  # "val top1" is one column
    assert rows["a"] == ["1.5", "1.25", "50.00%"]
    assert rows["b"] == ["3.25", "3", "25.00%"]
    assert rows["ensemble"] == ["62.50%"]
    assert "val agreement: all_agree 75.00%  pairwise_kl 0.125" in table
    assert not w.poll()  # nothing new
    lock.release()


def test_a_file_trimmed_by_a_resume_is_read_again(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    metrics = run / "metrics.jsonl"
    _append(metrics, [{"split": "step", "peer": "a", "epoch": 2, "step": 20, "loss": 9.0}] * 3)
    w = Watcher(run)
    w.poll()
    assert w.step == 20
    metrics.write_text(json.dumps({"split": "step", "peer": "a", "epoch": 1, "step": 4, "loss": 1}))
    metrics.write_text(metrics.read_text() + "\n")
    w.poll()
    assert w.step == 4 and _rows(w.table())["a"] == ["1"]


def test_watch_once_and_until_the_run_finishes(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    lock = FolderLock(run, "run").acquire()  # a live run holds its folder's lock
    _append(
        run / "metrics.jsonl",
        [{"split": "train", "peer": "a", "epoch": 4, "step": 40, "loss": 0.5}],
    )
    out = io.StringIO()
    assert watch(run, once=True, out=out) == 0
    assert "running" in out.getvalue() and _rows(out.getvalue())["a"] == ["0.5"]
    # A finished run: its last records are read first, then watch returns by itself.
    _append(run / "metrics.jsonl", [{"split": "test", "peer": "a", "epoch": 4, "step": 40}
                                     | {"top1": 0.875}])  # fmt: skip
    (run / "summary.json").write_text("{}")
    lock.release()
    out = io.StringIO()
    assert watch(run, interval=0.01, out=out) == 0
    assert "finished" in out.getvalue() and _rows(out.getvalue())["a"] == ["0.5", "87.50%"]


def test_dml_watch_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run_dir(tmp_path / "run")
    _append(run / "metrics.jsonl", [{"split": "step", "peer": "p1", "step": 3, "loss": 4.0}])
    assert main(["watch", str(run), "--once"]) == 0
    assert _rows(capsys.readouterr().out)["p1"] == ["4"]
    assert main(["watch", str(tmp_path / "nothing"), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dml: error: dml watch ") and "no run there" in err
    assert len(err.strip().splitlines()) == 1


def _checkpoint(run: Path, name: str, checksum: bool = True) -> None:
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / name).write_bytes(b"not read")
    if checksum:
        (run / "checkpoints" / f"{name}.sha256").write_text("x")


def test_a_killed_run_is_not_running_and_names_its_last_checkpoint(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    (run / ".dml.lock").write_text("pid 999999, since then: dml train\n")  # left by SIGKILL
    _append(run / "metrics.jsonl", [{"split": "step", "peer": "a", "epoch": 3, "step": 9}])
    _checkpoint(run, "epoch_0002.pt")
    _checkpoint(run, "epoch_0003.pt", checksum=False)  # cut by the kill: not resumable
    out = io.StringIO()
    assert watch(run, once=True, out=out) == 0
    text = out.getvalue()
    assert text.splitlines()[0].endswith("  not running")
    assert text.splitlines()[-1] == (
        f"dml watch: {run}: not running; last checkpoint epoch 2; "
        f"resume with dml train --resume {run}"
    )
    # followed live, it says the same on stderr and exits 1 instead of waiting forever
    out, err = io.StringIO(), io.StringIO()
    assert watch(run, interval=0.01, out=out, err=err) == 1
    assert "last checkpoint epoch 2; resume with dml train --resume" in err.getvalue()
    # a step checkpoint inside epoch 3 is newer than epoch 2's
    _checkpoint(run, "epoch_0003_step_00000040.pt")
    assert Watcher(run).last_checkpoint() == "epoch 3 step 40"


def test_a_crashed_run_without_checkpoint_or_lock_file_ends_the_watch(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")  # no lock file, no summary, no progress
    err = io.StringIO()
    assert watch(run, interval=0.01, out=io.StringIO(), err=err) == 1
    assert err.getvalue() == (
        f"dml watch: {run}: not running; it stopped before its first checkpoint\n"
    )


def test_the_lock_tells_running_from_stopped(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    w = Watcher(run)
    with FolderLock(run, "run"):
        assert w.state() == "running"
    assert w.state() == "not running"
    (run / "summary.json").write_text("{}")
    assert w.state() == "finished"


def test_a_deleted_run_folder_ends_the_watch(tmp_path: Path) -> None:
    import shutil
    import threading

    run = _run_dir(tmp_path / "run")
    lock = FolderLock(run, "run").acquire()
    err = io.StringIO()
    timer = threading.Timer(0.3, lambda: (lock.release(), shutil.rmtree(run)))
    timer.start()
    try:
        assert watch(run, interval=0.05, out=io.StringIO(), err=err) == 1
    finally:
        timer.join()
    assert err.getvalue() == (
        f"dml watch: {run}: the run folder is gone (deleted or moved); stopped watching\n"
    )


def test_watch_waits_for_a_run_that_is_starting(tmp_path: Path) -> None:
    import threading

    run = tmp_path / "run"
    lock: list[FolderLock] = []

    def start() -> None:  # as dml train does: the lock first, then config.yaml
        lock.append(FolderLock(run, "run").acquire())
        _run_dir(run)
        (run / "summary.json").write_text("{}")
        lock[0].release()

    timer = threading.Timer(0.4, start)
    timer.start()
    out, err = io.StringIO(), io.StringIO()
    try:
        assert watch(run, interval=0.05, wait=30, out=out, err=err) == 0
    finally:
        timer.join()
    assert err.getvalue() == f"dml watch: waiting for {run} (up to 30 s)\n"
    assert "finished" in out.getvalue()


def test_watch_gives_up_waiting_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["watch", str(tmp_path / "never"), "--wait", "0.2", "--interval", "0.05"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"dml: error: dml watch {tmp_path / 'never'}: no run there after waiting 0.2 s "
        f"(no config.yaml); give a run directory (dml train --out), or a longer --wait"
    )
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("flag", "value", "bound"),
    [
        ("--interval", "nan", "> 0"),
        ("--interval", "-1", "> 0"),
        ("--interval", "0", "> 0"),
        ("--interval", "inf", "> 0"),
        ("--interval", "soon", "> 0"),
        ("--wait", "-5", ">= 0"),
        ("--wait", "nan", ">= 0"),
    ],
)
def test_bad_seconds_are_one_line(
    tmp_path: Path, capsys, flag: str, value: str, bound: str
) -> None:
    run = _run_dir(tmp_path / "run")
    assert main(["watch", str(run), flag, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"dml: error: {flag} {value}: give a number of seconds {bound}\n"


def test_control_characters_from_the_files_are_escaped(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    evil = "a\x1b[2Jb"
    _append(run / "metrics.jsonl", [{"split": "step", "peer": evil, "step": 1, evil: 2.0}])
    w = Watcher(run)
    w.poll()
    table = w.table()
    assert "\x1b" not in table and "a\\x1b[2Jb" in table


@pytest.mark.slow  # two dml train processes
def test_watch_started_with_dml_train_then_a_sigkilled_run(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"

    def train(*extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "dmlkit.cli", "train", "--out", str(run)]
        sets = ["train.progress=false", "data.train_size=128", "train.threads=1", *extra]
        return subprocess.Popen(
            cmd + [a for s in sets for a in ("--set", s)], env=os.environ.copy()
        )

    # started at once, before the run folder exists: it waits, follows, ends with the run
    proc = train("train.epochs=2")
    out = io.StringIO()
    try:
        assert watch(run, interval=0.2, wait=120, out=out, err=io.StringIO()) == 0
    finally:
        assert proc.wait(timeout=300) == 0
    assert out.getvalue().split("\n\n")[-1].splitlines()[0].endswith("epoch 2/2  step 4  finished")
    # a second run, SIGKILLed after its first checkpoint: not running, the way on named
    run = tmp_path / "killed"
    proc = train("train.epochs=100000")  # far longer than the test: it is killed, not finished
    deadline = time.monotonic() + 300
    # any epoch's checkpoint: only the newest are kept, so a named one may be gone already
    while not list((run / "checkpoints").glob("epoch_*.pt.sha256")):
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    out = io.StringIO()
    assert watch(run, once=True, out=out) == 0
    last = out.getvalue().splitlines()[-1]
    assert last.startswith(f"dml watch: {run}: not running; last checkpoint epoch ")
    assert last.endswith(f"; resume with dml train --resume {run}")
