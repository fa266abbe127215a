"""Throughput of a DML step, measured side by side in one run (``dml bench``).

Variants, all on the same model, batch size and synthetic CIFAR-shaped data (uint8 32x32x3,
100 classes, random crop + flip augmentation where the variant has a data path):

* ``textbook``    K forwards, then per peer: its loss (KL against the others' detached
                  predictions), zero_grad, backward, step; batches from a torch DataLoader. The
                  way most reimplementations are written.
* ``pytorch-dml`` the ``pytorch-dml`` package's ``DMLTrainer.train_epoch`` (an external peer;
                  ``pip install pytorch-dml``), temperature 1, same optimizers.
* ``loop``        dmlkit's loop cohort + ``DML`` simultaneous step, in-memory batches with
                  random crop + flip (the data path is inside the timed step), NCHW layout.
* ``loop+cl``     the same with channels-last weights and inputs: what ``dml train`` runs by
                  default (``train.channels_last: true``).
* ``stacked``     dmlkit's stacked (vmap) cohort.
* ``+compile``, ``+bf16`` variants of the two.
* ``independent`` K separate single-model steps (forward, CE, backward, step) on a fixed
                  batch, NCHW: the cost a cohort should match, written the plain way.
* ``independent+cl`` the same in channels-last: the cost at equal layout.

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

from dmlkit.machine import environment

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
        models,
        config=DMLConfig(temperature=1.0),
        device=case.device,
        optimizers=[_sgd(m.parameters()) for m in models],
    )
    x, y = _data(case, case.warmup + case.steps)
    loader = DataLoader(TensorDataset(x.float() / 255, y), batch_size=case.batch)
    stamps: list[float] = []

    class Timed:
        """The loader, stamping the clock as each batch is asked for: the time between two
        requests is one whole step of the trainer, its per-batch overheads included."""

        def __len__(self) -> int:
            return len(loader)

        def __iter__(self) -> Any:
            for batch in loader:
                _sync(case.device)
                stamps.append(time.perf_counter())
                yield batch
            _sync(case.device)
            stamps.append(time.perf_counter())

    # one epoch over all the batches, as the trainer is meant to be used (its per-epoch
    # set-up is then paid once, not once per timed step)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # its tqdm bar
        trainer.train_epoch(Timed(), 0)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return steps[case.warmup :]


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
        cohort = Cohort(specs, optim, 1, case.device, compile=compile_, channels_last="cl" in flags)
    precision = Precision("bf16" if "bf16" in flags else "fp32", torch.device(case.device).type)
    method = DML(cohort, MethodConfig(), precision)
    x, y = _data(case, case.warmup + case.steps)
    tf = BatchTransform(torch.full((3,), 0.5), torch.full((3,), 0.25), 4, True)
    loader = iter(TensorLoader(x, y, case.batch, tf, train=True).to(torch.device(case.device)))

    def step(_: int) -> None:
        method.train_step(*next(loader))  # the cohort converts the layout (channels_last)

    return _time_steps(step, case)


def _independent(case: Case) -> list[float]:
    models = _models(case)
    opts = [_sgd(m.parameters()) for m in models]
    x, y = _data(case, 1)
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

    return _time_steps(step, case)


def _flops_per_peer_step(case: Case) -> float:
    """Forward + backward FLOPs of one peer on one batch: 3 x the counted forward.

    The backward is counted as twice the forward (input gradient + weight gradient), the usual
    convention, rather than by ``FlopCounterMode`` under ``backward()``: its formula for the
    input gradient of a grouped convolution ignores the groups (a depthwise 3x3 layer at 64
    channels came out 64x too large), which put MobileNet above 100 % of the matmul peak. The
    forward count respects the groups (tests/test_bench.py).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = _models(Case(case.model, 1, case.batch, "x", case.device))[0]
    x = torch.randn(case.batch, 3, 32, 32, device=case.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return 3.0 * float(counter.get_total_flops())


def run_case(case: Case) -> dict[str, Any]:
    """Measure one case in this process."""
    torch.manual_seed(0)
    fn = {
        "textbook": _textbook,
        "pytorch-dml": _pytorch_dml,
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


# ------------------------------------------------------------------------------------------------
# the whole run


def _run_in_subprocess(case: Case) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "dmlkit.bench", "--case", json.dumps(asdict(case))],
        capture_output=True,
        text=True,
    )
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {**asdict(case), "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}


def median_round(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """One measurement repeated in several rounds -> the round with the median ``key``.

    The median round, not the best: the figure stays a typical one on a shared machine.
    ``round_<key>`` keeps every round's value for the record; rounds without ``key`` (failed)
    are left out of the choice, and if every round failed the first is returned as it is.
    """
    ok = sorted((r for r in runs if key in r), key=lambda r: r[key])
    if not ok:
        return runs[0]
    merged = dict(ok[(len(ok) - 1) // 2])
    merged[f"round_{key}"] = [r.get(key) for r in runs]
    return merged


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


def _table(results: list[dict[str, Any]], peak: float) -> str:
    head = (
        "| model | K | batch | variant | step ms | img/s/peer | vs independent | "
        "vs independent+cl | vs pytorch-dml | peak MB | % of matmul peak |"
    )
    lines = [head, "|" + "---|" * 11]
    by = {(r["model"], r["k"], r["batch"], r["variant"]): r for r in results if "step_s" in r}

    def ratio(r: dict[str, Any], ref: dict[str, Any] | None) -> str:
        return f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"

    for r in results:
        key = (r["model"], r["k"], r["batch"])
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['k']} | {r['batch']} | {r['variant']} | "
                f"failed: {r['error'][:60]} | | | | | | |"
            )
            continue
        ext = by.get((*key, "pytorch-dml"))
        rel_ext = f"{ext['step_s'] / r['step_s']:.2f}x faster" if ext else "-"
        lines.append(
            f"| {r['model']} | {r['k']} | {r['batch']} | {r['variant']} | "
            f"{1000 * r['step_s']:.1f} | {r['images_per_s_per_peer']:.0f} | "
            f"{ratio(r, by.get((*key, 'independent')))} | "
            f"{ratio(r, by.get((*key, 'independent+cl')))} | "
            f"{rel_ext} | {r['peak_mem_mb']:.0f} | {100 * r['flops_per_s'] / peak:.0f} |"
        )
    return "\n".join(lines)


def markdown(payload: dict[str, Any]) -> str:
    """The Markdown page of one ``dml bench`` run (from its JSON payload)."""
    env, peak, results = payload["environment"], payload["matmul_peak_flops"], payload["results"]
    first = results[0] if results else {"steps": "?", "warmup": "?"}
    return (
        f"# dml bench on {env['device']}\n\nCommand: `{payload['command'].strip()}`\n\n"
        f"Machine: {env.get('gpu') or env['cpu']}, {env['cpu_count']} CPUs, "
        f"torch {env['torch']} ({env['torch_threads']} threads), Python {env['python']}. "
        f"Matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s.\n\n"
        f"Median of {first['steps']} steps after {first['warmup']} warm-up steps; each case in "
        f"its own process; {payload.get('rounds', 1)} round(s) of all cases one after another, "
        f"the median round reported (every round's figure is in the JSON). FLOPs: 3 x the "
        f"forward's, counted by torch.utils.flop_counter.\n\n{_table(results, peak)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dml bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--profile",
        choices=["quick", "full"],
        default=None,
        help="quick: the CPU-sized subset (default on CPU); full: every case",
    )
    p.add_argument("--models", default=None, help="comma list (default resnet32,mobilenet)")
    p.add_argument("--variants", default=None, help="comma list of variants to keep")
    p.add_argument("--ks", default=None, help="comma list of cohort sizes")
    p.add_argument("--batches", default=None, help="comma list of batch sizes")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case this many times, round by round; report the "
        "median round (use 3+ on a shared machine)",
    )
    p.add_argument("--out", default="benchmarks/results", help="folder for JSON + Markdown")
    p.add_argument(
        "--name", default=None, help="file stem of the results (default throughput-DEVICE)"
    )
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
    rounds: list[list[dict[str, Any]]] = []
    peaks = [peak]
    for r in range(args.rounds):
        if r:
            peaks.append(matmul_peak(args.device))
        # Whole rounds, one after another: a burst of load on a shared machine then hits one
        # round of every case, not every round of one case.
        rounds.append([])
        for i, case in enumerate(cases):
            res = _run_in_subprocess(case)
            rounds[-1].append(res)
            shown = f"{1000 * res['step_s']:.1f} ms/step" if "step_s" in res else res["error"][:80]
            print(
                f"[round {r + 1}/{args.rounds}, {i + 1}/{len(cases)}] {case.model} K={case.k} "
                f"B={case.batch} {case.variant}: {shown}",
                flush=True,
            )
    results = [median_round([rnd[i] for rnd in rounds], "step_s") for i in range(len(cases))]
    peak = statistics.median(peaks)  # per round, like the cases
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"throughput-{args.device.split(':')[0]}"
    command = "dml bench " + " ".join(argv if argv is not None else sys.argv[1:])
    env = environment(args.device)
    payload = {
        "command": command,
        "environment": env,
        "matmul_peak_flops": peak,
        "profile": profile,
        "rounds": args.rounds,
        "results": results,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text(markdown(payload))
    table = _table(results, peak)
    print()
    print(table)
    print(f"\nsaved {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
