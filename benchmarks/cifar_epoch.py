"""Seconds per CIFAR-100 epoch: ResNet-32, K = 2, DML, batch 64 (the paper's recipe).

What is timed: ``--steps`` training steps (after ``--warmup`` untimed ones) of the recipe of
``configs/paper/cifar100_dml_resnet32_resnet32.yaml``, through dmlkit's own path: the trainer
builds the cifar100 dataset (read from a generated file in the real ``cifar-100-python``
format), the cohort and the method; each step draws a batch from the on-device loader (random
crop from the reflection-padded image, flip, normalisation) and calls ``method.train_step``.
An epoch is extrapolated to the 50,000 training images (781 steps of 64; the data is in
memory, so a step costs the same whatever the dataset size). Evaluation and checkpoints are
not included.

``--full-epoch`` times one whole ``Trainer.fit`` epoch instead: every one of the 781 steps, the
epoch's log line and checkpoint, then the final test evaluation, on a fixture of the real size
(50,000 training and 10,000 test images, ``--train-images``/``--test-images``). The wall time of
the recipe's 200 epochs is extrapolated as 200 x (epoch + checkpoint) + the final evaluation;
the one epoch measured includes the warm-up of the device (first kernels, allocator growth).

Also recorded: peak resident memory of the process (``resource.getrusage``) and, on CUDA,
``torch.cuda.max_memory_allocated``; the machine, the versions and the command line. A
table is printed and saved as JSON + Markdown under ``--out`` (default benchmarks/results/).

    python benchmarks/cifar_epoch.py --device cuda --steps 200
    python benchmarks/cifar_epoch.py --device cpu --steps 20 --set method.update=simultaneous
    python benchmarks/cifar_epoch.py --device cuda --full-epoch --tag nvidia-h200
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dmlkit.data.cifar100 import DataIntegrityWarning
from dmlkit.engine.records import EpochFunction
from dmlkit.engine.trainer import Trainer
from dmlkit.experiments import arm_config
from dmlkit.experiments.cifar100 import CIFAR100_TABLE
from dmlkit.machine import environment
from dmlkit.testing import write_cifar100

from _report import measure_table, save

TRAIN_IMAGES = 50_000  # CIFAR-100's training split
RECIPE_ARM = "dml_resnet32_resnet32"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--steps", type=int, default=100, help="timed training steps (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64 (the paper's)")
    p.add_argument("--arch", default="resnet32", help="architecture of every peer")
    p.add_argument("--peers", type=int, default=2, help="cohort size K (default 2)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config override, e.g. method.update=simultaneous",
    )
    p.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results"),
        help="folder for the JSON and Markdown results (default benchmarks/results/)",
    )
    p.add_argument(
        "--full-epoch",
        action="store_true",
        help="time one whole training epoch through Trainer.fit and extrapolate the recipe",
    )
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="--full-epoch only")
    p.add_argument("--test-images", type=int, default=10_000, help="--full-epoch only")
    p.add_argument(
        "--data-root",
        default=None,
        help="--full-epoch: folder of the fixture, written there unless it already holds "
        "cifar-100-python/ (lets several runs share one; default a temporary folder)",
    )
    p.add_argument(
        "--name", default=None, help="file stem of the results (default: arch, K, device, time)"
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.peers < 1:
        p.error("--steps, --batch-size and --peers must be >= 1 and --warmup >= 0")
    if args.train_images < args.batch_size or args.test_images < 1:
        p.error("--train-images must be >= --batch-size and --test-images >= 1")
    return args


def machine(device: torch.device) -> dict[str, Any]:
    """The machine, versions and device of this measurement (:func:`dmlkit.machine.environment`)."""
    return environment(device)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _overrides(args: argparse.Namespace, root: str) -> list[str]:
    """The recipe's overrides for this benchmark: data under ``root``, the chosen peers."""
    return [
        f"data.root={root}",
        f"train.device={args.device}",
        "train.progress=false",
        f"data.batch_size={args.batch_size}",
        f"peers=[{', '.join([args.arch] * args.peers)}]",
        *args.overrides,
    ]


def _trainer(cfg: Any, tmp: str) -> Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataIntegrityWarning)  # a generated file
        return Trainer(cfg, Path(tmp) / "run")


def _stamp(device: torch.device) -> dict[str, Any]:
    """How, when and where a result was measured (its keys in the order the JSON has them)."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_images = args.batch_size * (args.steps + args.warmup)
    with tempfile.TemporaryDirectory(prefix="dmlkit-bench-") as tmp:
        write_cifar100(tmp, n_train=max(n_images, 100), n_test=100, num_classes=100)
        cfg = arm_config(CIFAR100_TABLE, RECIPE_ARM, 0, _overrides(args, tmp))
        trainer = _trainer(cfg, tmp)
        device = trainer.device
        cuda = device.type == "cuda"
        loader, cohort, method = trainer.data.train, trainer.cohort, trainer.method
        cohort.train()

        def batches():
            epoch = 0
            while True:
                loader.set_epoch(epoch)
                yield from loader
                epoch += 1

        stream = batches()
        times: list[float] = []
        for step in range(args.warmup + args.steps):
            if step == args.warmup and cuda:
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            x, y = next(stream)
            progress = step / max(len(loader), 1)
            cohort.set_lr(progress)
            method.set_progress(progress)
            logs = method.train_step(x, y)
            if cuda:
                torch.cuda.synchronize(device)
            loss = float(logs[0]["loss"])  # forces the step to finish on any device
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        steps_per_epoch = TRAIN_IMAGES // args.batch_size  # drop_last, as the trainer does
        result = {
            "benchmark": "cifar_epoch",
            "what": f"{args.arch} x {args.peers} {cfg.method.name} ({cfg.method.update}), "
            f"batch {args.batch_size}, CIFAR-shaped 32x32 data, crop+flip on the device",
            **_stamp(device),
            "config": {
                "arch": args.arch,
                "peers": args.peers,
                "method": cfg.method.name,
                "update": cfg.method.update,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup": args.warmup,
                "overrides": args.overrides,
            },
            "step_seconds_median": step_s,
            "step_seconds_mean": statistics.fmean(times),
            "step_seconds_min": min(times),
            "images_per_second": args.batch_size / step_s,
            "steps_per_epoch": steps_per_epoch,
            "epoch_seconds": steps_per_epoch * step_s,
            "peak_rss_mib": peak_rss_mib(),
            "cuda_max_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20
            if cuda
            else None,
            "last_loss": loss,
        }
    return result


def _fixture(args: argparse.Namespace, tmp: str) -> str:
    """The folder holding the full-size fixture (written unless --data-root already has one)."""
    from dmlkit.data.cifar100 import FOLDER

    root = args.data_root or tmp
    if not (Path(root) / FOLDER / "train").is_file():
        write_cifar100(root, n_train=args.train_images, n_test=args.test_images, num_classes=100)
    return root


def run_full_epoch(args: argparse.Namespace) -> dict[str, Any]:
    """One whole epoch of the recipe through ``Trainer.fit`` (--full-epoch)."""
    with tempfile.TemporaryDirectory(prefix="dmlkit-bench-") as tmp:
        overrides = _overrides(args, _fixture(args, tmp))
        recipe = arm_config(CIFAR100_TABLE, RECIPE_ARM, 0, overrides)
        cfg = arm_config(CIFAR100_TABLE, RECIPE_ARM, 0, [*overrides, "train.epochs=1"])
        trainer = _trainer(cfg, tmp)
        device, stamps = trainer.device, []
        start = time.perf_counter()
        # on_epoch runs after the epoch's log line and checkpoint: what every epoch costs
        summary = trainer.fit(
            callbacks=[EpochFunction(lambda *_: stamps.append(time.perf_counter()))]
        )
        end = time.perf_counter()
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
        train_loop = max(r["seconds"] for r in records if r["split"] == "train")
        epoch_s, once_s = stamps[0] - start, end - stamps[0]
        return {
            "benchmark": "cifar_epoch",
            "mode": "full_epoch",
            "what": f"{args.arch} x {args.peers} {cfg.method.name} ({cfg.method.update}), "
            f"batch {args.batch_size}, one epoch of {args.train_images:,} CIFAR-format "
            f"images through Trainer.fit, test on {args.test_images:,}",
            **_stamp(device),
            "config": {
                "arch": args.arch,
                "peers": args.peers,
                "method": cfg.method.name,
                "update": cfg.method.update,
                "cohort": type(trainer.cohort).__name__,
                "precision": cfg.train.precision,
                "batch_size": args.batch_size,
                "train_images": args.train_images,
                "overrides": args.overrides,
            },
            "steps": trainer.iteration,
            "train_loop_seconds": train_loop,
            "epoch_seconds": epoch_s,
            "final_eval_seconds": once_s,
            "images_per_second": trainer.iteration * args.batch_size / train_loop,
            "recipe_epochs": recipe.train.epochs,
            "extrapolated_seconds": recipe.train.epochs * epoch_s + once_s,
            "peak_rss_mib": peak_rss_mib(),
            "cuda_max_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda"
            else None,
            "test_top1": [p["metrics"]["top1"] for p in summary["peers"]],
        }


def _where(m: dict[str, Any]) -> str:
    return m.get("gpu") or f"{m['cpu']} ({m['torch_threads']} threads)"


def _table(r: dict[str, Any], rows: list[tuple[str, str]]) -> list[str]:
    """``rows``, then the memory rows both modes report."""
    rows = [*rows, ("peak RSS (MiB)", f"{r['peak_rss_mib']:.0f}")]
    if r["cuda_max_allocated_mib"] is not None:
        rows.append(("CUDA max allocated (MiB)", f"{r['cuda_max_allocated_mib']:.0f}"))
    return measure_table(rows)


def markdown_full_epoch(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = [
        (f"{r['recipe_epochs']} epochs, extrapolated (s)", f"{r['extrapolated_seconds']:.0f}"),
        ("one epoch incl. log + checkpoint (s)", f"{r['epoch_seconds']:.2f}"),
        (f"training loop alone, {r['steps']} steps (s)", f"{r['train_loop_seconds']:.2f}"),
        ("final test evaluation + summary (s)", f"{r['final_eval_seconds']:.2f}"),
        ("images / second (training loop)", f"{r['images_per_second']:.0f}"),
    ]
    lines = [
        f"# cifar_epoch --full-epoch: {r['what']}",
        "",
        f"{_where(m)}; torch {m['torch']}, Python {m['python']}; {r['time_utc']}; cohort "
        f"{r['config']['cohort']}, precision {r['config']['precision']}. The epoch measured is "
        f"the first (device warm-up included).",
        f"Command: `{r['command']}`",
        "",
        *_table(r, rows),
    ]
    return "\n".join(lines) + "\n"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = [
        ("seconds / epoch (50,000 images, extrapolated)", f"{r['epoch_seconds']:.1f}"),
        ("images / second", f"{r['images_per_second']:.0f}"),
        ("seconds / step (median)", f"{r['step_seconds_median']:.4f}"),
    ]
    lines = [
        f"# cifar_epoch: {r['what']}",
        "",
        f"{_where(m)}; torch {m['torch']}, Python {m['python']}; {r['time_utc']}; "
        f"{r['config']['steps']} timed steps after {r['config']['warmup']} warm-up steps.",
        f"Command: `{r['command']}`",
        "",
        *_table(r, rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_full_epoch(args) if args.full_epoch else run(args)
    text = markdown_full_epoch(result) if args.full_epoch else markdown(result)
    print(text)
    out = Path(args.out)
    dev = result["machine"]["device"].replace(":", "")
    stem = args.name or (
        f"cifar_epoch-{args.arch}-k{args.peers}-{dev}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    save(out, stem, result, text, json_newline=True)
    print(f"saved {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
