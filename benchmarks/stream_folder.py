"""Streaming image folder: images/s against torchvision's ImageFolder, and peak memory vs size.

Two measurements on synthetic folders of small PNGs (``dmlkit.testing.write_image_folder``,
100 classes, ``--size`` pixels, written once under ``--root`` and reused):

* **throughput**: one pass over ``--batches`` training batches of dmlkit's stream loader
  (``data.loader: stream``: RandomResizedCrop + flip in the workers, normalisation on the
  batch) against ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with the same
  transforms (``v2.RandomResizedCrop``, ``v2.RandomHorizontalFlip``, ``v2.ToDtype``,
  ``v2.Normalize``), the same workers, batch size and prefetch; ``--rounds`` alternating rounds,
  median images/s.
* **peak memory** for each ``--images`` size: a fresh process builds the stream data (scan,
  splits, statistics) and reads one whole epoch; a sampler thread sums the proportional set
  size (PSS: shared pages counted once) of the process and its workers every 50 ms. PSS, not
  RSS: forked workers share the parent's pages and RSS would count them once per worker.
  ``--memory-path`` also measures the memory path's peak at the sizes where it fits;
  ``--rss-batches N`` reads N batches instead of the whole epoch (a shorter run: the scan, the
  splits and the statistics are still those of the whole folder).

Prints a table and writes JSON + Markdown + a PNG figure under ``--out``.

    python benchmarks/stream_folder.py --images 50000 200000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from _report import environment, load_text, save

CLASSES = 100


def folder(root: Path, images: int, size: int, workers: int) -> Path:
    """The synthetic folder of ``images`` training images (+10% test), written once."""
    from dmlkit.testing.imagefolder import write_image_folder

    path = root / f"folder-{images}-{size}px"
    done = path / ".complete"
    if not done.exists():
        per_class = images // CLASSES
        write_image_folder(
            path, per_class, max(per_class // 10, 1), CLASSES, size, seed=0, workers=workers
        )
        done.write_text("ok")
    return path


def _data_cfg(path: Path, args: argparse.Namespace, loader: str) -> Any:
    from dmlkit.config import DataConfig

    return DataConfig(
        name="imagefolder",
        root=str(path),
        loader=loader,
        batch_size=args.batch,
        val_fraction=0.0,
        image_size=args.size,
        random_resized_crop=[0.35, 1.0] if loader == "stream" else None,  # stream-only
        crop_padding=0 if loader == "stream" else 4,
        hflip=True,
        num_workers=args.workers,
    )


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class PeakPSS:
    """Samples the PSS of this process and its children every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak_kib, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = _pss_kib(me) + sum(_pss_kib(c) for c in _children(me))
            self.peak_kib = max(self.peak_kib, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakPSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child_memory(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: build the data of one size and read one epoch; peak PSS."""
    from dmlkit.data import build_data

    path = folder(Path(args.root), args.child_images, args.size, args.workers)
    start = time.perf_counter()
    with PeakPSS() as peak:
        data = build_data(_data_cfg(path, args, args.child_loader), seed=0)
        built = time.perf_counter() - start
        seen = 0
        for i, (_, y) in enumerate(data.train):
            if args.rss_batches and i >= args.rss_batches:
                break
            seen += len(y)
    return {
        "images": args.child_images,
        "loader": args.child_loader,
        "peak_pss_mib": peak.peak_kib / 1024,
        "build_s": built,
        "epoch_s": time.perf_counter() - start - built,
        "read": seen,
    }


def _torchvision_loader(path: Path, args: argparse.Namespace, mean: Any, std: Any) -> Any:
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(args.size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean.tolist(), std.tolist()),
        ]
    )
    ds = datasets.ImageFolder(str(path / "train"), transform=transform)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None,
    )


def _images_per_s(loader: Any, batches: int, warmup: int = 2) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(it)[1])
    return seen / (time.perf_counter() - start)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    from dmlkit.data import build_data

    path = folder(Path(args.root), min(args.images), args.size, args.workers)
    ours = build_data(_data_cfg(path, args, "stream"), seed=0).train
    theirs = _torchvision_loader(path, args, ours.normalise.mean, ours.normalise.std)
    rates: dict[str, list[float]] = {"dmlkit stream": [], "torchvision ImageFolder": []}
    for r in range(args.rounds):
        ours.set_epoch(r)
        rates["dmlkit stream"].append(_images_per_s(ours, args.batches))
        rates["torchvision ImageFolder"].append(_images_per_s(theirs, args.batches))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "images_per_s": rates,
        "median": med,
        "ratio": med["dmlkit stream"] / med["torchvision ImageFolder"],
    }


def _run_child(args: argparse.Namespace, images: int, loader: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-images", str(images), "--child-loader", loader]
    for key in ("root", "size", "batch", "workers", "rss_batches"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{loader} child ({images} images) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(payload: dict[str, Any]) -> str:
    env, tp = payload["environment"], payload["throughput"]
    lines = [
        "# Streaming image folder (benchmarks/stream_folder.py)",
        "",
        f"`{env['command']}` on {env['cpu']} ({env['cores']} cores), load average "
        f"{load_text(env)} at the end, torch {env['torch']}, "
        f"{env['when']}. Images {payload['size']}x{payload['size']} PNG, batch "
        f"{payload['batch']}, {payload['workers']} workers.",
        "",
        f"## Throughput ({payload['batches']} batches x {payload['rounds']} rounds, median)",
        "",
        "| loader | images/s (median) | rounds |",
        "|---|---:|---|",
    ]
    for name, med in tp["median"].items():
        rounds = ", ".join(f"{v:.0f}" for v in tp["images_per_s"][name])
        lines.append(f"| {name} | {med:.0f} | {rounds} |")
    lines += ["", f"dmlkit / torchvision: **{tp['ratio']:.2f}x**", "", "## Peak memory", ""]
    lines += [
        "| loader | training images | images read | peak PSS (MiB) | build (s) | reading (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in payload["memory"]:
        lines.append(
            f"| {m['loader']} | {m['images']:,} | {m['read']:,} | {m['peak_pss_mib']:.0f} | "
            f"{m['build_s']:.1f} | {m['epoch_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def figure(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    med = payload["throughput"]["median"]
    a.bar(list(med), list(med.values()), color=["tab:blue", "tab:gray"])
    a.set_ylabel("images/s (median)")
    a.set_title("training batches, same transforms")
    for loader in ("stream", "memory"):
        pts = [m for m in payload["memory"] if m["loader"] == loader]
        if pts:
            b.plot([m["images"] for m in pts], [m["peak_pss_mib"] for m in pts], "o-", label=loader)
    b.axhline(2048, color="r", ls="--", lw=1, label="2 GiB goal")
    b.set_xlabel("training images")
    b.set_ylabel("peak PSS (MiB)")
    b.set_ylim(bottom=0)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=100, help="timed batches per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory-path", action="store_true", help="also the memory path's peak")
    p.add_argument(
        "--rss-batches",
        type=int,
        default=0,
        help="memory runs read only this many training batches (default 0: a whole epoch)",
    )
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--root", default="/tmp/dmlkit-stream-bench", help="where folders are kept")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--tag", default="cpu", help="results file name: stream-TAG.{md,json,png}")
    p.add_argument("--child-images", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-loader", default="stream", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_images:
        print(json.dumps(child_memory(args)))
        return 0
    for n in args.images:
        folder(Path(args.root), n, args.size, max(args.workers, 1))
    payload: dict[str, Any] = {
        k: getattr(args, k) for k in ("size", "batch", "workers", "batches", "rounds")
    }
    payload["throughput"] = (
        {"images_per_s": {}, "median": {}, "ratio": float("nan")}
        if args.skip_throughput
        else throughput(args)
    )
    memory = [_run_child(args, n, "stream") for n in args.images]
    if args.memory_path:
        memory += [_run_child(args, n, "memory") for n in args.images]
    payload["memory"] = memory
    payload["environment"] = environment()
    text = markdown(payload)
    save(Path(args.out), f"stream-{args.tag}", payload, text, figure)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
