"""Finding run directories and reading what the reports need of them.

A run is a folder with ``config.yaml`` (``dml train`` / ``dml reproduce`` output). Runs are
compared by *label*: the arm of a grid (``GRID/<arm>/seed<N>`` -> ``<arm>``), else the run
directory's name; :class:`SeedGroup` holds the runs whose configs differ only by seed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlkit.config import flatten
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError

_SEED_DIR = re.compile(r"^seed\d+$")
# Config keys that do not change what a run computes, or that differ between seeds by design.
IGNORED_KEYS = ("seed", "train.progress", "train.device", "train.threads", "method.teacher")


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories: each path is a run (has ``config.yaml``) or a folder holding runs.

    Raises:
        UserError: a path does not exist or holds no run.
    """
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such run or grid directory")
        if (path / "config.yaml").is_file():
            found = [path]
        else:
            found = sorted(
                p.parent
                for p in path.rglob("config.yaml")
                if (p.parent / "metrics.jsonl").is_file() and "analysis" not in p.parts
            )
        if not found:
            raise UserError(
                f"{path}: holds no run directory (no config.yaml + metrics.jsonl under it); "
                f"give a folder written by dml train or dml reproduce"
            )
        runs += [p for p in found if p not in runs]
    return runs


def run_label(path: Path) -> str:
    """The arm of a grid run (``GRID/<arm>/seed<N>`` -> ``<arm>``), else the folder's name."""
    path = Path(path)
    return path.parent.name if _SEED_DIR.match(path.name) else path.name


def order_labels(labels: Iterable[str], methods: dict[str, str]) -> list[str]:
    """Labels in order of appearance, the independent baseline(s) first."""
    seen = list(dict.fromkeys(labels))
    return sorted(seen, key=lambda lab: (methods.get(lab) != "independent", seen.index(lab)))


@dataclass
class RunInfo:
    """What the report needs of one run directory."""

    path: Path
    label: str
    seed: int
    method: str
    flat: dict[str, Any]  # flattened config
    summary: dict[str, Any] | None
    env: dict[str, Any]
    started: float | None  # mtime of env.json (written when the run starts)
    finished: float | None  # mtime of summary.json
    train_seconds: float  # sum of the logged per-epoch times

    def metric(self, member: str, key: str) -> float | None:
        """Test metric ``key`` of a peer or the ensemble, in percent, or None."""
        if self.summary is None:
            return None
        if member == ENSEMBLE:
            m = self.summary[ENSEMBLE]["metrics"]
        else:
            found = [p["metrics"] for p in self.summary["peers"] if p["name"] == member]
            if not found:
                return None
            m = found[0]
        v = m.get(key)
        return None if v is None else 100.0 * float(v)

    @property
    def members(self) -> list[str]:
        if self.summary is None:
            return []
        return [p["name"] for p in self.summary["peers"]] + [ENSEMBLE]


def flatten_config(d: dict[str, Any]) -> dict[str, Any]:
    """:func:`dmlkit.config.flatten`, with the peers list said in one short text."""
    flat = flatten(d)
    return {
        k: _peers_text(v) if k.rpartition(".")[2] == "peers" and isinstance(v, list) else v
        for k, v in flat.items()
    }


def _peers_text(peers: list[dict[str, Any]]) -> str:
    """``small_cnn x3`` / ``small_cnn(width=16), mlp`` (seeds left out: they follow the run)."""
    parts = []
    for p in peers:
        extra = {**p.get("kwargs", {}), **{f"optim.{k}": v for k, v in p.get("optim", {}).items()}}
        text = p["arch"] + (
            "(" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")" if extra else ""
        )
        parts.append(text)
    if len(set(parts)) == 1:
        return f"{parts[0]} x{len(parts)}"
    return ", ".join(parts)


def load_run_info(path: Path) -> RunInfo:
    run = RunDir(path)
    cfg = run.load_config()
    summary = run.read_summary() if run.is_finished() else None
    env_path = run.path / "env.json"
    env = run.read_json("env.json") if env_path.is_file() else {}
    seconds = sum(
        float(r.get("seconds", 0.0))
        for r in run.read_metrics()
        if r.get("split") == "train" and r.get("peer") == cfg.peer_name(0)
    )
    return RunInfo(
        path=run.path,
        label=run_label(run.path),
        seed=cfg.seed,
        method=cfg.method.name,
        flat=flatten_config(cfg.to_dict()),
        summary=summary,
        env=env,
        started=env_path.stat().st_mtime if env_path.is_file() else None,
        finished=run.summary_path.stat().st_mtime if summary is not None else None,
        train_seconds=seconds,
    )


@dataclass
class SeedGroup:
    """Runs whose configs differ only by seed: one arm of a grid, its seeds."""

    label: str
    runs: list[RunInfo]

    @property
    def key(self) -> dict[str, Any]:
        return {k: v for k, v in self.runs[0].flat.items() if k not in IGNORED_KEYS}

    @property
    def method(self) -> str:
        return self.runs[0].method

    def by_seed(self) -> dict[int, RunInfo]:
        return {r.seed: r for r in self.runs}


def group_runs(runs: list[RunInfo]) -> list[SeedGroup]:
    """Group runs that differ only by seed; labels from the arm names, made unique if needed."""
    groups: list[SeedGroup] = []
    for r in runs:
        key = {k: v for k, v in r.flat.items() if k not in IGNORED_KEYS}
        for g in groups:
            if g.key == key:
                g.runs.append(r)
                break
        else:
            groups.append(SeedGroup(r.label, [r]))
    labels = [g.label for g in groups]
    for g in groups:
        if labels.count(g.label) > 1 or len({r.label for r in g.runs}) > 1:
            g.label = f"{g.method} ({len(g.runs)} runs from {g.runs[0].path.parent})"
    order = order_labels([g.label for g in groups], {g.label: g.method for g in groups})
    return sorted(groups, key=lambda g: order.index(g.label))


def baseline_of(group: SeedGroup, groups: list[SeedGroup]) -> SeedGroup | None:
    """The independent group whose config differs from ``group``'s only in ``method.*`` keys."""
    if group.method == "independent":
        return None
    for other in groups:
        if other.method != "independent":
            continue
        a, b = group.key, other.key
        diff = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
        if all(k.startswith("method.") for k in diff):
            return other
    return None
