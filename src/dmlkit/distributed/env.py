"""This process's place in a ``torchrun`` job: joining it from the environment, and what the
trainer asks of it (the peers and batch share of this process, checkpoints, resuming).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dmlkit.cohort import Cohort, PeerSpec, StackedCohort
from dmlkit.config import DistributedConfig, OptimConfig
from dmlkit.distributed.collectives import DistributedError, Group
from dmlkit.distributed.modes import CohortParallel, OneProcess, parallel_mode
from dmlkit.errors import UserError
from dmlkit.methods.dml import StepSync


@dataclass
class DistContext(Group):
    """Where this process stands in the job (see :class:`Group`) and how the work is spread.

    Attributes:
        mode: ``none``, ``cohort`` or ``data`` (``distributed.mode``).
        parallel: the strategy of that mode (:mod:`dmlkit.distributed.modes`); the methods
            below hand the trainer's questions to it.
    """

    mode: str = "none"
    parallel: OneProcess = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.parallel = parallel_mode(self.mode, self)

    def resume_command(self, run_path: Path) -> str:
        """The command that resumes this run with the same number of processes."""
        if self.world == 1:
            return f"dml train --resume {run_path}"
        if self.local_world == self.world:
            launch = f"torchrun --nproc_per_node={self.world}"
        else:
            nodes = self.world // max(self.local_world, 1)
            launch = (
                f"torchrun --nnodes={nodes} --nproc_per_node={self.local_world} "
                f"(with the same --rdzv options)"
            )
        return f"{launch} -m dmlkit.cli train --resume {run_path}"

    # -- what the trainer asks (answered by the mode's strategy) --------------------------------
    def peer_slice(self, num_peers: int) -> slice:
        """The peers this process builds: all of them, or its K / world share (cohort mode)."""
        return self.parallel.peer_slice(num_peers)

    def wrap_cohort(
        self,
        local: Cohort | StackedCohort,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
    ) -> Cohort | StackedCohort | CohortParallel:
        """The cohort as the methods and the trainer see it (the whole cohort in cohort mode)."""
        return self.parallel.wrap_cohort(local, specs, optim, total_epochs)

    def step_sync(self, batch_size: int) -> StepSync:
        """What a method's step shares with the other processes; pass it to the method's build.

        Data mode: the loss values and gradients averaged over the ranks.
        """
        return self.parallel.step_sync(batch_size)

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This process's contiguous share of a global batch (data mode); else the batch."""
        return self.parallel.shard(x, y)

    def end_epoch(self, cohort: nn.Module, logs: list[dict[str, float]]) -> list[dict[str, float]]:
        """Data mode: the epoch's train logs and the BatchNorm running statistics, averaged."""
        return self.parallel.end_epoch(cohort, logs)

    def checkpoint_info(self) -> dict[str, Any]:
        """What a checkpoint records about the job: mode, world size, every rank's RNG state."""
        info: dict[str, Any] = {"mode": self.mode, "world": self.world}
        if self.world > 1:
            own = {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None,
            }
            info["rng"] = self.all_gather_object(own)
        return info

    def check_resume(self, state: dict[str, Any], run_path: Path) -> None:
        """Refuse a checkpoint written by a different number of processes, saying what to run."""
        info = state.get("distributed") or {"mode": "none", "world": 1}
        if info["world"] == self.world:
            return
        saved = info["world"]
        how = (
            "resume it in one process: dml train --resume RUN"
            if saved == 1
            else f"resume it with torchrun and {saved} processes in all "
            f"(e.g. torchrun --nproc_per_node={saved} -m dmlkit.cli train --resume {run_path})"
        )
        raise UserError(
            f"--resume {run_path}: its checkpoint was written by {saved} process(es) "
            f"(distributed.mode={info['mode']}) and this job has {self.world}; {how}"
        )

    def rng_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This process's RNG state in a checkpoint (``{"torch": ..., "cuda": ...}``)."""
        per_rank = (state.get("distributed") or {}).get("rng")
        return per_rank[self.rank] if per_rank else state["rng"]


def init_distributed(cfg: DistributedConfig, device: torch.device) -> DistContext:
    """Join the ``torchrun`` job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Args:
        cfg: the ``distributed`` config section.
        device: the resolved ``train.device``; ``cuda`` without an index becomes
            ``cuda:LOCAL_RANK`` (one GPU per process).

    Returns:
        A context; with ``distributed.mode=none``, or when no launcher set ``WORLD_SIZE``, a
        one-process context without a process group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.mode == "none":
        if world > 1:
            raise UserError(
                f"launched as {world} processes but distributed.mode=none: each would train "
                f"the same run; add --set distributed.mode=cohort (the peers spread over the "
                f"processes) or --set distributed.mode=data (each batch split over them)"
            )
        return DistContext(device=device, timeout_s=cfg.timeout_s)
    if world == 1:
        if "WORLD_SIZE" not in os.environ:
            warnings.warn(
                f"distributed.mode={cfg.mode} but not launched by torchrun: training in one "
                f"process (launch with torchrun --nproc_per_node=N -m dmlkit.cli train ...)",
                stacklevel=2,
            )
        return DistContext(mode=cfg.mode, device=device, timeout_s=cfg.timeout_s)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device, backend = _device_and_backend(cfg, device, local_rank)
    ctx = DistContext(
        mode=cfg.mode,
        rank=rank,
        world=world,
        local_rank=local_rank,
        local_world=local_world,
        device=device,
        backend=backend,
        timeout_s=cfg.timeout_s,
    )
    if dist.is_initialized():  # the caller formed the group; use it as it is
        if (dist.get_rank(), dist.get_world_size()) != (rank, world):
            raise UserError("the existing process group disagrees with RANK / WORLD_SIZE")
        return ctx
    with ctx.collective(f"forming the group of {world} processes"):
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=cfg.timeout_s),
            device_id=device if backend == "nccl" else None,
        )
    ctx.owns_group = True
    atexit.register(ctx.close)
    _stop_on_sigterm(ctx)
    return ctx


def _device_and_backend(
    cfg: DistributedConfig, device: torch.device, local_rank: int
) -> tuple[torch.device, str]:
    """This process's device (``cuda`` -> ``cuda:LOCAL_RANK``, made current) and backend."""
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = cfg.backend if cfg.backend != "auto" else "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UserError(
            "distributed.backend=nccl needs CUDA devices; use distributed.backend=auto (gloo on "
            "the CPU)"
        )
    return device, backend


def _stop_on_sigterm(ctx: DistContext) -> None:
    """torchrun stops the surviving processes with SIGTERM when one fails: say so, in one line."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        ctx.close()
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world}: stopped by SIGTERM (the launcher stops every "
            f"process when one of them fails; see its report)"
        )

    signal.signal(signal.SIGTERM, handler)
