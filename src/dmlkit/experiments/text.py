"""Text recipes: tiny transformers on the Python standard library, independent vs DML.

Both build on data that needs no download (:mod:`dmlkit.data.stdlib_text`: this Python's own
standard library, split by file, with a fingerprint) and on ``hf-config:`` transformers with
random weights, small enough to train on 2 CPU cores in minutes:

* ``text-stdlib``: which of 8 standard-library packages a 4-line snippet of source comes from
  (byte tokens), a 2-layer BERT-style encoder and a 2-layer GPT-2-style decoder; test accuracy.
* ``text-stdlib-lm``: a byte-level causal language model of the same files, two 2-layer GPT-2s;
  test bits per byte (lower is better) and perplexity per byte.

Both arms share every seed (initialisation and data order): the gain is paired by seed and
reported with its 95 % t-interval (:func:`dmlkit.analysis.stats.ci95`), for every peer and for
the ensemble (the mean of the peers' probabilities).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlkit.analysis.stats import ci95, mean_std
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.experiments.core import (
    Experiment,
    RunResult,
    register_experiment,
    write_results_files,
)

ARMS = {
    "independent": {"method": {"name": "independent"}},
    "dml": {"method": {"name": "dml", "update": "simultaneous"}},
}

# d = 64, 2 layers, 2 heads: ~0.1 M parameters each; byte vocabulary (258).
ENCODER = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}
DECODER = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128}
OPTIM = {
    "name": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.01,
    "schedule": "cosine",
    "warmup_epochs": 0.5,
    "nesterov": False,
}

TEXT_STDLIB = register_experiment(
    Experiment(
        name="text-stdlib",
        description="stdlib snippets, 8 packages: a 2-layer encoder and a 2-layer decoder "
        "(byte tokens, d=64), independent vs DML",
        base={
            "data": {
                "name": "stdlib-modules",
                "batch_size": 32,
                "text": {
                    "tokenizer": "byte",
                    "max_length": 96,
                    "stdlib_classes": 8,
                    "snippet_lines": 4,
                    "snippets_per_class": 100,
                },
            },
            "peers": [
                {"arch": "hf-config:bert", "name": "encoder", "kwargs": ENCODER},
                {"arch": "hf-config:gpt2", "name": "decoder", "kwargs": DECODER},
            ],
            "optim": OPTIM,
            "train": {"epochs": 15, "eval_every": 5},
        },
        arms=ARMS,
        seeds=5,
        report=lambda exp, results, out, scale: text_report(exp, results, out, scale),
    )
)

TEXT_STDLIB_LM = register_experiment(
    Experiment(
        name="text-stdlib-lm",
        description="stdlib source as bytes: two 2-layer GPT-2s (d=64, 128-byte blocks), "
        "independent vs DML; bits per byte",
        base={
            "data": {
                "name": "stdlib-lm",
                "batch_size": 16,
                "text": {
                    "tokenizer": "byte",
                    "max_length": 128,
                    "stdlib_classes": 8,
                    "lm_blocks": 600,
                },
            },
            "peers": [
                {"arch": "hf-config:gpt2", "name": "gpt_a", "kwargs": DECODER},
                {"arch": "hf-config:gpt2", "name": "gpt_b", "kwargs": DECODER},
            ],
            "optim": OPTIM,
            "train": {"epochs": 4, "eval_every": 2},
        },
        arms=ARMS,
        seeds=5,
        report=lambda exp, results, out, scale: text_report(exp, results, out, scale),
    )
)


def _metric(summary: dict[str, Any]) -> tuple[str, str, float, bool]:
    """The metric the recipe reports: key, label, display scale, higher is better."""
    metrics = summary[ENSEMBLE]["metrics"]
    if "perplexity" in metrics:
        key = "bits_per_byte" if "bits_per_byte" in metrics else "bits_per_token"
        return key, key.replace("_", " "), 1.0, False
    return "top1", "top-1 %", 100.0, True


def _value(summary: dict[str, Any], member: str, key: str) -> float:
    if member == ENSEMBLE:
        return float(summary[ENSEMBLE]["metrics"][key])
    for p in summary["peers"]:
        if p["name"] == member:
            return float(p["metrics"][key])
    raise KeyError(member)


def text_report(exp: Experiment, results: list[RunResult], out: Path, scale: float) -> str:
    """Every member's metric per arm (mean ± std over seeds), the paired gain of each arm over
    the baseline with its 95 % t-interval; results.md, results.csv and plots/text-gains.png."""
    by = {(r.arm, r.seed): r.summary for r in results}
    seeds = sorted({r.seed for r in results})
    first = results[0].summary
    key, label, factor, higher = _metric(first)
    members = [p["name"] for p in first["peers"]] + [ENSEMBLE]
    arms = list(exp.arms)
    others = [a for a in arms if a != exp.baseline]
    values = {
        m: {a: [factor * _value(by[(a, s)], m, key) for s in seeds if (a, s) in by] for a in arms}
        for m in members
    }
    header = ["member", *arms, *[f"{a} − {exp.baseline} (95 % CI)" for a in others]]
    lines = [
        f"Test {label} over {len(seeds)} seed(s), mean ± std; the difference is paired by seed "
        f"({'higher' if higher else 'lower'} is better).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    gains: dict[str, dict[str, list[float]]] = {}
    csv_rows = []
    for m in members:
        cells = [m, *[mean_std(values[m][a], 3) for a in arms]]
        for a in others:
            diffs = [
                factor * (_value(by[(a, s)], m, key) - _value(by[(exp.baseline, s)], m, key))
                for s in seeds
                if (a, s) in by and (exp.baseline, s) in by
            ]
            gains.setdefault(m, {})[a] = diffs
            mean, half = ci95(diffs) if diffs else (float("nan"), float("nan"))
            cells.append(f"{mean:+.3f} ± {half:.3f}" if len(diffs) > 1 else f"{mean:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
        for a in arms:
            for s, v in zip([s for s in seeds if (a, s) in by], values[m][a]):
                csv_rows.append([m, a, s, key, f"{v:.6f}"])
    table = "\n".join(lines)
    if scale != 1.0:
        table = f"Smoke run at --scale {scale:g} (epochs and data x {scale:g}).\n\n{table}"
    write_results_files(exp, out, table, ["member", "arm", "seed", "metric", "value"], csv_rows)
    _plot(values, gains, arms, members, label, out / "plots" / "text-gains.png")
    return table


def _plot(
    values: dict[str, dict[str, list[float]]],
    gains: dict[str, dict[str, list[float]]],
    arms: list[str],
    members: list[str],
    label: str,
    path: Path,
) -> None:
    from dmlkit.analysis.plots import plot_bars

    panels = [
        {"values": values, "groups": arms, "ylabel": label, "title": f"test {label} per arm"},
        {
            "values": gains,
            "groups": [a for a in arms if a in next(iter(gains.values()), {})],
            "ylabel": f"Δ {label}",
            "title": "paired difference vs independent",
            "hline": 0.0,
        },
    ]
    plot_bars(panels, members, path)
