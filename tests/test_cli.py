"""The `dml` command end to end on the bundled digits: run directory, eval, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main
from dmlkit.config import load_config
from dmlkit.engine.records import EpochFunction
from dmlkit.engine.trainer import Trainer

from helpers import FAST, QUIET, records, sets, train, weights

# Two short epochs on 600 training images, evaluated after each: enough to learn the digits.
RUN = [*FAST, "data.train_size=600", "train.epochs=2", "train.eval_every=1", "optim.lr=0.1"]


def _train(out: Path, *overrides: str) -> int:
    return train(out, *RUN, *overrides)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for sa, sb in zip(wa, wb):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_train_writes_a_complete_run_dir(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    printed = capsys.readouterr().out
    assert "ensemble" in printed and "peer0_small_cnn" in printed

    cfg = load_config(run / "config.yaml")
    assert cfg.data.train_size == 600 and cfg.train.epochs == 2
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"

    log = records(run)
    train_log = records(run, "train")
    assert [(r["epoch"], r["peer"]) for r in train_log] == [
        (1, "peer0_small_cnn"),
        (1, "peer1_small_cnn"),
        (2, "peer0_small_cnn"),
        (2, "peer1_small_cnn"),
    ]
    for r in train_log:
        assert r["loss"] == pytest.approx(r["ce"] + r["mimicry"], rel=1e-5)
        assert r["mimicry"] > 0  # two different peers disagree
    val = {(r["epoch"], r["peer"]) for r in log if r["split"] == "val"}
    assert ("ensemble" in {p for _, p in val}) and {e for e, _ in val} == {1, 2}
    test = [r for r in log if r["split"] == "test"]
    assert len(test) == 3 and all(r["epoch"] == 2 for r in test)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "dml" and summary["update"] == "simultaneous"
    assert [p["arch"] for p in summary["peers"]] == ["small_cnn", "small_cnn"]
    for p in summary["peers"]:
        assert 0.5 < p["metrics"]["top1"] <= 1.0  # learns digits in two short epochs
    assert 0.5 < summary["ensemble"]["metrics"]["top1"] <= 1.0
    test_by_peer = {r["peer"]: r for r in test}
    assert summary["peers"][0]["metrics"]["top1"] == test_by_peer["peer0_small_cnn"]["top1"]

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == [
        "epoch_0001.pt",
        "epoch_0001.pt.sha256",
        "epoch_0002.pt",
        "epoch_0002.pt.sha256",
        "last.pt",
        "last.pt.sha256",
    ]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["cohort"]["optimizers"]) == 2


def test_keep_checkpoints_prunes_old_epochs(tmp_path):
    run = tmp_path / "run"
    assert _train(run, "train.epochs=4", "train.keep_checkpoints=1") == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n for n in names if n.endswith(".pt")] == ["epoch_0003.pt", "epoch_0004.pt", "last.pt"]
    assert len(names) == 6  # each with its .sha256


def test_eval_reproduces_the_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "data.train_size=128", "train.epochs=1") == 0  # any finished run
    assert main(["eval", str(run)]) == 0
    again = json.loads((run / "eval_test.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    for a, b in zip(again["peers"], summary["peers"]):
        assert a["metrics"]["top1"] == pytest.approx(b["metrics"]["top1"], abs=1e-9)
    assert main(["eval", str(run), "--split", "val"]) == 0
    assert (run / "eval_val.json").is_file()


@pytest.mark.slow  # two 4-epoch runs
def test_resume_after_interrupt_gives_identical_weights(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _train(full, "train.epochs=4", "method.update=sequential") == 0

    cfg = load_config(None, [*RUN, "train.epochs=4", "method.update=sequential"])

    def stop_at_2(epoch, _records):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, cut).fit(callbacks=[EpochFunction(stop_at_2)])
    assert not (cut / "summary.json").exists()
    assert main(["train", "--resume", str(cut)]) == 0
    _assert_same_weights(full, cut)
    # the log holds each epoch once, as if never interrupted
    epochs = [r["epoch"] for r in records(cut, "train") if r["peer"] == "peer0_small_cnn"]
    assert epochs == [1, 2, 3, 4]
    summary_full = json.loads((full / "summary.json").read_text())
    summary_cut = json.loads((cut / "summary.json").read_text())
    assert summary_full["peers"] == summary_cut["peers"]


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    """A `dml train` process killed mid-run, then resumed, ends where an uninterrupted run does."""
    epochs = "train.epochs=12"
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _train(full, epochs) == 0
    cmd = [sys.executable, "-m", "dmlkit.cli", "train", "--out", str(cut), *sets(*RUN, epochs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = cut / "checkpoints" / "epoch_0002.pt"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    assert main(["train", "--resume", str(cut)]) == 0
    _assert_same_weights(full, cut)


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    code = main(["train", "--resume", str(run), "--set", "optim.lr=0.5"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "optim.lr" in err and len(err.splitlines()) == 1
    # more epochs is a legitimate change: the run continues from epoch 2 to 3
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_out_dir_holding_a_run_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    before = (run / "summary.json").read_bytes()
    assert _train(run) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "summary.json").read_bytes() == before


def test_independent_and_dml_share_initialisation_and_data_order(tmp_path):
    """Same seeds: peers start equal across methods; with mimicry weight 0, DML is independent."""
    ind, dml0 = tmp_path / "ind", tmp_path / "dml0"
    assert _train(ind, "method.name=independent") == 0
    assert _train(dml0, "method.name=dml", "method.mimicry_weight=0") == 0
    _assert_same_weights(ind, dml0)


def test_kd_distils_from_a_frozen_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    assert _train(teacher, "method.name=independent", "peers=[small_cnn]") == 0
    cfg = load_config(
        None,
        [
            *RUN,
            "method.name=kd",
            f"method.teacher={teacher}",
            "peers=[mlp]",
            "method.temperature=4",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "student")
    summary = trainer.fit()
    assert summary["method"] == "kd" and summary["peers"][0]["arch"] == "mlp"
    teacher_now = trainer.method.teacher.state_dict()
    teacher_saved = weights(teacher)[0]
    for key, value in teacher_saved.items():
        assert torch.equal(teacher_now[key].cpu(), value), key  # never updated


def test_semi_supervised_run(tmp_path):
    run = tmp_path / "semi"
    assert _train(run, "data.labelled_fraction=0.3") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert all(p["metrics"]["top1"] > 0.3 for p in summary["peers"])


@pytest.mark.slow
def test_reproduce_writes_the_comparison_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["reproduce", "digits", "--seeds", "2", "--out", str(out), "--no-progress", *sets(*RUN)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "gain dml − independent" in printed
    table = (out / "results.md").read_text()
    assert "| peer0_small_cnn |" in table and "| ensemble |" in table
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "peer,arch,arm,seed,top1_percent"
    assert len(rows) == 1 + 3 * 2 * 2  # (2 peers + ensemble) x 2 arms x 2 seeds
    s = json.loads((out / "dml" / "seed1" / "summary.json").read_text())
    value = 100 * s["peers"][0]["metrics"]["top1"]
    assert f"peer0_small_cnn,small_cnn,dml,1,{value:.4f}" in rows
    # a second call reuses every finished run
    assert main(args) == 0
    assert capsys.readouterr().out.count("reused finished run") == 4


BAD_INPUTS = [
    (["--set", "method.temprature=2"], "method.temperature"),
    (["--set", "peers.0.arch=resnet9000"], "resnet9000"),
    (["--set", "peers=[]"], "at least 1 peer"),
    (
        ["--set", "data.name=imagefolder", "--set", "data.root=/nonexistent/images"],
        "/nonexistent/images",
    ),
    (
        ["--set", "method.name=kd", "--set", "method.teacher=/nonexistent/teacher"],
        "/nonexistent/teacher",
    ),
    (["-c", "/nonexistent/config.yaml"], "/nonexistent/config.yaml"),
    (["--set", "optim.lr=-1"], "optim.lr"),
    (["--set", "train.epochs=ten"], "train.epochs"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), *sets(*QUIET), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("dml: error: ")
    assert needle in err
    assert "Traceback" not in err
    assert not (out / "summary.json").exists() and not (out / "checkpoints").exists()


@pytest.mark.slow
def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmlkit.cli",
            "train",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "peers.0.arch=resnet9000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("dml: error: peers.0.arch: unknown model 'resnet9000'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_identical_peers_warn_loudly(tmp_path):
    with pytest.warns(UserWarning, match="IDENTICAL weights"):
        assert _train(tmp_path / "r", "peers.0.seed=5", "peers.1.seed=5", "train.epochs=1") == 0


@pytest.mark.slow
def test_identical_peers_warning_reaches_the_terminal(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmlkit.cli",
            "train",
            "--out",
            str(tmp_path / "r"),
            *sets(*RUN, "peers.0.seed=5", "peers.1.seed=5", "train.epochs=1", "data.train_size=64"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dml: warning: peers 'peer0_small_cnn' and 'peer1_small_cnn' start with IDENTICAL" in (
        proc.stderr
    )
