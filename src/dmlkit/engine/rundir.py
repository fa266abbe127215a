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
import warnings
from pathlib import Path
from typing import Any

import torch

from dmlkit.config import Config, config_differences, config_from_dict, load_yaml, save_config
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.faults import maybe_enospc
from dmlkit.errors import UserError, first_line
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

    def read_json(self, name: str) -> dict[str, Any]:
        """``summary.json``, ``env.json``...: a dict, or one line naming the damaged file."""
        path = self.path / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError
            raise UserError(
                f"{path}: unreadable ({first_line(exc, 80)}); the file is damaged: delete it "
                f"(a summary is rewritten by dml train --resume {self.path})"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a JSON object; the file is damaged, delete it")
        return data

    def read_summary(self) -> dict[str, Any]:
        return self.read_json("summary.json")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl; a line that is not a record is skipped.

        The last line may be cut by a crash mid-write (skipped silently); any other damaged
        line is skipped with a warning, so that no reader fails on a hand-edited file.
        """
        if not self.metrics_path.is_file():
            return []
        out = []
        lines = self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and {"epoch", "split", "peer"} <= rec.keys():
                out.append(rec)
            elif i != len(lines) - 1:
                warnings.warn(
                    f"{self.metrics_path}: line {i + 1} is not a record; skipped", stacklevel=2
                )
        return out

    def write_summary(self, summary: dict[str, Any]) -> None:
        maybe_enospc("enospc-in-summary", summary.get("epochs", -1))
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2))


class FollowerRunDir(RunDir):
    """The run directory as ranks other than 0 of a ``torchrun`` job see it: never written."""

    def create(self, cfg: Any, device: torch.device) -> None:
        pass

    def update_config(self, cfg: Any) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass


def run_dir_for(is_main: bool, path: str | Path) -> RunDir:
    """Rank 0's run directory writes; the other ranks' do not (``is_main``: this is rank 0)."""
    return RunDir(path) if is_main else FollowerRunDir(path)
