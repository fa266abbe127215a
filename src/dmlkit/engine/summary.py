"""summary.json: what a finished run reports (its test metrics, and what it trained on what)."""

from __future__ import annotations

from typing import Any

import torch

from dmlkit.cohort import PeerSpec
from dmlkit.config import Config
from dmlkit.data import DataBundle
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.engine.predict import preprocess_of
from dmlkit.methods.dml import update_order


def make_summary(
    cfg: Config,
    specs: list[PeerSpec],
    metrics: dict[str, dict[str, float]],
    epoch: int,
    iteration: int,
    *,
    data: DataBundle | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """summary.json: the final metrics, and what was trained on what (dataset, classes, device)."""
    about: dict[str, Any] = {"dataset": cfg.data.name}
    if device is not None:
        about["device"] = str(device)
    if data is not None:  # the class names let `dml predict` answer in words
        about.update(num_classes=data.num_classes, classes=list(data.class_names))
        about["preprocess"] = preprocess_of(data)
    return {
        "method": cfg.method.name,
        "update": update_order(cfg.method),
        "seed": cfg.seed,
        "epochs": epoch,
        "iterations": iteration,
        "split": "test",
        "peers": [{"name": s.name, "arch": s.arch, "metrics": metrics[s.name]} for s in specs],
        ENSEMBLE: {"metrics": metrics[ENSEMBLE]},
        **_heads(specs, metrics),
        **about,
    }


def _heads(specs: list[PeerSpec], metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``{"heads": {name: {"metrics": ...}}}`` for what a method evaluates besides its peers."""
    peers = {s.name for s in specs} | {ENSEMBLE}
    heads = {n: {"metrics": m} for n, m in metrics.items() if n not in peers}
    return {"heads": heads} if heads else {}
