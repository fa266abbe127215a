"""One case of ``dml bench``, measured in this process (each case runs in its own process, so
its peak memory is its own): dmlkit's cohorts, the independent baseline, FLOPs per step."""

from __future__ import annotations

import resource
import statistics
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from dmlkit.bench.cases import Case, case_data, case_models, case_sgd, time_steps
from dmlkit.bench.references import pytorch_dml_steps, textbook_steps


def _dmlkit(case: Case) -> list[float]:
    from dmlkit.cohort import Cohort, PeerSpec, StackedCohort
    from dmlkit.config import MethodConfig, OptimConfig
    from dmlkit.data.core import BatchTransform, TensorLoader
    from dmlkit.methods.dml import DML, Precision

    base, *flags = case.variant.split("+")
    specs = [PeerSpec(f"p{i}", case.model, 100, 3, seed=i + 1) for i in range(case.k)]
    optim = [OptimConfig(lr=0.01, schedule="constant")] * case.k
    compile_ = "compile" in flags
    if base == "stacked":
        cohort: Any = StackedCohort(specs, optim, 1, case.device, compile=compile_)
    else:
        cohort = Cohort(specs, optim, 1, case.device, compile=compile_, channels_last="cl" in flags)
    precision = Precision("bf16" if "bf16" in flags else "fp32", torch.device(case.device).type)
    method = DML(cohort, MethodConfig(), precision)
    x, y = case_data(case, case.warmup + case.steps)
    tf = BatchTransform(torch.full((3,), 0.5), torch.full((3,), 0.25), 4, True)
    loader = iter(TensorLoader(x, y, case.batch, tf, train=True).to(torch.device(case.device)))

    def step(_: int) -> None:
        method.train_step(*next(loader))  # the cohort converts the layout (channels_last)

    return time_steps(step, case)


def _independent(case: Case) -> list[float]:
    models = case_models(case)
    opts = [case_sgd(m.parameters()) for m in models]
    x, y = case_data(case, 1)
    xb = (x.float() / 255).to(case.device)
    yb = y.to(case.device)
    if case.variant.endswith("+cl"):
        models = [m.to(memory_format=torch.channels_last) for m in models]
        xb = xb.contiguous(memory_format=torch.channels_last)

    def step(_: int) -> None:
        for m, opt in zip(models, opts):
            loss = F.cross_entropy(m(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return time_steps(step, case)


def _flops_per_peer_step(case: Case) -> float:
    """Forward + backward FLOPs of one peer on one batch: 3 x the counted forward.

    The backward is counted as twice the forward (input gradient + weight gradient), the usual
    convention, rather than by ``FlopCounterMode`` under ``backward()``: its formula for the
    input gradient of a grouped convolution ignores the groups (a depthwise 3x3 layer at 64
    channels came out 64x too large), which put MobileNet above 100 % of the matmul peak. The
    forward count respects the groups (tests/test_bench.py).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = case_models(Case(case.model, 1, case.batch, "x", case.device))[0]
    x = torch.randn(case.batch, 3, 32, 32, device=case.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return 3.0 * float(counter.get_total_flops())


def run_case(case: Case) -> dict[str, Any]:
    """Measure one case in this process."""
    torch.manual_seed(0)
    fn = {
        "textbook": textbook_steps,
        "pytorch-dml": pytorch_dml_steps,
        "independent": _independent,
        "independent+cl": _independent,
    }.get(case.variant, _dmlkit)
    if case.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = fn(case)
    step = statistics.median(times)
    if case.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = _flops_per_peer_step(case) * case.k
    return {
        **asdict(case),
        "step_s": step,
        "step_s_all": times,
        "images_per_s_per_peer": case.batch / step,
        "peak_mem_mb": peak_mb,
        "flop_per_step": flops,
        "flops_per_s": flops / step,
    }
