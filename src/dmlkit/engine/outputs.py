"""Where a command's outputs go, checked before any work: the one writability check behind
``dml analyze``, ``dml report``, ``dml export`` and ``dml predict --out``.

Minutes of measuring or exporting must not end in "cannot write there": each command asks
here first, on the nearest folder that exists (the outputs' folders are made later).
"""

from __future__ import annotations

import os
from pathlib import Path

from dmlkit.errors import UserError


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (the folder a ``mkdir -p`` starts in)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(
    folder: Path,
    label: str,
    *,
    shown: Path | None = None,
    reason: str = "is not a writable folder",
    fix: str = "choose another path",
) -> None:
    """Fail in one line when ``folder`` (or the nearest of its ancestors that exists) cannot
    be written into.

    Args:
        folder: where the outputs go (it need not exist yet).
        label: what the user calls it, e.g. ``"--out"`` or ``"the analysis folder"``.
        shown: the path to name in the message (default ``folder``; e.g. the output file).
        reason: what the nearest existing folder is, said after its name.
        fix: what to do instead.
    """
    existing = nearest_existing(folder)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        where = folder if shown is None else shown
        raise UserError(f"{label} {where}: cannot write there ({existing} {reason}); {fix}")


def check_out_folder(
    folder: Path, label: str, *, holds: str = "the outputs", **writable: str
) -> None:
    """``folder`` is (or can be made) a writable folder: one line otherwise, before any work.

    Args:
        folder: the output folder.
        label: as :func:`check_writable`'s.
        holds: what the folder is for, said when ``folder`` is a file.
        **writable: ``reason`` / ``fix`` of :func:`check_writable`.
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{label} {folder}: is a file, not a folder; give a folder for {holds}")
    check_writable(folder, label, **writable)
