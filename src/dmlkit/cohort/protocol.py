"""What every cohort is, as a :class:`typing.Protocol`: the one interface of the loop
:class:`~dmlkit.cohort.loop.Cohort`, the vmap :class:`~dmlkit.cohort.stacked.StackedCohort` and
the distributed ``CohortParallel`` (:mod:`dmlkit.distributed.modes`).

The methods, the trainer, the evaluation and the checkpoints are typed against it, so a fourth
implementation is checked by a type checker rather than found out at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dmlkit.cohort.loop import PeerSpec


@runtime_checkable
class CohortLike(Protocol):
    """K peers with their optimizers and learning-rate schedules, one interface for all."""

    @property
    def names(self) -> list[str]:
        """One name per member (a multi-branch peer has one per branch)."""
        ...

    @property
    def specs(self) -> list[PeerSpec]:
        """One spec per peer network (what a checkpoint rebuilds)."""
        ...

    @property
    def member_specs(self) -> list[PeerSpec]:
        """One spec per member, named after it (a branch: its network's spec, renamed)."""
        ...

    @property
    def optimizers(self) -> Sequence[torch.optim.Optimizer | None]:
        """The optimizers this process steps (``None``: a peer stepped by another process)."""
        ...

    def __len__(self) -> int:
        """The number of peer networks."""
        ...

    def __call__(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, ...]`` -> one logits tensor ``[B, C]`` per member."""
        ...

    def repredict(self, k: int, x: Tensor) -> Tensor:
        """Peer k's prediction after its step (sequential update; no grad, stats untouched)."""
        ...

    def set_lr(self, epoch: float) -> None:
        """Set every peer's learning rate for the (fractional) epoch about to be trained."""
        ...

    def lrs(self) -> list[float]:
        """The learning rate of each member."""
        ...

    def grad_norms(self) -> Tensor:
        """``[members]``: each member's gradient norm as left by the last step."""
        ...

    def training_state(self) -> dict[str, Any]:
        """Every peer's weights and optimizer state, in the per-peer checkpoint format."""
        ...

    def load_training_state(self, state: dict[str, Any], *, optimizers: bool = True) -> None:
        """Restore :meth:`training_state` (weights only with ``optimizers=False``)."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Train mode (BatchNorm batch statistics, dropout) or, with False, eval mode."""
        ...

    def eval(self) -> Any:
        """Eval mode."""
        ...
