"""The figures of the Market-1501 experiments: mAP vs cohort size, and DML vs DML_e."""

from __future__ import annotations

import statistics
from pathlib import Path

# Cohorts of 1..MAX_COHORT peers (the paper's Fig. 3).
MAX_COHORT = 5


def plot_cohort_size(
    curves: dict[str, list[tuple[int, list[float], list[float]]]], path: Path
) -> None:
    """Individual mAP (mean ± std) and ensemble mAP vs cohort size, independent and DML."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    styles = {"independent": ("tab:blue", "independent"), "dml": ("tab:red", "DML")}
    for method, points in curves.items():
        if not points:
            continue
        color, label = styles[method]
        ks = [p[0] for p in points]
        mean = [statistics.fmean(p[1]) for p in points]
        std = [statistics.stdev(p[1]) if len(p[1]) > 1 else 0.0 for p in points]
        ax.errorbar(
            ks,
            mean,
            yerr=std,
            color=color,
            marker="o",
            capsize=3,
            label=f"{label}: peers (mean ± std)",
        )
        ens = [(p[0], statistics.fmean(p[2])) for p in points if p[2]]
        if ens:
            ax.plot(*zip(*ens), color=color, marker="s", linestyle="--", label=f"{label}: ensemble")
    ax.set_xlabel("cohort size K")
    ax.set_ylabel("mAP (%)")
    ax.set_xticks(range(1, MAX_COHORT + 1))
    ax.set_title("Market-1501: mAP vs cohort size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_dml_e(bars: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Two panels: mAP (peers mean ± std, ensemble) and posterior entropy, DML vs DML_e."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax_map, ax_ent = fig.subplots(1, 2)
    arms = list(bars)
    labels = ["DML_e" if a == "dml_e" else "DML" for a in arms]
    colors = ["tab:red" if a == "dml" else "tab:purple" for a in arms]
    x = list(range(len(arms)))

    def mean(v: list[float]) -> float:
        return statistics.fmean(v) if v else float("nan")

    def std(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    width = 0.38
    ax_map.bar(
        [i - width / 2 for i in x],
        [mean(bars[a]["mAP"]) for a in arms],
        width,
        yerr=[std(bars[a]["mAP"]) for a in arms],
        color=colors,
        capsize=3,
        label="peers",
    )
    ax_map.bar(
        [i + width / 2 for i in x],
        [mean(bars[a]["ensemble mAP"]) for a in arms],
        width,
        color=colors,
        alpha=0.5,
        hatch="//",
        label="ensemble",
    )
    ax_map.set_xticks(x, labels)
    ax_map.set_ylabel("mAP (%)")
    ax_map.set_title("mAP")
    ax_map.legend(fontsize=8)
    ax_ent.bar(
        x,
        [mean(bars[a]["entropy"]) for a in arms],
        yerr=[std(bars[a]["entropy"]) for a in arms],
        color=colors,
        capsize=3,
    )
    ax_ent.set_xticks(x, labels)
    ax_ent.set_ylabel("mean posterior entropy (nats)")
    ax_ent.set_title("posterior entropy")
    fig.suptitle("Market-1501, 5 MobileNets: DML vs DML_e")
    fig.savefig(path, dpi=120)
