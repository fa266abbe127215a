"""Fault injection for the crash-safety tests: ``DMLKIT_FAULT=KIND@N`` in the environment.

Kinds: ``kill-at-step@N`` (SIGKILL before step N), ``kill-after-checkpoint@E`` (SIGKILL right
after epoch E's checkpoint), ``kill-in-checkpoint@E`` and ``enospc-in-checkpoint@E`` (half-way
through writing epoch E's checkpoint; see :func:`dmlkit.engine.checkpoint.save_checkpoint`),
``kill-before-last@E`` and ``kill-in-last@E`` (the two crash windows of re-pointing
``last.pt``), and a full disk (:func:`maybe_enospc`) at ``enospc-in-metrics@E`` (appending
epoch E's records), ``enospc-in-summary@E``, ``enospc-in-resume@E`` (cutting metrics.jsonl back
to epoch E) and ``enospc-in-eval@E`` (``dml eval``'s result of a checkpoint of epoch E).
Each ``kill-...`` point also answers to ``stop-...`` (``stop-at-step@N``): SIGSTOP instead, a
process that hangs without dying (the distributed timeout tests). With ``DMLKIT_FAULT_RANK=R``
only the process of torch.distributed rank R (``RANK``) is affected.
Unset in normal use: then every check is one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal


def fault(kind: str, at: int) -> bool:
    """True when ``DMLKIT_FAULT`` asks for ``kind`` at ``at``."""
    want, _, n = os.environ.get("DMLKIT_FAULT", "").partition("@")
    if want != kind or n != str(at):
        return False
    only = os.environ.get("DMLKIT_FAULT_RANK")
    return only is None or os.environ.get("RANK", "0") == only


def maybe_kill(kind: str, at: int) -> None:
    """SIGKILL this process (no cleanup, like a power cut) if the fault is asked for here.

    The ``stop-`` twin of ``kind`` freezes the process instead (SIGSTOP: a hung rank).
    """
    if fault(kind, at):
        os.kill(os.getpid(), signal.SIGKILL)
    if kind.startswith("kill-") and fault("stop-" + kind[5:], at):
        os.kill(os.getpid(), signal.SIGSTOP)


def maybe_enospc(kind: str, at: int, path: str | os.PathLike[str] | None = None) -> None:
    """Raise the OSError of a full disk (about ``path``) if the fault is asked for here."""
    if fault(kind, at):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
