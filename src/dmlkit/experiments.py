"""Named experiments: a grid of runs (arms x seeds) and the comparison table they produce.

``dml reproduce NAME`` runs one. Every run goes to ``OUT/<arm>/seed<S>``; a finished run with the
same config is reused and an interrupted one resumed, so a grid stopped half-way continues
where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlkit.config import Config, apply_override, config_from_dict, merge_dicts
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.engine.rundir import RunDir
from dmlkit.engine.trainer import Trainer, config_differences
from dmlkit.errors import UserError
from dmlkit.registry import Registry


@dataclass
class Experiment:
    """Arms compared under identical seeds and data order.

    Attributes:
        name: what ``dml reproduce`` calls it.
        description: one line.
        base: config (as a dict) shared by every arm.
        arms: arm name -> the config changes of that arm (a dict merged into ``base``).
        baseline: the arm the others are compared to.
        seeds: default number of seeds.
    """

    name: str
    description: str
    base: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    baseline: str = "independent"
    seeds: int = 3
    notes: list[str] = field(default_factory=list)


EXPERIMENTS: Registry = Registry("experiment", "dml reproduce NAME")


def _register(exp: Experiment) -> None:
    EXPERIMENTS.register(exp.name)(exp)


# The embedded default: the config defaults (dmlkit.config) are this recipe: the bundled digits,
# two small CNNs, 30 epochs of SGD + Nesterov, cosine LR from 0.05, weight decay 5e-4, batch 64,
# random 1-pixel shifts; 1,211 training images (val 136, test 450). Both arms share every seed
# (initialisation and data order), so the gain is paired.
_register(
    Experiment(
        name="digits",
        description="bundled digits: two small CNNs, independent vs DML (the default run)",
        base={},
        arms={
            "independent": {"method": {"name": "independent"}},
            "dml": {"method": {"name": "dml", "update": "simultaneous"}},
        },
        seeds=3,
    )
)


@dataclass
class RunResult:
    arm: str
    seed: int
    path: Path
    summary: dict[str, Any]


def arm_config(exp: Experiment, arm: str, seed: int, overrides: list[str]) -> Config:
    data = merge_dicts(Config().to_dict(), exp.base)
    data = merge_dicts(merge_dicts(data, exp.arms[arm]), {"seed": seed})
    for assignment in overrides:
        data = apply_override(data, assignment)
    return config_from_dict(data)


def run_experiment(
    exp: Experiment,
    out: str | Path,
    *,
    seeds: int | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[RunResult]:
    """Train every arm for every seed (reusing finished runs) and return their summaries."""
    out = Path(out)
    n_seeds = seeds if seeds is not None else exp.seeds
    overrides = [*(overrides or []), f"train.progress={str(progress).lower()}"]
    results = []
    for seed in range(n_seeds):
        for arm in exp.arms:
            cfg = arm_config(exp, arm, seed, overrides)
            run = RunDir(out / arm / f"seed{seed}")
            resume = False
            if run.config_path.is_file():
                diff = config_differences(run.load_config(), cfg)
                diff = [d for d in diff if d != "train.progress"]
                if diff:
                    raise UserError(
                        f"{run.path} holds a run with another config ({', '.join(diff)}); "
                        f"use another --out or remove that folder"
                    )
                if run.is_finished():
                    summary = json.loads(run.summary_path.read_text())
                    log(f"[{arm} seed {seed}] reused finished run {run.path}")
                    results.append(RunResult(arm, seed, run.path, summary))
                    continue
                resume = True
            trainer = Trainer(cfg, run.path, resume=resume, desc=f"{arm} seed {seed}")
            summary = trainer.fit()
            top1 = ", ".join(f"{100 * p['metrics']['top1']:.2f}" for p in summary["peers"])
            log(f"[{arm} seed {seed}] test top-1 per peer: {top1}")
            results.append(RunResult(arm, seed, run.path, summary))
    return results


# ------------------------------------------------------------------------------------------------
# the comparison table


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def comparison_rows(exp: Experiment, results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per peer (and the ensemble): top-1 % per arm over seeds, paired gain vs baseline.

    Returns:
        Rows ``{"peer": name, "arch": ..., "<arm>": [per-seed top-1 %], "gain_<arm>": [...]}``.
    """
    by: dict[tuple[str, int], dict[str, Any]] = {(r.arm, r.seed): r.summary for r in results}
    seeds = sorted({r.seed for r in results})
    first = next(iter(by.values()))
    members = [(p["name"], p["arch"]) for p in first["peers"]] + [(ENSEMBLE, "")]
    rows = []
    for name, arch in members:
        row: dict[str, Any] = {"peer": name, "arch": arch}
        for arm in exp.arms:
            row[arm] = [_top1(by[(arm, s)], name) for s in seeds if (arm, s) in by]
        for arm in exp.arms:
            if arm == exp.baseline:
                continue
            row[f"gain_{arm}"] = [
                _top1(by[(arm, s)], name) - _top1(by[(exp.baseline, s)], name)
                for s in seeds
                if (arm, s) in by and (exp.baseline, s) in by
            ]
        rows.append(row)
    return rows


def _top1(summary: dict[str, Any], member: str) -> float:
    if member == ENSEMBLE:
        return 100 * summary[ENSEMBLE]["metrics"]["top1"]
    for p in summary["peers"]:
        if p["name"] == member:
            return 100 * p["metrics"]["top1"]
    raise KeyError(member)


def format_table(exp: Experiment, rows: list[dict[str, Any]], n_seeds: int) -> str:
    """A Markdown table: test top-1 % (mean ± std over seeds) per arm and the paired gain."""
    arms = list(exp.arms)
    gains = [a for a in arms if a != exp.baseline]
    header = ["peer", *arms, *[f"gain {a} − {exp.baseline}" for a in gains]]
    lines = [
        f"Test top-1 % over {n_seeds} seed(s), mean ± std; gain paired by seed.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        cells = [row["peer"], *[_mean_std(row[a]) for a in arms]]
        cells += [_signed(row[f"gain_{a}"]) for a in gains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _signed(values: list[float]) -> str:
    s = _mean_std(values)
    return s if s.startswith("-") else "+" + s


def write_results(exp: Experiment, rows: list[dict[str, Any]], out: Path, table: str) -> None:
    """results.md (the table) and results.csv (every per-seed value) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", f"# {exp.name}: {exp.description}\n\n{table}\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["peer", "arch", "arm", "seed", "top1_percent"])
    for row in rows:
        for arm in exp.arms:
            for i, v in enumerate(row[arm]):
                writer.writerow([row["peer"], row["arch"], arm, i, f"{v:.4f}"])
    atomic_write_text(out / "results.csv", buf.getvalue())
