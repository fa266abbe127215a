"""Experiments: a grid of runs (arms x seeds), run in order, and the report they produce.

``dml reproduce NAME`` runs one. Every run goes to ``OUT/<arm>/seed<S>``; a finished run with the
same config is reused and an interrupted one resumed, so a grid stopped half-way continues
where it stopped. An arm may refer to the run directory of an earlier arm of the same seed with
the string ``"{run:ARM}"`` (e.g. a kd student naming its teacher).

``--scale F`` shrinks a grid for a smoke run: epochs, iterations and schedule steps times F, and
a stratified fraction F of every data split (``data.fraction``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlkit.analysis.stats import csv_text, mean_std
from dmlkit.config import Config, build_config, config_differences, merge_dicts
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.engine.lock import FolderLock
from dmlkit.engine.persistence import RESUMABLE_CHANGES
from dmlkit.engine.rundir import RunDir
from dmlkit.engine.trainer import Trainer
from dmlkit.errors import UserError
from dmlkit.experiments.launch import Cell, LaunchOptions, preflight, result_line
from dmlkit.experiments.schedule import run_cells
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
        first_seed: the grid runs seeds first_seed, first_seed + 1, ... (a search on seeds that
            the final runs do not reuse).
    """

    name: str
    description: str
    base: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    baseline: str = "independent"
    seeds: int = 3
    first_seed: int = 0
    needs_data_root: bool = False
    # report(exp, results, out, scale) -> Markdown printed at the end; writes files under out.
    report: Callable[[Experiment, list[RunResult], Path, float], str] | None = None
    notes: list[str] = field(default_factory=list)


EXPERIMENTS: Registry = Registry("experiment", "dml reproduce NAME")


def register_experiment(exp: Experiment) -> Experiment:
    EXPERIMENTS.register(exp.name)(exp)
    return exp


@dataclass
class RunResult:
    arm: str
    seed: int
    path: Path
    summary: dict[str, Any]


def scale_config(data: dict[str, Any], scale: float) -> dict[str, Any]:
    """Shrink a config dict for a smoke run: epochs, iterations, LR steps and data by ``scale``."""
    if scale == 1.0:
        return data
    data = merge_dicts(data, {})
    train, optim = dict(data["train"]), dict(data["optim"])
    train["epochs"] = max(1, round(train["epochs"] * scale))
    if train.get("iterations"):
        train["iterations"] = max(1, round(train["iterations"] * scale))
    train["eval_every"] = max(1, round(train["eval_every"] * scale))
    optim["step_size"] = max(optim["step_size"] * scale, 1e-3)
    optim["milestones"] = [m * scale for m in optim.get("milestones", [])]
    data["train"], data["optim"] = train, optim
    data["data"] = merge_dicts(data["data"], {"fraction": data["data"]["fraction"] * scale})
    for peer in data.get("peers", []):
        if isinstance(peer, dict) and peer.get("optim"):
            po = dict(peer["optim"])
            if "step_size" in po:
                po["step_size"] = max(po["step_size"] * scale, 1e-3)
            if "milestones" in po:
                po["milestones"] = [m * scale for m in po["milestones"]]
            peer["optim"] = po
    return data


def _substitute_runs(value: Any, out: Path, seed: int) -> Any:
    """Replace ``"{run:ARM}"`` strings by the run directory of that arm for this seed."""
    if isinstance(value, str) and value.startswith("{run:") and value.endswith("}"):
        return str(out / value[5:-1] / f"seed{seed}")
    if isinstance(value, dict):
        return {k: _substitute_runs(v, out, seed) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_runs(v, out, seed) for v in value]
    return value


def arm_config(
    exp: Experiment,
    arm: str,
    seed: int,
    overrides: list[str],
    *,
    out: Path = Path("."),
    scale: float = 1.0,
) -> Config:
    """The resolved config of one run of the grid: defaults < base < arm < scale < overrides."""
    data = merge_dicts(Config().to_dict(), exp.base)
    data = merge_dicts(merge_dicts(data, exp.arms[arm]), {"seed": seed})
    data = scale_config(_substitute_runs(data, out, seed), scale)
    return build_config(data, overrides=overrides)


def run_experiment(
    exp: Experiment,
    out: str | Path,
    *,
    seeds: int | None = None,
    overrides: list[str] | None = None,
    scale: float = 1.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    launch: LaunchOptions | None = None,
) -> list[RunResult]:
    """Train every arm for every seed (reusing finished runs) and return their summaries.

    Args:
        launch: where the cells run (``--jobs``, ``--launcher``); default: one after another in
            this process. The results (and so the tables) do not depend on it: each cell is the
            same deterministic run wherever it trains, at the same ``train.threads``.

    Raises:
        CellsFailed: (launched cells only) some cells failed; the others are finished and kept.
    """
    out = Path(out)
    n_seeds = seeds if seeds is not None else exp.seeds
    overrides = [*(overrides or []), f"train.progress={str(progress).lower()}"]
    launch = launch or LaunchOptions()
    preflight(out, launch)
    with FolderLock(out, f"--out {out}"):  # one grid process per folder (each run locks too)
        # every config is built (and checked) before any cell starts
        cells = plan_cells(exp, out, n_seeds, overrides, scale)
        for cell in cells:
            if cell.summary is not None:
                log(f"[{cell.name}] reused finished run {cell.path}")
        if launch.in_process:
            return _run_in_process(cells, log)
        summaries = run_cells(cells, out, launch, log)
        return [RunResult(c.arm, c.seed, c.path, summaries[c.key]) for c in cells]


def _needed_arms(value: Any) -> list[str]:
    """The arms a config refers to with ``"{run:ARM}"`` (a kd student's teacher)."""
    if isinstance(value, str) and value.startswith("{run:") and value.endswith("}"):
        return [value[5:-1]]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _needed_arms(v)]
    if isinstance(value, list):
        return [a for v in value for a in _needed_arms(v)]
    return []


def plan_cells(
    exp: Experiment, out: Path, n_seeds: int, overrides: list[str], scale: float
) -> list[Cell]:
    """Every cell of the grid in its sequential order (seed-major), finished ones with summaries.

    Raises:
        UserError: a cell's folder holds a run of another config (nothing is started).
    """
    cells = []
    for seed in range(exp.first_seed, exp.first_seed + n_seeds):
        for arm in exp.arms:
            cfg = arm_config(exp, arm, seed, overrides, out=out, scale=scale)
            # a referenced arm outside the grid (dml reproduce --arms) is read as it is on disk
            named = _needed_arms(merge_dicts(exp.base, exp.arms[arm]))
            needs = tuple((a, seed) for a in named if a in exp.arms)
            cell = Cell(arm, seed, cfg, out / arm / f"seed{seed}", needs)
            run = RunDir(cell.path)
            if run.config_path.is_file():
                diff = config_differences(run.load_config(), cfg)
                # what may change on resume, except the length (a finished run is reused)
                diff = [
                    d
                    for d in diff
                    if d not in RESUMABLE_CHANGES or d in ("train.epochs", "train.iterations")
                ]
                if diff:
                    raise UserError(
                        f"{run.path} holds a run with another config ({', '.join(diff)}); "
                        f"use another --out or remove that folder"
                    )
                if run.is_finished():
                    cell.summary = run.read_summary()
            cells.append(cell)
    return cells


def _run_in_process(cells: list[Cell], log: Callable[[str], None]) -> list[RunResult]:
    """``--jobs 1``: the cells one after another in this process (the sequential order)."""
    results = []
    for cell in cells:
        summary = cell.summary
        if summary is None:
            run = RunDir(cell.path)
            resume = run.config_path.is_file()
            trainer = Trainer(cell.config, run.path, resume=resume, desc=cell.name)
            summary = trainer.fit()
            log(f"[{cell.name}] {result_line(summary)}")
        results.append(RunResult(cell.arm, cell.seed, cell.path, summary))
    return results


# ------------------------------------------------------------------------------------------------
# the comparison table


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


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: ``header``, the rule under it, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def format_table(exp: Experiment, rows: list[dict[str, Any]], n_seeds: int) -> str:
    """A Markdown table: test top-1 % (mean ± std over seeds) per arm and the paired gain."""
    arms = list(exp.arms)
    gains = [a for a in arms if a != exp.baseline]
    header = ["peer", *arms, *[f"gain {a} − {exp.baseline}" for a in gains]]
    cells = [
        [row["peer"], *[mean_std(row[a]) for a in arms]]
        + [mean_std(row[f"gain_{a}"], signed=True) for a in gains]
        for row in rows
    ]
    lines = [f"Test top-1 % over {n_seeds} seed(s), mean ± std; gain paired by seed.", ""]
    return "\n".join(lines + markdown_table(header, cells))


def comparison_report(exp: Experiment, results: list[RunResult], out: Path, scale: float) -> str:
    """The default report: every arm vs the baseline, per peer and for the ensemble."""
    rows = comparison_rows(exp, results)
    table = format_table(exp, rows, len({r.seed for r in results}))
    if scale != 1.0:
        table = f"Smoke run at --scale {scale:g} (epochs and data x {scale:g}).\n\n{table}"
    write_results(exp, rows, out, table)
    return table


def write_results(exp: Experiment, rows: list[dict[str, Any]], out: Path, table: str) -> None:
    """results.md (the table) and results.csv (every per-seed value) under ``out``."""
    csv_rows = [
        [row["peer"], row["arch"], arm, i, f"{v:.4f}"]
        for row in rows
        for arm in exp.arms
        for i, v in enumerate(row[arm])
    ]
    header = ["peer", "arch", "arm", "seed", "top1_percent"]
    write_results_files(exp, out, table, header, csv_rows)


def write_results_files(
    exp: Experiment,
    out: Path,
    markdown: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """The files of every experiment's report under ``out``: ``results.md`` (a title, then
    ``markdown``) and ``results.csv`` (``header``, then ``rows``)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", f"# {exp.name}: {exp.description}\n\n{markdown}\n")
    atomic_write_text(out / "results.csv", csv_text(header, rows))
