"""End to end, what users feel: wall time of one DML epoch, evaluation included.

A ResNet-32 pair (DML, simultaneous update, SGD 0.1, batch 64) trains one epoch on a
CIFAR-format set (``dmlkit.testing.write_cifar100``: ``--train-images`` + ``--test-images``
32x32 images, 100 classes) and is evaluated on the test split, three ways, each in its own
process, side by side in every round:

* ``dmlkit memory``  ``dml train``'s path: the cifar100 dataset decoded into memory (on the
                     device), batches cropped/flipped/normalised on the device, the Trainer
                     (checkpoint and summary.json written, as in any run);
* ``dmlkit stream``  the same images as a PNG image folder, ``data.loader: stream``
                     (``--workers`` DataLoader workers, padded random crop + flip);
* ``pytorch-dml``    the ``pytorch-dml`` package's ``DMLTrainer.fit`` fed a torchvision
                     ``CIFAR100`` + ``DataLoader`` with the standard pipeline (RandomCrop(32, 4),
                     RandomHorizontalFlip, ToTensor, Normalize), the same workers, validated on
                     the test split (``pip install pytorch-dml``; skipped when absent).

Timed: from the start of building the data to the end of the evaluation (process start-up and
the one-off writing of the dataset files excluded). ``--rounds`` rounds, median per variant.
Prints a table and writes JSON + Markdown + a PNG figure under ``--out``.

    python benchmarks/dml_epoch.py --rounds 3                      # 50,000 + 10,000 images
    python benchmarks/dml_epoch.py --rounds 3 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _report import environment, load_text, save

VARIANTS = ("dmlkit memory", "dmlkit stream", "pytorch-dml")
MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100's, the usual constants of the standard pipeline
STD = (0.2673, 0.2564, 0.2762)


def _write_cifar(root: Path, n_train: int, n_test: int) -> Path:
    from dmlkit.testing import write_cifar100

    return write_cifar100(root, n_train=n_train, n_test=n_test, num_classes=100, seed=0)


def datasets(root: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    """The CIFAR-format folder and the same images as a PNG image folder (written once)."""
    from PIL import Image

    from dmlkit.data.cifar100 import load_split

    base = root / f"cifar-{n_train}-{n_test}"
    cifar, images = base / "cifar", base / "images"
    done = base / ".complete"
    if not done.exists():
        folder = _write_cifar(cifar, n_train, n_test)
        for split in ("train", "test"):
            x, y = load_split(folder / split, 100)
            for i, (img, label) in enumerate(zip(x.permute(0, 2, 3, 1).numpy(), y.tolist())):
                out = images / split / f"class{label:03d}"
                out.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(out / f"{i:06d}.png", compress_level=1)
        done.write_text("ok")
    return cifar, images


def _overrides(args: argparse.Namespace) -> list[str]:
    return [
        "method.name=dml",
        "method.update=simultaneous",
        "peers=[resnet32, resnet32]",
        "optim.lr=0.1",
        "optim.schedule=constant",
        "data.batch_size=64",
        "data.val_fraction=0",
        "data.crop_padding=4",
        "data.hflip=true",
        "train.epochs=1",
        "train.progress=false",
        "train.deterministic=false",
        # every core, as torch's default gives pytorch-dml: `auto` would subtract the load
        # average, which a benchmark run just before this one leaves behind
        f"train.threads={os.cpu_count() or 1}",
        f"train.device={args.device}",
    ]


def run_dmlkit(args: argparse.Namespace, loader: str) -> float:
    from dmlkit.config import load_config
    from dmlkit.engine.trainer import Trainer

    cifar, images = datasets(Path(args.root), args.train_images, args.test_images)
    data = (
        ["data.name=cifar100", f"data.root={cifar}"]
        if loader == "memory"
        else [
            "data.name=imagefolder",
            f"data.root={images}",
            "data.loader=stream",
            f"data.num_workers={args.workers}",
            f"data.mean={list(MEAN)}",
            f"data.std={list(STD)}",
        ]
    )
    cfg = load_config(None, _overrides(args) + data)
    with tempfile.TemporaryDirectory() as out, warnings_off():
        start = time.perf_counter()
        Trainer(cfg, Path(out) / "run").fit()
        return time.perf_counter() - start


@contextlib.contextmanager
def warnings_off() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic files' MD5s are not the published ones
        yield


def run_pytorch_dml(args: argparse.Namespace) -> float:
    from pydml import DMLTrainer  # the external package: pip install pytorch-dml
    from pydml.trainers.dml import DMLConfig
    from torchvision import transforms
    from torchvision.datasets import CIFAR100

    from dmlkit.models import build_model

    cifar, _ = datasets(Path(args.root), args.train_images, args.test_images)

    import torchvision.datasets.cifar

    # synthetic files: not the published MD5s, which torchvision checks (data and meta file)
    torchvision.datasets.cifar.check_integrity = lambda *a, **k: True

    class SyntheticCIFAR100(CIFAR100):
        def _check_integrity(self) -> bool:
            return True

    device = "cuda" if args.device.startswith("cuda") else "cpu"
    norm = transforms.Normalize(MEAN, STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), norm])
    start = time.perf_counter()
    train = SyntheticCIFAR100(str(cifar), train=True, transform=train_tf)
    test = SyntheticCIFAR100(str(cifar), train=False, transform=test_tf)
    loader = dict(
        num_workers=args.workers, pin_memory=device == "cuda", persistent_workers=args.workers > 0
    )
    train_loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, **loader)
    test_loader = torch.utils.data.DataLoader(test, batch_size=512, **loader)
    models = [build_model("resnet32", 100, 3) for _ in range(2)]
    optimizers = [
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        for m in models
    ]
    trainer = DMLTrainer(
        models, config=DMLConfig(temperature=1.0), device=device, optimizers=optimizers
    )
    with (
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stderr(devnull),
        contextlib.redirect_stdout(devnull),
    ):
        trainer.fit(train_loader, val_loader=test_loader, epochs=1)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> dict[str, Any]:
    variant = args.child
    if variant == "pytorch-dml":
        seconds = run_pytorch_dml(args)
    else:
        seconds = run_dmlkit(args, variant.split()[-1])
    return {"variant": variant, "seconds": seconds}


def _run_child(args: argparse.Namespace, variant: str) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", variant]
    for key in ("root", "device", "workers", "train_images", "test_images"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{variant}: failed ({last})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _have_pytorch_dml() -> bool:
    try:
        import pydml  # noqa: F401
    except ImportError:
        return False
    return True


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# One DML epoch end to end (benchmarks/dml_epoch.py)",
        "",
        f"`{env['command']}` on {env['cpu']} ({env['cores']} cores), device {payload['device']}, "
        f"load average {load_text(env)} at the end, torch "
        f"{env['torch']}, {env['when']}. ResNet-32 x 2, DML simultaneous, batch 64, "
        f"{payload['train_images']:,} training + {payload['test_images']:,} test images, "
        f"{payload['workers']} DataLoader workers, {payload['rounds']} rounds.",
        "",
        "| variant | median (s) | rounds (s) | vs pytorch-dml |",
        "|---|---:|---|---:|",
    ]
    med = payload["median"]
    ref = med.get("pytorch-dml")
    for name, value in med.items():
        rounds = ", ".join(f"{v:.1f}" for v in payload["seconds"][name])
        ratio = f"{ref / value:.2f}x" if ref else "-"
        lines.append(f"| {name} | {value:.1f} | {rounds} | {ratio} |")
    for note in payload["notes"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def figure(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = payload["median"]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.barh(list(med), list(med.values()), color="tab:blue")
    ax.set_xlabel("seconds per epoch, evaluation included (median)")
    ax.set_title(f"ResNet-32 x 2, {payload['train_images']:,} images, {payload['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--root", default="/tmp/dmlkit-epoch-bench", help="where the data is kept")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--tag", default=None, help="results name: dml_epoch-TAG (default: device)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    datasets(Path(args.root), args.train_images, args.test_images)  # written once, untimed
    variants = list(args.variants)
    notes = []
    if "pytorch-dml" in variants and not _have_pytorch_dml():
        variants.remove("pytorch-dml")
        notes.append("pytorch-dml: not installed here (pip install pytorch-dml); not run.")
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:  # side by side in every round: load drifts hit all variants
            result = _run_child(args, v)
            if result is not None:
                seconds[v].append(result["seconds"])
    seconds = {v: s for v, s in seconds.items() if s}
    payload: dict[str, Any] = {
        "device": args.device,
        "workers": args.workers,
        "rounds": args.rounds,
        "train_images": args.train_images,
        "test_images": args.test_images,
        "seconds": seconds,
        "median": {v: statistics.median(s) for v, s in seconds.items()},
        "notes": notes,
        "environment": environment(),
    }
    tag = args.tag or args.device.replace(":", "")
    text = markdown(payload)
    save(Path(args.out), f"dml_epoch-{tag}", payload, text, figure)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
