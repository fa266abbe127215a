"""``dml report``: one Markdown page for an experiment (a grid of runs, or any runs).

The page holds: the command(s) that produced the runs, the config they share and what differs
between the arms, test metrics per peer and for the ensemble (mean ± std over seeds for runs that
differ only by seed), the paired gain of every arm over its independent baseline, the paper's
numbers beside ours where the recipe is one of the paper's, the paper's "why it works" claims
checked against this experiment's measurements (when ``dml analyze`` has run), the analysis
figures, the machine and software versions, the timing, and every run it was given.

Every number on the page is read from the run directories and the analysis files: nothing is
typed in, except the paper's published numbers (:mod:`dmlkit.paper`). The sections live in
:mod:`~dmlkit.analysis.sections` (results), :mod:`~dmlkit.analysis.claims` (the paper's
claims) and :mod:`~dmlkit.analysis.provenance` (setup, machine, timing, runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dmlkit.analysis.claims import claims_section
from dmlkit.analysis.provenance import (
    commands_section,
    config_section,
    environment_section,
    rel_path,
    runs_section,
    timing_section,
)
from dmlkit.analysis.runs import RunInfo, SeedGroup, find_runs, group_runs, load_run_info
from dmlkit.analysis.sections import metrics_section, paper_section
from dmlkit.analysis.tables import summary_tables
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.outputs import check_writable
from dmlkit.errors import UserError

# The public pieces of a page, importable from here as before the split.
__all__ = [
    "SeedGroup",
    "RunInfo",
    "claims_section",
    "default_analysis_dir",
    "group_runs",
    "load_run_info",
    "metrics_section",
    "paper_section",
    "publish_experiment",
    "write_report",
]

_FIGURES = (
    ("loss_curves.png", "Training cross-entropy per epoch and validation error"),
    ("noise.png", "Wide-minima probe: rise of the training loss under Gaussian weight noise"),
    ("entropy.png", "Mean posterior entropy of the peers"),
    ("agreement.png", "Peer agreement and pairwise KL"),
)


def default_analysis_dir(paths: Sequence[str | Path], runs: list[Path]) -> Path | None:
    """Where ``dml analyze`` put the comparison of these runs, if it did."""
    candidates = [Path(p) / "analysis" for p in paths]
    if len(runs) == 1:
        candidates.append(runs[0] / "analysis")
    for c in candidates:
        if (c / "analysis.json").is_file():
            return c
    return None


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    title: str | None = None,
    description: str | None = None,
    notes: Sequence[str] = (),
    analysis_dir: str | Path | None = None,
    commands: Sequence[str] = (),
) -> str:
    """Write the Markdown page for the runs under ``paths`` to ``out`` and return its text.

    Figures of the analysis are linked relative to the page; those not already below the page's
    folder are copied into ``<page folder>/<page stem>/``.

    Args:
        paths: run directories or folders holding runs (e.g. a ``dml reproduce`` output).
        out: the ``.md`` file to write.
        title: the page title (default: from the paths).
        description: a paragraph under the title.
        notes: further paragraphs (Markdown) after the results.
        analysis_dir: a ``dml analyze`` output of these runs (default: ``PATH/analysis`` when it
            exists).
        commands: commands to list besides the ones recorded in the runs (e.g. this report's).
    """
    # Long only by its docstring and the page's sections, listed in the order the page reads.
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise UserError(f"--out {out}: the report is Markdown; give a file name ending in .md")
    check_writable(out.parent.absolute(), "--out", shown=out)  # before any work
    run_paths = find_runs(paths)
    runs = [load_run_info(p) for p in run_paths]
    groups = group_runs(runs)
    adir = Path(analysis_dir) if analysis_dir else default_analysis_dir(paths, run_paths)
    analysis, analysis_seconds = _load_analysis(adir, run_paths)
    title = title or f"Report: {', '.join(str(p) for p in paths)}"

    parts = [f"# {title}"]
    if description:
        parts.append(description)
    parts += ["## How to reproduce", commands_section(runs, commands)]
    parts += ["## Setup", config_section(groups)]
    parts += ["## Results", metrics_section(groups)]
    paper = paper_section(groups)
    parts += ["### Beside the paper's numbers"]
    parts.append(
        paper
        if paper
        else "This recipe is not one of the paper's tables (Zhang et al. report CIFAR-100 and "
        "Market-1501), so there is no published number to set beside it; the paper's "
        "qualitative claims are checked below when the analysis has run."
    )
    if analysis and adir is not None:
        parts += _analysis_parts(analysis, groups, adir, out)
    else:
        parts.append(
            "## Why it works\n\nNo analysis found for these runs: run `dml analyze "
            + " ".join(str(p) for p in paths)
            + "` (or `dml report --analyze`) to add the loss curves, the wide-minima probe, "
            "posterior entropy and peer agreement."
        )
    parts += list(notes)
    parts += ["## Machine and software", environment_section(runs)]
    parts += ["### Timing", timing_section(runs, analysis_seconds)]
    parts += ["## Every run in this report", runs_section(runs, Path.cwd())]
    text = "\n\n".join(p.strip() for p in parts if p) + "\n"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the page ({exc.strerror or exc})") from None
    _readable(out)
    return text


def _load_analysis(
    adir: Path | None, run_paths: list[Path]
) -> tuple[list[dict[str, Any]], float | None]:
    """The ``dml analyze`` results of the given runs in ``adir`` and the seconds it took."""
    if adir is None or not (adir / "analysis.json").is_file():
        return [], None
    analysis = json.loads((adir / "analysis.json").read_text(encoding="utf-8"))["runs"]
    given = {str(p.resolve()) for p in run_paths}
    analysis = [a for a in analysis if str(Path(a["path"]).resolve()) in given]
    seconds = None
    opts = adir / "options.json"
    if opts.is_file():
        seconds = json.loads(opts.read_text(encoding="utf-8")).get("seconds")
    return analysis, seconds


# Section key -> (heading, figure file) of the analysis part of the page.
_ANALYSIS_PARTS = {
    "loss": ("### Training loss", "loss_curves.png"),
    "noise": ("### Wide minima", "noise.png"),
    "entropy": ("### Posterior entropy", "entropy.png"),
    "agreement": ("### Peer agreement", "agreement.png"),
}


def _analysis_parts(
    analysis: list[dict[str, Any]], groups: list[SeedGroup], adir: Path, out: Path
) -> list[str]:
    """The "why it works" part: the claims, then each measurement's figure and table."""
    parts = ["## Why it works: the paper's analysis, measured here"]
    claims = claims_section(analysis, groups)
    if claims:
        parts.append(claims)
    tables = summary_tables(analysis)
    figures = _place_figures(adir, out)
    for key, (heading, figure) in _ANALYSIS_PARTS.items():
        parts.append(heading)
        if figure in figures:
            parts.append(f"![{dict(_FIGURES)[figure]}]({figures[figure]})")
        parts.append(tables[key])
    parts.append(
        f"Every number above, per run and peer: `{rel_path(adir, Path.cwd())}/` (curves.csv, "
        f"noise.csv, entropy.csv, agreement.csv, units.csv, analysis.json), written by "
        f"`dml analyze` (run directories are not part of the repository: the command at the "
        f"top regenerates them)."
    )
    return parts


def _place_figures(adir: Path, out: Path) -> dict[str, str]:
    """Figure name -> link relative to the page, copying figures next to the page if needed."""
    page_dir = out.parent.resolve()
    links = {}
    for name, _ in _FIGURES:
        src = adir / name
        if not src.is_file():
            continue
        if page_dir in src.resolve().parents:
            links[name] = Path(os.path.relpath(src.resolve(), page_dir)).as_posix()
            continue
        dest_dir = out.parent / out.stem
        dest_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest_dir / name)
        _readable(dest_dir / name)
        links[name] = f"{out.stem}/{name}"
    return links


def _readable(path: Path) -> None:
    """Files of a report are for sharing: rw-r--r-- (the atomic writer creates them 0600)."""
    with contextlib.suppress(OSError):
        path.chmod(0o644)


def publish_experiment(exp: Any, results: Sequence[Any], out: Path, docs: Path) -> Path:
    """Write the report page of a ``dml reproduce`` grid to ``docs/<name>.md``.

    Args:
        exp: the :class:`~dmlkit.experiments.core.Experiment`.
        results: its :class:`~dmlkit.experiments.core.RunResult` list (the runs of this call).
        out: the grid folder (its ``analysis/`` is used when ``dml analyze`` wrote one).
        docs: the folder of the page; figures go to ``docs/<name>/``.

    Returns:
        The page's path.
    """
    import sys

    page = Path(docs) / f"{exp.name}.md"
    adir = Path(out) / "analysis"
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    write_report(
        [r.path for r in results],
        page,
        title=f"{exp.name}: {exp.description}",
        description="\n\n".join(exp.notes),
        analysis_dir=adir if (adir / "analysis.json").is_file() else None,
        commands=[shlex.join(argv)] if argv and argv[0] == "dml" else [],
    )
    return page
