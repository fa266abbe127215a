"""The callback protocol: dispatch, import paths from configs, early stopping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dmlkit.engine.callbacks import (
    EVENTS,
    Callback,
    CallbackList,
    EarlyStopping,
    RunContext,
    build_callback,
    kept_on_resume,
    metric_of,
)
from dmlkit.errors import ConfigError


class Recorder:
    """A callback that is not a Callback subclass and has only two of the events."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.calls: list[tuple] = []

    def on_fit_start(self, run: RunContext) -> None:
        self.calls.append(("fit_start", run.step))

    def on_epoch_end(self, run: RunContext, records: list[dict]) -> None:
        self.calls.append(("epoch_end", [r["split"] for r in records]))


def _run() -> RunContext:
    return RunContext(None, ["a", "b"])


def val(epoch: int, ens_top1: float) -> list[dict]:
    return [
        {"split": "val", "peer": "a", "epoch": epoch, "step": epoch, "top1": 0.1, "ce": 2.0},
        {"split": "val", "peer": "ensemble", "epoch": epoch, "step": epoch, "top1": ens_top1},
    ]


def test_callback_list_calls_the_methods_a_callback_has_in_order() -> None:
    first, second = Recorder(), Recorder()
    cbs = CallbackList([first, Callback(), second])
    run = _run()
    for event in EVENTS:  # every event reaches every callback that has it, none fails
        args = {"on_fit_start": (), "on_checkpoint": (Path("x.pt"),), "on_fit_end": ({},)}
        args = args.get(event, ([],))
        cbs.fire(event, run, *args)
    cbs.fire("on_epoch_end", run, [{"split": "train"}, {"split": "val"}])
    assert (
        first.calls
        == second.calls
        == [
            ("fit_start", 0),
            ("epoch_end", []),
            ("epoch_end", ["train", "val"]),
        ]
    )
    with pytest.raises(ValueError, match="unknown callback event 'on_batch_end'"):
        cbs.fire("on_batch_end", run)


def test_build_callback_from_an_import_path_with_kwargs() -> None:
    cb = build_callback({"target": "tests.test_callbacks:Recorder", "tag": "mine"})
    assert type(cb).__name__ == "Recorder" and cb.tag == "mine"  # (imported anew by that path)
    cb = build_callback({"target": "dmlkit.engine.callbacks.EarlyStopping", "patience": 3})
    assert isinstance(cb, EarlyStopping) and cb.patience == 3
    with pytest.raises(ConfigError, match="has no 'Nope'"):
        build_callback("dmlkit.engine.callbacks:Nope")
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.mod'"):
        build_callback("no_such_pkg.mod:X")
    with pytest.raises(ConfigError, match="has none of the events"):
        build_callback("collections:OrderedDict")
    with pytest.raises(ConfigError, match="failed: .*unexpected keyword"):
        build_callback({"target": "dmlkit.engine.callbacks:EarlyStopping", "patients": 3})
    with pytest.raises(ConfigError, match="give an import path"):
        build_callback(42)


def test_metric_of_finds_a_peer_or_the_first_record() -> None:
    records = val(1, 0.5)
    assert metric_of(records, "ensemble/top1") == 0.5
    assert metric_of(records, "a/top1") == 0.1
    assert metric_of(records, "top1") == 0.1
    assert metric_of(records, "b/top1") is None


def test_early_stopping_stops_after_patience_evaluations_without_improvement() -> None:
    stop = EarlyStopping(monitor="ensemble/top1", patience=2, min_delta=0.01)
    run = _run()
    seen = []
    for epoch, acc in enumerate([0.50, 0.60, 0.605, 0.59, 0.70], start=1):
        stop.on_eval_end(run, val(epoch, acc))
        seen.append(run.should_stop)
        if run.should_stop:
            break
    # 0.605 is not an improvement of more than 0.01; 0.59 neither: two in a row -> stop.
    assert seen == [False, False, False, True]
    assert stop.best == 0.60
    assert "ensemble/top1 has not improved on 0.6 for 2 evaluations" in run.stop_reason
    # test records never count; min mode; state survives a resume.
    stop2 = EarlyStopping(monitor="a/ce", mode="min", patience=1)
    stop2.on_eval_end(run, [{"split": "test", "peer": "a", "ce": 9.0}])
    assert stop2.best == math.inf
    stop2.on_eval_end(run, val(1, 0.0))
    restored = EarlyStopping(monitor="a/ce", mode="min", patience=1)
    restored.load_state_dict(stop2.state_dict())
    assert restored.best == 2.0 and restored.bad_evals == 0


def test_early_stopping_names_the_metrics_it_could_monitor() -> None:
    stop = EarlyStopping(monitor="ensemble/mAP")
    with pytest.raises(ConfigError, match="not in the val records; use one of a/ce, a/top1"):
        stop.on_eval_end(_run(), val(1, 0.5))
    with pytest.raises(ConfigError, match="mode='best'"):
        EarlyStopping(mode="best")


def test_kept_on_resume_keeps_what_precedes_the_checkpoint() -> None:
    run = RunContext(None, ["a"], step=8, epoch=2, resumed=True)
    assert kept_on_resume({"split": "step", "step": 8, "epoch": 2}, run)
    assert not kept_on_resume({"split": "step", "step": 9, "epoch": 3}, run)
    assert kept_on_resume({"split": "val", "step": 8, "epoch": 2}, run)
    assert not kept_on_resume({"split": "test", "step": 8, "epoch": 2}, run)
    assert kept_on_resume({"split": "train", "epoch": 2}, run)  # logs without steps: by epoch
    assert not kept_on_resume({"split": "train", "epoch": 3}, run)
