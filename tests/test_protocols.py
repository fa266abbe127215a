"""The interfaces by name: every cohort implements ``CohortLike``, every training loader
``TrainLoader`` and the capabilities it claims (``ShardedLoader``, ``ViewsLoader``)."""

from __future__ import annotations

import pytest

from dmlkit.cohort import Cohort, CohortLike, PeerSpec, StackedCohort
from dmlkit.config import OptimConfig
from dmlkit.data.core import TensorLoader
from dmlkit.data.protocol import ShardedLoader, TrainLoader, ViewsLoader
from dmlkit.data.stream import StreamLoader
from dmlkit.data.user import UserLoader
from dmlkit.distributed.modes import CohortParallel


def _members(protocol: type) -> set[str]:
    """The names a class must have to implement ``protocol`` (its bases' included)."""
    names = set()
    for cls in protocol.__mro__:
        if cls.__module__.startswith("dmlkit"):
            names |= {n for n in vars(cls) if not n.startswith("_") or n in ("__len__",)}
            names |= {n for n in ("__iter__", "__call__") if n in vars(cls)}
    return names


@pytest.mark.parametrize("cls", [Cohort, StackedCohort, CohortParallel])
def test_every_cohort_class_has_the_protocols_members(cls: type) -> None:
    missing = {m for m in _members(CohortLike) if not hasattr(cls, m)}
    missing -= {"specs", "optimizers"}  # attributes set in __init__ (instances: below)
    assert not missing, f"{cls.__name__} lacks {sorted(missing)}"


def test_cohort_instances_are_cohortlike() -> None:
    specs = [PeerSpec(f"p{i}", "small_cnn", 5, 3, seed=i + 1) for i in range(2)]
    optim = [OptimConfig()] * 2
    assert isinstance(Cohort(specs, optim, 1.0), CohortLike)
    assert isinstance(StackedCohort(specs, optim, 1.0), CohortLike)
    assert not isinstance(object(), CohortLike)


@pytest.mark.parametrize(
    "cls, sharded, views",
    [(TensorLoader, False, True), (StreamLoader, True, True), (UserLoader, True, False)],
)
def test_every_loader_is_a_train_loader_with_its_capabilities(cls, sharded, views) -> None:
    assert all(hasattr(cls, m) for m in _members(TrainLoader))
    assert all(hasattr(cls, m) for m in _members(ShardedLoader)) == sharded
    assert all(hasattr(cls, m) for m in _members(ViewsLoader)) == views
