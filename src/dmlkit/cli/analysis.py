"""The ``dml`` commands that read finished runs: ``analyze`` (the paper's analysis) and
``report`` (one Markdown page).

Like :mod:`dmlkit.cli`, nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dmlkit.cli.summary import plural
from dmlkit.errors import UserError
from dmlkit.trust import printable


def add_parsers(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "analyze",
        help="the paper's analysis of finished runs: loss curves, wide minima, entropy, agreement",
    )
    a.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or grid folders")
    a.add_argument(
        "--out",
        help="write everything (runs overlaid) here (default: RUN/analysis/ per run, and the "
        "comparison of several runs in <their common parent>/analysis/)",
    )
    a.add_argument(
        "--sigmas",
        help="comma-separated weight-noise levels (default: 0,0.01,...,0.05 absolute; "
        "0,0.05,...,0.25 with --relative)",
    )
    a.add_argument(
        "--relative", action="store_true", help="noise relative to each weight tensor's std"
    )
    a.add_argument("--draws", type=int, default=5, help="noise draws per sigma (default 5)")
    a.add_argument(
        "--samples",
        type=int,
        default=1000,
        help="training images of the noise probe (default 1000; fixed, unaugmented)",
    )
    a.add_argument("--seed", type=int, default=0, help="seed of the noise draws (default 0)")
    a.add_argument("--device", default="cpu", help="where to evaluate (default cpu)")

    rep = sub.add_parser("report", help="one Markdown page for an experiment's runs")
    rep.add_argument(
        "runs", nargs="+", metavar="RUN_DIR|GRID_DIR", help="run directories or grid folders"
    )
    rep.add_argument("--out", help="the page (.md; default: DIR/report.md for a single DIR)")
    rep.add_argument("--title", help="page title")
    rep.add_argument(
        "--analysis", metavar="DIR", help="a dml analyze output (default: DIR/analysis if any)"
    )
    rep.add_argument(
        "--analyze",
        action="store_true",
        help="run dml analyze first (into --analysis, else next to the page)",
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    from dmlkit.analysis.analyze import AnalysisOptions, analyze

    try:
        sigmas = [float(s) for s in args.sigmas.split(",")] if args.sigmas else None
    except ValueError:
        raise UserError(f"--sigmas {args.sigmas!r}: give numbers separated by commas") from None
    options = AnalysisOptions(
        sigmas=sigmas,
        relative=args.relative,
        draws=args.draws,
        probe_samples=args.samples,
        seed=args.seed,
        device=args.device,
        trust_code=args.trust_code,
    )
    result = analyze(args.runs, args.out, options, log=lambda line: print(printable(line)))
    n, seconds = len(result["runs"]), result["seconds"]
    print(f"analysis of {plural(n, 'run')} in {seconds:.0f} s -> {result['out']}")
    text = (result["out"] / "summary.md").read_text(encoding="utf-8")
    print("\n".join(printable(line) for line in text.splitlines()))  # peer names from files
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dmlkit.analysis.analyze import AnalysisOptions, analyze
    from dmlkit.analysis.report import write_report

    if args.out:
        out = Path(args.out)
    elif len(args.runs) == 1:
        out = Path(args.runs[0]) / "report.md"
    else:
        raise UserError("several folders given: name the page with --out report.md")
    analysis = Path(args.analysis) if args.analysis else None
    if args.analyze:
        analysis = analysis or out.parent / f"{out.stem}_analysis"
        analyze(args.runs, analysis, AnalysisOptions(trust_code=args.trust_code))
    write_report(
        args.runs,
        out,
        title=args.title,
        analysis_dir=analysis,
        commands=[shlex.join(["dml", *sys.argv[1:]])] if Path(sys.argv[0]).name == "dml" else [],
    )
    print(f"report: {out}")
    return 0
