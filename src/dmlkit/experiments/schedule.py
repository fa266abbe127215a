"""The scheduler of a grid's cells and its local launcher (``--jobs N`` worker processes).

:func:`run_cells` starts a cell as soon as the cells it needs are finished (a kd student waits
for its teacher's run), keeps ``jobs`` of them in flight, prints a line per start and per end
with the counts (done / running / failed), lets a failed cell fail alone, and names every
failed cell with its log at the end (:class:`~dmlkit.experiments.launch.CellsFailed`). The
backends only start cells and report their ends: the local one here, Ray and Slurm in
:mod:`dmlkit.experiments.clusters`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError
from dmlkit.experiments.launch import (
    NOT_SHARED,
    Backend,
    Cell,
    CellsFailed,
    LaunchOptions,
    auto_jobs,
    cell_spec,
    log_path,
    result_line,
    tail,
    threads_per_cell,
    usable_cpus,
    uses_gpu,
    visible_gpus,
    write_marker,
)


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
        # a worker that died since it was last asked: answer() reports its end for this cell
        with contextlib.suppress(BrokenPipeError):
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


class _LocalBackend(Backend):
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
            if pending and not running:  # a safety net: plan_cells keeps needs inside the grid
                raise UserError(f"{pending[0].name} needs {pending[0].needs}, not in this grid")
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
                    failed[key] = why or tail(log_path(out, cell)) or "no reason given"
                    log(f"[{cell.name}] FAILED, {failed[key]} ({counts()})")
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
) -> Backend:
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
    try:
        return make(pending, out, options, marker, log)
    except BaseException:
        Path(marker["path"]).unlink(missing_ok=True)  # refused before any cell: leave nothing
        raise
