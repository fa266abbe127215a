"""Training a cohort over several processes with ``torch.distributed``, launched by ``torchrun``.

Two ways to spread the work (``distributed.mode``):

* ``cohort`` -- the K peers are spread over the W processes (K / W each; peers may differ in
  architecture). Every process sees the same batch: the batches are a pure function of the
  seed (:mod:`dmlkit.data.core`), so nothing but logits moves. After each forward the peers'
  logits ``[B, C]`` are exchanged with one ``all_gather``, detached: in DML a peer's prediction
  is a constant target in the other peers' losses (paper Eq. 10), so no gradient has to cross
  processes. The methods of :mod:`dmlkit.methods` run unchanged on a :class:`CohortParallel`,
  which looks like the whole cohort: its forward returns all K logits (the local ones with
  their graph). With the ``sequential`` update (paper Algorithm 1) peer k's process steps it,
  re-predicts and broadcasts the new logits before peer k+1 steps: the processes take turns,
  so sequential DML gains little from more processes; ``simultaneous`` runs them in parallel.
* ``data`` -- every process holds the whole cohort and trains on its shard of each batch (the
  global batch stays ``data.batch_size``); the loss values and, after each backward pass, the
  gradients are averaged over the processes, like DistributedDataParallel. BatchNorm normalises
  each shard with its own batch statistics (as DDP without SyncBatchNorm does), so a cohort
  with BatchNorm does not compute exactly what one process computes; running statistics are
  averaged over the processes at the end of every epoch.

Rank 0 alone writes the run directory; checkpoints hold the whole cohort in the per-peer format
of a one-process run (``dml eval`` reads them in one process) and the world size, which a
resumed run must keep. Every exchange waits at most ``distributed.timeout_s``: a process that
died or hung makes the others stop with a one-line :class:`DistributedError` (and a non-zero
exit) instead of hanging. gloo on the CPU, NCCL on CUDA (one GPU per process: ``LOCAL_RANK``).
"""

from __future__ import annotations

import atexit
import os
import pickle
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dmlkit.cohort import Cohort, LRSchedule, PeerSpec, StackedCohort
from dmlkit.config import DistributedConfig, OptimConfig
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError, first_line
from dmlkit.methods import Method, StepSync

T = TypeVar("T")


class DistributedError(RuntimeError):
    """Another process died, hung or became unreachable; this one cannot go on.

    The CLI prints it as one line and exits with status 1; the run resumes from its last
    checkpoint (same number of processes).
    """


def _short(exc: BaseException) -> str:
    """The first line of a backend error, without gloo's source-file prefix and advice."""
    text = first_line(exc, limit=None)  # cut below, once the prefix is gone
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # "[.../pair.cc:545] Read error ..."
    text = text.split(" This is typically")[0]
    return text[:200].rstrip(". ")


@dataclass
class DistContext:
    """Where this process stands in the job, and every exchange the trainer needs.

    A context with ``world == 1`` (no process group) makes every method a no-op, so the
    trainer has one code path.

    Attributes:
        mode: ``none``, ``cohort`` or ``data`` (``distributed.mode``).
        rank: this process, 0..world-1 (``RANK``); rank 0 writes the run directory.
        world: number of processes (``WORLD_SIZE``).
        local_rank: this process on its node (``LOCAL_RANK``): its GPU index.
        local_world: processes on this node (``LOCAL_WORLD_SIZE``).
        device: this process's device.
        backend: ``gloo`` or ``nccl`` (None in one process).
        timeout_s: longest wait in any exchange.
    """

    mode: str = "none"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    timeout_s: float = 300.0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must be for the backend: NCCL on this GPU, gloo on the CPU."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # -- errors and teardown --------------------------------------------------------------------
    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a failed or timed-out exchange into a one-line :class:`DistributedError`.

        The process group is destroyed at once: it is unusable, and a gloo group left alive
        with a peer that hangs aborts the interpreter at exit.
        """
        try:
            yield
        except (RuntimeError, ValueError) as exc:  # DistBackendError is a RuntimeError
            self.close()
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed ({_short(exc)}): another "
                f"process died, hung or became unreachable (distributed.timeout_s="
                f"{self.timeout_s:g})"
            ) from None

    def close(self) -> None:
        """Destroy the process group if this context created it (idempotent)."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            # Tearing down a broken group may fail too; there is nothing left to save.
            with suppress(Exception):
                dist.destroy_process_group()
        self.owns_group = False

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

    # -- generic exchanges ----------------------------------------------------------------------
    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on rank 0 only and hand every rank its result, or raise its error.

        Used for everything that touches the run directory (checks, creation, checkpoints), so
        that a user error on rank 0 (``--out`` already holds a run) stops every process with the
        same message instead of leaving the others waiting.
        """
        if self.world == 1:
            return fn(*args, **kwargs)
        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - every error reaches every rank
                error = exc
                box[0] = ("error", _portable(exc))
        with self.collective("receiving rank 0's result"):
            dist.broadcast_object_list(box, src=0, device=self.comm_device)
        if error is not None:
            raise error
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        with self.collective("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def all_gather(self, x: Tensor, what: str = "all_gather") -> Tensor:
        """``x: [n, ...]`` from every rank -> ``[world * n, ...]`` in rank order (float32)."""
        if self.world == 1:
            return x
        send = x.detach().float().contiguous().to(self.comm_device)
        parts = [torch.empty_like(send) for _ in range(self.world)]
        with self.collective(what):
            dist.all_gather(parts, send)
        return torch.cat(parts).to(x.device)

    def broadcast_(self, x: Tensor, src: int, what: str = "broadcast") -> Tensor:
        """Overwrite ``x`` with rank ``src``'s ``x``; returns it (on ``x``'s device)."""
        if self.world == 1:
            return x
        buf = x.to(self.comm_device)
        with self.collective(what):
            dist.broadcast(buf, src=src)
        if buf is not x:
            x.copy_(buf)
        return x

    def average_(self, tensors: list[Tensor], what: str = "all_reduce") -> None:
        """Replace every tensor by its mean over the ranks, in place (one exchange per dtype)."""
        if self.world == 1 or not tensors:
            return
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for group in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.comm_device)
            with self.collective(what):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world
            offset = 0
            for t in group:
                n = t.numel()
                t.detach().copy_(flat[offset : offset + n].view_as(t))
                offset += n

    # -- what the trainer asks ------------------------------------------------------------------
    def peer_slice(self, num_peers: int) -> slice:
        """The peers this process builds: all of them, or its K / world share (cohort mode)."""
        if self.mode != "cohort" or self.world == 1:
            return slice(0, num_peers)
        if num_peers % self.world:
            raise UserError(
                f"distributed.mode=cohort: the {num_peers} peers do not split evenly over "
                f"{self.world} processes; launch a number of processes that divides the cohort "
                f"size (or use distributed.mode=data)"
            )
        share = num_peers // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def wrap_cohort(
        self,
        local: Cohort | StackedCohort,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
    ) -> Cohort | StackedCohort | CohortParallel:
        """The cohort as the methods and the trainer see it (the whole cohort in cohort mode)."""
        if self.mode != "cohort" or self.world == 1:
            return local
        return CohortParallel(self, local, specs, optim, total_epochs)

    def attach(self, method: Method, batch_size: int) -> None:
        """Make a data-parallel method average its loss values and gradients over the ranks."""
        if self.mode != "data" or self.world == 1:
            return
        if batch_size % self.world:
            raise UserError(
                f"distributed.mode=data: data.batch_size={batch_size} does not split evenly "
                f"over {self.world} processes; use a multiple of {self.world}"
            )
        method.sync = DataParallelSync(self)

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This process's contiguous share of a global batch (data mode); else the batch.

        Every process draws the same global batch (same order, same augmentation) and keeps
        its slice: the union of the shards is exactly the one-process batch, which a
        DistributedSampler over the dataset would not give.
        """
        if self.mode != "data" or self.world == 1:
            return x, y
        n = len(y)
        if n % self.world:
            raise UserError(
                f"distributed.mode=data: a batch of {n} images does not split evenly over "
                f"{self.world} processes; make data.batch_size a multiple of {self.world} and "
                f"no larger than the training split"
            )
        b = n // self.world
        return x[self.rank * b : (self.rank + 1) * b], y[self.rank * b : (self.rank + 1) * b]

    def end_epoch(self, cohort: nn.Module, logs: list[dict[str, float]]) -> list[dict[str, float]]:
        """Data mode: the epoch's train logs and the BatchNorm running statistics, averaged.

        Averaging the running statistics once per epoch equals averaging them after every
        step (their update is linear), so a resumed run matches an uninterrupted one. The
        averaged running mean is the one-process running mean; the variance is the mean of
        the shards' variances.
        """
        if self.mode != "data" or self.world == 1:
            return logs
        buffers = [b for b in cohort.buffers() if b.is_floating_point()]
        self.average_(buffers, "averaging BatchNorm statistics")
        keys = list(logs[0])
        table = torch.tensor([[peer[k] for k in keys] for peer in logs], dtype=torch.float64)
        self.average_([table], "averaging the train logs")
        return [dict(zip(keys, row)) for row in table.tolist()]

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


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (to reach the other ranks), else a plain stand-in."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure means: send a description instead
        return DistributedError(f"rank 0 failed: {type(exc).__name__}: {exc}")


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


# ------------------------------------------------------------------------------------------------
# cohort mode: a share of the peers per process, logits exchanged


class CohortParallel(nn.Module):
    """The whole cohort as seen from one process that holds K / world of its peers.

    Same API as :class:`~dmlkit.cohort.Cohort`, so methods, evaluation and the trainer use it
    unchanged: ``forward`` returns all K logits (this process's with their graph, the others'
    detached, received by ``all_gather``); ``optimizers`` lists one entry per peer, None for the
    peers another process steps; ``training_state`` gathers the whole cohort in the one-process
    per-peer format.

    Args:
        ctx: this process's context.
        local: this process's peers (a loop or stacked cohort).
        specs: all K peers' specs; ``optim``: all K peers' optimizer settings.
        total_epochs: run length, for the learning-rate schedules of the remote peers' log.
    """

    def __init__(
        self,
        ctx: DistContext,
        local: Cohort | StackedCohort,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.local = local
        self.specs = specs
        self.share = len(local)
        self.offset = ctx.rank * self.share
        # The schedules are pure functions of the epoch: every process knows every peer's LR.
        self._schedules = [LRSchedule(o, total_epochs) for o in optim]
        self._base_lrs = [o.lr for o in optim]
        self._epoch: float | None = None
        self._dtype = torch.float32  # dtype of the logits of the last forward (autocast)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def owner(self, k: int) -> int:
        """The rank that holds peer k."""
        return k // self.share

    @property
    def optimizers(self) -> list[torch.optim.Optimizer | None]:
        opts = self.local.optimizers
        if len(opts) != self.share:  # a stacked local cohort: one optimizer for its peers
            return list(opts)
        out: list[torch.optim.Optimizer | None] = [None] * len(self)
        out[self.offset : self.offset + self.share] = opts
        return out

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, ...]`` (the same batch in every process) -> K logits ``[B, C]``."""
        local = self.local(x)
        self._dtype = local[0].dtype
        gathered = self.ctx.all_gather(torch.stack([z.detach() for z in local]), "logit exchange")
        out = [z.to(self._dtype) for z in gathered.unbind(0)]
        out[self.offset : self.offset + self.share] = local
        return out

    @torch.no_grad()
    def repredict(self, k: int, x: Tensor) -> Tensor:
        """Peer k's new prediction (sequential update): its process computes and broadcasts it."""
        owner = self.owner(k)
        if owner == self.ctx.rank:
            buf = self.local.repredict(k - self.offset, x).float()
        else:
            c = self.specs[k].num_classes
            buf = torch.empty(len(x), c, device=x.device, dtype=torch.float32)
        self.ctx.broadcast_(buf, owner, f"broadcast of peer {k}'s new logits")
        return buf.to(self._dtype)

    def set_lr(self, epoch: float) -> None:
        self.local.set_lr(epoch)
        self._epoch = epoch

    def lrs(self) -> list[float]:
        if self._epoch is None:
            return list(self._base_lrs)
        return [lr * s.factor(self._epoch) for lr, s in zip(self._base_lrs, self._schedules)]

    def training_state(self) -> dict[str, Any]:
        """The whole cohort's weights and optimizer states (every process receives them)."""
        parts = self.ctx.all_gather_object(_to_cpu(self.local.training_state()))
        return {
            "models": [m for p in parts for m in p["models"]],
            "optimizers": [o for p in parts for o in p["optimizers"]],
        }

    def load_training_state(self, state: dict[str, Any], *, optimizers: bool = True) -> None:
        """Load this process's peers from a whole-cohort state."""
        if len(state["models"]) != len(self):
            n = len(state["models"])
            raise ValueError(f"{n} peers in the state, {len(self)} in the cohort")
        mine = slice(self.offset, self.offset + self.share)
        local = {"models": state["models"][mine]}
        if optimizers:
            local["optimizers"] = state["optimizers"][mine]
        self.local.load_training_state(local, optimizers=optimizers)


def _to_cpu(obj: Any) -> Any:
    """A copy of nested containers with every tensor on the CPU (to pickle across processes)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------------
# data mode: a shard of each batch per process, gradients averaged


class DataParallelSync(StepSync):
    """Average the loss values and the gradients of a step over the data-parallel ranks.

    The gradients of all the given optimizers' parameters travel in one flat buffer per dtype
    (one all-reduce per backward pass). Each rank's loss is the mean over its shard, and the
    shards are equal, so the mean of the ranks' gradients is the gradient of the global batch.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx

    def losses(self, values: Tensor) -> Tensor:
        out = values.detach().clone()
        self.ctx.average_([out], "averaging the loss values")
        return out

    def gradients(self, optimizers: list[torch.optim.Optimizer]) -> None:
        grads = [
            p.grad
            for opt in optimizers
            for group in opt.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        self.ctx.average_(grads, "gradient all-reduce")


# ------------------------------------------------------------------------------------------------
# the run directory of ranks other than 0


class FollowerRunDir(RunDir):
    """The run directory as ranks other than 0 see it: readable, never written."""

    def create(self, cfg: Any, device: torch.device) -> None:
        pass

    def log(self, records: list[dict[str, Any]]) -> None:
        pass

    def truncate_metrics(self, epoch: int) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass


def run_dir_for(ctx: DistContext, path: str | Path) -> RunDir:
    """Rank 0's run directory writes; the others' do not."""
    return RunDir(path) if ctx.is_main else FollowerRunDir(path)


__all__ = [
    "CohortParallel",
    "DataParallelSync",
    "DistContext",
    "DistributedError",
    "FollowerRunDir",
    "init_distributed",
    "run_dir_for",
]
