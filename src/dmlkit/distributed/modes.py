"""The two ways to spread a cohort over processes, as strategy objects the trainer calls.

:class:`OneProcess` (``distributed.mode=none``, or one process) splits nothing.
:class:`CohortMode` gives each process K / world of the peers and wraps them in a
:class:`CohortParallel` that looks like the whole cohort (logits exchanged after each forward).
:class:`DataMode` gives each process a shard of each batch and makes the method average its
loss values and gradients (:class:`DataParallelSync`) and, once per epoch, the logs and the
BatchNorm statistics. See :mod:`dmlkit.distributed` for what each mode computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.cohort import Cohort, LRSchedule, PeerSpec, StackedCohort
from dmlkit.config import OptimConfig
from dmlkit.distributed.collectives import Group
from dmlkit.errors import UserError
from dmlkit.losses.batches import slice_batch
from dmlkit.methods.dml import StepSync


def _rank_share(group: Group, n: int, uneven: str) -> slice:
    """This rank's contiguous ``n / world`` of ``n`` items (peers or samples); ``uneven``: the
    one-line error when ``n`` does not split evenly over the processes."""
    if n % group.world:
        raise UserError(uneven)
    size = n // group.world
    return slice(group.rank * size, (group.rank + 1) * size)


class OneProcess:
    """How the trainer's work is spread: here, not at all (one process, or ``mode=none``).

    The trainer asks every mode the same five questions; each answer here is "all of it, as
    it is".
    """

    name = "none"

    def __init__(self, group: Group) -> None:
        self.group = group

    def peer_slice(self, num_peers: int) -> slice:
        """The peers this process builds: all of them, or its K / world share (cohort mode)."""
        return slice(0, num_peers)

    def wrap_cohort(
        self,
        local: Cohort | StackedCohort,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
    ) -> Cohort | StackedCohort | CohortParallel:
        """The cohort as the methods and the trainer see it (the whole cohort in cohort mode)."""
        return local

    def step_sync(self, batch_size: int) -> StepSync:
        """What a method's step shares with the other processes (given to the method at build)."""
        return StepSync()

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This process's share of a global batch ``x: [B, ...]``, ``y: [B]``."""
        return x, y

    def end_epoch(self, cohort: nn.Module, logs: list[dict[str, float]]) -> list[dict[str, float]]:
        """The epoch's train logs (one dict per peer) as every process reports them."""
        return logs


class CohortMode(OneProcess):
    """``distributed.mode=cohort``: K / world peers per process, every process sees each batch."""

    name = "cohort"

    def peer_slice(self, num_peers: int) -> slice:
        world = self.group.world
        return _rank_share(
            self.group,
            num_peers,
            f"distributed.mode=cohort: the {num_peers} peers do not split evenly over "
            f"{world} processes; launch a number of processes that divides the cohort "
            f"size (or use distributed.mode=data)",
        )

    def wrap_cohort(
        self,
        local: Cohort | StackedCohort,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
    ) -> CohortParallel:
        return CohortParallel(self.group, local, specs, optim, total_epochs)


class DataMode(OneProcess):
    """``distributed.mode=data``: the whole cohort per process, a shard of each batch."""

    name = "data"

    def step_sync(self, batch_size: int) -> StepSync:
        """Average the loss values and gradients over the ranks."""
        world = self.group.world
        if batch_size % world:
            raise UserError(
                f"distributed.mode=data: data.batch_size={batch_size} does not split evenly "
                f"over {world} processes; use a multiple of {world}"
            )
        return DataParallelSync(self.group)

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This process's contiguous share of a global batch.

        Every process draws the same global batch (same order, same augmentation) and keeps
        its slice: the union of the shards is exactly the one-process batch, which a
        DistributedSampler over the dataset would not give.
        """
        world = self.group.world
        share = _rank_share(
            self.group,
            len(y),
            f"distributed.mode=data: a batch of {len(y)} images does not split evenly over "
            f"{world} processes; make data.batch_size a multiple of {world} and "
            f"no larger than the training split",
        )
        # a dict batch (Hugging Face models): every tensor of it sliced alike
        return slice_batch(x, share.start, share.stop), y[share]

    def end_epoch(self, cohort: nn.Module, logs: list[dict[str, float]]) -> list[dict[str, float]]:
        """The epoch's train logs and the BatchNorm running statistics, averaged.

        Averaging the running statistics once per epoch equals averaging them after every
        step (their update is linear), so a resumed run matches an uninterrupted one. The
        averaged running mean is the one-process running mean; the variance is the mean of
        the shards' variances.
        """
        buffers = [b for b in cohort.buffers() if b.is_floating_point()]
        self.group.average_(buffers, "averaging BatchNorm statistics")
        keys = list(logs[0])
        table = torch.tensor([[peer[k] for k in keys] for peer in logs], dtype=torch.float64)
        self.group.average_([table], "averaging the train logs")
        return [dict(zip(keys, row)) for row in table.tolist()]


def parallel_mode(mode: str, group: Group) -> OneProcess:
    """The strategy for ``distributed.mode`` in ``group`` (one process: nothing to spread)."""
    if group.world == 1:
        return OneProcess(group)
    return {"none": OneProcess, "cohort": CohortMode, "data": DataMode}[mode](group)


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
        ctx: Group,
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

    # cohort mode spreads one-branch peers: one member each, a member's spec is its peer's
    member_specs = property(lambda self: self.specs)

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

    def grad_norms(self) -> Tensor:
        """``[K]``: every peer's gradient norm, each computed by the process that holds it."""
        return self.ctx.all_gather(self.local.grad_norms(), "gradient norms")

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

    def __init__(self, ctx: Group) -> None:
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
