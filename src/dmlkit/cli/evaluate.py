"""``dml eval``: a finished (or interrupted) run re-evaluated from its last checkpoint, written
to ``RUN/eval_<split>.json``.

Like :mod:`dmlkit.cli`, nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dmlkit.cli.summary import print_summary
from dmlkit.errors import UserError, write_advice


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="re-evaluate a run from its last checkpoint")
    e.add_argument("run_dir", help="run directory (or a checkpoint .pt file inside one)")
    e.add_argument("--split", choices=["test", "val", "train"], default="test")
    e.add_argument("--device", default=None, help="override train.device (e.g. cpu)")


def cmd_eval(args: argparse.Namespace) -> int:
    from dmlkit.data import build_data
    from dmlkit.engine.checkpoint import load_cohort
    from dmlkit.engine.devices import resolve_device
    from dmlkit.engine.evaluation import evaluate_split
    from dmlkit.engine.rundir import RunDir
    from dmlkit.engine.summary import make_summary
    from dmlkit.metrics.text import attach_token_bytes

    path = Path(args.run_dir).expanduser()
    if not path.exists():  # else the message would name its parent's parent ("." or "/")
        where = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise UserError(f"{path}: no such run directory or checkpoint file{where}")
    run = RunDir(path if path.is_dir() else path.parent.parent)
    if not run.config_path.is_file():
        raise UserError(f"{run.path}: not a run directory (no config.yaml)")
    cfg = run.load_config()
    device = resolve_device(*((args.device, "--device") if args.device else (cfg.train.device,)))
    if not os.access(run.path, os.W_OK | os.X_OK):  # before the evaluation, not after it
        raise UserError(
            f"{run.path}: is read-only, and dml eval writes eval_{args.split}.json there; "
            f"make it writable (or copy the run elsewhere)"
        )
    cohort, state = load_cohort(path, device, trust_code=args.trust_code)
    # a text run: its own tokenizer, its data checked against the recorded fingerprint, and
    # for a language model the bytes behind each token (bits per byte)
    data = build_data(cfg.data, seed=cfg.seed, device=device, run_dir=run.path)
    attach_token_bytes(data)
    loader = {"test": data.test, "val": data.val, "train": data.train}[args.split]
    if loader is None:
        raise UserError(
            f"--split {args.split}: this run has no {args.split} split (data.val_fraction=0)"
        )
    if args.split == "train":
        loader.train = False  # evaluate on the plain, unaugmented, unshuffled images
    metrics = evaluate_split(cohort, loader)  # re-id test split: mAP and CMC
    members = cohort.member_specs  # a multi-branch peer's branches
    summary = make_summary(
        cfg, members, metrics, state["epoch"], state["iteration"], data=data, device=device
    )
    summary["split"] = args.split
    from dmlkit.engine.checkpoint import atomic_write_text
    from dmlkit.engine.faults import maybe_enospc

    target = run.path / f"eval_{args.split}.json"
    try:
        maybe_enospc("enospc-in-eval", state["epoch"])
        atomic_write_text(target, json.dumps(summary, indent=2))
    except OSError as exc:
        advice = write_advice(exc, run.path)
        raise UserError(f"cannot write {target} ({exc.strerror or exc}); {advice}") from None
    print(f"checkpoint: epoch {state['epoch']} of {run.path}")
    print_summary(summary)
    return 0
