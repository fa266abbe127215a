"""More hostile and careless cases of issue 25 (docs/errors.md, "Trust" section rows): the run
lock and forked children, silent garbage, tracebacks for user mistakes, wrong advice.

Each case: one line naming the problem and the fix, exit 2 (or the promised status), nothing
half-written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main
from dmlkit.engine.lock import FolderLock
from dmlkit.errors import UserError

from helpers import records, sets, weights


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("dml: warning:")]
    assert len(lines) == 1 and lines[0].startswith("dml: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- the run lock and forked children ---------------------------------------------------------


def test_a_forked_child_does_not_hold_the_run_lock(tmp_path):
    """The parent dies (SIGKILL) while its forked child lives on: the folder is free at once."""
    out = tmp_path / "run"
    code = (
        "import os, signal, time; from dmlkit.engine.lock import FolderLock; "
        f"FolderLock({str(out)!r}, 'x').acquire(); pid = os.fork()\n"
        "if pid == 0:\n"  # off the pipes: subprocess.run must not wait for the orphan
        "    null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1); os.dup2(null, 2)\n"
        "    time.sleep(30); os._exit(0)\n"
        "print(pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    child = int(proc.stdout.split()[0])
    try:
        os.kill(child, 0)  # the orphan is alive
        start = time.monotonic()
        FolderLock(out, "x").acquire().release()  # and yet the lock is free
        assert time.monotonic() - start < 1.0
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_dead_holder_is_not_named_as_in_use(tmp_path, monkeypatch):
    """An older dmlkit's orphan still holds the lock: the message says its parent is dead."""
    import fcntl

    from dmlkit.engine import lock as lock_module

    out = tmp_path / "run"
    out.mkdir()
    path = out / lock_module.LOCK_NAME
    path.write_text("pid 999999999, since 2026-01-01 00:00:00: dml train\n")
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # this fd stands for the orphan's copy
    monkeypatch.setattr(lock_module, "DEAD_HOLDER_GRACE_S", 0.3)
    try:
        with pytest.raises(UserError, match="still locked by a child of a dml process that has"):
            FolderLock(out, "--out run").acquire()
    finally:
        os.close(fd)


def _stream_overrides(tmp: Path) -> list[str]:
    from test_stream import write_folder

    root = write_folder(tmp / "img", per_class=12)
    return [
        "train.progress=false",
        "train.epochs=2",
        "data.name=imagefolder",
        f"data.root={root}",
        "data.loader=stream",
        "data.num_workers=2",  # forked workers: they inherited the lock before the fix
        "data.batch_size=4",
        "data.val_fraction=0.2",
        "data.image_size=10",
        "data.hflip=true",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.25,0.25,0.25]",
        "peers=[small_cnn,small_cnn]",
        "train.checkpoint_every_steps=2",
    ]


@pytest.mark.slow
def test_resume_right_after_a_kill_on_the_stream_path(tmp_path):
    """SIGKILL mid-epoch with DataLoader workers alive, ``--resume`` at once: it runs, and the
    result equals an uninterrupted run's bitwise."""
    overrides = _stream_overrides(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    whole, cut = tmp_path / "whole", tmp_path / "cut"

    def train(out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
        argv = ["train", "--out", str(out), *sets(*overrides)]
        extra = {"DMLKIT_FAULT": fault} if fault else {}
        return subprocess.run(
            [sys.executable, "-m", "dmlkit.cli", *argv],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=600,
        )

    assert train(whole).returncode == 0
    assert train(cut, "kill-at-step@13").returncode == -9
    start = time.monotonic()
    assert main(["train", "--resume", str(cut)]) == 0
    assert time.monotonic() - start < 60
    for a, b in zip(weights(whole), weights(cut)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in records(cut)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in records(whole)]


# -- wrong advice -------------------------------------------------------------------------------


def _tiny_fit(tmp_path: Path, x: torch.Tensor, **kwargs):
    from torch import nn
    from torch.utils.data import TensorDataset

    import dmlkit

    torch.manual_seed(0)
    y = torch.arange(len(x)) % 2
    models = [nn.Sequential(nn.Flatten(), nn.Linear(4, 2)) for _ in range(2)]
    data = TensorDataset(x, y)
    config = {"train": {"device": "cpu", "progress": False}, **kwargs.pop("config", {})}
    return dmlkit.fit(
        models, data, test=data, out=tmp_path / "run", batch_size=4, config=config, **kwargs
    )


def test_nan_input_is_not_blamed_on_the_learning_rate(tmp_path):
    from dmlkit.engine.persistence import TrainingError

    x = torch.randn(8, 4)
    x[5, 2] = float("nan")
    with pytest.raises(TrainingError, match="the batch itself holds NaN or inf") as info:
        _tiny_fit(tmp_path, x, epochs=1)
    assert "lower optim.lr" not in str(info.value)


def test_a_deleted_run_folder_is_not_told_to_free_space(tmp_path):
    import shutil

    from dmlkit.engine.persistence import TrainingError

    class Delete:
        def on_epoch_end(self, run, records):
            shutil.rmtree(run.run_dir)

    with pytest.raises(TrainingError, match="was deleted or moved meanwhile") as info:
        _tiny_fit(tmp_path, torch.randn(8, 4), epochs=2, callbacks=[Delete()])
    assert "free space" not in str(info.value)


@pytest.mark.parametrize(
    ("errno_name", "needle"),
    [
        ("ENOSPC", "free space and resume"),
        ("EROFS", "is read-only or not writable by you: make it writable and resume"),
        ("EACCES", "is read-only or not writable by you"),
        ("ENOENT", "was deleted or moved meanwhile"),
    ],
)
def test_write_advice_follows_the_cause(errno_name, needle):
    import errno

    from dmlkit.errors import write_advice

    exc = OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))
    assert needle in write_advice(exc, "RUN", "resume with dml train --resume RUN")


# -- silent garbage and tracebacks for user mistakes ---------------------------------------------


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.name=LBFGS", "optim.name: LBFGS needs a closure"),
        ("optim.name=sparseadam", "optim.name: SparseAdam takes sparse gradients only"),
        ("method.temperature=1e-12", "the mimicry term vanishes"),
    ],
    ids=["lbfgs", "sparseadam", "temperature-floor"],
)
def test_refused_up_front_and_no_run_folder(tmp_path, capsys, override, needle):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *sets("train.progress=false", override)]) == 2
    assert needle in _one_error(capsys)
    assert not out.exists()


class _NoneAt(torch.utils.data.Dataset):
    def __init__(self, data, bad: int) -> None:
        self.data, self.bad = data, bad

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return None if i == self.bad else self.data[i]


class _Empty(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i):
        raise IndexError(i)


class _NoParameters(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 2)


def _linear() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))


def _wrong_schedulers(models):
    opts = [torch.optim.SGD(m.parameters(), 0.1) for m in models]
    steps = [torch.optim.lr_scheduler.StepLR(opts[0], 1) for _ in opts]  # both on peer 0's
    return {"optimizers": opts, "schedulers": steps}


def _named_schedulers(models):
    return {
        "optimizers": [torch.optim.SGD(m.parameters(), 0.1) for m in models],
        "schedulers": ["cosine", "cosine"],
    }


FIT_MISTAKES = {
    "no-parameters": (lambda d, m: {"models": [_NoParameters(), m[1]]}, "has no parameters"),
    "empty-dataset": (lambda d, m: {"train": _Empty()}, "train: the dataset is empty"),
    "drop-last-no-batch": (
        lambda d, m: {"train": torch.utils.data.DataLoader(d, batch_size=16, drop_last=True)},
        "the DataLoader yields no batch (8 samples, batch_size 16, drop_last=True)",
    ),
    "none-sample": (lambda d, m: {"train": _NoneAt(d, 3)}, "the dataset's item 3 is None"),
    "none-first-sample": (lambda d, m: {"train": _NoneAt(d, 0)}, "the dataset's item 0 is None"),
    "schedulers-by-name": (lambda d, m: _named_schedulers(m), "'cosine' is not a scheduler"),
    "schedulers-wrong-peer": (
        lambda d, m: _wrong_schedulers(m),
        "schedulers[1] steps optimizers[0], not optimizers[1]",
    ),
}


@pytest.mark.parametrize("case", sorted(FIT_MISTAKES))
def test_fit_mistakes_are_one_line(tmp_path, case):
    from torch.utils.data import TensorDataset

    import dmlkit

    data = TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    models = [_linear(), _linear()]
    change, needle = FIT_MISTAKES[case]
    args = {
        "models": models,
        "train": data,
        "test": data,
        "out": tmp_path / "run",
        "epochs": 1,
        "batch_size": 4,
        "config": {"train": {"device": "cpu", "progress": False}},
        **change(data, models),
    }
    with pytest.raises(UserError) as info:
        dmlkit.fit(**args)
    assert needle in str(info.value) and "\n" not in str(info.value)


LAZY = """
from torch import nn


def build(num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, num_classes))
"""


def test_a_user_arch_with_lazy_modules_trains_and_reloads(tmp_path, monkeypatch, capsys):
    (tmp_path / "lazy25.py").write_text(LAZY)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *sets("train.progress=false", "data.train_size=64")]
    assert main([*argv, *sets("train.epochs=1", "peers=[lazy25:build,small_cnn]")]) == 0
    assert weights(out)[0]["1.weight"].shape == (16, 64)  # 8 x 8 digits, materialised
    assert main(["eval", str(out), "--trust-code"]) == 0
