"""The ``dml`` commands that use what exists: ``list`` (registered names), ``predict`` and
``export`` (a trained cohort on new images, or outside dmlkit).

Like :mod:`dmlkit.cli`, nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# The built-in names, so that `dml list` answers without importing torch (the registries fill
# themselves by importing the modules that define the networks). tests/test_cli_feel.py checks
# that this table equals the registries: a newly registered name must be added here.
BUILTIN_NAMES = {
    "models": "inception_v1 mlp mobilenet mobilenet_v1 resnet32 resnet32_mb small_cnn wrn28_10 "
    "wrn_mb",
    "datasets": "cifar100 digits digits-pairs imagefolder market1501 python stdlib-lm "
    "stdlib-modules text text-lm",
    "methods": "dml dml_e dml_mean_logits independent kd kdcl okddip one pcl",
    "experiments": "cifar100-table digits digits-analysis digits-online-kd digits-pairs "
    "digits-pairs-regimes digits-why market1501-cohort-size market1501-dml-e market1501-table "
    "online-kd-table text-stdlib text-stdlib-lm",
}
_REGISTRIES = {
    "models": ("dmlkit.models.registry", "MODELS"),
    "datasets": ("dmlkit.data.registry", "DATASETS"),
    "methods": ("dmlkit.methods", "METHODS"),
    "experiments": ("dmlkit.experiments.core", "EXPERIMENTS"),
}


def registered_names(kind: str) -> list[str]:
    """The names of one kind: the registry's if already imported (it may hold more), else the
    built-in table."""
    module, attr = _REGISTRIES[kind]
    registry = getattr(sys.modules.get(module), attr, None)
    return registry.names() if registry is not None else sorted(BUILTIN_NAMES[kind].split())


# What a built-in dataset needs before it trains (`dml list` prints it under the names).
DATA_NEEDS = {
    "digits": "bundled with scikit-learn, no download",
    "digits-pairs": "built from the bundled digits, no download",
    "cifar100": "needs a download: --data-root PATH --download, or unpack it in PATH",
    "market1501": "needs a download you fetch yourself: --data-root PATH of the unpacked folder",
    "imagefolder": "your own images: --data-root PATH (PATH/<class>/<image>)",
    "python": "your own Dataset or DataLoader, given to dmlkit.fit",
    "text": "your own text: --data-root PATH (a folder per class, or JSONL / CSV files)",
    "text-lm": "your own plain text files: --data-root PATH",
    "stdlib-modules": "built from this Python's standard library sources, no download",
    "stdlib-lm": "built from this Python's standard library sources, no download",
}


def cmd_list(args: argparse.Namespace) -> int:
    for kind in BUILTIN_NAMES:
        print(f"{kind}: {', '.join(registered_names(kind))}")
        if kind == "datasets":
            for name, needs in DATA_NEEDS.items():
                print(f"  {name}: {needs}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` and ``export`` subcommands."""
    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run_dir", help="run directory (or a checkpoint .pt file inside one)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders")
    p.add_argument(
        "--text",
        action="append",
        default=[],
        help="a text to classify or score (text runs; repeat)",
    )
    p.add_argument("--lines", help="a UTF-8 file of texts, one per line (text runs)")
    _add_which(p)
    p.add_argument("--top-k", type=int, default=1, help="classes per image (default 1)")
    p.add_argument("--format", choices=["json", "csv"], default="json", help="default json")
    p.add_argument("--out", help="write here instead of to standard output")
    p.add_argument("--device", default="cpu", help="where to run (default cpu)")
    p.add_argument(
        "--force", action="store_true", help="replace an --out file that dml predict did not write"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip images that cannot be decoded (listed on stderr) instead of stopping",
    )

    e = sub.add_parser("export", help="write one peer or the ensemble for use without dmlkit")
    e.add_argument("run_dir", help="run directory (or a checkpoint .pt file inside one)")
    e.add_argument("--out", required=True, help="folder to write the model files into")
    e.add_argument(
        "--force",
        action="store_true",
        help="replace model files in --out that dml export did not write",
    )
    _add_which(e)


def _add_which(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--peer", type=_peer, help="use one peer alone: its 0-based index or its name"
    )
    which.add_argument(
        "--ensemble", action="store_true", help="use the ensemble of all peers (the default)"
    )


def _peer(text: str) -> int | str:
    """``--peer``: an index (``1``) or a peer's name (``peer1_small_cnn``)."""
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io
    import json

    from dmlkit.cli.summary import plural
    from dmlkit.engine.devices import resolve_device
    from dmlkit.engine.export import check_output_file, write_files
    from dmlkit.engine.predict import load_predictor
    from dmlkit.errors import UserError
    from dmlkit.trust import printable

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    device = resolve_device(args.device, "--device")  # a typo blames the flag, not the run
    from dmlkit.engine.text_predict import is_text_run

    if args.text or args.lines or is_text_run(args.run_dir):
        return _predict_text(args, device)
    if not args.images:
        raise UserError(
            "give image files or folders to classify (or --text / --lines for a text run)"
        )
    if args.out:  # before any work: nothing the user has is overwritten
        inputs = [Path(args.run_dir), *map(Path, args.images)]
        check_output_file(args.out, args.force, _predict_output(Path(args.out)), inputs)
    predictor = load_predictor(
        args.run_dir, peer=args.peer, device=device, trust_code=args.trust_code
    )
    skipped: list[tuple[str, str]] = []
    rows = predictor.predict(
        args.images, top_k=args.top_k, skipped=skipped if args.skip_bad else None
    )
    for name, reason in skipped:
        print(printable(f"dml: skipped {name}: {reason}"), file=sys.stderr)
    if args.format == "json":
        text = json.dumps({"model": predictor.which, "predictions": rows}, indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "rank", "class", "index", "probability"])
        for row in rows:
            for rank, top in enumerate(row["top"], 1):
                # names from the run's summary.json (and file names): no raw control characters
                writer.writerow(
                    [
                        printable(row["file"]),
                        rank,
                        printable(top["class"]),
                        top["index"],
                        f"{top['probability']:.6f}",
                    ]
                )
        text = buf.getvalue()
    if args.out:
        write_files({Path(args.out): text.encode("utf-8")})  # whole or not at all
        print(f"{plural(len(rows), 'image')} -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _predict_output(path: Path) -> bool:
    """Whether ``path`` holds an earlier ``dml predict`` output (its JSON or CSV head)."""
    try:
        if not path.is_file():  # a FIFO would block the read
            return False
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.startswith((b'{\n  "model": ', b"file,rank,class,index,probability\n"))


def _predict_text(args: argparse.Namespace, device: Any) -> int:
    """``dml predict`` on a text run: ``--text`` strings and ``--lines`` files."""
    import json

    from dmlkit.cli.summary import plural
    from dmlkit.engine.checkpoint import atomic_write_text
    from dmlkit.engine.text_predict import load_text_predictor, read_lines
    from dmlkit.errors import UserError

    if args.images:
        raise UserError(
            f"{args.run_dir} is a text run: give --text STRING or --lines FILE, not image files"
        )
    texts = [*args.text, *(read_lines(args.lines) if args.lines else [])]
    if not texts:
        raise UserError("give --text STRING (repeatable) or --lines FILE (one text per line)")
    if args.format != "json":
        raise UserError("--format csv is for images; text predictions are written as json")
    predictor = load_text_predictor(args.run_dir, peer=args.peer, device=device)
    rows = predictor.predict(texts, top_k=args.top_k)
    text = json.dumps({"model": predictor.which, "predictions": rows}, indent=2) + "\n"
    if args.out:
        try:
            atomic_write_text(Path(args.out), text)
        except OSError as exc:
            raise UserError(
                f"--out {args.out}: cannot write there ({exc.strerror or exc}); choose another path"
            ) from None
        print(f"{plural(len(rows), 'text')} -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dmlkit.engine.export import check_export_dir, export
    from dmlkit.engine.predict import load_predictor

    check_export_dir(args.out, args.force)  # before any work
    predictor = load_predictor(args.run_dir, peer=args.peer, trust_code=args.trust_code)
    for path in export(predictor, args.out, force=args.force):
        print(path)
    return 0
