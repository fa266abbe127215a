"""The trainer's records reach every logger and callback: complete, once, across a resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dmlkit.cohort import Cohort, PeerSpec, StackedCohort
from dmlkit.config import OptimConfig, load_config
from dmlkit.engine.callbacks import Callback
from dmlkit.engine.records import EpochFunction
from dmlkit.engine.trainer import Trainer
from dmlkit.errors import ConfigError

from helpers import QUIET

# 256 images / 64 = 4 steps per epoch; a step record every 2 steps; evaluation every epoch.
LOGGED = [
    *QUIET,
    "data.train_size=256",
    "data.batch_size=64",
    "train.eval_every=1",
    "train.log_every=2",
]
PEERS = ["peer0_small_cnn", "peer1_small_cnn"]


def _jsonl(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _timeless(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_on_epoch_sees_train_and_val_records_of_an_evaluated_epoch(tmp_path: Path) -> None:
    """Fails on the code before the callback protocol: the records were keyed by peer, so the
    val record replaced the train record and loss / ce / mimicry / lr never arrived."""
    seen: dict[int, list[dict]] = {}

    def on_epoch(epoch, records) -> None:  # noqa: ANN001
        seen[epoch] = list(records.values()) if isinstance(records, dict) else list(records)

    cfg = load_config(None, [*LOGGED, "train.epochs=2"])
    Trainer(cfg, tmp_path / "r").fit(callbacks=[EpochFunction(on_epoch)])
    assert sorted(seen) == [1, 2]
    for records in seen.values():
        train = {r["peer"]: r for r in records if r["split"] == "train"}
        val = {r["peer"]: r for r in records if r["split"] == "val"}
        assert sorted(train) == PEERS and sorted(val) == sorted([*PEERS, "ensemble"])
        for r in train.values():
            assert {"loss", "ce", "mimicry", "lr", "grad_norm"} <= set(r)
            assert r["loss"] == pytest.approx(r["ce"] + r["mimicry"], rel=1e-5)  # weight 1
        assert {"top1", "top5", "ce", "all_agree", "pairwise_kl"} <= set(val["ensemble"])


def test_fit_on_epoch_is_a_deprecated_alias_of_an_epoch_callback(tmp_path: Path) -> None:
    seen = []
    cfg = load_config(None, [*LOGGED, "train.epochs=1"])
    with pytest.warns(DeprecationWarning, match=r"callbacks=\[EpochFunction\(f\)\]"):
        Trainer(cfg, tmp_path / "r").fit(on_epoch=lambda epoch, records: seen.append(epoch))
    assert seen == [1]


class Spy(Callback):
    """Every event with the split of its records, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_fit_start(self, run) -> None:  # noqa: ANN001
        self.events.append(("fit_start", run.step, run.resumed, tuple(run.peers)))

    def on_step_end(self, run, records) -> None:  # noqa: ANN001
        self.events.append(("step", run.step, tuple(r["split"] for r in records)))

    def on_eval_end(self, run, records) -> None:  # noqa: ANN001
        self.events.append(("eval", run.step, records[0]["split"], len(records)))

    def on_epoch_end(self, run, records) -> None:  # noqa: ANN001
        self.events.append(("epoch", run.epoch, tuple(sorted({r["split"] for r in records}))))

    def on_checkpoint(self, run, path) -> None:  # noqa: ANN001
        self.events.append(("checkpoint", run.epoch, Path(path).name))

    def on_fit_end(self, run, summary) -> None:  # noqa: ANN001
        self.events.append(("fit_end", summary["epochs"]))


def test_events_arrive_in_order_with_complete_records(tmp_path: Path) -> None:
    spy = Spy()
    cfg = load_config(None, [*LOGGED, "train.epochs=2"])
    Trainer(cfg, tmp_path / "r").fit(callbacks=[spy])
    peers = ("step", "step")
    assert spy.events == [
        ("fit_start", 0, False, tuple(PEERS)),
        ("step", 2, peers),
        ("step", 4, peers),
        ("eval", 4, "val", 3),
        ("checkpoint", 1, "epoch_0001.pt"),
        ("epoch", 1, ("train", "val")),
        ("step", 6, peers),
        ("step", 8, peers),
        ("eval", 8, "val", 3),
        ("checkpoint", 2, "epoch_0002.pt"),
        ("epoch", 2, ("train", "val")),
        ("eval", 8, "test", 3),
        ("fit_end", 2),
    ]


@pytest.mark.slow  # five loggers, W&B's service process
def test_every_logger_writes_the_runs_records(tmp_path: Path, monkeypatch) -> None:
    """A 2-epoch run with every logger: each file read back holds the values of metrics.jsonl."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from test_loggers import _wandb_records, read_tensorboard

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "r"
    loggers = "train.loggers=[jsonl,csv,tensorboard,wandb,mlflow]"
    cfg = load_config(None, [*LOGGED, "train.epochs=2", loggers])
    Trainer(cfg, run).fit()
    records = _jsonl(run)
    # what metrics.jsonl must hold: step records every 2 steps, train + val per epoch, test
    steps = [r["step"] for r in records if r["split"] == "step" and r["peer"] == PEERS[0]]
    assert steps == [2, 4, 6, 8]
    assert [(r["split"], r["epoch"]) for r in records if r["peer"] == "ensemble"] == [
        ("val", 1),
        ("val", 2),
        ("test", 2),
    ]
    for r in records:
        if r["split"] in ("step", "train"):
            assert r["grad_norm"] > 0 and r["lr"] > 0 and r["mimicry"] > 0
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [{k: v for k, v in row.items() if v != ""} for row in rows] == [
        {k: str(v) for k, v in r.items()} for r in records
    ]
    # The same (tag, step, value) points in TensorBoard, W&B and MLflow.
    want: dict[str, list] = {}
    for r in records:
        for k, v in r.items():
            if k not in ("split", "peer", "epoch", "step", "seconds"):
                tag = f"{r['split']}/{k}" + (
                    "" if k in ("all_agree", "pairwise_kl") else f"/{r['peer']}"
                )
                want.setdefault(tag, []).append((r["step"], pytest.approx(v, rel=1e-6)))
    assert read_tensorboard(run / "tensorboard") == want
    history: dict[str, list] = {}
    for rec in _wandb_records(next((run / "wandb").glob("offline-run-*/run-*.wandb"))):
        if rec.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
            }
            for k, v in items.items():
                if not k.startswith("_"):
                    history.setdefault(k, []).append((items["_step"], v))
    assert history == want
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    got = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in want}
    assert got == want
    assert client.get_run(run_id).data.params["train.log_every"] == "2"


@pytest.mark.slow  # three runs
def test_resumed_logs_equal_an_uninterrupted_runs(tmp_path: Path) -> None:
    """Interrupted at step 10 of 12 (after the epoch-2 checkpoint at step 8), then resumed:
    metrics.jsonl, metrics.csv and TensorBoard hold the same steps and values."""
    pytest.importorskip("tensorboard")
    from test_loggers import read_tensorboard

    overrides = [*LOGGED, "train.epochs=3", "train.loggers=[jsonl,csv,tensorboard]"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    Trainer(load_config(None, overrides), full).fit()

    class Interrupt(Callback):
        def on_step_end(self, run, records) -> None:  # noqa: ANN001
            if run.step == 10:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(None, overrides), cut).fit(callbacks=[Interrupt()])
    assert max(r["step"] for r in _jsonl(cut)) == 10  # logged past the checkpoint, then lost
    spy = Spy()
    Trainer(load_config(None, overrides), cut, resume=True).fit(callbacks=[spy])
    assert spy.events[0] == ("fit_start", 8, True, tuple(PEERS))
    assert _timeless(_jsonl(cut)) == _timeless(_jsonl(full))

    def csv_rows(run: Path) -> list[dict]:
        with (run / "metrics.csv").open(newline="") as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    assert csv_rows(cut) == csv_rows(full)
    assert read_tensorboard(cut / "tensorboard") == read_tensorboard(full / "tensorboard")


def test_early_stopping_from_the_config_ends_the_run_early(tmp_path: Path) -> None:
    # min_delta 2.0 on an accuracy: no evaluation can improve on the first -> stop at the 2nd.
    stop = (
        "train.callbacks=[{target: 'dmlkit.engine.callbacks:EarlyStopping', "
        "monitor: ensemble/top1, patience: 1, min_delta: 2.0}]"
    )
    cfg = load_config(None, [*LOGGED, "train.epochs=5", stop])
    summary = Trainer(cfg, tmp_path / "r").fit()
    assert summary["epochs"] == 2
    assert (tmp_path / "r" / "checkpoints" / "epoch_0002.pt").is_file()
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    saved = [c for c in state["callbacks"] if c is not None]
    assert len(saved) == 1 and saved[0]["type"] == "EarlyStopping"
    assert saved[0]["state"]["bad_evals"] == 1 and 0 <= saved[0]["state"]["best"] <= 1
    assert [r["split"] for r in _jsonl(tmp_path / "r") if r["peer"] == "ensemble"] == [
        "val",
        "val",
        "test",
    ]


def test_bad_logger_or_callback_is_one_config_error_before_any_work(tmp_path: Path) -> None:
    cfg = load_config(None, [*LOGGED, "train.loggers=[jsonl,tensorbord]"])
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'"):
        Trainer(cfg, tmp_path / "a")
    cfg = load_config(None, [*LOGGED, "train.callbacks=[no_such_pkg:Thing]"])
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg'"):
        Trainer(cfg, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _grads(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def test_grad_norms_of_the_loop_and_stacked_cohorts_agree_with_a_hand_norm() -> None:
    specs = [PeerSpec(f"p{i}", "small_cnn", 10, 1, seed=i) for i in range(2)]
    optim = OptimConfig(schedule="constant")
    loop, stacked = Cohort(specs, [optim] * 2, 1.0), StackedCohort(specs, [optim] * 2, 1.0)
    x, y = _grads()
    for cohort in (loop, stacked):
        losses = [
            torch.nn.functional.cross_entropy(z, y) * (k + 1) for k, z in enumerate(cohort(x))
        ]
        torch.stack(losses).sum().backward()
    hand = torch.stack(
        [
            torch.cat([p.grad.flatten() for p in peer.parameters()]).pow(2).sum().sqrt()
            for peer in loop.peers
        ]
    )
    torch.testing.assert_close(loop.grad_norms(), hand)
    torch.testing.assert_close(stacked.grad_norms(), hand, rtol=1e-4, atol=1e-6)
    assert hand[1] > hand[0]  # the second peer's loss was doubled
