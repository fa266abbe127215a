"""The callback protocol: how loggers and a user's own code follow a run as it trains.

A callback is any object with some of the six methods of :class:`Callback` (subclassing it is
optional; a missing method is simply not called). The trainer calls them in this order::

    on_fit_start(run)                     once, before the first step (also on resume)
    on_step_end(run, records)             every ``train.log_every`` steps
    on_eval_end(run, records)             after each evaluation: "val" during training,
                                          "test" once at the end
    on_checkpoint(run, path)              after a checkpoint is written
    on_epoch_end(run, records)            every epoch, after its checkpoint: its "train"
                                          records and, on an evaluated epoch, the same "val"
                                          records (the loggers get them before the
                                          checkpoint: a crash in between loses no record)
    on_fit_end(run, summary)              once, with the run's summary.json

``run`` is the :class:`RunContext`: where the run stands (``step``, ``epoch``), its peers, its
resolved config, and :meth:`RunContext.request_stop` to end training early.

``records`` are plain dicts, exactly the lines of ``metrics.jsonl``: every record has
``split`` (``"step"``, ``"train"``, ``"val"`` or ``"test"``), ``peer`` (a peer's name or
``"ensemble"``), ``epoch`` (1-based) and ``step`` (optimizer steps completed so far; the x-axis
of every logger), plus its values: ``loss``, ``ce``, ``mimicry``, ``lr``, ``grad_norm`` for
"step" and "train" records; ``top1``, ``top5``, ``ce`` (or ``mAP``, ``rank1``, ...) for
"val"/"test" records, and on the ensemble's record the peers' agreement (``all_agree``: the
fraction of samples on which all peers predict the same class) and ``pairwise_kl`` (mean
``KL(p_i || p_j)`` over the ordered pairs of peers, nats).

A callback that keeps state across a resume (early stopping's best value) may define
``state_dict() -> dict`` and ``load_state_dict(dict)``; the trainer stores it in checkpoints.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlkit.errors import ConfigError

Record = dict[str, Any]

#: The events, in the order they first fire.
EVENTS = (
    "on_fit_start",
    "on_step_end",
    "on_eval_end",
    "on_checkpoint",
    "on_epoch_end",
    "on_fit_end",
)
#: Keys of a record that say where it belongs, not what was measured.
INDEX_KEYS = ("split", "peer", "epoch", "step")


@dataclass
class RunContext:
    """Where a run stands; the first argument of every event.

    Attributes:
        run_dir: the run directory (``None`` for a run that writes none, e.g. Lightning).
        peers: the peers' names, in cohort order.
        config: the resolved config as a nested dict (the run's hyperparameters).
        steps_per_epoch: optimizer steps in one epoch.
        total_steps: steps of the whole run.
        num_epochs: epochs of the whole run.
        step: optimizer steps completed so far (counts on across a resume).
        epoch: epochs completed so far.
        resumed: this process continues an interrupted run from its checkpoint at ``step``;
            loggers drop what they wrote after that point (it is recomputed, identically).
        stop_reason: set by :meth:`request_stop`.
    """

    run_dir: Path | None
    peers: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: int = 0
    total_steps: int = 0
    num_epochs: int = 0
    step: int = 0
    epoch: int = 0
    resumed: bool = False
    stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Ask the trainer to stop after the current epoch (checkpointed, then tested)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def should_stop(self) -> bool:
        return self.stop_reason is not None


class Callback:
    """Base class with every event as a no-op; override the ones you need."""

    def on_fit_start(self, run: RunContext) -> None:
        """Before the first step (of this process: also when resuming)."""

    def on_step_end(self, run: RunContext, records: list[Record]) -> None:
        """Every ``train.log_every`` steps: one "step" record per peer."""

    def on_eval_end(self, run: RunContext, records: list[Record]) -> None:
        """After an evaluation: one "val" or "test" record per peer and one for the ensemble."""

    def on_epoch_end(self, run: RunContext, records: list[Record]) -> None:
        """Every epoch: its "train" records, and its "val" records when it was evaluated."""

    def on_checkpoint(self, run: RunContext, path: Path) -> None:
        """After the checkpoint ``path`` was written."""

    def on_fit_end(self, run: RunContext, summary: dict[str, Any]) -> None:
        """At the end, with the run's summary (the content of summary.json)."""


class CallbackList:
    """Calls every callback's method for an event, in order; missing methods are skipped."""

    def __init__(self, callbacks: list[Any] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    def __iter__(self):  # noqa: ANN204
        return iter(self.callbacks)

    def fire(self, event: str, run: RunContext, *args: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}; events: {', '.join(EVENTS)}")
        for cb in self.callbacks:
            method = getattr(cb, event, None)
            if method is not None:
                method(run, *args)

    def state_dict(self) -> list[dict[str, Any] | None]:
        """Each callback's state with its type's name (``None`` for those without), in order."""
        return [
            {"type": type(cb).__qualname__, "state": cb.state_dict()}
            if hasattr(cb, "state_dict")
            else None
            for cb in self.callbacks
        ]

    def load_state_dict(self, states: list[dict[str, Any] | None]) -> None:
        """Restore the states of :meth:`state_dict`; one whose callback changed is ignored."""
        for cb, saved in zip(self.callbacks, states):
            if (
                saved is not None
                and hasattr(cb, "load_state_dict")
                and saved["type"] == type(cb).__qualname__
            ):
                cb.load_state_dict(saved["state"])


def kept_on_resume(record: Record, run: RunContext) -> bool:
    """Whether a record written before an interruption stays when ``run`` resumes.

    The resumed run recomputes everything after its checkpoint (``run.step``): records past it
    are dropped so that the log has each step once. Test records are written again at the end.
    """
    if record.get("split") == "test":
        return False
    if "step" in record:
        return int(record["step"]) <= run.step
    return int(record.get("epoch", 0)) <= run.epoch  # a log written before steps were recorded


def metric_of(records: list[Record], name: str) -> float | None:
    """The value ``name`` of ``records``: ``"top1"`` (first record that has it) or
    ``"PEER/top1"`` (that peer's record, ``"ensemble/top1"`` for the ensemble)."""
    peer, _, key = name.rpartition("/")
    for r in records:
        if key in r and (not peer or r.get("peer") == peer):
            return float(r[key])
    return None


class EarlyStopping(Callback):
    """Stop when a validation metric has not improved for ``patience`` evaluations.

    Off by default: the paper reports the final epoch, and so does dmlkit unless this is
    configured (``train.callbacks: [{target: dmlkit.engine.callbacks:EarlyStopping,
    monitor: ensemble/top1, patience: 5}]``). The run still ends with a checkpoint and the test
    evaluation of the cohort as it is when it stops (not of the best epoch).

    Args:
        monitor: ``"PEER/KEY"`` of the "val" records, e.g. ``"ensemble/top1"``.
        mode: ``"max"`` (accuracy, mAP) or ``"min"`` (ce).
        patience: evaluations without improvement tolerated before stopping.
        min_delta: the smallest change that counts as an improvement.
    """

    def __init__(
        self,
        monitor: str = "ensemble/top1",
        mode: str = "max",
        patience: int = 5,
        min_delta: float = 0.0,
    ) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"EarlyStopping: mode={mode!r}; use max or min")
        if patience < 1:
            raise ConfigError(f"EarlyStopping: patience={patience}; use an integer >= 1")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.bad_evals = 0

    def on_eval_end(self, run: RunContext, records: list[Record]) -> None:
        if not records or records[0].get("split") != "val":
            return
        value = metric_of(records, self.monitor)
        if value is None:
            have = sorted({f"{r['peer']}/{k}" for r in records for k in r if k not in INDEX_KEYS})
            raise ConfigError(
                f"EarlyStopping: monitor={self.monitor!r} is not in the val records; "
                f"use one of {', '.join(have)}"
            )
        sign = 1.0 if self.mode == "max" else -1.0
        if sign * (value - self.best) > self.min_delta:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            run.request_stop(
                f"early stopping: {self.monitor} has not improved on {self.best:.4g} "
                f"for {self.bad_evals} evaluations"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = float(state["best"]), int(state["bad_evals"])


def import_object(path: str) -> Any:
    """``"package.module:Name"`` (or ``"package.module.Name"``) -> the object it names."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{path!r} is not an import path; write package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for {path!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{module_name!r} has no {attr!r} (from {path!r})") from None


def build_callback(spec: str | dict[str, Any]) -> Any:
    """A callback from a config entry: an import path, or ``{target: path, **kwargs}``.

    The named object is called with the kwargs (a class, or a factory function).
    """
    if isinstance(spec, str):
        target, kwargs = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("target"), str):
        kwargs = {k: v for k, v in spec.items() if k != "target"}
        target = spec["target"]
    else:
        raise ConfigError(
            f"train.callbacks: {spec!r}; give an import path 'package.module:Name' or "
            f"{{target: 'package.module:Name', ...keyword arguments}}"
        )
    factory = import_object(target)
    try:
        callback = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"train.callbacks: {target}({kwargs}) failed: {exc}") from None
    if not any(callable(getattr(callback, e, None)) for e in EVENTS):
        raise ConfigError(
            f"train.callbacks: {target} made {type(callback).__name__}, which has none of the "
            f"events {', '.join(EVENTS)}"
        )
    return callback
