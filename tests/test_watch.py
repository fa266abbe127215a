"""``dml watch``: the live table of a run's latest metrics."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dmlkit.cli import main
from dmlkit.watch import Watcher, watch


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
