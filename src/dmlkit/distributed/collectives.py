"""The exchanges between the processes of a ``torchrun`` job, each bounded by a timeout.

:class:`Group` is where this process stands (rank, world, device, backend) and every
collective the trainer needs; with ``world == 1`` (no process group) each is a no-op, so the
trainer has one code path. A failed or timed-out exchange becomes a one-line
:class:`DistributedError` instead of a hang.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from dmlkit.errors import first_line

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
class Group:
    """Where this process stands in the job, and every exchange the trainer needs.

    A group with ``world == 1`` (no process group) makes every method a no-op, so the
    trainer has one code path.

    Attributes:
        rank: this process, 0..world-1 (``RANK``); rank 0 writes the run directory.
        world: number of processes (``WORLD_SIZE``).
        local_rank: this process on its node (``LOCAL_RANK``): its GPU index.
        local_world: processes on this node (``LOCAL_WORLD_SIZE``).
        device: this process's device.
        backend: ``gloo`` or ``nccl`` (None in one process).
        timeout_s: longest wait in any exchange.
    """

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


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (to reach the other ranks), else a plain stand-in."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure means: send a description instead
        return DistributedError(f"rank 0 failed: {type(exc).__name__}: {exc}")
