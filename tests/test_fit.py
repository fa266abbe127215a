"""dmlkit.fit: users' own nn.Modules and Datasets in the Trainer; load_peers / export_peer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import dmlkit
from dmlkit.cli import main
from dmlkit.errors import UserError

# A user's program: two unregistered architectures and a Dataset with random augmentation.
PROGRAM = textwrap.dedent(
    """
    import sys

    import torch
    from torch import nn

    import dmlkit


    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.BatchNorm1d(32))
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            return self.head(self.body(x).relu())


    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.conv(x).relu().mean(dim=(2, 3)))


    class Blobs(torch.utils.data.Dataset):
        # 3 classes of 3x2x2 inputs; noise drawn in __getitem__ (seeded per sample by dmlkit)
        def __init__(self, n, seed, noise=0.1):
            g = torch.Generator().manual_seed(seed)
            self.noise = noise
            self.y = torch.arange(n) % 3
            self.x = torch.randn(n, 3, 2, 2, generator=g) + self.y[:, None, None, None]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i] + self.noise * torch.randn(3, 2, 2), int(self.y[i])


    def models():
        torch.manual_seed(0)
        return [Wide(), Conv()]


    def run(out, resume=False):
        ms = models()
        opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in ms]
        scheds = [lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)] * 2
        return dmlkit.fit(
            ms, Blobs(96, 1), val=Blobs(30, 2), test=Blobs(30, 3, noise=0), out=out, epochs=3,
            batch_size=16, optimizers=opts, schedulers=scheds, resume=resume,
            config={"train": {"eval_every": 1, "progress": False, "device": "cpu"}},
        )


    if __name__ == "__main__":
        run(sys.argv[1], resume=len(sys.argv) > 2)
    """
)


@pytest.fixture()
def program(tmp_path: Path, monkeypatch):
    (tmp_path / "userprog.py").write_text(PROGRAM)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import userprog

    return importlib.reload(userprog)


def _weights(run: Path) -> list[dict[str, torch.Tensor]]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["cohort"]["models"]


def test_user_modules_train_evaluate_and_load_back(program, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = program.run(str(run))
    for name in ("config.yaml", "env.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    assert [p["name"] for p in summary["peers"]] == ["peer0_wide", "peer1_conv"]
    assert summary["epochs"] == 3 and "ensemble" in summary
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val", "test"}
    lrs = [r["lr"] for r in records if r["split"] == "train" and r["peer"] == "peer0_wide"]
    assert lrs == pytest.approx([0.1, 0.05, 0.025])  # StepLR stepped once per epoch
    # one call loads the checkpoint into fresh instances; they score what summary.json says
    fresh = dmlkit.load_peers(run, program.models())
    test = program.Blobs(30, 3, noise=0)
    with torch.no_grad():
        for module, peer in zip(fresh, summary["peers"]):
            top1 = (module(test.x).argmax(1) == test.y).double().mean().item()
            assert top1 == pytest.approx(peer["metrics"]["top1"], abs=1e-9)
    # export one peer as a plain state_dict, in both formats
    pt = dmlkit.export_peer(run, "peer1_conv", tmp_path / "conv.pt")
    st = dmlkit.export_peer(run, 1, tmp_path / "conv.safetensors")
    from safetensors.torch import load_file

    for sd in (torch.load(pt, weights_only=True), load_file(str(st))):
        conv = program.Conv()
        conv.load_state_dict(sd)
        assert torch.equal(conv.conv.weight, fresh[1].conv.weight)
    # dml eval cannot rebuild instances: one line saying how to load them
    assert main(["eval", str(run)]) == 2


@pytest.mark.slow  # spawns the user program, killed and resumed
def test_resume_after_a_kill_is_bitwise(program, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    program.run(str(whole))
    cut = tmp_path / "cut"
    script = tmp_path / "userprog.py"
    env = {**os.environ, "DMLKIT_FAULT": "kill-at-step@10", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script), str(cut)], env=env, capture_output=True)
    assert done.returncode != 0 and not (cut / "summary.json").exists()
    assert (cut / "checkpoints" / "epoch_0001.pt").is_file()  # 6 steps per epoch: killed in 2
    program.run(str(cut), resume=True)
    for a, b in zip(_weights(whole), _weights(cut)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((whole / "summary.json").read_text()) == json.loads(
        (cut / "summary.json").read_text()
    )


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, x: object, y: object, n: int = 8) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[object, object]:
        return self.x, self.y


@pytest.mark.parametrize(
    "x, y, words",
    [
        (torch.zeros(4), 7, "label 7 is outside 0..2"),
        (torch.zeros(4), -3, "label -3 is outside 0..2"),
        (torch.zeros(4, dtype=torch.uint8), 0, "inputs must be floating-point"),
        (torch.zeros(4), 0.5, "labels must be integer class indices"),
    ],
)
def test_bad_datasets_are_one_line(tmp_path: Path, x, y, words) -> None:
    models = [nn.Linear(4, 3), nn.Linear(4, 3)]
    with pytest.raises(UserError, match=words) as info:
        dmlkit.fit(
            models,
            _Pairs(x, y),
            test=_Pairs(x, y),
            out=tmp_path / "run",
            epochs=1,
            batch_size=4,
            config={"train": {"progress": False}},
        )
    assert "\n" not in str(info.value)


def test_models_of_different_class_counts(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"different numbers of classes: \[3, 4\]"):
        dmlkit.fit(
            [nn.Linear(4, 3), nn.Linear(4, 4)],
            _Pairs(torch.zeros(4), 0),
            test=_Pairs(torch.zeros(4), 0),
            out=tmp_path / "run",
        )
    assert not (tmp_path / "run").exists()


# The same user program run as one process and under torchrun with distributed.mode=data.
DATA_MODE = textwrap.dedent(
    """
    import json
    import os
    import sys

    import torch
    from torch import nn

    import dmlkit


    class Blobs(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.y = torch.arange(n) % 3
            self.x = torch.randn(n, 12, generator=g) + self.y[:, None]
            self.reads = []

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            self.reads.append(int(i))
            return self.x[i], int(self.y[i])


    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)), nn.Linear(12, 3)]
    train = Blobs(96, 1)
    dmlkit.fit(
        models, train, test=Blobs(30, 3), out=sys.argv[1], epochs=2, batch_size=16,
        config={"train": {"progress": False, "device": "cpu"},
                "distributed": {"mode": sys.argv[2]}},
    )
    with open(sys.argv[1] + ".reads" + os.environ.get("RANK", "0"), "w") as f:
        json.dump(train.reads, f)
    """
)


def _torchrun_program(script: Path, *args: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={port}", str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_fit_under_torchrun_data_mode_equals_one_process(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(DATA_MODE)
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "none"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun_program(script, str(tmp_path / "two"), "data")
    assert two.returncode == 0, two.stderr[-2000:]
    # each process trained on its half of every batch of 16, gradients averaged: the weights
    # of the one-process run with the whole batch (float tolerance: another summation order)
    states = [torch.load(tmp_path / r / "checkpoints" / "last.pt") for r in ("one", "two")]
    assert states[1]["distributed"]["mode"] == "data"
    # and each process read only its half of the 2 x 96 training samples (the same few
    # samples besides, that dmlkit.fit reads to check the data's shapes and labels)
    reads = [json.loads((tmp_path / f"two.reads{r}").read_text()) for r in (0, 1)]
    whole = json.loads((tmp_path / "one.reads0").read_text())
    assert [len(whole) - len(r) for r in reads] == [96, 96]
    for a, b in zip(*(s["cohort"]["models"] for s in states)):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    # cohort mode would need each process to build only its peers: refused in one line
    cohort = _torchrun_program(script, str(tmp_path / "three"), "cohort")
    assert cohort.returncode != 0
    assert "distributed.mode=cohort is not supported for your own modules" in cohort.stderr
