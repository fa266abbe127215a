"""The ``dml`` command: train, eval, reproduce, grid, analyze, report, list, predict, export, bench.

User errors (bad config, paths, data, checkpoints) print one line ``dml: error: ...`` and exit
with status 2, no traceback; a training failure (non-finite loss) exits 1; Ctrl-C exits 130
and says how to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from pathlib import Path

from dmlkit import __version__
from dmlkit.cli.summary import ignore_interrupts, plural, print_summary
from dmlkit.errors import UserError
from dmlkit.trust import printable

# Nothing heavy (torch, torchvision, matplotlib, sklearn) is imported at module level: every
# command imports what it uses, so --help, --version, list and config errors answer at once.
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
    p.add_argument("--version", action="version", version=f"dml (dmlkit) {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(sub)
    from dmlkit.cli.evaluate import add_eval_parser

    add_eval_parser(sub)  # dml eval
    _add_reproduce_parser(sub)
    from dmlkit.cli.grid import add_grid_parser

    add_grid_parser(sub)  # dml grid: a user's own arms x sweep x seeds
    from dmlkit.cli.analysis import add_parsers as add_analysis_parsers

    add_analysis_parsers(sub)  # analyze, report
    sub.add_parser("list", help="list the registered models, datasets, methods and experiments")
    from dmlkit.cli.use import add_parsers

    add_parsers(sub)  # predict, export
    _add_bench_parser(sub)
    for name, command in sub.choices.items():
        if name not in ("bench", "watch"):  # each has its own parser
            command.add_argument(
                "--no-progress",
                action="store_true",
                help="hide the progress bars (they hide themselves when output is not a terminal)",
            )
        if name in _READERS:
            command.add_argument(
                "--trust-code",
                action="store_true",
                help="let a run or checkpoint read here import the code its files name (a "
                "package.module:function arch, train.callbacks): only for runs you trust",
            )
    return p


# The commands that read a run folder or checkpoint another may have written (dmlkit.trust).
_READERS = ("train", "eval", "analyze", "report", "predict", "export")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
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
    t.add_argument("--data-root", metavar="PATH", help="dataset folder (sets data.root)")
    _add_data_flags(t)


def _add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
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
    r.add_argument(
        "--arms",
        metavar="ARM,ARM",
        help="run only these arms of the grid (e.g. skip the ImageNet-pretrained arms of "
        "market1501-table: --arms independent,dml)",
    )
    r.add_argument(
        "--docs",
        metavar="DIR",
        help="also write the experiment's report page to DIR/<name>.md (figures in DIR/<name>/)",
    )
    _add_data_flags(r)
    from dmlkit.cli.grid import add_launch_flags

    add_launch_flags(r)  # --jobs, --launcher


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    # Listed for ``dml --help`` only: main() hands ``dml bench ...`` to the bench's own parser.
    b = sub.add_parser(
        "bench", help="measure DML step throughput (dml bench --help)", add_help=False
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    # dml watch has its own parser too (watch.main); listed here for ``dml --help``
    w = sub.add_parser("watch", help="live table of a run's metrics (dml watch --help)")
    w.add_argument("watch_args", nargs=argparse.REMAINDER)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict-data",
        action="store_true",
        help="stop when a dataset file's MD5 differs from the published one, instead of "
        "warning (data.strict=true)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download a missing dataset into data.root where the network allows "
        "(data.download=true; cifar100)",
    )


def _data_overrides(args: argparse.Namespace) -> list[str]:
    """--strict-data / --download as config overrides (an explicit --set still wins)."""
    flags = [("data.strict=true", args.strict_data), ("data.download=true", args.download)]
    return [assignment for assignment, given in flags if given]


def _check_one_data_root(overrides: list[str]) -> None:
    """--data-root and --set data.root= together: a conflict, not a silent winner."""
    if any(o.strip().startswith("data.root=") for o in overrides):
        raise UserError("give the dataset folder once: --data-root PATH or --set data.root=PATH")


def cmd_train(args: argparse.Namespace) -> int:
    from dmlkit.config import build_config, load_config, load_yaml

    if args.data_root is not None:
        _check_one_data_root(args.overrides)
        args.overrides.insert(0, f"data.root={args.data_root}")
    args.overrides = [*_data_overrides(args), *args.overrides]
    if args.no_progress:
        args.overrides.insert(0, "train.progress=false")
    if args.resume:
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise UserError(
                "give either --resume RUN_DIR or --out RUN_DIR, not two different folders"
            )
        out = Path(args.resume).expanduser()
        if not (out / "config.yaml").is_file():
            raise UserError(f"--resume {out}: no run there (no config.yaml)")
        # The run's own config, then the file and --set changes (checked by the trainer).
        file = load_yaml(args.config) if args.config else {}
        saved = load_yaml(out / "config.yaml")
        from dmlkit.trust import check_config

        # the run's files name no code to import unless the user's own file or --set does
        mine = [Path(args.config).read_text(encoding="utf-8")] if args.config else []
        check_config(saved, str(out / "config.yaml"), args.trust_code, [*mine, *args.overrides])
        cfg = build_config(saved, file, overrides=args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
        out = (
            Path(args.out)
            if args.out
            else Path("runs") / f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    from dmlkit.engine.trainer import Trainer  # torch: only once the config is known good

    trainer = Trainer(cfg, out, resume=bool(args.resume), trust_code=args.trust_code)
    main_process = trainer.dist.is_main  # under torchrun, rank 0 alone reports
    if main_process:
        print(f"run directory: {out}")
    try:
        summary = trainer.fit()
    except KeyboardInterrupt:
        ignore_interrupts()
        print(f"\ninterrupted; continue with: dml train --resume {out}", file=sys.stderr)
        return 130
    if main_process:
        print_summary(summary)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from dmlkit.experiments import EXPERIMENTS

    exp = EXPERIMENTS.get(args.name)
    if args.arms:
        chosen = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = [a for a in chosen if a not in exp.arms]
        if unknown or not chosen:
            raise UserError(
                f"--arms {args.arms}: {exp.name} has no arm {', '.join(unknown) or '(none given)'}"
                f"; its arms: {', '.join(exp.arms)}"
            )
        exp = dataclasses.replace(exp, arms={a: exp.arms[a] for a in exp.arms if a in chosen})
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale must be in (0, 1], got {args.scale}")
    from dmlkit.cli.grid import launch_options, run_and_report

    launch = launch_options(args)
    overrides = [*_data_overrides(args), *args.overrides]
    if args.data_root:
        _check_one_data_root(args.overrides)
        overrides.insert(0, f"data.root={args.data_root}")
    elif exp.needs_data_root:
        raise UserError(f"{exp.name} needs its data: give --data-root PATH")
    out = Path(args.out) if args.out else Path("runs") / exp.name
    n_seeds = args.seeds if args.seeds is not None else exp.seeds
    print(f"{exp.name}: {exp.description}; {plural(n_seeds, 'seed')} -> {out}")
    return run_and_report(exp, out, args, launch, seeds=n_seeds, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    logger = logging.getLogger("dmlkit")
    if not logger.handlers:  # messages of the library (resume choices, skipped steps)
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("dml: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["bench"]:  # its own parser, options and --help included
        from dmlkit.bench import main as bench_main

        return bench_main(raw[1:])
    if raw[:1] == ["watch"]:  # its own parser too: a leaf that needs none of the trainer
        from dmlkit.cli.watch import main as watch_main

        return watch_main(raw[1:])
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse would print the top-level usage; name the option, and --set for config keys
        print(f"dml: error: {_one_line(_unknown_arguments(args.command, extra))}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from dmlkit.cli.analysis import cmd_analyze, cmd_report
    from dmlkit.cli.evaluate import cmd_eval
    from dmlkit.cli.use import cmd_export, cmd_list, cmd_predict

    commands = {"train": cmd_train, "eval": cmd_eval, "reproduce": cmd_reproduce, "list": cmd_list}
    commands.update(analyze=cmd_analyze, report=cmd_report, predict=cmd_predict, export=cmd_export)
    from dmlkit.cli.grid import cmd_grid

    commands["grid"] = cmd_grid
    try:
        return commands[args.command](args)
    except UserError as exc:
        print(f"dml: error: {printable(_one_line(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:
        stopped = _stopped(exc)
        if stopped is None:
            raise
        print(f"dml: {stopped}: {printable(_one_line(exc))}", file=sys.stderr)
        return 1


def _unknown_arguments(command: str | None, extra: list[str]) -> str:
    """The message for arguments ``dml COMMAND`` does not take.

    An option named like a config key (``--epochs 3``, ``--optim.lr=0.1``) is answered with the
    ``--set`` that does it, on the commands that take ``--set``.
    """
    where = f"dml {command}" if command else "dml"
    if command in ("train", "reproduce"):
        for i, arg in enumerate(extra):
            if not arg.startswith("--") or len(arg) < 3:
                continue
            name, eq, value = arg[2:].partition("=")
            if not eq:
                nxt = extra[i + 1] if i + 1 < len(extra) else ""
                value = nxt if nxt and not nxt.startswith("-") else "VALUE"
            keys = _config_keys_named(name.replace("-", "_"))
            if keys:
                sets = " or ".join(f"--set {k}={value}" for k in keys)
                return f"{where}: no option --{name}; config values are set with --set: {sets}"
    return f"{where}: unrecognized arguments: {' '.join(extra)} (see {where} --help)"


def _config_keys_named(name: str) -> list[str]:
    """The config keys ``name`` means: a full dotted key, or the last part of some."""
    from dmlkit.config import config_from_dict, flatten

    keys = list(flatten(dataclasses.asdict(config_from_dict({}))))
    if name in keys:
        return [name]
    return [k for k in keys if k.rsplit(".", 1)[-1] == name]


def _one_line(exc: BaseException) -> str:
    """The message on one line: a path with a newline in it must not split it."""
    return str(exc).replace("\r", "\\r").replace("\n", "\\n")


def _stopped(exc: Exception) -> str | None:
    """'training stopped' for a TrainingError, ... ; None for other exceptions.

    Looked up in ``sys.modules`` rather than imported: the classes live in modules that import
    torch, and an exception of theirs can only exist once its module has been imported.
    """
    for module, name, words in (
        ("dmlkit.engine.persistence", "TrainingError", "training stopped"),
        # another process of a torchrun job died or hung
        ("dmlkit.distributed", "DistributedError", "distributed training stopped"),
        ("dmlkit.experiments.launch", "CellsFailed", "grid stopped"),  # --jobs / --launcher
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return words
    return None


if __name__ == "__main__":
    sys.exit(main())
