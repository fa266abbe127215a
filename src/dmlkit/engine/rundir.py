"""The run directory: everything a run leaves behind.

RUN_DIR/
  config.yaml      the resolved config (defaults + file + --set)
  env.json         versions, device, git commit, command line
  metrics.jsonl    one JSON object per line: epoch, split, peer (or "ensemble"), values
  checkpoints/     epoch_NNNN.pt, last.pt
  summary.json     final test metrics per peer and of the ensemble
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dmlkit.config import Config, config_differences, config_from_dict, load_yaml, save_config
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.machine import environment


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def has_run(self) -> bool:
        return self.config_path.exists() or self.checkpoints.exists()

    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    def create(self, cfg: Config, device: torch.device) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / ".config.yaml.tmp"
        save_config(cfg, tmp)
        os.replace(tmp, self.config_path)
        atomic_write_text(self.path / "env.json", json.dumps(environment(device), indent=2))
        self.metrics_path.touch()

    def update_config(self, cfg: Config) -> None:
        """Rewrite config.yaml if ``cfg`` differs from it (a resume with a longer schedule)."""
        if config_differences(self.load_config(), cfg):
            tmp = self.path / ".config.yaml.tmp"
            save_config(cfg, tmp)
            os.replace(tmp, self.config_path)

    def load_config(self) -> Config:
        return config_from_dict(load_yaml(self.config_path))

    def log(self, records: list[dict[str, Any]]) -> None:
        """Append records to metrics.jsonl (flushed at once: a crash loses nothing logged)."""
        with self.metrics_path.open("a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
        return out

    def truncate_metrics(self, epoch: int) -> None:
        """Keep only records of epochs <= ``epoch`` (resuming from that epoch's checkpoint)."""
        kept = [
            r for r in self.read_metrics() if r.get("epoch", 0) <= epoch and r["split"] != "test"
        ]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2))


class FollowerRunDir(RunDir):
    """The run directory as ranks other than 0 of a ``torchrun`` job see it: never written."""

    def create(self, cfg: Any, device: torch.device) -> None:
        pass

    def log(self, records: list[dict[str, Any]]) -> None:
        pass

    def truncate_metrics(self, epoch: int) -> None:
        pass

    def update_config(self, cfg: Any) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass


def run_dir_for(is_main: bool, path: str | Path) -> RunDir:
    """Rank 0's run directory writes; the other ranks' do not (``is_main``: this is rank 0)."""
    return RunDir(path) if is_main else FollowerRunDir(path)
