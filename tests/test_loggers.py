"""The loggers as callbacks, driven by a scripted run: files read back with each tool's reader.

The scripted run fires the events the way the trainer does (2 peers, 2 epochs of 4 steps, step
records every 2 steps, a val evaluation each epoch, test at the end), with made-up values that
differ per record, so every value can be checked where it lands.
"""

from __future__ import annotations

import csv
import json
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest

from dmlkit.engine.callbacks import CallbackList, RunContext
from dmlkit.engine.loggers import build_loggers
from dmlkit.errors import ConfigError

PEERS = ["net_a", "net_b"]
SPE, EPOCHS, LOG_EVERY = 4, 2, 2
CONFIG = {"seed": 3, "method": {"name": "dml", "update": "simultaneous"}, "train": {"epochs": 2}}


def _value(*keys: object) -> float:
    # A distinct, reproducible value per (split, key, peer, step).
    return (zlib.crc32(repr(keys).encode()) % 10_000) / 10_000


def step_records(step: int, epoch: int) -> list[dict]:
    return [
        {"split": "step", "peer": p, "epoch": epoch, "step": step}
        | {k: _value("step", k, p, step) for k in ("loss", "ce", "mimicry", "lr", "grad_norm")}
        for p in PEERS
    ]


def eval_records(split: str, step: int, epoch: int) -> list[dict]:
    out = [
        {"split": split, "peer": p, "epoch": epoch, "step": step}
        | {k: _value(split, k, p, step) for k in ("top1", "top5", "ce")}
        for p in [*PEERS, "ensemble"]
    ]
    out[-1] |= {"all_agree": _value(split, "agree", step), "pairwise_kl": _value(split, "kl", step)}
    return out


def scripted_run(run_dir: Path, loggers: list[str], *, stop_at: int | None = None, resume_from=0):
    """Fire the trainer's events; ``stop_at``: interrupt after that step (no fit end);
    ``resume_from``: continue from the checkpoint at that step (a multiple of SPE)."""
    cbs = CallbackList(build_loggers(loggers, run_dir))
    run = RunContext(run_dir, PEERS, CONFIG, SPE, SPE * EPOCHS, EPOCHS)
    run.step, run.epoch, run.resumed = resume_from, resume_from // SPE, resume_from > 0
    cbs.fire("on_fit_start", run)
    while run.epoch < EPOCHS:
        epoch = run.epoch + 1
        for _ in range(SPE):
            run.step += 1
            if run.step % LOG_EVERY == 0:
                cbs.fire("on_step_end", run, step_records(run.step, epoch))
            if run.step == stop_at:
                return
        run.epoch = epoch
        train = [
            {"split": "train", "peer": p, "epoch": epoch, "step": run.step}
            | {k: _value("train", k, p, run.step) for k in ("loss", "ce", "mimicry", "lr")}
            for p in PEERS
        ]
        val = eval_records("val", run.step, epoch)
        cbs.fire("on_eval_end", run, val)
        cbs.fire("on_epoch_end", run, train + val)
        cbs.fire("on_checkpoint", run, run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt")
    test = eval_records("test", run.step, run.epoch)
    cbs.fire("on_eval_end", run, test)
    summary = {
        "epochs": EPOCHS,
        "peers": [{"name": p, "metrics": {"top1": _value("test", "top1", p, 8)}} for p in PEERS],
        "ensemble": {"metrics": {"top1": _value("test", "top1", "ensemble", 8)}},
    }
    cbs.fire("on_fit_end", run, summary)


def expected_records() -> list[dict]:
    out: list[dict] = []
    for epoch in range(1, EPOCHS + 1):
        for step in range((epoch - 1) * SPE + 1, epoch * SPE + 1):
            if step % LOG_EVERY == 0:
                out += step_records(step, epoch)
        step = epoch * SPE
        out += [
            {"split": "train", "peer": p, "epoch": epoch, "step": step}
            | {k: _value("train", k, p, step) for k in ("loss", "ce", "mimicry", "lr")}
            for p in PEERS
        ]
        out += eval_records("val", step, epoch)
    return out + eval_records("test", SPE * EPOCHS, EPOCHS)


def expected_scalars() -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of expected_records() under the documented tag scheme."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in expected_records():
        for k, v in r.items():
            if k in ("split", "peer", "epoch", "step"):
                continue
            tag = f"{r['split']}/{k}" if k in ("all_agree", "pairwise_kl") else None
            tag = tag or f"{r['split']}/{k}/{r['peer']}"
            out.setdefault(tag, []).append((r["step"], v))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_and_csv_hold_every_record_in_order(tmp_path: Path) -> None:
    scripted_run(tmp_path, ["jsonl", "csv"])
    assert read_jsonl(tmp_path / "metrics.jsonl") == expected_records()
    with (tmp_path / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:4] == ["split", "peer", "epoch", "step"]
    want = expected_records()
    assert len(rows) == len(want)
    for row, rec in zip(rows, want):
        assert {k: v for k, v in row.items() if v != ""} == {k: str(v) for k, v in rec.items()}


def test_resumed_logs_equal_uninterrupted_ones(tmp_path: Path) -> None:
    """Interrupted at step 6 (checkpoint at step 4), resumed from step 4: no duplicates, no
    gaps, every file equal to an uninterrupted run's."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    names = ["jsonl", "csv", "tensorboard"]
    scripted_run(full, names)
    scripted_run(cut, names, stop_at=6)
    assert any(r["step"] == 6 for r in read_jsonl(cut / "metrics.jsonl"))  # logged, then lost
    scripted_run(cut, names, resume_from=4)
    assert read_jsonl(cut / "metrics.jsonl") == read_jsonl(full / "metrics.jsonl")
    assert (cut / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    assert read_tensorboard(cut / "tensorboard") == read_tensorboard(full / "tensorboard")
    assert read_tensorboard(full / "tensorboard") == expected_scalars()


def read_tensorboard(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {
        tag: [(e.step, pytest.approx(e.value, abs=1e-7)) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def test_tensorboard_scalars_layout_and_hparams(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    scripted_run(tmp_path, ["tensorboard"])
    scalars = read_tensorboard(tmp_path / "tensorboard")
    assert scalars == expected_scalars()
    assert "val/top1/ensemble" in scalars and "step/grad_norm/net_b" in scalars

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    # The Custom Scalars layout (the last one written): one chart per quantity whose pattern
    # takes exactly the peers' (and the ensemble's) tags of that quantity.
    raw = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(raw)
    charts = {
        f"{cat.title}/{chart.title}": chart.multiline.tag[0]
        for cat in layout.category
        for chart in cat.chart
    }
    assert set(charts) == {t.rsplit("/", 1)[0] for t in scalars if t.count("/") == 2} | {
        "val/all_agree",
        "val/pairwise_kl",
        "test/all_agree",
        "test/pairwise_kl",
    }
    lines = [t for t in scalars if re.match(charts["train/ce"], t)]
    assert sorted(lines) == ["train/ce/net_a", "train/ce/net_b"]
    lines = [t for t in scalars if re.match(charts["val/top1"], t)]
    assert sorted(lines) == ["val/top1/ensemble", "val/top1/net_a", "val/top1/net_b"]
    # Hyperparameters: the resolved config, flattened.
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["method.update"].string_value == "simultaneous"
    assert start.hparams["seed"].number_value == 3
    texts = {t for t in acc.Tags()["tensors"] if t.startswith(("config", "summary"))}
    assert texts == {"config/text_summary", "summary/text_summary"}


def test_unknown_or_missing_logger_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'; choose from jsonl"):
        build_loggers(["tensorbord"], tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(
        ConfigError, match=r"wandb needs the 'wandb' package; pip install 'dmlkit\[wandb\]'"
    ):
        build_loggers(["csv", "wandb"], tmp_path)


def _wandb_records(run_file: Path, timeout: float = 60.0) -> list:
    """The records of a W&B offline run file, once W&B's service has written its last one
    (``run.finish()`` returns before the service has flushed the file)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _read_wandb_file(run_file)
        except Exception:  # noqa: BLE001 (a record still being written)
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_file}: no exit record after {timeout} s")
        time.sleep(0.2)


def _read_wandb_file(run_file: Path) -> list:
    """W&B's LevelDB-style log: 32 KiB blocks of records (full/first/middle/last, 7-byte
    headers) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, out, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # the rest of a block too small for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            out.append(pb.Record.FromString(parts))
            parts = b""
    return out


@pytest.mark.slow  # W&B's service process; polls up to 60 s for its file
def test_wandb_offline_run_holds_history_config_and_summary(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    scripted_run(tmp_path, ["wandb"])
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    history: dict[str, list[tuple[int, float]]] = {}
    config, summary = {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            step = items.pop("_step")
            for k, v in items.items():
                if not k.startswith("_"):
                    history.setdefault(k, []).append((step, pytest.approx(v, abs=1e-7)))
        elif kind == "run":  # the run's first record holds its config
            config |= {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "summary":
            summary |= {i.key or "/".join(i.nested_key): i.value_json for i in r.summary.update}
    assert history == expected_scalars()
    assert config["method.update"] == "simultaneous" and config["seed"] == 3
    assert json.loads(summary["test/top1/net_a"]) == pytest.approx(
        _value("test", "top1", "net_a", 8)
    )


def test_mlflow_file_store_holds_metrics_params_and_summary(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    scripted_run(tmp_path, ["mlflow"])
    from mlflow.tracking import MlflowClient

    run_id = json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    got = {
        key: sorted(
            (m.step, pytest.approx(m.value, abs=1e-7))
            for m in client.get_metric_history(run_id, key)
        )
        for key in run.data.metrics
    }
    assert got == expected_scalars()
    assert run.data.params["method.update"] == "simultaneous"
    assert run.info.status == "FINISHED"
    summary = json.loads(
        (Path(run.info.artifact_uri.removeprefix("file://")) / "summary.json").read_text()
    )
    assert summary["epochs"] == EPOCHS


def test_mlflow_resume_logs_each_step_once(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    scripted_run(tmp_path, ["mlflow"], stop_at=6)
    scripted_run(tmp_path, ["mlflow"], resume_from=4)
    from mlflow.tracking import MlflowClient

    run_id = json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    history = client.get_metric_history(run_id, "step/ce/net_a")
    assert sorted(m.step for m in history) == [2, 4, 6, 8]
