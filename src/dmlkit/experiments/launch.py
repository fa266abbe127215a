"""Where the cells of a grid run: N local processes (``--jobs N``), Ray tasks or a Slurm job array:
the cells, the options and their checks (the scheduler is :mod:`dmlkit.experiments.schedule`).

A *cell* is one run of a grid (one arm, one seed). ``--jobs 1`` with the local launcher trains
the cells one after another in the command's own process (:mod:`dmlkit.experiments.core`);
everything else goes through :func:`dmlkit.experiments.schedule.run_cells`, which starts a
cell as soon as the cells it needs are finished (a kd student waits for its teacher's run),
keeps ``jobs`` of them running, prints a line per start and per end with the counts (done /
running / failed), lets a failed cell fail alone, and names every failed cell with its log at
the end (:class:`CellsFailed`).

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

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlkit.config import Config
from dmlkit.errors import UserError, shown

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

    jobs: int | str = 1  # the CLI's default: dmlkit.cli.grid.DEFAULT_JOBS
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


def tail(path: Path, limit: int = 200) -> str:
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


class Backend:
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
