"""Why dmlkit trains channels-last on the CPU too, and what keeping gradients in that layout buys.

Two measurements, each an A/B interleaved step by step in one process (the machine's noise then
hits both sides alike):

1. ``threshold_backward`` (the ReLU's backward) on a [64, 16, 32, 32] activation: gradient and
   activation in the same layout, and a contiguous (NCHW) gradient meeting a channels-last
   activation, which is what a plain slice shortcut or ``adaptive_avg_pool2d`` hand back.
2. One ResNet-32 training step (SGD, batch 64, 32x32, 100 classes) in four forms: NCHW and
   channels-last, each with the block code dmlkit had before (slice shortcut, out-of-place
   ReLU and add, ``adaptive_avg_pool2d``) and with today's (``dmlkit.models.cifar``).

    python benchmarks/layout.py --out benchmarks/results/layout-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dmlkit.cohort import PeerSpec
from dmlkit.machine import cpu_name
from dmlkit.models import cifar


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def relu_backward() -> dict[str, float]:
    cl = torch.channels_last
    act = torch.randn(64, 16, 32, 32).contiguous(memory_format=cl)
    grad_cl = torch.randn(64, 16, 32, 32).contiguous(memory_format=cl)
    grad_nchw = grad_cl.contiguous()
    tb = torch.ops.aten.threshold_backward
    return _interleaved(
        {
            "same layout (channels-last)": lambda: tb(grad_cl, act, 0),
            "NCHW gradient, channels-last activation": lambda: tb(grad_nchw, act, 0),
        },
        repeats=200,
        warmup=10,
    )


def _old_block_forward(self: cifar.BasicBlock, x: torch.Tensor) -> torch.Tensor:
    """The block as it was: slice shortcut, out-of-place ReLU and add."""
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
    if self.pad:
        short = F.pad(short, (0, 0, 0, 0, 0, self.pad))
    return F.relu(out + short)


def _old_resnet_forward(self: cifar.CifarResNet, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(self.stem(x))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_steps(steps: int) -> dict[str, float]:
    new_block, new_resnet = cifar.BasicBlock.forward, cifar.CifarResNet.forward

    def make(channels_last: bool, old: bool) -> Callable[[], None]:
        model = PeerSpec("p", "resnet32", 100, 3, seed=1).build()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 3, 32, 32, generator=g)
        y = torch.randint(0, 100, (64,), generator=g)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)

        def step() -> None:
            cifar.BasicBlock.forward = _old_block_forward if old else new_block
            cifar.CifarResNet.forward = _old_resnet_forward if old else new_resnet
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    try:
        return _interleaved(
            {
                "NCHW, old block code": make(False, True),
                "NCHW, current block code": make(False, False),
                "channels-last, old block code": make(True, True),
                "channels-last, current block code": make(True, False),
            },
            repeats=steps,
            warmup=3,
        )
    finally:
        cifar.BasicBlock.forward, cifar.CifarResNet.forward = new_block, new_resnet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=15, help="timed ResNet-32 steps per form")
    p.add_argument("--out", help="write the figures as JSON here (and the table as .md)")
    args = p.parse_args(argv)
    relu = relu_backward()
    steps = resnet_steps(args.steps)
    cpu = cpu_name()
    lines = [
        f"# Memory layout on {cpu} ({os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)",
        "",
        "Command: `python benchmarks/layout.py " + " ".join(argv or sys.argv[1:]) + "`",
        "",
        "| ReLU backward, [64, 16, 32, 32] | ms | vs same layout |",
        "|---|---|---|",
    ]
    base = relu["same layout (channels-last)"]
    lines += [f"| {k} | {1000 * v:.3f} | {v / base:.1f}x |" for k, v in relu.items()]
    lines += ["", "| ResNet-32 training step, batch 64 | ms | vs NCHW, old |", "|---|---|---|"]
    base = steps["NCHW, old block code"]
    lines += [f"| {k} | {1000 * v:.1f} | {base / v:.2f}x faster |" for k, v in steps.items()]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        }
        out.write_text(
            json.dumps({"meta": meta, "relu_backward_s": relu, "resnet32_step_s": steps}, indent=2)
        )
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
