"""Fault injection for the crash-safety tests: ``DMLKIT_FAULT=KIND@N`` in the environment.

Kinds: ``kill-at-step@N`` (SIGKILL before step N), ``kill-after-checkpoint@E`` (SIGKILL right
after epoch E's checkpoint), ``kill-in-checkpoint@E`` and ``enospc-in-checkpoint@E`` (half-way
through writing epoch E's checkpoint; see :func:`dmlkit.engine.checkpoint.save_checkpoint`).
Unset in normal use: then every check is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def fault(kind: str, at: int) -> bool:
    """True when ``DMLKIT_FAULT`` asks for ``kind`` at ``at``."""
    want, _, n = os.environ.get("DMLKIT_FAULT", "").partition("@")
    return want == kind and n == str(at)


def maybe_kill(kind: str, at: int) -> None:
    """SIGKILL this process (no cleanup, like a power cut) if the fault is asked for here."""
    if fault(kind, at):
        os.kill(os.getpid(), signal.SIGKILL)
