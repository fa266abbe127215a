"""Throughput of a DML step, measured side by side in one run (``dml bench``).

Variants, all on the same model, batch size and synthetic CIFAR-shaped data (uint8 32x32x3,
100 classes, random crop + flip augmentation where the variant has a data path):

* ``textbook``    K forwards, then per peer: its loss (KL against the others' detached
                  predictions), zero_grad, backward, step; batches from a torch DataLoader. The
                  way most reimplementations are written.
* ``pytorch-dml`` the ``pytorch-dml`` package's ``DMLTrainer.train_epoch`` (an external peer;
                  ``pip install pytorch-dml``), temperature 1, same optimizers.
* ``loop``        dmlkit's loop cohort + ``DML`` simultaneous step, in-memory batches.
* ``stacked``     dmlkit's stacked (vmap) cohort.
* ``+compile``, ``+bf16``, ``+cl`` (channels_last) variants of the two.
* ``independent`` K separate single-model steps (forward, CE, backward, step): the cost a
                  cohort should match.

Each case runs in its own process, so its peak memory (``ru_maxrss`` on the CPU, the CUDA
allocator's peak on a GPU) is its own. The matmul peak of the device is measured in the same
run, and each case reports model FLOP/s (forward + backward, counted by
``torch.utils.flop_counter``) as a fraction of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

VARIANTS = (
    "textbook", "pytorch-dml", "loop", "loop+cl", "loop+compile", "loop+bf16",
    "stacked", "stacked+compile", "stacked+bf16", "independent",
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


# ------------------------------------------------------------------------------------------------
# one case (runs inside its own process)


def _models(case: Case) -> list[torch.nn.Module]:
    from dmlkit.cohort import PeerSpec

    specs = [PeerSpec(f"p{i}", case.model, 100, 3, seed=i + 1) for i in range(case.k)]
    return [s.build().to(case.device) for s in specs]


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _data(case: Case, n_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = case.batch * n_batches
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 100, (n,), generator=g)
    return x, y


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_steps(step: Any, case: Case) -> list[float]:
    times = []
    for i in range(case.warmup + case.steps):
        _sync(case.device)
        t0 = time.perf_counter()
        step(i)
        _sync(case.device)
        if i >= case.warmup:
            times.append(time.perf_counter() - t0)
    return times


def _textbook(case: Case) -> list[float]:
    from torch.utils.data import DataLoader, TensorDataset

    models = _models(case)
    opts = [_sgd(m.parameters()) for m in models]
    x, y = _data(case, case.warmup + case.steps)
    mean = torch.tensor([0.507, 0.487, 0.441]).view(1, 3, 1, 1)
    std = torch.tensor([0.267, 0.256, 0.276]).view(1, 3, 1, 1)
    loader = iter(DataLoader(TensorDataset(x, y), batch_size=case.batch, shuffle=True))

    def step(_: int) -> None:
        xb, yb = next(loader)
        xb = ((xb.float() / 255 - mean) / std).to(case.device)
        yb = yb.to(case.device)
        outs = [m(xb) for m in models]
        for k, (opt, out) in enumerate(zip(opts, outs)):
            loss = F.cross_entropy(out, yb)
            for j, other in enumerate(outs):
                if j != k:
                    loss = loss + F.kl_div(
                        F.log_softmax(out, 1), F.softmax(other.detach(), 1), reduction="batchmean"
                    ) / max(case.k - 1, 1)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return _time_steps(step, case)


def _pytorch_dml(case: Case) -> list[float]:
    from pydml import DMLTrainer  # the external package: pip install pytorch-dml
    from pydml.trainers.dml import DMLConfig
    from torch.utils.data import DataLoader, TensorDataset

    models = _models(case)
    trainer = DMLTrainer(
        models, config=DMLConfig(temperature=1.0), device=case.device,
        optimizers=[_sgd(m.parameters()) for m in models],
    )
    x, y = _data(case, 1)
    xf = x.float() / 255
    times = []
    # train_epoch over a one-batch loader = one step, timed with its own overheads
    loader = DataLoader(TensorDataset(xf, y), batch_size=case.batch)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # its tqdm bar
        for i in range(case.warmup + case.steps):
            _sync(case.device)
            t0 = time.perf_counter()
            trainer.train_epoch(loader, i)
            _sync(case.device)
            if i >= case.warmup:
                times.append(time.perf_counter() - t0)
    return times


def _dmlkit(case: Case) -> list[float]:
    from dmlkit.cohort import Cohort, PeerSpec, StackedCohort
    from dmlkit.config import MethodConfig, OptimConfig
    from dmlkit.data.core import BatchTransform, TensorLoader
    from dmlkit.methods import DML, Precision

    base, *flags = case.variant.split("+")
    specs = [PeerSpec(f"p{i}", case.model, 100, 3, seed=i + 1) for i in range(case.k)]
    optim = [OptimConfig(lr=0.01, schedule="constant")] * case.k
    compile_ = "compile" in flags
    if base == "stacked":
        cohort: Any = StackedCohort(specs, optim, 1, case.device, compile=compile_)
    else:
        cohort = Cohort(specs, optim, 1, case.device, compile=compile_,
                        channels_last="cl" in flags)
    precision = Precision("bf16" if "bf16" in flags else "fp32", torch.device(case.device).type)
    method = DML(cohort, MethodConfig(), precision)
    x, y = _data(case, case.warmup + case.steps)
    tf = BatchTransform(torch.full((3,), 0.5), torch.full((3,), 0.25), 4, True)
    loader = iter(TensorLoader(x, y, case.batch, tf, train=True).to(torch.device(case.device)))

    def step(_: int) -> None:
        xb, yb = next(loader)
        if "cl" in flags:
            xb = xb.contiguous(memory_format=torch.channels_last)
        method.train_step(xb, yb)

    return _time_steps(step, case)


def _independent(case: Case) -> list[float]:
    models = _models(case)
    opts = [_sgd(m.parameters()) for m in models]
    x, y = _data(case, 1)
    xb = (x.float() / 255).to(case.device)
    yb = y.to(case.device)

    def step(_: int) -> None:
        for m, opt in zip(models, opts):
            loss = F.cross_entropy(m(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return _time_steps(step, case)


def _flops_per_peer_step(case: Case) -> float:
    """Forward + backward FLOPs of one peer on one batch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _models(Case(case.model, 1, case.batch, "x", case.device))[0]
    x = torch.randn(case.batch, 3, 32, 32, device=case.device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


def run_case(case: Case) -> dict[str, Any]:
    """Measure one case in this process."""
    torch.manual_seed(0)
    fn = {"textbook": _textbook, "pytorch-dml": _pytorch_dml, "independent": _independent}.get(
        case.variant, _dmlkit
    )
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


# ------------------------------------------------------------------------------------------------
# the whole run


def matmul_peak(device: str, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large fp32 matmul on ``device``: the reference for 'fraction of the machine'."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def plan(profile: str, device: str) -> list[Case]:
    """The cases of a profile: ``quick`` (CPU-sized), ``full`` (every combination)."""
    models, ks, batches = ("resnet32", "mobilenet"), (1, 2, 4), (64, 256)
    cases = []
    for model in models:
        for k in ks:
            for batch in batches:
                for variant in VARIANTS:
                    if k == 1 and variant in ("pytorch-dml",) or (
                        k == 1 and variant.startswith("stacked")
                    ):
                        continue  # pytorch-dml needs >= 2 models; stacking 1 peer is the loop
                    if profile == "quick" and (
                        batch == 256 and k == 4
                        or (("compile" in variant or "bf16" in variant) and (k, batch) != (2, 64))
                    ):
                        continue
                    cases.append(Case(model, k, batch, variant, device))
    return cases


def _environment(device: str) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _table(results: list[dict[str, Any]], peak: float) -> str:
    head = ("| model | K | batch | variant | step ms | img/s/peer | vs independent | "
            "vs pytorch-dml | peak MB | % of matmul peak |")
    lines = [head, "|" + "---|" * 10]
    by = {(r["model"], r["k"], r["batch"], r["variant"]): r for r in results if "step_s" in r}
    for r in results:
        key = (r["model"], r["k"], r["batch"])
        if "error" in r:
            lines.append(f"| {r['model']} | {r['k']} | {r['batch']} | {r['variant']} | "
                         f"failed: {r['error'][:60]} | | | | | |")
            continue
        ind = by.get((*key, "independent"))
        ext = by.get((*key, "pytorch-dml"))
        rel_ind = f"{r['step_s'] / ind['step_s']:.2f}x" if ind else "-"
        rel_ext = f"{ext['step_s'] / r['step_s']:.2f}x faster" if ext else "-"
        lines.append(
            f"| {r['model']} | {r['k']} | {r['batch']} | {r['variant']} | "
            f"{1000 * r['step_s']:.1f} | {r['images_per_s_per_peer']:.0f} | {rel_ind} | "
            f"{rel_ext} | {r['peak_mem_mb']:.0f} | {100 * r['flops_per_s'] / peak:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dml bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile", choices=["quick", "full"], default=None,
                   help="quick: the CPU-sized subset (default on CPU); full: every case")
    p.add_argument("--models", default=None, help="comma list (default resnet32,mobilenet)")
    p.add_argument("--variants", default=None, help="comma list of variants to keep")
    p.add_argument("--ks", default=None, help="comma list of cohort sizes")
    p.add_argument("--batches", default=None, help="comma list of batch sizes")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results", help="folder for JSON + Markdown")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = p.parse_args(argv)

    if args.case:
        case = Case(**json.loads(args.case))
        try:
            print(json.dumps(run_case(case)))
        except Exception as exc:  # noqa: BLE001 - reported in the table, not hidden
            print(json.dumps({**asdict(case), "error": f"{type(exc).__name__}: {exc}"}))
        return 0

    profile = args.profile or ("quick" if args.device == "cpu" else "full")
    cases = plan(profile, args.device)
    keep = {
        "model": args.models and args.models.split(","),
        "variant": args.variants and args.variants.split(","),
        "k": args.ks and [int(v) for v in args.ks.split(",")],
        "batch": args.batches and [int(v) for v in args.batches.split(",")],
    }
    for field, allowed in keep.items():
        if allowed:
            cases = [c for c in cases if getattr(c, field) in allowed]
    for c in cases:
        c.steps, c.warmup = args.steps, args.warmup
    peak = matmul_peak(args.device)
    print(f"matmul peak ({args.device}, fp32 2048^2): {peak / 1e9:.1f} GFLOP/s; {len(cases)} cases")
    results = []
    for i, case in enumerate(cases):
        proc = subprocess.run(
            [sys.executable, "-m", "dmlkit.bench", "--case", json.dumps(asdict(case))],
            capture_output=True, text=True,
        )
        try:
            res = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            res = {**asdict(case), "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        results.append(res)
        shown = f"{1000 * res['step_s']:.1f} ms/step" if "step_s" in res else res["error"][:80]
        print(f"[{i + 1}/{len(cases)}] {case.model} K={case.k} B={case.batch} "
              f"{case.variant}: {shown}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput-{args.device.split(':')[0]}"
    command = "dml bench " + " ".join(argv if argv is not None else sys.argv[1:])
    env = _environment(args.device)
    payload = {"command": command, "environment": env, "matmul_peak_flops": peak,
               "profile": profile, "results": results}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    table = _table(results, peak)
    md = (f"# dml bench on {args.device}\n\nCommand: `{command.strip()}`\n\n"
          f"Machine: {env.get('gpu') or env['cpu']}, {env['cpu_count']} CPUs, "
          f"torch {env['torch']} ({env['torch_threads']} threads), Python {env['python']}. "
          f"Matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s.\n\n"
          f"Median of {args.steps} steps after {args.warmup} warm-up steps; each case in its "
          f"own process.\n\n{table}\n")
    (out / f"{stem}.md").write_text(md)
    print()
    print(table)
    print(f"\nsaved {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
