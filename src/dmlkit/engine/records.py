"""The records a training run produces (the lines of ``metrics.jsonl``).

See :mod:`dmlkit.engine.callbacks` for what each record holds and when each is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from dmlkit.engine.callbacks import Callback, Record, RunContext
from dmlkit.engine.evaluation import ENSEMBLE


def step_records(
    run: RunContext, epoch: int, logs: list[dict[str, Tensor]], lrs: list[float]
) -> list[Record]:
    """One "step" record per peer: the last step's ``loss``, ``ce``, ``mimicry``, ``grad_norm``
    (``logs``, one dict of scalar tensors per peer) and ``lr``."""
    return [
        {"epoch": epoch, "split": "step", "peer": name, "step": run.step}
        | {k: float(v) for k, v in peer_log.items()}
        | {"lr": lrs[i]}
        for i, (name, peer_log) in enumerate(zip(run.peers, logs))
    ]


def train_records(
    run: RunContext, means: list[dict[str, float]], lrs: list[float], seconds: float
) -> list[Record]:
    """One "train" record per peer: the epoch's mean values, the LR at its end, its duration."""
    return [
        {"epoch": run.epoch, "split": "train", "peer": name, "step": run.step}
        | means[i]
        | {"lr": lrs[i], "seconds": seconds}
        for i, name in enumerate(run.peers)
    ]


def split_records(
    run: RunContext, split: str, metrics: dict[str, dict[str, float]]
) -> list[Record]:
    """One record per peer and one for the ensemble of an evaluation of ``split``."""
    return [
        {"epoch": run.epoch, "split": split, "peer": p, "step": run.step, **m}
        for p, m in metrics.items()
    ]


def postfix(records: list[Record]) -> str:
    """The progress bar's text: the peers' val top-1, else their train loss."""
    parts = [
        f"{r['peer']}={100 * r['top1']:.1f}%"
        for r in records
        if r["split"] == "val" and r["peer"] != ENSEMBLE and "top1" in r
    ]
    if not parts:
        parts = [f"{r['peer']} loss={r['loss']:.3f}" for r in records if r["split"] == "train"]
    return " ".join(parts)


class EpochFunction(Callback):
    """A callback that calls ``f(epoch, records)`` after every epoch, with all of the epoch's
    records (train, and val on an evaluated epoch) as a list:
    ``Trainer.fit(callbacks=[EpochFunction(f)])``."""

    def __init__(self, fn: Callable[[int, list[Record]], Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, run: RunContext, records: list[Record]) -> None:
        self.fn(run.epoch, records)


class EpochProgress:
    """The epoch under way: batches drawn, and the sums of the peers' step logs.

    Kept on the device (no sync per step); a mid-epoch checkpoint saves it, so that a resumed
    run's train record of that epoch is the mean over all of its steps, as uninterrupted.
    """

    def __init__(
        self, batches: int = 0, steps: int = 0, sums: list[dict[str, Tensor]] | None = None
    ) -> None:
        self.batches = batches  # drawn from the loader, skipped non-finite steps included
        self.steps = steps  # steps whose logs are in the sums
        self.sums = sums

    def add(self, logs: list[dict[str, Tensor]]) -> None:
        """Add one step's logs (one dict per peer)."""
        if self.sums is None:
            self.sums = logs
        else:
            self.sums = [
                {k: acc[k] + v for k, v in log.items()} for acc, log in zip(self.sums, logs)
            ]
        self.steps += 1

    def means(self) -> list[dict[str, float]]:
        """Each peer's mean log over the epoch's steps."""
        assert self.sums is not None
        return [{k: float(v) / self.steps for k, v in acc.items()} for acc in self.sums]

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "steps": self.steps, "sums": self.sums}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        return cls(int(state["batches"]), int(state["steps"]), state["sums"])
