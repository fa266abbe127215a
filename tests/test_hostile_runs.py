"""Hostile and unlucky cases around run folders and checkpoints.

A shared run folder (locks), an ``--out`` that is not a run, the crash windows of ``last.pt``,
readers that must verify what they load (missing checksum, non-finite weights, inflating
archives, crafted peer specs, malformed checkpoints), and a resume with a longer schedule.
Each case: one line, the exit status it promises, nothing lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from dmlkit.cli import main
from dmlkit.engine.checkpoint import load_checkpoint, verify_checkpoint
from dmlkit.engine.lock import LOCK_NAME, FolderLock
from dmlkit.errors import UserError

from helpers import FAST, copy_run, sets

FAST_ARGS = sets(*FAST)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("dml: warning:")]
    assert len(lines) == 1 and lines[0].startswith("dml: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _rewrite(ckpt: Path, change) -> None:
    """Load a checkpoint, let ``change(state)`` edit it, save it back without its checksum."""
    state = torch.load(ckpt, weights_only=True)
    change(state)
    torch.save(state, ckpt)
    ckpt.with_name(ckpt.name + ".sha256").unlink(missing_ok=True)


# -- the run folder --------------------------------------------------------------------------


def test_second_train_into_a_locked_run_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with FolderLock(out, f"--out {out}"):  # another process holding it, as far as flock knows
        assert main(["train", "--out", str(out), *FAST_ARGS]) == 2
        line = _one_error(capsys)
        assert "is in use by another dml process (pid " in line and str(os.getpid()) in line
        assert not (out / "config.yaml").exists()
    assert main(["train", "--out", str(out), *FAST_ARGS]) == 0  # released: trains


@pytest.mark.slow  # spawns a process and kills it
def test_lock_of_a_killed_process_is_stale(tmp_path, capsys):
    out = tmp_path / "run"
    code = (
        "import os, signal, sys; from dmlkit.engine.lock import FolderLock; "
        f"FolderLock({str(out)!r}, 'x').acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -9 and (out / LOCK_NAME).is_file()  # the file stays behind
    assert main(["train", "--out", str(out), *FAST_ARGS]) == 0


def test_lock_is_released_when_training_fails(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *FAST_ARGS, "--set", "optim.lr=1e30"]
    assert main(argv) == 1  # a non-finite loss stops the run
    FolderLock(out, "x").acquire().release()  # not held any more


def test_second_reproduce_into_a_locked_grid_is_refused(tmp_path, capsys):
    grid = tmp_path / "grid"
    with FolderLock(grid, f"--out {grid}"):
        assert main(["reproduce", "digits", "--seeds", "1", "--out", str(grid)]) == 2
        assert "is in use by another dml process" in _one_error(capsys)
    assert [p.name for p in grid.iterdir()] == [LOCK_NAME]  # no run started


# -- crash windows of last.pt ----------------------------------------------------------------

TWO_EPOCHS = sets(*FAST, "train.epochs=2", "train.keep_checkpoints=5")


def _train_killed_at(out: Path, fault: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dmlkit.cli", "train", "--out", str(out), *TWO_EPOCHS],
        env={**os.environ, "DMLKIT_FAULT": fault},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-before-last@2", "kill-in-last@2"])
def test_last_pointer_is_repaired_after_a_crash(tmp_path, capsys, fault):
    run = tmp_path / "run"
    _train_killed_at(run, fault)
    ckpts = run / "checkpoints"
    assert verify_checkpoint(ckpts / "epoch_0002.pt") is None
    # before the repair: the newest verified checkpoint is what every reader sees
    assert load_checkpoint(run)["epoch"] == 2
    assert main(["train", "--resume", str(run)]) == 0
    assert verify_checkpoint(ckpts / "last.pt") is None
    assert (ckpts / "last.pt").read_bytes() == (ckpts / "epoch_0002.pt").read_bytes()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "checkpoint: epoch 2 of" in capsys.readouterr().out


def test_readers_use_the_newest_epoch_when_last_is_gone(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "last.pt.sha256").unlink()
    assert main(["eval", str(run)]) == 0
    assert "checkpoint: epoch 1 of" in capsys.readouterr().out


# -- readers verify what they load -----------------------------------------------------------


def _nan_weights(state: dict) -> None:
    first = next(iter(state["cohort"]["models"][0]))
    state["cohort"]["models"][0][first].fill_(float("nan"))


def test_eval_refuses_nonfinite_weights_without_checksum(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    for ckpt in (run / "checkpoints").glob("*.pt"):
        ckpt.unlink()
        ckpt.with_name(ckpt.name + ".sha256").unlink()
    ckpt = run / "checkpoints" / "epoch_0001.pt"
    shutil.copy(finished / "checkpoints" / "epoch_0001.pt", ckpt)
    _rewrite(ckpt, _nan_weights)
    assert main(["eval", str(ckpt)]) == 2
    assert "has non-finite weights" in _one_error(capsys)
    assert main(["eval", str(run)]) == 2  # no checksum: it never verifies
    assert "no checksum file" in _one_error(capsys)


def test_kd_teacher_with_nonfinite_weights_is_refused(finished, tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    shutil.copy(finished / "checkpoints" / "epoch_0001.pt", teacher)
    _rewrite(teacher, _nan_weights)
    out = tmp_path / "student"
    argv = [
        "train",
        "--out",
        str(out),
        *FAST_ARGS,
        *sets("method.name=kd", f"method.teacher={teacher}"),
    ]
    assert main(argv) == 2
    assert "has non-finite weights" in _one_error(capsys)
    assert not out.exists()


def test_inflating_archive_is_refused_before_loading(finished, tmp_path, capsys):
    bomb = tmp_path / "bomb.pt"
    shutil.copy(finished / "checkpoints" / "epoch_0001.pt", bomb)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/999", b"\0" * (64 << 20))  # 64 MiB in about 64 KiB
    assert bomb.stat().st_size < (1 << 20)
    with pytest.raises(UserError, match="its records claim .* bytes but the file holds"):
        load_checkpoint(bomb)
    assert main(["eval", str(bomb)]) == 2  # not a run folder
    _one_error(capsys)


def _huge_width(state: dict) -> None:
    state["peers"][0]["kwargs"] = {"width": 300000}
    state["config"]["peers"][0] = {**state["config"]["peers"][0], "kwargs": {"width": 300000}}


def test_crafted_peer_spec_is_refused_before_building(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    ckpt = run / "checkpoints" / "epoch_0001.pt"
    _rewrite(ckpt, _huge_width)
    assert main(["eval", str(ckpt)]) == 2
    assert "would need" in _one_error(capsys)


def test_peer_spec_differing_from_its_config_is_refused(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    ckpt = run / "checkpoints" / "epoch_0001.pt"
    _rewrite(ckpt, lambda s: s["peers"][0].update(kwargs={"width": 4}))
    assert main(["eval", str(ckpt)]) == 2
    assert "peer specs differ from the config saved with it" in _one_error(capsys)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda s: s.pop("peers"), "missing peers"),
        (lambda s: s["peers"][0].update(evil=1), "malformed spec (evil)"),
        (
            lambda s: s["cohort"]["models"][0].pop(next(iter(s["cohort"]["models"][0]))),
            "do not fit",
        ),
    ],
    ids=["missing-key", "extra-spec-field", "missing-weights"],
)
def test_malformed_checkpoint_is_one_line(finished, tmp_path, capsys, change, needle):
    run = copy_run(finished, tmp_path)
    ckpt = run / "checkpoints" / "epoch_0001.pt"
    _rewrite(ckpt, change)
    assert main(["eval", str(ckpt)]) == 2
    assert needle in _one_error(capsys)


def test_crafted_pickle_message_says_it_would_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "dmlkit-cohort", "x": Evil()}, evil)
    with pytest.raises(UserError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert "would run code" in message and "will not be loaded" in message
    assert "weights_only" not in message  # not PyTorch's advice to load it unsafely
    assert not marker.exists()


# -- resume ---------------------------------------------------------------------------------


def test_resume_with_more_epochs_updates_config_yaml(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "summary.json").unlink()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert load_checkpoint(run)["epoch"] == 2
