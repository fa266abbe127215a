"""The cluster launchers of a grid: Ray tasks and Slurm job arrays (through submitit).

Both start :func:`dmlkit.experiments.cell.execute_cell` on a worker with a cell's spec; the
scheduling (what is ready, counts, failures) is :func:`dmlkit.experiments.launch.run_cells`'s.
Ray and submitit are optional (``pip install 'dmlkit[ray]'`` / ``'dmlkit[slurm]'``) and
imported here only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmlkit.errors import UserError, first_line
from dmlkit.experiments.cell import execute_cell, probe_marker
from dmlkit.experiments.launch import (
    NOT_SHARED,
    Backend,
    Cell,
    LaunchOptions,
    cell_spec,
    preflight,
    uses_gpu,
)

# The keys of the ``slurm:`` block (and their flags), and what submitit calls them.
SLURM_KEYS = {
    "partition": "slurm_partition",
    "time": "timeout_min",
    "mem_gb": "mem_gb",
    "constraint": "slurm_constraint",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "additional": "slurm_additional_parameters",
    "cluster": None,  # slurm (default); local / debug: submitit's stand-ins, for tests
}


def _cpus(pending: list[Cell], options: LaunchOptions) -> int:
    if options.cpus_per_cell:
        return options.cpus_per_cell
    threads = pending[0].config.train.threads
    return threads if isinstance(threads, int) else 1


# ------------------------------------------------------------------------------------------------
# Ray


class _ClusterBackend(Backend):
    """What the Ray and Slurm launchers share: each cell's spec for its worker, and the
    shared-folder marker (``OUT/.dml-shared``), removed when the grid is done."""

    def __init__(
        self, pending: list[Cell], out: Path, cpus: int, marker: dict[str, str], capacity: int
    ) -> None:
        spec = {"threads": cpus, "log": True, "marker": marker}
        self.specs = {c.key: cell_spec(c, out, **spec) for c in pending}
        self.marker, self.capacity = marker["path"], capacity

    def close(self) -> None:
        Path(self.marker).unlink(missing_ok=True)  # its job is done: the workers have read it


class _RayBackend(_ClusterBackend):
    def __init__(self, ray: Any, task: Any, started: bool, *cluster: Any) -> None:
        super().__init__(*cluster)  # cluster: _ClusterBackend's arguments
        self.ray, self.task = ray, task
        self.started = started  # this command connected to (or started) Ray: it lets go

    def close(self) -> None:
        super().close()
        if self.started:
            self.ray.shutdown()

    def submit(self, cells: list[Cell]) -> list[Any]:
        return [self.task.remote(self.specs[c.key]) for c in cells]

    def poll(self, handle: Any) -> tuple[bool, str] | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            self.ray.get(handle)
        except Exception as exc:  # a task error, a killed worker, a lost node
            cause = getattr(exc, "cause", None) or exc
            return False, first_line(cause)
        return True, ""

    def cancel(self, handle: Any) -> None:
        self.ray.cancel(handle, force=True)


def ray_backend(
    pending: list[Cell],
    out: Path,
    options: LaunchOptions,
    marker: dict[str, str],
    log: Callable[[str], None],
) -> Backend:
    """Cells as Ray tasks (``num_cpus`` / ``num_gpus`` each) on ``RAY_ADDRESS`` or a local Ray."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = not ray.is_initialized()
    if started:
        # RAY_ADDRESS (read by ray.init) names a running cluster; without it, a local Ray
        ray.init(log_to_driver=False)
    where = os.environ.get("RAY_ADDRESS") or "a local Ray"
    resources = ray.cluster_resources()
    cpus = _cpus(pending, options)
    gpus = options.gpus_per_cell
    if gpus is None:
        gpus = 1 if resources.get("GPU", 0) > 0 and any(uses_gpu(c.config) for c in pending) else 0
    # every node must see --out: a probe pinned to each (no CPU asked, so it never queues)
    probe = ray.remote(num_cpus=0)(probe_marker)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(marker)
        for n in nodes
    ]
    try:
        ray.get(refs)
    except Exception as exc:
        if started:
            ray.shutdown()
        text = first_line(getattr(exc, "cause", None) or exc, None)
        if NOT_SHARED in text:
            raise UserError(text[text.index("--out ") :]) from None
        raise
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute_cell)
    jobs = options.jobs
    capacity = len(pending) if jobs == "auto" else int(jobs)  # auto: Ray queues by resources
    log(
        f"ray: {len(nodes)} node(s) at {where}, {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs; each cell asks {cpus} CPU(s), {gpus} GPU(s)"
    )
    return _RayBackend(ray, task, started, pending, out, cpus, marker, capacity)


# ------------------------------------------------------------------------------------------------
# Slurm


class _SlurmBackend(_ClusterBackend):
    def __init__(self, executor: Any, *cluster: Any) -> None:
        super().__init__(*cluster)  # cluster: _ClusterBackend's arguments
        self.executor = executor

    def submit(self, cells: list[Cell]) -> list[Any]:
        # one job array for the cells ready now (a kd student waits for the next wave)
        return list(self.executor.map_array(execute_cell, [self.specs[c.key] for c in cells]))

    def poll(self, handle: Any) -> tuple[bool, str] | None:
        if not handle.done():
            return None
        try:
            handle.result()
        except Exception as exc:  # the task's exception, or the job killed / timed out
            lines = [x for x in str(exc).splitlines() if x.strip()]
            said = next((x for x in reversed(lines) if NOT_SHARED in x), lines[-1] if lines else "")
            return False, f"job {handle.job_id}: {said.strip()[:300]}"
        return True, ""

    def cancel(self, handle: Any) -> None:
        handle.cancel(check=False)


def slurm_settings(options: LaunchOptions) -> dict[str, Any]:
    """The ``slurm:`` settings checked: known keys only, ``time`` in minutes (an int)."""
    unknown = sorted(set(options.slurm) - set(SLURM_KEYS))
    if unknown:
        raise UserError(
            f"slurm settings: unknown key {unknown[0]!r}; known: {', '.join(SLURM_KEYS)}"
        )
    time_min = options.slurm.get("time", 60 * 24)
    if not isinstance(time_min, int) or time_min < 1:
        raise UserError(f"slurm time: give whole minutes (e.g. 1440), got {time_min!r}")
    cluster = options.slurm.get("cluster", "slurm")
    if cluster not in ("slurm", "local", "debug"):
        raise UserError(f"slurm cluster: slurm, local or debug, got {cluster!r}")
    return {**options.slurm, "time": time_min, "cluster": cluster}


def slurm_backend(
    pending: list[Cell],
    out: Path,
    options: LaunchOptions,
    marker: dict[str, str],
    log: Callable[[str], None],
) -> Backend:
    """Cells as Slurm array tasks through submitit (its local executor with ``cluster: local``)."""
    import submitit

    settings = slurm_settings(options)
    cluster = settings.pop("cluster")
    preflight(out, options)  # run_experiment did it already; a direct caller gets it here
    executor = submitit.AutoExecutor(folder=out / "logs" / "slurm", cluster=cluster)
    cpus = _cpus(pending, options)
    gpus = options.gpus_per_cell or 0
    params: dict[str, Any] = {"timeout_min": settings.pop("time"), "name": f"dml-{out.name}"}
    params.update({SLURM_KEYS[k]: v for k, v in settings.items() if SLURM_KEYS[k]})
    if cluster == "slurm":
        params.update(cpus_per_task=cpus, gpus_per_node=gpus, tasks_per_node=1, nodes=1)
        if options.jobs != "auto":
            params["slurm_array_parallelism"] = int(options.jobs)
    elif cluster == "local":
        params.update(cpus_per_task=cpus, gpus_per_node=gpus)
    executor.update_parameters(**params)
    log(
        f"slurm ({cluster}): job arrays of ready cells, each {cpus} CPU(s), {gpus} GPU(s), "
        f"{params['timeout_min']} min; submitit files in {out / 'logs' / 'slurm'}"
    )
    # Slurm queues the whole array (its parallelism limits what runs); submitit's local
    # stand-ins start every job at once, so there --jobs is the limit
    capacity = len(pending)
    if cluster != "slurm":
        capacity = 1 if options.jobs == "auto" else int(options.jobs)
    return _SlurmBackend(executor, pending, out, cpus, marker, capacity)
