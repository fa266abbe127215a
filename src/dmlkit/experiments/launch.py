"""Where the cells of a grid run: N local processes (``--jobs N``), Ray tasks or a Slurm job array.

A *cell* is one run of a grid (one arm, one seed). ``--jobs 1`` with the local launcher trains
the cells one after another in the command's own process (:mod:`dmlkit.experiments.core`);
everything else goes through :func:`run_cells`, which starts a cell as soon as the cells it
needs are finished (a kd student waits for its teacher's run), keeps ``jobs`` of them running,
prints a line per start and per end with the counts (done / running / failed), lets a failed
cell fail alone, and names every failed cell with its log at the end (:class:`CellsFailed`).

Each cell is its own process, started fresh (a spawned interpreter, never a fork of one that
holds torch's threads): :mod:`dmlkit.experiments.cell` trains it from a plain spec, so the
launchers differ only in how they start that function:

* ``local``: ``python -m dmlkit.experiments.cell``, output to ``OUT/logs/<arm>/seed<S>.log``.
  CPU threads per cell: ``cores // jobs`` unless ``train.threads`` (or ``OMP_NUM_THREADS``) is
  set; one GPU per running cell (``CUDA_VISIBLE_DEVICES``, round-robin over the visible ones)
  when the cells' ``train.device`` is ``auto`` or ``cuda``.
* ``ray``: Ray tasks with their CPU / GPU requests, on the cluster named by ``RAY_ADDRESS``
  (or a Ray already initialised in this process, or a local one).
* ``slurm``: a submitit job array per wave of ready cells (partition, time, GPUs and CPUs per
  cell from flags or a ``slurm:`` block of ``--launcher-config``).

The cluster launchers need ``--out`` on a filesystem the workers share: the command writes a
random token into ``OUT/.dml-shared`` and every worker checks it before it trains (a Ray probe
per node does it before any cell starts; Slurm also refuses ``/tmp``-like and tmpfs paths at
once). Results are read back from the run folders, never from the workers' return values.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlkit.config import Config
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError, shown

# What `dml reproduce` / `dml grid` use without --jobs. Kept at 1 (today's sequential run, in
# the command's own process) until benchmarks/grid_jobs.py has measured --jobs 2 against it on
# a quiet machine; "auto" is the candidate (see auto_jobs).
DEFAULT_JOBS: int | str = 1
LAUNCHERS = ("local", "ray", "slurm")
MARKER_NAME = ".dml-shared"
# What a worker's message says when it cannot see --out (the launchers look for it).
NOT_SHARED = "is not on a filesystem shared with"
# Paths no cluster worker shares with the machine that launches it.
LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")
LOCAL_FS_TYPES = ("tmpfs", "ramfs", "devtmpfs")


class CellsFailed(RuntimeError):
    """Some cells of a grid failed (the others finished); the message names each with its log."""


@dataclass
class Cell:
    """One run of a grid.

    Attributes:
        arm: the arm's name (a folder name, ``/`` allowed).
        seed: its seed.
        config: the resolved config it trains.
        path: its run folder.
        needs: the (arm, seed) cells that must be finished first (``"{run:ARM}"`` references).
        summary: the finished run's summary when it is reused (then nothing is run).
    """

    arm: str
    seed: int
    config: Config
    path: Path
    needs: tuple[tuple[str, int], ...] = ()
    summary: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.arm, self.seed)

    @property
    def name(self) -> str:
        return f"{self.arm} seed {self.seed}"


@dataclass
class LaunchOptions:
    """How cells are launched: ``--jobs``, ``--launcher`` and the cluster settings.

    Attributes:
        jobs: cells at once (an int >= 1) or ``"auto"`` (:func:`auto_jobs`). On Slurm the
            array's parallelism; on Ray, how many tasks are in flight.
        launcher: ``local``, ``ray`` or ``slurm``.
        cpus_per_cell: CPUs a cluster task asks for (default: ``train.threads`` if a number,
            else 1); also its ``OMP_NUM_THREADS``.
        gpus_per_cell: GPUs a cluster task asks for (default: Ray, 1 when the cluster has GPUs
            and the cells' device is not ``cpu``; Slurm, 0).
        slurm: submitit parameters: ``partition``, ``time`` (minutes), ``mem_gb``,
            ``constraint``, ``account``, ``qos``, ``cluster`` (``slurm``; ``local`` / ``debug``
            run submitit's local stand-ins), ``additional`` (a dict of other sbatch options).
    """

    jobs: int | str = DEFAULT_JOBS
    launcher: str = "local"
    cpus_per_cell: int | None = None
    gpus_per_cell: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    @property
    def in_process(self) -> bool:
        """``--jobs 1`` on this machine: the cells run in the command's own process."""
        return self.launcher == "local" and self.jobs == 1


# ------------------------------------------------------------------------------------------------
# the checks of the flags


def parse_jobs(text: str | int) -> int | str:
    """``--jobs`` as given: an int >= 1 or ``"auto"``; anything else fails in one line."""
    if isinstance(text, int):
        value: int | str = text
    elif str(text).strip().lower() == "auto":
        return "auto"
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            value = -1
    if not isinstance(value, int) or value < 1:
        given = str(text).strip()
        given = given if given.isprintable() and len(given) < 20 else shown(text)
        raise UserError(
            f"--jobs {given}: give the number of cells to run at once (1 or more), or auto"
        )
    return value


def check_launcher(name: str) -> None:
    """The launcher's name is known and its optional package importable (one line if not)."""
    if name not in LAUNCHERS:
        raise UserError(f"--launcher {shown(name)}: choose one of {', '.join(LAUNCHERS)}")
    module, extra = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}.get(name, (None, ""))
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        raise UserError(
            f"--launcher {name} needs the {module} package: pip install 'dmlkit[{extra}]'"
        ) from None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus(env: dict[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPUs cells may be spread over, as ``CUDA_VISIBLE_DEVICES`` entries.

    Args:
        env: the environment (default ``os.environ``); its ``CUDA_VISIBLE_DEVICES``, when set,
            names the devices (indices or UUIDs) in order.
        count: how many CUDA devices torch sees (default: asks torch).
    """
    env = os.environ if env is None else env
    if count is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count <= 0:
        return []
    given = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if given:
        return [d.strip() for d in given.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def uses_gpu(cfg: Config) -> bool:
    """Whether a cell may be given a GPU of its own: its device is ``auto`` or ``cuda``.

    An explicit ``cuda:N`` is the user's choice and is left alone (every cell on that device).
    """
    return cfg.train.device in ("auto", "cuda")


def auto_jobs(n_cells: int, gpus: Sequence[str], cpus: int, threads: int | str) -> int:
    """``--jobs auto``: one cell per GPU when cells use GPUs, else one per ``threads`` cores.

    Small cohorts gain little from a second thread and a lot from a second process (the
    issue's measurement on the digits, 2 cores), so on the CPU each cell gets 1 thread
    unless ``train.threads`` is a number. Never more jobs than cells.
    """
    per_cell = threads if isinstance(threads, int) and threads > 0 else 1
    jobs = len(gpus) if gpus else max(1, cpus // per_cell)
    return max(1, min(n_cells, jobs))


def threads_per_cell(
    setting: int | str, jobs: int, cpus: int, env: dict[str, str] | None = None
) -> int | None:
    """The ``OMP_NUM_THREADS`` a local cell gets: ``cpus // jobs`` (at least 1).

    None (leave it) when ``train.threads`` is a number or ``OMP_NUM_THREADS`` is already set:
    both are the user's explicit choice.
    """
    env = os.environ if env is None else env
    if setting != "auto" or env.get("OMP_NUM_THREADS", "").strip():
        return None
    return max(1, cpus // jobs)


def obviously_local(path: Path, mounts: str | None = None) -> bool:
    """True for a folder no cluster node can share: under /tmp and the like, or on tmpfs.

    Args:
        path: the folder (resolved here).
        mounts: the text of ``/proc/mounts`` (default: read it; absent -> only the prefixes).
    """
    path = Path(path).resolve()
    text = str(path)
    if any(text == p or text.startswith(p + "/") for p in LOCAL_PREFIXES):
        return True
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return False
    best, fstype = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = text == point or text.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, parts[2]
    return fstype in LOCAL_FS_TYPES


# ------------------------------------------------------------------------------------------------
# the scheduler


def log_path(out: Path, cell: Cell) -> Path:
    """Where a cell's output goes: ``OUT/logs/<arm>/seed<S>.log``."""
    return out / "logs" / cell.arm / f"seed{cell.seed}.log"


def cell_spec(
    cell: Cell, out: Path, *, threads: int | None, log: bool, marker: dict[str, str] | None
) -> dict[str, Any]:
    """The JSON-able spec :func:`dmlkit.experiments.cell.execute_cell` trains."""
    return {
        "config": cell.config.to_dict(),
        "run": str(cell.path.resolve()),
        "desc": cell.name,
        "cwd": os.getcwd(),
        "threads": threads,
        "log": str(log_path(out, cell).resolve()) if log else None,
        "marker": marker,
    }


def _tail(path: Path, limit: int = 200) -> str:
    """The last non-empty line of a log (what the failed cell said last)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    last = next((x.strip() for x in reversed(lines) if x.strip()), "")
    return last[:limit]


def result_line(summary: dict[str, Any]) -> str:
    """What a finished cell prints: its test top-1 (re-id: mAP) per peer."""
    key = "top1" if "top1" in summary["peers"][0]["metrics"] else "mAP"  # re-id: mAP
    shown_ = ", ".join(f"{100 * p['metrics'][key]:.2f}" for p in summary["peers"])
    return f"test {key.replace('top1', 'top-1')} per peer: {shown_}"


class _Backend:
    """Starts cells and reports their ends; :func:`run_cells` does the rest."""

    capacity: int  # cells in flight at most

    def submit(self, cells: list[Cell]) -> list[Any]:  # one handle per cell
        raise NotImplementedError

    def poll(self, handle: Any) -> tuple[bool, str] | None:
        """None while running; else (finished well, why not)."""
        raise NotImplementedError

    def cancel(self, handle: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Worker:
    """One ``python -m dmlkit.experiments.cell`` process: a slot of ``--jobs``, many cells."""

    def __init__(self, slot: int, env: dict[str, str], log: Path, gpu: str | None) -> None:
        self.slot, self.gpu = slot, gpu
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:  # what the worker says outside its cells (an import error)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dmlkit.experiments.cell"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=f,
                env=env,
            )
        self.cell: Cell | None = None

    def send(self, cell: Cell, spec: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.cell = cell
        self.proc.stdin.write((json.dumps(spec) + "\n").encode())
        self.proc.stdin.flush()

    def answer(self) -> tuple[bool, str] | None:
        """The cell's outcome once the worker has answered (or died); None while it runs."""
        assert self.proc.stdout is not None
        if select.select([self.proc.stdout], [], [], 0)[0]:
            line = self.proc.stdout.readline()
            if line:
                got = json.loads(line)
                self.cell = None
                return bool(got["ok"]), got.get("error", "")
        rc = self.proc.poll()
        if rc is None:
            return None
        self.cell = None
        return False, f"its process ended (exit status {rc})" if rc >= 0 else (
            f"its process was killed (signal {-rc})"
        )

    def stop(self, now: bool = False) -> None:
        if self.proc.poll() is None:
            if now:
                self.proc.terminate()
            else:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _LocalBackend(_Backend):
    """``jobs`` worker processes, spawned fresh (never forked), each with its threads and GPU.

    A worker trains its cells one after another, so torch is imported once per worker, not
    once per cell; a worker that dies fails its cell only and is replaced for the next one.
    """

    def __init__(self, out: Path, jobs: int, gpus: list[str], log: Callable[[str], None]):
        self.out, self.capacity, self.gpus, self.log = out, jobs, gpus, log
        self.cpus = usable_cpus()
        self.workers: dict[int, _Worker] = {}

    def _worker(self, cell: Cell) -> _Worker:
        slot = next(
            s for s in range(self.capacity) if s not in self.workers or self.workers[s].cell is None
        )
        worker = self.workers.get(slot)
        if worker is not None and worker.proc.poll() is None:
            return worker
        env = dict(os.environ)
        gpu = None
        if self.gpus and uses_gpu(cell.config):
            gpu = env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        threads = threads_per_cell(cell.config.train.threads, self.capacity, self.cpus)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # train.threads=auto reads it
        worker = _Worker(slot, env, self.out / "logs" / f"worker{slot}.log", gpu)
        self.workers[slot] = worker
        return worker

    def submit(self, cells: list[Cell]) -> list[Any]:
        handles = []
        for cell in cells:
            worker = self._worker(cell)
            path = log_path(self.out, cell)
            path.parent.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            where = f"worker {worker.slot} (pid {worker.proc.pid}, GPU {worker.gpu or '-'})"
            with open(path, "a") as f:
                f.write(f"--- {stamp}: {cell.name} in {where}\n")
            threads = threads_per_cell(cell.config.train.threads, self.capacity, self.cpus)
            worker.send(cell, cell_spec(cell, self.out, threads=threads, log=True, marker=None))
            handles.append(worker)
        return handles

    def poll(self, handle: Any) -> tuple[bool, str] | None:
        return handle.answer()

    def cancel(self, handle: Any) -> None:
        handle.stop(now=True)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()


def run_cells(
    cells: list[Cell],
    out: Path,
    options: LaunchOptions,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Run every cell not yet finished; returns every cell's summary, keyed by (arm, seed).

    Raises:
        CellsFailed: after every cell that could run has run, naming each failed one and its
            log (a cell whose teacher failed is not started and is named too).
    """
    done: dict[tuple[str, int], dict[str, Any]] = {
        c.key: c.summary for c in cells if c.summary is not None
    }
    pending = [c for c in cells if c.summary is None]
    if not pending:
        return done
    backend = _backend(pending, out, options, log)
    failed: dict[tuple[str, int], str] = {}
    running: dict[tuple[str, int], tuple[Cell, Any]] = {}
    total = len(cells)

    def counts() -> str:
        return f"{len(done)}/{total} done, {len(running)} running, {len(failed)} failed"

    try:
        while pending or running:
            for cell in [c for c in pending if any(n in failed for n in c.needs)]:
                pending.remove(cell)
                gone = ", ".join(f"{a} seed {s}" for a, s in cell.needs if (a, s) in failed)
                failed[cell.key] = f"not started: {gone} failed"
                log(f"[{cell.name}] not started: a run it needs failed ({counts()})")
            room = backend.capacity - len(running)
            ready = [c for c in pending if all(n in done for n in c.needs)][: max(0, room)]
            if ready:
                for cell, handle in zip(ready, backend.submit(ready), strict=True):
                    pending.remove(cell)
                    running[cell.key] = (cell, handle)
                    log(f"[{cell.name}] started; log: {log_path(out, cell)} ({counts()})")
            for key, (cell, handle) in list(running.items()):
                state = backend.poll(handle)
                if state is None:
                    continue
                del running[key]
                ok, why = state
                run = RunDir(cell.path)
                if ok and run.is_finished():
                    done[key] = run.read_summary()
                    log(f"[{cell.name}] {result_line(done[key])} ({counts()})")
                else:
                    failed[key] = why or _tail(log_path(out, cell)) or "no reason given"
                    log(f"[{cell.name}] FAILED, {failed[key]} ({counts()})")
            if (
                pending
                and not running
                and not any(all(n in done for n in c.needs) for c in pending)
            ):  # only cells whose needs are not in this grid: a mistake of the experiment
                raise UserError(
                    f"{pending[0].name} needs {pending[0].needs}, which this grid does not run"
                )
            if running:
                time.sleep(0.2)
    except BaseException:
        for _, handle in running.values():
            with contextlib.suppress(Exception):
                backend.cancel(handle)
        raise
    finally:
        backend.close()
    if failed:
        not_shared = [why for why in failed.values() if NOT_SHARED in why]
        if not_shared:  # every cell would fail alike: one line, as for any misplaced --out
            raise UserError(not_shared[0][not_shared[0].index("--out ") :])
        by_cell = {c.key: c for c in cells}
        names = "; ".join(
            f"{by_cell[k].name} ({why}; log: {log_path(out, by_cell[k])})"
            for k, why in failed.items()
        )
        raise CellsFailed(
            f"{len(failed)} of {total} cells failed: {names}. The {len(done)} finished are "
            f"kept: fix the cause and run the same command again (it resumes the others)"
        )
    return done


def _backend(
    pending: list[Cell], out: Path, options: LaunchOptions, log: Callable[[str], None]
) -> _Backend:
    if options.launcher == "local":
        cpu_only = not any(uses_gpu(c.config) for c in pending)
        gpus = [] if cpu_only else visible_gpus()
        jobs = options.jobs
        if jobs == "auto":
            jobs = auto_jobs(len(pending), gpus, usable_cpus(), pending[0].config.train.threads)
            log(
                f"--jobs auto: {jobs} at once "
                + (f"(one per GPU of {len(gpus)})" if gpus else f"({usable_cpus()} CPUs)")
            )
        return _LocalBackend(out, int(jobs), gpus, log)
    from dmlkit.experiments.clusters import ray_backend, slurm_backend

    marker = write_marker(out)
    make = ray_backend if options.launcher == "ray" else slurm_backend
    return make(pending, out, options, marker, log)


def preflight(out: Path, options: LaunchOptions) -> None:
    """What can be refused before the grid folder is touched: Slurm into a /tmp-like --out."""
    cluster = options.slurm.get("cluster", "slurm")
    if options.launcher == "slurm" and cluster == "slurm" and obviously_local(out):
        raise UserError(
            f"--out {out} {NOT_SHARED} the Slurm nodes (it is under /tmp or on tmpfs); put "
            f"--out on a filesystem every node mounts (home, NFS, Lustre, GPFS...)"
        )


def write_marker(out: Path) -> dict[str, str]:
    """A random token in ``OUT/.dml-shared`` that every cluster worker must read back."""
    token = secrets.token_hex(16)
    path = (out / MARKER_NAME).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)
    return {"path": str(path), "token": token}
