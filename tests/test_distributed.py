"""torch.distributed (gloo, 2 CPU processes): cohort and data modes equal one process; a rank
that dies or hangs stops the others with a clear error inside the timeout; resume works.

The multi-process tests launch real processes on 127.0.0.1 (``torchrun -m dmlkit.cli train``
once; otherwise two ``dml train`` processes with the environment torchrun gives its workers,
forked from a server that has imported torch already) and compare their checkpoints with a
one-process run of the same config trained here.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dmlkit.cli import main
from dmlkit.config import DistributedConfig, load_config
from dmlkit.distributed import DistContext, init_distributed
from dmlkit.engine.trainer import Trainer
from dmlkit.errors import ConfigError, UserError

from helpers import FAST, QUIET, records, sets

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

# 128 training images / 32 = 4 steps per epoch; the validation split is evaluated too.
# deterministic=false: torch.use_deterministic_algorithms imports inductor (seconds per process);
# the CPU kernels used here are deterministic anyway.
DIST = [*FAST, "train.deterministic=false", "data.batch_size=32"]
WAIT = 240  # seconds: upper bound of any launch on a busy 2-core machine (never reached)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "DMLKIT_FAULT"):
        env.pop(key, None)
    # loopback only; one thread per process, as torchrun sets it
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env.update(extra)
    return env


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "dmlkit.cli",
        "train",
        *args,
    ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=WAIT)


_FORKSERVER = None


def _forkserver():
    """A process that imports torch and dmlkit once and forks the ranks from there.

    Every rank started with ``python -m dmlkit.cli`` spends ~8 CPU seconds importing torch,
    torch._dynamo (via torch.optim) and scikit-learn; forked from this server it starts at once.
    Nothing parallel ever ran in the server, so forking it is safe.
    """
    global _FORKSERVER
    if _FORKSERVER is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["dmlkit.cli", "dmlkit.engine.trainer", "sklearn.datasets"])
        _FORKSERVER = ctx
    return _FORKSERVER


def _rank_main(argv: list[str], env: dict[str, str], err_path: str) -> None:
    """One rank: ``dml train ARGV`` with torchrun's environment, stderr into ``err_path``."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "DMLKIT_FAULT"):
        os.environ.pop(key, None)
    os.environ.update(env)
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)  # gloo's own messages too
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process ends here
    torch.set_num_threads(1)  # as torchrun's OMP_NUM_THREADS=1
    sys.exit(main(["train", *argv]))


class _Rank:
    """A forked rank with the subprocess.Popen calls the tests use."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.pid = proc.pid

    def wait(self, timeout: float) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired(f"rank pid {self.pid}", timeout)
        return self.proc.exitcode

    def kill(self) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()
        self.proc.join(30)


def _launch_ranks(
    overrides: list[str], out: Path, tmp: Path, *, resume: bool = False, **env: str
) -> list[_Rank]:
    """Two ``dml train`` processes with the environment torchrun gives its workers."""
    ctx = _forkserver()
    port = str(_free_port())
    where = ["--resume" if resume else "--out", str(out)]
    ranks = []
    for rank in range(2):
        e = dict(
            GLOO_SOCKET_IFNAME="lo",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            **env,
        )
        argv = [*sets(*overrides), *where]
        proc = ctx.Process(target=_rank_main, args=(argv, e, str(tmp / f"rank{rank}.err")))
        proc.start()
        ranks.append(_Rank(proc))
    return ranks


def _run_ranks(overrides: list[str], out: Path, tmp: Path, *, resume: bool = False) -> None:
    """Launch two ranks, wait for both, fail with their stderr if either fails."""
    ranks = _launch_ranks(overrides, out, tmp, resume=resume)
    try:
        codes = [r.wait(timeout=WAIT) for r in ranks]
    finally:
        _kill_all(ranks)
    errs = [(tmp / f"rank{r}.err").read_text()[-2000:] for r in range(2)]
    assert codes == [0, 0], errs


def _kill_all(ranks: list[_Rank]) -> None:
    for r in ranks:
        r.kill()


def _one_process(overrides: list[str], out: Path) -> dict:
    Trainer(load_config(None, overrides), out).fit()
    return _checkpoint(out)


def _checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _assert_same_cohort(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a["peers"] == b["peers"]
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"])
    assert len(a["cohort"]["models"]) == len(b["cohort"]["models"])
    for k, (sa, sb) in enumerate(zip(a["cohort"]["models"], b["cohort"]["models"])):
        assert sa.keys() == sb.keys()
        for key in sa:
            diff = (sa[key].double() - sb[key].double()).abs().max().item()
            assert diff <= atol, f"peer {k} {key}: differs by {diff:.2e}"
    for oa, ob in zip(a["cohort"]["optimizers"], b["cohort"]["optimizers"]):
        for i, per in oa["state"].items():
            for key, va in per.items():
                vb = ob["state"][i][key]
                assert torch.allclose(torch.as_tensor(va).double(), torch.as_tensor(vb).double(),
                                      atol=atol)  # fmt: skip


def _wait_stopped(pid: int, timeout: float) -> float:
    """Wait until process ``pid`` is stopped (SIGSTOP); the time it was seen stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never stopped")


# ------------------------------------------------------------------------------------------------
# cohort mode


@pytest.mark.slow
def test_cohort_mode_equals_one_process(tmp_path, capsys):
    # K = 4 peers of two architectures, 2 per process; simultaneous DML
    overrides = [*DIST, "train.epochs=2", "peers=[small_cnn,mlp,small_cnn,mlp]"]
    run = tmp_path / "dist"
    proc = _torchrun([*sets(*overrides, "distributed.mode=cohort"), "--out", str(run)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run directory:") == 1  # rank 0 alone reports

    state = _checkpoint(run)
    assert state["distributed"]["world"] == 2 and state["distributed"]["mode"] == "cohort"
    _assert_same_cohort(state, _one_process(overrides, tmp_path / "one"))
    names = [p["name"] for p in state["peers"]]
    logged = records(run, "train")  # written once, by rank 0, for all four peers
    assert sorted((r["epoch"], r["peer"]) for r in logged) == sorted(
        (e, n) for e in (1, 2) for n in names
    )

    # the gathered checkpoint has the one-process format: `dml eval` reads it in one process
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads((run / "eval_test.json").read_text())
    trained = json.loads((run / "summary.json").read_text())
    for a, b in zip(evaluated["peers"], trained["peers"]):
        assert a["metrics"]["ce"] == pytest.approx(b["metrics"]["ce"], abs=1e-5)

    # resuming with another world size is refused, naming the number of processes to use
    capsys.readouterr()
    with pytest.warns(UserWarning, match="not launched by torchrun"):
        code = main(["train", "--resume", str(run), "--set", "train.epochs=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "written by 2 process(es)" in err and "torchrun --nproc_per_node=2" in err


@pytest.mark.slow
def test_killed_rank_stops_the_other_and_the_run_resumes(tmp_path):
    # sequential DML (the paper's order), 2 peers per process: peer k's new logits come from
    # its process before peer k+1 steps. Rank 1 is SIGKILLed before step 6, in epoch 2, after
    # epoch 1's checkpoint.
    overrides = [
        *DIST,
        "train.epochs=3",
        "peers=[small_cnn,mlp,mlp,small_cnn]",
        "method.update=sequential",
    ]
    run = tmp_path / "dist"
    dist_overrides = [*overrides, "distributed.mode=cohort", "distributed.timeout_s=60"]
    procs = _launch_ranks(
        dist_overrides, run, tmp_path, DMLKIT_FAULT="kill-at-step@6", DMLKIT_FAULT_RANK="1"
    )
    try:
        assert procs[1].wait(timeout=WAIT) == -9
        died = time.monotonic()
        code = procs[0].wait(timeout=90)  # well inside the 60 s timeout (the socket closes)
        waited = time.monotonic() - died
    finally:
        _kill_all(procs)
    err = (tmp_path / "rank0.err").read_text()
    assert code == 1, err
    assert waited < 60, f"rank 0 took {waited:.0f} s to stop"
    line = next(x for x in err.splitlines() if x.startswith("dml: distributed training stopped"))
    assert "rank 0 of 2" in line and "epoch_0001.pt is intact" in line
    assert f"torchrun --nproc_per_node=2 -m dmlkit.cli train --resume {run}" in line
    assert "Traceback" not in err

    _run_ranks(QUIET, run, tmp_path, resume=True)
    assert "resuming from" in (tmp_path / "rank0.err").read_text()
    _assert_same_cohort(_checkpoint(run), _one_process(overrides, tmp_path / "one"))


# ------------------------------------------------------------------------------------------------
# data mode


@pytest.mark.slow
def test_data_mode_equals_one_process_with_the_global_batch(tmp_path):
    # no BatchNorm: per-shard batch statistics would differ from the global batch's
    overrides = [*DIST, "train.epochs=2", "peers=[small_cnn,mlp]", "peers.0.kwargs.batchnorm=false"]
    run = tmp_path / "dist"
    _run_ranks([*overrides, "distributed.mode=data"], run, tmp_path)
    state = _checkpoint(run)
    assert state["distributed"]["mode"] == "data"
    _assert_same_cohort(state, _one_process(overrides, tmp_path / "one"))
    # the logged losses are those of the global batch (averaged over the two shards)
    for a, b in zip(records(run, "train"), records(tmp_path / "one", "train")):
        assert (a["epoch"], a["peer"]) == (b["epoch"], b["peer"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["mimicry"] == pytest.approx(b["mimicry"], abs=1e-5)


@pytest.mark.slow
def test_data_mode_stream_reads_each_share_once(tmp_path):
    """The streamed image folder in data mode: each rank reads its shard of the global batch."""
    from dmlkit.testing import write_image_folder

    root = write_image_folder(tmp_path / "images", train_per_class=16, classes=4, size=8)
    overrides = [
        *[o for o in DIST if not o.startswith("data.train_size")],
        "train.epochs=2",
        "peers=[small_cnn,mlp]",
        "peers.0.kwargs.batchnorm=false",
        "data.name=imagefolder",
        f"data.root={root}",
        "data.loader=stream",
        "data.num_workers=0",
        "data.hflip=true",
        "data.batch_size=16",
    ]
    run = tmp_path / "dist"
    _run_ranks([*overrides, "distributed.mode=data"], run, tmp_path)
    _assert_same_cohort(_checkpoint(run), _one_process(overrides, tmp_path / "one"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_hung_rank_stops_the_other_within_the_timeout(tmp_path):
    overrides = [*DIST, "train.epochs=3", "distributed.mode=data", "distributed.timeout_s=3"]
    procs = _launch_ranks(
        overrides, tmp_path / "dist", tmp_path, DMLKIT_FAULT="stop-at-step@3", DMLKIT_FAULT_RANK="1"
    )
    try:
        hung = _wait_stopped(procs[1].pid, WAIT)
        code = procs[0].wait(timeout=60)
        waited = time.monotonic() - hung
    finally:
        _kill_all(procs)
    err = (tmp_path / "rank0.err").read_text()
    assert code == 1, err
    assert 2 <= waited < 3 + 20, f"rank 0 stopped {waited:.1f} s after rank 1 hung"
    assert "Timed out" in err and "distributed.timeout_s=3" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# checks that need no second process


def test_launch_and_split_checks(monkeypatch):
    two = DistContext(mode="cohort", rank=1, world=2)
    assert two.peer_slice(4) == slice(2, 4)
    with pytest.raises(UserError, match="3 peers do not split evenly over 2 processes"):
        two.peer_slice(3)
    data = DistContext(mode="data", rank=1, world=2)
    x, y = torch.arange(8.0)[:, None], torch.arange(8)
    xs, ys = data.shard(x, y)
    assert ys.tolist() == [4, 5, 6, 7] and xs[:, 0].tolist() == [4, 5, 6, 7]
    with pytest.raises(UserError, match="a batch of 7 images"):
        data.shard(x[:7], y[:7])
    with pytest.raises(UserError, match="written by 1 process"):
        data.check_resume({"rng": {}}, Path("runs/x"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="distributed.mode=none"):
        init_distributed(DistributedConfig(), torch.device("cpu"))
    with pytest.raises(ConfigError, match="distributed.timeout_s"):
        load_config(None, ["distributed.timeout_s=0"])
    with pytest.raises(ConfigError, match="distributed.mode"):
        load_config(None, ["distributed.mode=model"])
