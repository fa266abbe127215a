"""The ``dml`` command: train, eval, reproduce, list.

User errors (bad config, paths, data, checkpoints) print one line ``dml: error: ...`` and exit
with status 2, no traceback; a training failure (non-finite loss) exits 1; Ctrl-C exits 130
and says how to resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from dmlkit.errors import UserError

EXIT_USER_ERROR = 2


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"dml: warning: {message}\n"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped, e.g. by tests)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dml",
        description="Deep Mutual Learning: train cohorts of networks that teach each other.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a configured cohort into a run directory")
    t.add_argument("-c", "--config", help="YAML config file (default: the built-in digits cohort)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set method.update=sequential (repeatable)",
    )
    t.add_argument("--out", help="run directory to create (default: runs/<method>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")

    e = sub.add_parser("eval", help="re-evaluate a run from its last checkpoint")
    e.add_argument("run_dir", help="run directory (or a checkpoint .pt file inside one)")
    e.add_argument("--split", choices=["test", "val", "train"], default="test")
    e.add_argument("--device", default=None, help="override train.device (e.g. cpu)")

    r = sub.add_parser("reproduce", help="run a named experiment (arms x seeds) and compare")
    r.add_argument("name", nargs="?", default="digits", help="experiment (default: digits)")
    r.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (default: per experiment)"
    )
    r.add_argument("--out", help="output folder (default: runs/<name>)")
    r.add_argument("--data-root", help="dataset folder (sets data.root in every run)")
    r.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="shrink epochs and data by this factor for a smoke run (default 1: the full recipe)",
    )
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every run of the grid",
    )
    r.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    sub.add_parser("list", help="list the registered models, datasets, methods and experiments")
    return p


def _print_summary(summary: dict) -> None:
    print(
        f"test top-1 / top-5 after {summary['epochs']} epochs ({summary['method']}"
        + (f", {summary['update']}" if summary.get("update") else "")
        + "):"
    )
    for p in summary["peers"]:
        m = p["metrics"]
        print(f"  {p['name']:<24} {100 * m['top1']:6.2f}%  {100 * m['top5']:6.2f}%")
    m = summary["ensemble"]["metrics"]
    print(f"  {'ensemble':<24} {100 * m['top1']:6.2f}%  {100 * m['top5']:6.2f}%")


def cmd_train(args: argparse.Namespace) -> int:
    from dmlkit.config import apply_override, config_from_dict, load_config, load_yaml, merge_dicts
    from dmlkit.engine.rundir import RunDir
    from dmlkit.engine.trainer import Trainer

    if args.resume:
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise UserError(
                "give either --resume RUN_DIR or --out RUN_DIR, not two different folders"
            )
        run = RunDir(args.resume)
        if not run.config_path.is_file():
            raise UserError(f"--resume {run.path}: no run there (no config.yaml)")
        # The run's own config, then the file and --set changes (checked by the trainer).
        data = load_yaml(run.config_path)
        if args.config:
            data = merge_dicts(data, load_yaml(args.config))
        for assignment in args.overrides:
            data = apply_override(data, assignment)
        cfg = config_from_dict(data)
        out = run.path
    else:
        cfg = load_config(args.config, args.overrides)
        out = (
            Path(args.out)
            if args.out
            else Path("runs") / f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    trainer = Trainer(cfg, out, resume=bool(args.resume))
    print(f"run directory: {out}")
    try:
        summary = trainer.fit()
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: dml train --resume {out}", file=sys.stderr)
        return 130
    _print_summary(summary)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dmlkit.cohort import Cohort, PeerSpec
    from dmlkit.data import build_data
    from dmlkit.engine.checkpoint import load_checkpoint
    from dmlkit.engine.evaluation import evaluate
    from dmlkit.engine.rundir import RunDir
    from dmlkit.engine.trainer import make_summary, resolve_device

    path = Path(args.run_dir)
    run = RunDir(path if path.is_dir() else path.parent.parent)
    if not run.config_path.is_file():
        raise UserError(f"{run.path}: not a run directory (no config.yaml)")
    cfg = run.load_config()
    device = resolve_device(args.device or cfg.train.device)
    state = load_checkpoint(path, map_location=device)
    specs = [PeerSpec(**s) for s in state["peers"]]
    cohort = Cohort(specs, [cfg.peer_optim(i) for i in range(len(specs))], 1.0, device)
    cohort.load_training_state(state["cohort"], optimizers=False)
    data = build_data(cfg.data, seed=cfg.seed, device=device)
    loader = {"test": data.test, "val": data.val, "train": data.train}[args.split]
    if loader is None:
        raise UserError(
            f"--split {args.split}: this run has no {args.split} split (data.val_fraction=0)"
        )
    if args.split == "train":
        loader.train = False  # evaluate on the plain, unaugmented, unshuffled images
    metrics = evaluate(cohort, loader)
    summary = make_summary(cfg, specs, metrics, state["epoch"], state["iteration"])
    summary["split"] = args.split
    from dmlkit.engine.checkpoint import atomic_write_text

    atomic_write_text(run.path / f"eval_{args.split}.json", json.dumps(summary, indent=2))
    print(f"checkpoint: epoch {state['epoch']} of {run.path}")
    _print_summary(summary)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from dmlkit.experiments import EXPERIMENTS, comparison_report, run_experiment

    exp = EXPERIMENTS.get(args.name)
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale must be in (0, 1], got {args.scale}")
    overrides = list(args.overrides)
    if args.data_root:
        overrides.insert(0, f"data.root={args.data_root}")
    elif exp.needs_data_root:
        raise UserError(f"{exp.name} needs its data: give --data-root PATH")
    out = Path(args.out) if args.out else Path("runs") / exp.name
    n_seeds = args.seeds if args.seeds is not None else exp.seeds
    print(f"{exp.name}: {exp.description}; {n_seeds} seed(s) -> {out}")
    start = time.perf_counter()
    results = run_experiment(
        exp,
        out,
        seeds=n_seeds,
        overrides=overrides,
        scale=args.scale,
        progress=not args.no_progress,
    )
    report = exp.report or comparison_report
    text = report(exp, results, out, args.scale)
    print()
    print(text)
    print(f"\n{len(results)} runs in {time.perf_counter() - start:.0f} s; results in {out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from dmlkit.data import DATASETS
    from dmlkit.experiments import EXPERIMENTS
    from dmlkit.methods import METHODS
    from dmlkit.models import MODELS

    for title, reg in (
        ("models", MODELS),
        ("datasets", DATASETS),
        ("methods", METHODS),
        ("experiments", EXPERIMENTS),
    ):
        print(f"{title}: {', '.join(reg.names())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    logger = logging.getLogger("dmlkit")
    if not logger.handlers:  # messages of the library (resume choices, skipped steps)
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("dml: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from dmlkit.engine.trainer import TrainingError

    commands = {"train": cmd_train, "eval": cmd_eval, "reproduce": cmd_reproduce, "list": cmd_list}
    try:
        return commands[args.command](args)
    except UserError as exc:
        print(f"dml: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingError as exc:
        print(f"dml: training stopped: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
