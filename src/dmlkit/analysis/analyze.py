"""``dml analyze``: the paper's three measurements on finished runs, as CSV, PNG and Markdown.

For each run directory: training-loss curves (from ``metrics.jsonl``), the wide-minima probe
(weight noise), posterior entropy (train and test) and peer agreement (test and train). Several
runs are compared by *label*: the arm of a grid (``GRID/<arm>/seed<N>`` -> ``<arm>``), else the
run directory's name; runs sharing a label are aggregated (mean ± std over seeds).

Outputs (``OUT/``): ``curves.csv``, ``noise.csv``, ``entropy.csv``, ``agreement.csv``,
``units.csv``, ``loss_curves.png``, ``noise.png``, ``entropy.png``, ``agreement.png``,
``summary.md`` (the tables) and ``analysis.json`` (every number, read back by ``dml report``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dmlkit.analysis.measure import (
    DEFAULT_RELATIVE_SIGMAS,
    DEFAULT_SIGMAS,
    AnalysisOptions,
    analyze_run,
)
from dmlkit.analysis.outputs import write_outputs
from dmlkit.analysis.runs import find_runs, order_labels, run_label
from dmlkit.analysis.tables import ArmAnalyses, summary_tables
from dmlkit.config import load_yaml
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.outputs import check_out_folder
from dmlkit.trust import check_config

# The pieces live in measure (one run), tables (Markdown), outputs (files) and runs (finding
# runs); importing them from here keeps `dmlkit.analysis.analyze` the one entry point.
__all__ = [
    "DEFAULT_RELATIVE_SIGMAS",
    "DEFAULT_SIGMAS",
    "AnalysisOptions",
    "ArmAnalyses",
    "analyze",
    "analyze_run",
    "collapse_hints",
    "length_note",
    "find_runs",
    "order_labels",
    "run_label",
    "summary_tables",
    "write_outputs",
]


def analyze(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    options: AnalysisOptions | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Analyse run directories (or folders of runs) and write the outputs.

    With ``out``: everything (every run, overlaid) goes there. Without: each run's own files go
    to ``RUN/analysis/``, and when several runs are given the comparison goes to
    ``<their common parent>/analysis/``.

    Returns:
        ``{"runs": [per-run results], "out": Path of the comparison (or the single run's)
        folder, "files": [written paths], "seconds": wall time}``.
    """
    start = time.perf_counter()
    options = options or AnalysisOptions()
    options.validate()
    runs = find_runs(paths)
    for run in runs:  # every run's saved config before any work: no run names code to import
        check_config(load_yaml(run / "config.yaml"), str(run), options.trust_code)
    if out is not None:  # where the outputs go, checked before minutes of measuring
        _check_out_folder(Path(out), "--out")
    else:
        common = [_common_parent(runs) / "analysis"] if len(runs) > 1 else []
        for folder in [*(r / "analysis" for r in runs), *common]:
            _check_out_folder(folder, "the analysis folder")
    results = [analyze_run(p, options, log=log) for p in runs]
    for hint in collapse_hints(results):
        log(hint)
    note = length_note(results)
    if note:
        log(note)
    files: list[Path] = []
    if out is not None:
        target = Path(out)
    else:
        for r, p in zip(results, runs):
            files += write_outputs([r], p / "analysis")
        target = _common_parent(runs) / "analysis" if len(runs) > 1 else runs[0] / "analysis"
    if out is not None or len(runs) > 1:
        files += write_outputs(results, target)
    seconds = time.perf_counter() - start
    meta = {"options": asdict(options), "seconds": seconds, "runs": [str(p) for p in runs]}
    atomic_write_text(target / "options.json", json.dumps(meta, indent=1))
    return {"runs": results, "out": target, "files": files, "seconds": seconds}


def collapse_hints(results: list[dict[str, Any]]) -> list[str]:
    """One line per peer that looks collapsed, with what to change.

    A peer is flagged when at least half of its ReLU units never fire on the probe images, or
    when its last-epoch training cross-entropy is still above 90 % of ``log C`` (chance).
    """
    hints = []
    for r in results:
        chance = math.log(r["num_classes"])
        for peer in r["peers"]:
            dead = r.get("dead_units", {}).get(peer, float("nan"))
            ce = r["curves"].get(peer, {}).get("ce") or [float("nan")]
            if dead >= 0.5 or ce[-1] > 0.9 * chance:
                fix = (
                    "lower optim.lr or warm the mimicry up (method.mimicry_rampup=5)"
                    if r["method"] in ("dml", "dml_e")
                    else "lower optim.lr"
                )
                units = "" if math.isnan(dead) else f"{100 * dead:.0f} % dead ReLU units, "
                hints.append(
                    f"hint: {peer} of {r['path']} looks collapsed ({units}final training CE "
                    f"{ce[-1]:.2f} vs chance {chance:.2f}); {fix}"
                )
    return hints


def length_note(results: list[dict[str, Any]]) -> str | None:
    """One line when the runs compared trained for different numbers of epochs, else None.

    A 3-epoch run beside a 5-epoch one is not a like-for-like comparison: say so rather than
    overlay their curves and tabulate their scores without a word.
    """
    by_length: dict[int, list[str]] = {}
    for r in results:
        epochs = [c["epoch"][-1] for c in r["curves"].values() if c.get("epoch")]
        if epochs:
            by_length.setdefault(max(epochs), []).append(str(r["path"]))
    if len(by_length) < 2:
        return None

    def runs(paths: list[str]) -> str:
        return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")

    parts = [f"{n} epochs: {runs(paths)}" for n, paths in sorted(by_length.items(), reverse=True)]
    return (
        f"note: these runs trained for different numbers of epochs ({'; '.join(parts)}): "
        f"their curves and scores are not a like-for-like comparison"
    )


def _check_out_folder(folder: Path, what: str) -> None:
    """``folder`` is (or can be made) a writable folder: one line otherwise, before any work."""
    check_out_folder(
        folder, what, reason="is read-only or not a folder", fix="give a writable --out"
    )


def _common_parent(paths: list[Path]) -> Path:
    parts = [p.resolve().parts for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path(".")
