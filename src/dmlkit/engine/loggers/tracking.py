"""Experiment trackers: Weights & Biases and MLflow (optional extras, offline by default).

Both log the same tags as TensorBoard (``SPLIT/QUANTITY/PEER`` against the global step), the
resolved config as the run's parameters and the summary at the end. Neither needs the network
unless asked: W&B runs in offline mode (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it
later) unless ``WANDB_MODE`` says otherwise; MLflow writes a file store in ``RUN_DIR/mlruns``
unless ``MLFLOW_TRACKING_URI`` names a server.

Resume continues the same tracker run (its id is kept in the run directory). MLflow skips the
(tag, step) points it already holds, so its history has each step once; W&B's offline files
cannot be read back, so the steps between the checkpoint and the interruption are logged again
in the resumed segment (with the same values on the CPU, deterministic runs).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from dmlkit.engine.callbacks import Record, RunContext
from dmlkit.engine.loggers.files import RecordLogger
from dmlkit.engine.loggers.tensorboard import SKIPPED_KEYS, flat_hparams, tag_of


def _points(records: list[Record]) -> dict[int, dict[str, float]]:
    """``{step: {tag: value}}`` of the records' values."""
    out: dict[int, dict[str, float]] = {}
    for r in records:
        for key, value in r.items():
            if key not in SKIPPED_KEYS and isinstance(value, int | float):
                out.setdefault(int(r["step"]), {})[tag_of(r, key)] = float(value)
    return out


def _summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    out = {
        f"test/{k}/{p['name']}": v
        for p in summary.get("peers", [])
        for k, v in p["metrics"].items()
    }
    out.update(
        {f"test/{k}/ensemble": v for k, v in summary.get("ensemble", {}).get("metrics", {}).items()}
    )
    return out


class WandbLogger(RecordLogger):
    """Weights & Biases (``pip install 'dmlkit[wandb]'``), offline unless ``WANDB_MODE`` is set.

    Args:
        run_dir: the run directory; W&B writes ``run_dir/wandb/``.
        project: the W&B project.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``; default ``WANDB_MODE`` or offline.
    """

    def __init__(
        self, run_dir: str | Path, project: str = "dmlkit", mode: str | None = None
    ) -> None:
        import wandb  # an optional extra

        self._wandb = wandb
        self.run_dir = Path(run_dir)
        self.project = project
        self.mode = mode or os.environ.get("WANDB_MODE", "offline")
        self.run: Any = None

    def on_fit_start(self, run: RunContext) -> None:
        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if run.resumed and id_file.is_file() else None
        self.run = self._wandb.init(
            project=self.project,
            dir=str(self.run_dir),
            name=self.run_dir.name,
            id=run_id,
            resume="allow" if run_id else None,
            mode=self.mode,
            config=flat_hparams(run.config),
            settings=self._wandb.Settings(silent=True, console="off"),
        )
        id_file.write_text(self.run.id + "\n")

    def write(self, run: RunContext, records: list[Record]) -> None:
        for step, values in sorted(_points(records).items()):
            self.run.log(values, step=step)

    def on_fit_end(self, run: RunContext, summary: dict[str, Any]) -> None:
        for key, value in _summary_metrics(summary).items():
            self.run.summary[key] = value
        self.run.summary["epochs"] = summary.get("epochs")
        self.run.finish()


class MLflowLogger(RecordLogger):
    """MLflow (``pip install 'dmlkit[mlflow]'``): a file store in ``RUN_DIR/mlruns`` by default.

    Args:
        run_dir: the run directory.
        tracking_uri: where to log; default ``MLFLOW_TRACKING_URI`` or ``RUN_DIR/mlruns``.
        experiment: the MLflow experiment's name.
    """

    def __init__(
        self, run_dir: str | Path, tracking_uri: str | None = None, experiment: str = "dmlkit"
    ) -> None:
        from mlflow.tracking import MlflowClient  # an optional extra

        self.run_dir = Path(run_dir)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            uri = (self.run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store but asks for this opt-in; it is what works offline.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client_cls, self.uri = MlflowClient, uri
        self.client: Any = None  # made at fit start: the store is created only for a real run
        self.experiment = experiment
        self.run_id: str | None = None
        self.logged: set[tuple[str, int]] = set()  # (tag, step) already in the store

    def on_fit_start(self, run: RunContext) -> None:
        self.client = self._client_cls(tracking_uri=self.uri)
        id_file = self.run_dir / "mlflow_run.json"
        if run.resumed and id_file.is_file():
            self.run_id = json.loads(id_file.read_text())["run_id"]
            data = self.client.get_run(self.run_id).data
            for key in data.metrics:
                for m in self.client.get_metric_history(self.run_id, key):
                    self.logged.add((key, m.step))
            return
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(exp_id, run_name=self.run_dir.name).info.run_id
        id_file.write_text(json.dumps({"run_id": self.run_id}) + "\n")
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flat_hparams(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def write(self, run: RunContext, records: list[Record]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for step, values in _points(records).items():
            for tag, value in values.items():
                if (tag, step) not in self.logged:
                    metrics.append(Metric(tag, value, now, step))
                    self.logged.add((tag, step))
        for i in range(0, len(metrics), 1000):  # the store's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def on_fit_end(self, run: RunContext, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id)
