"""The Markdown tables of ``dml analyze``: every measurement aggregated per label (the arms).

Each table is the mean ± std over the runs (seeds) and peers of a label; ``dml report`` shows
them under its figures and ``summary.md`` holds them all.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmlkit.analysis.runs import order_labels
from dmlkit.analysis.stats import MISSING, mean_std, percent
from dmlkit.engine.evaluation import ENSEMBLE


@dataclass
class ArmAnalyses:
    """The per-run results of ``dml analyze``, grouped by arm label, arms in display order
    (not to be confused with :class:`~dmlkit.analysis.runs.SeedGroup`: runs, before analysis)."""

    labels: list[str]
    peers: list[str]
    by_label: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, results: list[dict[str, Any]]) -> ArmAnalyses:
        methods = {r["label"]: r["method"] for r in results}
        labels = order_labels([r["label"] for r in results], methods)
        peers = list(dict.fromkeys(p for r in results for p in r["peers"]))
        by_label = {lab: [r for r in results if r["label"] == lab] for lab in labels}
        return cls(labels, peers, by_label)


def noise_increase(runs: list[dict[str, Any]], peer: str | None) -> np.ndarray:
    """``[R*D, S]`` loss increases of ``peer`` (None: every peer) over the runs and draws."""
    rows = []
    for r in runs:
        for name, rec in r["noise"]["peers"].items():
            if peer is None or name == peer:
                rows.append(np.asarray(rec["losses"]).T - rec["base"])
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def _early_table(g: ArmAnalyses, epochs: Sequence[int] = (1, 2, 3, 5, 10)) -> str:
    """The first epochs, where a collapse shows: training CE / mimicry term per label."""
    shown = [
        e
        for e in epochs
        if any(e in c["epoch"] for runs in g.by_label.values() for r in runs
               for c in r["curves"].values())
    ]  # fmt: skip
    lines = [
        "| label | " + " | ".join(f"epoch {e}" for e in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for lab in g.labels:
        cells = []
        for e in shown:
            ce, mim = [], []
            for r in g.by_label[lab]:
                for c in r["curves"].values():
                    if e in c["epoch"]:
                        i = c["epoch"].index(e)
                        ce.append(c["ce"][i])
                        mim.append(c["mimicry"][i])
            cells.append(
                f"{statistics.fmean(ce):.2f} / {statistics.fmean(mim):.2f}" if ce else MISSING
            )
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return (
        "The first epochs: training CE / mimicry term, mean over runs and peers (a cohort "
        "whose CE sits near log C with a mimicry term near 0 has collapsed onto a shared, "
        "uninformative prediction).\n\n" + "\n".join(lines)
    )


def _loss_table(g: ArmAnalyses) -> str:
    lines = [
        "| label | runs | final training CE | final training mimicry KL | max mimicry KL "
        "(epoch mean) | dead ReLU units % | test top-1 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for lab in g.labels:
        runs = g.by_label[lab]
        curves = [c for r in runs for c in r["curves"].values()]
        ce = [c["ce"][-1] for c in curves if c["ce"]]
        mim = [c["mimicry"][-1] for c in curves if c["mimicry"]]
        peak = [max(c["mimicry"]) for c in curves if c["mimicry"]]
        dead = [v for r in runs for v in r.get("dead_units", {}).values()]
        top1 = [m["top1"] for r in runs for p, m in r["test"].items() if p != ENSEMBLE]
        lines.append(
            f"| {lab} | {len(runs)} | {mean_std(ce, 4)} | {mean_std(mim, 4)} "
            f"| {mean_std(peak, 3)} | {mean_std(dead, 1, scale=100)} "
            f"| {mean_std(top1, 2, scale=100)} |"
        )
    return (
        "Per peer, mean ± std over runs and peers: the last epoch's training CE and mimicry "
        "term, the largest epoch-mean mimicry term of the run, the ReLU units that never "
        "fire on the probe images (a peer with 100 % dead units in a layer is collapsed), "
        "and the test top-1.\n\n" + "\n".join(lines) + "\n\n" + _early_table(g)
    )


def _noise_table(g: ArmAnalyses, results: list[dict[str, Any]]) -> str:
    measured = [r["noise"] for r in results if r["noise"]["peers"]]
    if not measured:  # text runs: the probe scores image batches
        why = results[0]["noise"].get("skipped", "not measured")
        return f"Not measured: {why}."
    first = measured[0]
    sigmas = first["sigmas"]
    unit = "x tensor std" if first["relative"] else "absolute"
    head = " | ".join(f"σ={s:g}" for s in sigmas if s > 0)
    lines = [
        f"| label | base loss | {head} |",
        "|---|---|" + "---|" * sum(s > 0 for s in sigmas),
    ]
    for lab in g.labels:
        runs = g.by_label[lab]
        base = [rec["base"] for r in runs for rec in r["noise"]["peers"].values()]
        inc = noise_increase(runs, None)
        cells = [mean_std(inc[:, i].tolist(), 4) for i, s in enumerate(sigmas) if s > 0]
        lines.append(f"| {lab} | {mean_std(base, 4)} | " + " | ".join(cells) + " |")
    return (
        f"Rise of the training loss under Gaussian weight noise (sigma {unit}; "
        f"{first['draws']} draws x every peer x every run; {first['samples']} training "
        f"images, BatchNorm in eval mode), mean ± std.\n\n" + "\n".join(lines)
    )


def _entropy_table(g: ArmAnalyses, num_classes: int) -> str:
    lines = [
        "| label | peers, train | peers, test | ensemble, test |",
        "|---|---|---|---|",
    ]
    for lab in g.labels:
        runs = g.by_label[lab]

        def vals(split: str, ens: bool, runs: list[dict[str, Any]] = runs) -> list[float]:
            return [
                v for r in runs for p, v in r["entropy"][split].items() if (p == ENSEMBLE) == ens
            ]

        lines.append(
            f"| {lab} | {mean_std(vals('train', False), 4)} | "
            f"{mean_std(vals('test', False), 4)} | "
            f"{mean_std(vals('test', True), 4)} |"
        )
    c = num_classes
    return (
        f"Mean posterior entropy in nats (uniform over {c} classes: log {c} = "
        f"{math.log(c):.3f}), mean ± std over runs and peers.\n\n" + "\n".join(lines)
    )


def _agreement_table(g: ArmAnalyses) -> str:
    lines = [
        "| label | all peers agree, test | pairwise agreement, test | pairwise KL, test "
        "| pairwise KL, train |",
        "|---|---|---|---|---|",
    ]
    for lab in g.labels:
        runs = g.by_label[lab]

        def col(split: str, key: str, runs: list[dict[str, Any]] = runs) -> list[float]:
            return [r["agreement"][split][key] for r in runs]

        lines.append(
            f"| {lab} | {percent(col('test', 'all_agree'))} | "
            f"{percent(col('test', 'pairwise_agree'))} | "
            f"{mean_std(col('test', 'pairwise_kl'), 4)} | "
            f"{mean_std(col('train', 'pairwise_kl'), 4)} |"
        )
    return "Mean over runs (± std).\n\n" + "\n".join(lines)


def summary_tables(results: list[dict[str, Any]]) -> dict[str, str]:
    """Markdown tables, aggregated per label over runs and peers (mean ± std).

    Returns:
        ``{"loss": ..., "noise": ..., "entropy": ..., "agreement": ...}``.
    """
    g = ArmAnalyses.of(results)
    return {
        "loss": _loss_table(g),
        "noise": _noise_table(g, results),
        "entropy": _entropy_table(g, results[0]["num_classes"]),
        "agreement": _agreement_table(g),
    }
