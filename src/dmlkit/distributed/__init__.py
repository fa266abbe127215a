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

The package: :mod:`~dmlkit.distributed.collectives` (the bounded exchanges),
:mod:`~dmlkit.distributed.modes` (one strategy object per mode) and
:mod:`~dmlkit.distributed.env` (joining the job; the context the trainer holds).
"""

from dmlkit.distributed.collectives import DistributedError, Group
from dmlkit.distributed.env import DistContext, init_distributed
from dmlkit.distributed.modes import (
    CohortMode,
    CohortParallel,
    DataMode,
    DataParallelSync,
    OneProcess,
    parallel_mode,
)

__all__ = [
    "CohortMode",
    "CohortParallel",
    "DataMode",
    "DataParallelSync",
    "DistContext",
    "DistributedError",
    "Group",
    "OneProcess",
    "init_distributed",
    "parallel_mode",
]
