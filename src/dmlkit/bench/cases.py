"""The cases of ``dml bench`` and what every measured step shares: the same models, optimizer,
synthetic CIFAR-shaped data and clock for every variant, so that the variants differ only in
how they write the step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

VARIANTS = (
    "textbook",
    "pytorch-dml",
    "loop",
    "loop+cl",
    "loop+compile",
    "loop+cl+compile",
    "loop+bf16",
    "stacked",
    "stacked+compile",
    "stacked+bf16",
    "independent",
    "independent+cl",
)


@dataclass
class Case:
    model: str
    k: int
    batch: int
    variant: str
    device: str
    steps: int = 8
    warmup: int = 3


def plan(profile: str, device: str) -> list[Case]:
    """The cases of a profile: ``quick`` (CPU-sized), ``full`` (every combination)."""
    models, ks, batches = ("resnet32", "mobilenet"), (1, 2, 4), (64, 256)
    cases = []
    for model in models:
        for k in ks:
            for batch in batches:
                for variant in VARIANTS:
                    if (
                        k == 1
                        and variant in ("pytorch-dml",)
                        or (k == 1 and variant.startswith("stacked"))
                    ):
                        continue  # pytorch-dml needs >= 2 models; stacking 1 peer is the loop
                    if profile == "quick" and (
                        batch == 256
                        and k == 4
                        or (("compile" in variant or "bf16" in variant) and (k, batch) != (2, 64))
                    ):
                        continue
                    cases.append(Case(model, k, batch, variant, device))
    return cases


def case_models(case: Case) -> list[torch.nn.Module]:
    from dmlkit.cohort import PeerSpec

    specs = [PeerSpec(f"p{i}", case.model, 100, 3, seed=i + 1) for i in range(case.k)]
    return [s.build().to(case.device) for s in specs]


def case_sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def case_data(case: Case, n_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = case.batch * n_batches
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 100, (n,), generator=g)
    return x, y


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step: Any, case: Case) -> list[float]:
    times = []
    for i in range(case.warmup + case.steps):
        sync_device(case.device)
        t0 = time.perf_counter()
        step(i)
        sync_device(case.device)
        if i >= case.warmup:
            times.append(time.perf_counter() - t0)
    return times


def matmul_peak(device: str, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large fp32 matmul on ``device``: the reference for 'fraction of the machine'."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync_device(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync_device(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)
