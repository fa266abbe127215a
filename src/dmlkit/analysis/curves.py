"""Training and validation curves, read from a run's ``metrics.jsonl``.

Paper, Sec. 4.5: DML and independent training reach *similar* training losses, yet DML tests
better -- DML is not a better optimiser of the training objective but finds solutions that
generalise better. The training cross-entropy logged here is the mean over the epoch's batches
of the CE term alone (augmented images, train mode), i.e. the same quantity for every method:
the mimicry term is logged separately.
"""

from __future__ import annotations

from typing import Any

from dmlkit.engine.evaluation import ENSEMBLE

TRAIN_KEYS = ("ce", "mimicry", "loss", "lr")
EVAL_KEYS = ("top1", "ce")


def train_curves(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per-peer training curves from a run's log records.

    Args:
        records: the run's ``metrics.jsonl`` records.

    Returns:
        ``{peer: {"epoch": [...], "ce": [...], "mimicry": [...], "loss": [...], "lr": [...]}}``,
        epochs in increasing order (a resumed run's repeated epochs keep the last record).
    """
    by_peer: dict[str, dict[int, dict[str, Any]]] = {}
    for rec in records:
        if rec.get("split") == "train" and rec.get("peer") not in (None, ENSEMBLE):
            by_peer.setdefault(rec["peer"], {})[int(rec["epoch"])] = rec
    return {peer: _columns(epochs, TRAIN_KEYS) for peer, epochs in by_peer.items()}


def eval_curves(records: list[dict[str, Any]], split: str = "val") -> dict[str, dict[str, list]]:
    """Per-peer (and ensemble) evaluation curves of ``split`` ("val" or "test")."""
    by_peer: dict[str, dict[int, dict[str, Any]]] = {}
    for rec in records:
        if rec.get("split") == split and "peer" in rec:
            by_peer.setdefault(rec["peer"], {})[int(rec["epoch"])] = rec
    return {peer: _columns(epochs, EVAL_KEYS) for peer, epochs in by_peer.items()}


def _columns(epochs: dict[int, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, list]:
    order = sorted(epochs)
    cols: dict[str, list] = {"epoch": order}
    for key in keys:
        cols[key] = [float(epochs[e].get(key, float("nan"))) for e in order]
    return cols
