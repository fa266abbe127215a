"""The cohort: K peers, each with its own initialisation, optimizer and learning-rate schedule.

Two implementations with one interface and one checkpoint format: :class:`Cohort`
(:mod:`dmlkit.cohort.loop`), the loop (one module per peer, launched one after another), the
reference every faster path must match; and :class:`StackedCohort`
(:mod:`dmlkit.cohort.stacked`), the K peers of one architecture batched through ``vmap``.
:func:`build_cohort` picks one for ``train.cohort_impl``; :class:`PeerSpec` rebuilds a peer;
:class:`CohortLike` is the interface both (and the distributed stand-in) implement.
"""

from __future__ import annotations

import torch

from dmlkit.cohort.loop import Cohort, PeerSpec, num_branches, peer_specs, preserved_buffers
from dmlkit.cohort.protocol import CohortLike
from dmlkit.cohort.stacked import StackedCohort, stacking_problem
from dmlkit.config import OptimConfig
from dmlkit.errors import ConfigError
from dmlkit.optim import LRSchedule

__all__ = [
    "Cohort",
    "CohortLike",
    "LRSchedule",
    "PeerSpec",
    "StackedCohort",
    "build_cohort",
    "num_branches",
    "peer_specs",
    "preserved_buffers",
    "stacking_problem",
]


def build_cohort(
    impl: str,
    specs: list[PeerSpec],
    optim: list[OptimConfig],
    total_epochs: float,
    device: torch.device,
    *,
    update: str = "simultaneous",
    compile: bool = False,
    channels_last: bool = True,
) -> Cohort | StackedCohort:
    """The cohort implementation for ``train.cohort_impl`` (loop | stacked | auto).

    ``auto`` stacks on CUDA when the cohort allows it (identical peers and optimizers, every
    peer stepping against one forward); on the CPU the loop is as fast (see benchmarks/).
    """
    problem = stacking_problem(specs, optim)
    if update == "sequential":
        problem = problem or "the sequential update steps the peers one at a time"
    if impl == "stacked" and problem:
        raise ConfigError(f"train.cohort_impl=stacked: {problem}; use train.cohort_impl=loop")
    stacked = impl == "stacked" or (impl == "auto" and not problem and device.type == "cuda")
    if stacked:
        return StackedCohort(specs, optim, total_epochs, device, compile=compile)
    cohort = Cohort(
        specs, optim, total_epochs, device, compile=compile, channels_last=channels_last
    )
    if update == "sequential" and any(k is not None for k in cohort.branches):
        raise ConfigError(
            "method.update=sequential steps one network at a time, but a multi-branch peer's "
            "branches share their trunk; use method.update=simultaneous"
        )
    return cohort
