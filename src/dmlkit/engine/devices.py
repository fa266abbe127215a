"""The device a run or a command evaluates on (``train.device``, ``--device``), and seeding."""

from __future__ import annotations

import os

import torch

from dmlkit.errors import UserError, shown


def resolve_device(name: str, flag: str = "train.device") -> torch.device:
    """The device ``name`` (auto, cpu, cuda, cuda:N, mps), or one line naming ``flag``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(
            f"{flag}={shown(name)}: not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag}={name}: CUDA is not available here; use {flag}=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{flag}={name}: no such GPU ({torch.cuda.device_count()} here)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag}={name}: MPS (Apple GPU) is not available here; use {flag}=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{flag}={name}: dmlkit runs on cpu, cuda or mps; use {flag}=cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        # Bitwise-repeatable runs (and resumes) on the CPU; on CUDA this needs the workspace
        # setting below and may cost some speed.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
