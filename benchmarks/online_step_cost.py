"""Step cost of ONE, KDCL, OKDDip and PCL relative to DML (CPU, one thread by default).

Each method trains the students of ``dml reproduce digits-online-kd`` (ResNet-8 on 8x8 digits,
3 students; OKDDip 4 branches) on one fixed batch; the median of ``--repeats`` timings of
``--steps`` steps is reported, interleaved across methods so that a change of machine load
hits every method alike. Run it on an idle machine for figures worth quoting; the load at the
time of the run (``os.getloadavg``) is written beside the results.

    python benchmarks/online_step_cost.py --out benchmarks/results/online-step-cost-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from dmlkit.cohort import build_cohort, peer_specs
from dmlkit.experiments import EXPERIMENTS, arm_config
from dmlkit.machine import environment
from dmlkit.methods import build_method, model_kwargs
from dmlkit.models.registry import accepts

ARMS = [
    "independent",
    "dml",
    "dml_e",
    "dml_logits_t3",
    "kdcl",
    "one",
    "okddip",
    "pcl",
    "dml_shared",
]


def build(arm: str, batch: int):  # noqa: ANN201 - a (method, x, y) triple
    exp = EXPERIMENTS.get("digits-online-kd")
    cfg = arm_config(exp, arm, 0, [f"data.batch_size={batch}"])
    specs = peer_specs(cfg, 10, 1, (8, 8))
    for s in specs:  # what the trainer adds: the method's model arguments the model takes
        s.kwargs.update({k: v for k, v in model_kwargs(cfg.method).items() if accepts(s.arch, k)})
    optims = [cfg.peer_optim(i) for i in range(len(specs))]
    cohort = build_cohort("loop", specs, optims, 1.0, torch.device("cpu"), channels_last=False)
    cohort.train()
    method = build_method(cfg, cohort)
    g = torch.Generator().manual_seed(0)
    views = method.member_views()  # kdcl, pcl: one augmented view of the batch per member
    shape = (views, batch, 1, 8, 8) if views else (batch, 1, 8, 8)
    return (
        method,
        torch.randn(*shape, generator=g),
        torch.randint(0, 10, (batch,), generator=g),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {arm: build(arm, args.batch) for arm in ARMS}
    for method, x, y in runs.values():  # warm-up
        method.train_step(x, y)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for arm, (method, x, y) in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                method.train_step(x, y)
            times[arm].append((time.perf_counter() - start) / args.steps)
        load.append(os.getloadavg()[0])
    med = {arm: statistics.median(t) for arm, t in times.items()}
    lines = [
        f"# Online-distillation step cost relative to DML ({args.threads} thread(s), batch "
        f"{args.batch}, ResNet-8 students on 8x8 digits)",
        "",
        f"Load average (1 min) during the run: {min(load):.1f} to {max(load):.1f} on "
        f"{os.cpu_count()} CPUs; median of {args.repeats} x {args.steps} steps.",
        "",
        "| arm | ms / step | relative to dml |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {1000 * med[a]:.2f} | {med[a] / med['dml']:.2f} |" for a in ARMS]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        record = {
            "times_s": times,
            "median_s": med,
            "load": load,
            "args": vars(args) | {"out": str(args.out)},
        }
        record["environment"] = environment("cpu")
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
