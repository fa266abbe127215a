"""Cohort checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint holds only tensors and plain values: the peers' specs (to rebuild the networks),
their weights and optimizer states, the epoch and iteration reached, the RNG state and the
resolved config. Files: ``checkpoints/epoch_NNNN.pt`` and ``checkpoints/last.pt`` (the newest,
a hard link where the filesystem allows).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmlkit.errors import UserError

FORMAT = "dmlkit-cohort"
VERSION = 1
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes_with(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(fileobj)`` into a temporary file, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes_with(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(ckpt_dir: Path, state: dict[str, Any], epoch: int, keep: int) -> Path:
    """Save ``state`` as ``epoch_{epoch}.pt``, point ``last.pt`` at it, prune old epochs.

    Args:
        ckpt_dir: the run's ``checkpoints/`` folder.
        state: plain containers of tensors and values.
        epoch: number of completed epochs.
        keep: epoch checkpoints kept besides the newest one.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    path = ckpt_dir / f"epoch_{epoch:04d}.pt"
    atomic_write_bytes_with(path, lambda f: torch.save(state, f))
    _point_last(ckpt_dir, path)
    epochs = sorted(
        (int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _EPOCH_FILE.match(p.name))
    )
    for _, old in epochs[: max(len(epochs) - 1 - keep, 0)]:
        old.unlink(missing_ok=True)
    return path


def _point_last(ckpt_dir: Path, target: Path) -> None:
    """Atomically make ``last.pt`` the same file as ``target`` (hard link, else a copy)."""
    tmp = ckpt_dir / ".last.pt.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, ckpt_dir / "last.pt")
    _fsync_dir(ckpt_dir)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (-> its ``checkpoints/last.pt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UserError(f"{path}: no checkpoint found (expected {last}); was the run started?")
        return last
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give a run directory or a .pt file)")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a dmlkit checkpoint safely (``weights_only=True``: no code runs while loading)."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable dmlkit checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a dmlkit cohort checkpoint (no '{FORMAT}' format tag)")
    return state


def load_peer(
    path: str | Path, index: int, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Any]:
    """Rebuild peer ``index`` of a checkpoint with its trained weights (e.g. a kd teacher).

    Returns:
        ``(module in eval mode, PeerSpec)``.
    """
    from dmlkit.cohort import PeerSpec

    state = load_checkpoint(path, map_location=device)
    peers = state["peers"]
    if not 0 <= index < len(peers):
        raise UserError(
            f"{resolve_checkpoint(path)}: has {len(peers)} peers, no peer index {index} "
            f"(set method.teacher_peer to 0..{len(peers) - 1})"
        )
    spec = PeerSpec(**peers[index])
    model = spec.build().to(device)
    model.load_state_dict(state["cohort"]["models"][index])
    return model.eval(), spec
