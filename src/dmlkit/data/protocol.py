"""What a training loader is, as :class:`typing.Protocol`\\ s: the one interface of the in-memory
:class:`~dmlkit.data.core.TensorLoader`, the streaming :class:`~dmlkit.data.stream.StreamLoader`
and a user's data in :class:`~dmlkit.data.user.UserLoader` (re-id sets use the first).

The trainer and the methods are typed against them and ask for an optional capability by its
protocol (``isinstance(loader, ShardedLoader)``), not by probing for an attribute's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TrainLoader(Protocol):
    """Batches ``(x, y)`` of one epoch, in an order fixed by (seed, epoch)."""

    def __iter__(self) -> Iterator[Any]:
        """``(x [B, ...], y [B])`` batches of the epoch set by :meth:`set_epoch`."""
        ...

    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to iterate next, from its batch ``start`` (a mid-epoch resume)."""
        ...


@runtime_checkable
class ShardedLoader(TrainLoader, Protocol):
    """A loader that can read only this process's share of every global batch (data mode)."""

    @property
    def sharded(self) -> bool:
        """Whether :meth:`shard` was called: its batches are this process's share already."""
        ...

    def shard(self, rank: int, world: int) -> Any:
        """Read only share ``rank`` of ``world`` of every batch from now on."""
        ...


@runtime_checkable
class ViewsLoader(TrainLoader, Protocol):
    """A loader that can augment one view of each batch per cohort member
    (``method.member_views``: batches ``x [K, B, ...]``)."""

    def set_views(self, views: int) -> None:
        """Yield ``views`` augmented views of every batch (0: one plain batch)."""
        ...
