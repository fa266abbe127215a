"""A mutual step of two small transformers vs two independent steps vs a plain Hugging Face loop.

Two GPT-2-style causal LMs (default: 4 layers, d=256, 4 heads, sequence 256, batch 16) with
random weights, one fixed batch of token ids, AdamW. For every vocabulary size (default 1k, 8k,
32k) three ways to train the two models one step, each on the same batch:

* ``dml``: ``dmlkit.step`` over the two models (one forward each, CE + mimicry per valid token,
  one backward of the summed losses);
* ``2x independent``: ``dmlkit.step`` over each model alone (K = 1: the token cross-entropy);
* ``hf loop``: the textbook loop, ``model(**batch, labels=...).loss.backward()`` per model (the
  model's own shifted cross-entropy).

Reported: the median step time over ``--repeats`` timings of ``--steps`` steps (interleaved
across the cases, so that a change of machine load hits every case alike), tokens per second
(the batch's tokens over the time of a step of *both* models), the ratio to ``2x independent``
(the issue's goal: <= 1.10), the process's peak resident memory for each case run alone in a
fresh process (``--memory``; ``ru_maxrss``), and the ``[B, T, V]`` tensors that dmlkit's loss
keeps for the backward pass beyond the logits (counted with autograd's saved-tensor hooks: the
claim is at most one per peer).

Run it on an idle machine for figures worth quoting; the load average is written beside them::

    python benchmarks/transformer_step.py --out benchmarks/results --tag cpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import environment, load_text  # noqa: E402

CASES = ["dml", "2x independent", "hf loop"]


def build(args: argparse.Namespace, vocab: int) -> tuple[list[Any], list[Any], dict[str, Any]]:
    import transformers

    models, opts = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = transformers.GPT2Config(
            vocab_size=vocab, n_positions=args.seq, n_embd=args.d, n_layer=args.layers,
            n_head=args.heads, use_cache=False,
        )  # fmt: skip
        m = transformers.GPT2LMHeadModel(config).train()
        models.append(m)
        opts.append(torch.optim.AdamW(m.parameters(), lr=1e-4))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return models, opts, batch


def step_fn(case: str, models: list[Any], opts: list[Any], batch: dict[str, Any]) -> Any:
    import dmlkit

    if case == "dml":
        return lambda: dmlkit.step(models, opts, batch)
    if case == "2x independent":
        return lambda: [dmlkit.step([m], [o], batch) for m, o in zip(models, opts)]

    def hf_loop() -> None:
        for m, o in zip(models, opts):
            o.zero_grad(set_to_none=True)
            m(**batch).loss.backward()
            o.step()

    return hf_loop


def saved_bvt(models: list[Any], batch: dict[str, Any], vocab: int) -> int:
    """``[B, T, V]`` tensors dmlkit's loss keeps for backward, beyond the peers' logits."""
    from dmlkit.losses.batches import split_batch
    from dmlkit.losses.sequence import token_dml_losses

    x, y = split_batch(batch, causal=True)
    logits = [m(**x).logits for m in models]
    numel = math.prod(logits[0].shape)
    kept: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.numel() == numel:
            kept.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = sum(token_dml_losses(logits, y))
    loss.backward()
    return len(kept - {z.untyped_storage().data_ptr() for z in logits})


def time_cases(args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    models, opts, batch = build(args, vocab)
    fns = {c: step_fn(c, models, opts, batch) for c in CASES}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {c: [] for c in CASES}
    for _ in range(args.repeats):
        for case, fn in fns.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[case].append((time.perf_counter() - start) / args.steps)
    tokens = args.batch * args.seq
    med = {c: statistics.median(t) for c, t in times.items()}
    return {
        "vocab": vocab,
        "seconds": med,
        "tokens_per_s": {c: tokens / s for c, s in med.items()},
        "ratio_to_independent": {c: s / med["2x independent"] for c, s in med.items()},
        "saved_bvt_tensors": saved_bvt(models, batch, vocab),
    }


def peak_rss(args: argparse.Namespace, vocab: int, case: str) -> float:
    """MiB: the peak resident memory of a fresh process that builds the models and takes
    ``--steps`` steps of ``case``."""
    cmd = [
        sys.executable, __file__, "--child", case, "--vocab", str(vocab),
        "--layers", str(args.layers), "--d", str(args.d), "--heads", str(args.heads),
        "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps),
        "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    models, opts, batch = build(args, args.vocab[0])
    fn = step_fn(args.child, models, opts, batch)
    for _ in range(max(args.steps, 1)):
        fn()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, nargs="+", default=[1000, 8000, 32000])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--memory", action="store_true", help="peak RSS, one process per case")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    rows = []
    for vocab in args.vocab:
        row = time_cases(args, vocab)
        if args.memory:
            row["peak_rss_mib"] = {c: peak_rss(args, vocab, c) for c in CASES}
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = environment()
    shape = (
        f"2 GPT-2 LMs, {args.layers} layers, d={args.d}, {args.heads} heads; batch "
        f"{args.batch} x {args.seq} tokens; AdamW; {args.threads} thread(s)"
    )
    lines = [
        f"# A mutual step of two transformers ({shape})",
        "",
        f"{env['cpu']}, {env['cores']} cores; load average {load_text(env)}; median of "
        f"{args.repeats} x {args.steps} steps. Command: `{env['command']}`",
        "",
        "| V | case | s / step | tokens / s | x 2 independent | peak RSS MiB | saved [B,T,V] |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for c in CASES:
            rss = row.get("peak_rss_mib", {}).get(c)
            lines.append(
                f"| {row['vocab']} | {c} | {row['seconds'][c]:.3f} | "
                f"{row['tokens_per_s'][c]:.0f} | {row['ratio_to_independent'][c]:.2f} | "
                f"{f'{rss:.0f}' if rss is not None else '-'} | "
                f"{row['saved_bvt_tensors'] if c == 'dml' else ''} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"transformer_step-{args.tag}"
    stem.with_suffix(".json").write_text(
        json.dumps({"environment": env, "args": vars(args) | {"out": str(args.out)}, "rows": rows})
    )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
