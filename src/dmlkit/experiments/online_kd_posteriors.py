"""What each online-distillation method does to its students' agreement and confidence.

For every finished run of a grid: the members' (peers' or branches') logits on the test split,
from the run's last checkpoint, then

* **agreement**: the fraction of test images on which two members predict the same class,
  averaged over the K(K-1)/2 pairs (:func:`dmlkit.analysis.agreement.agreement`). The
  one-network baseline has no pair within a run: its value is the agreement between the
  baseline networks of *different* seeds (independently trained networks), the reference that
  mutual learning's agreement is read against;
* **entropy**: the members' mean posterior entropy on the test images (nats,
  :func:`dmlkit.analysis.entropy.entropy`), paired by seed against the baseline network.

Used by ``dml reproduce digits-online-kd`` (:mod:`dmlkit.experiments.online_kd`).
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dmlkit.analysis.agreement import agreement
from dmlkit.analysis.entropy import entropy
from dmlkit.analysis.stats import ci_text, mean_ci95, mean_std
from dmlkit.data import build_data
from dmlkit.engine.checkpoint import load_cohort
from dmlkit.engine.rundir import RunDir
from dmlkit.experiments.core import Experiment, RunResult


@torch.no_grad()
def member_test_logits(run: Path) -> list[Tensor]:
    """Every member's logits ``[N, C]`` on the run's test split (last checkpoint, eval mode,
    float32 on the CPU), in the order of the run's summary."""
    cfg = RunDir(run).load_config()
    cohort, _ = load_cohort(run, "cpu")
    chunks = [cohort(x) for x, _ in build_data(cfg.data, seed=cfg.seed).test]  # K x [b, C] each
    return [torch.cat(parts).float() for parts in zip(*chunks)]


def measure(results: list[RunResult]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (arm, seed): ``agreement`` (None for one network), ``entropy`` (nats) and the
    logits of its first member (for the baseline's cross-seed agreement)."""
    out = {}
    for r in results:
        logits = member_test_logits(r.path)
        agree = agreement(logits)["pairwise_agree"]
        ent = statistics.fmean(float(entropy(z).mean()) for z in logits)
        out[(r.arm, r.seed)] = {"agreement": agree, "entropy": ent, "first": logits[0]}
    return out


def posterior_rows(exp: Experiment, results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per arm: per-seed agreement (%) and entropy, and the paired entropy change."""
    values = measure(results)
    base = exp.baseline
    seeds = sorted({s for _, s in values})
    rows = []
    for arm in exp.arms:
        mine = [values[(arm, s)] for s in seeds if (arm, s) in values]
        if not mine:
            continue
        if arm == base:
            # the baseline's networks of different seeds, pair by pair
            firsts = [v["first"] for v in mine]
            agree = [
                100 * agreement([a, b])["pairwise_agree"]
                for a, b in itertools.combinations(firsts, 2)
            ]
        else:
            agree = [100 * v["agreement"] for v in mine if v["agreement"] is not None]
        change = [
            values[(arm, s)]["entropy"] - values[(base, s)]["entropy"]
            for s in seeds
            if (arm, s) in values and (base, s) in values and arm != base
        ]
        rows.append(
            {
                "arm": arm,
                "seeds": [s for s in seeds if (arm, s) in values],
                "agreement": agree,
                "entropy": [v["entropy"] for v in mine],
                "entropy_change": change,
            }
        )
    return rows


def _interval(values: list[float], digits: int = 2) -> str:
    return ci_text(values, digits, missing="–")


def format_posteriors(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`posterior_rows`."""
    base = exp.baseline
    lines = [
        f"Students' agreement and confidence on the test split, mean ± std over seeds. "
        f"*agreement*: % of test images on which two students predict the same class, over "
        f"every pair of a run's students (`{base}`: between its networks of different seeds); "
        f"*entropy*: the students' mean posterior entropy (nats), its change paired by seed "
        f"against the `{base}` network (mean ± half-width of the 95 % t-interval).",
        "",
        "| arm | agreement % | entropy (nats) | entropy change |",
        "|---|---|---|---|",
    ]
    for row in rows:
        agree = mean_std(row["agreement"]) if row["agreement"] else "–"
        ent = mean_std(row["entropy"], digits=3) if row["entropy"] else "–"
        change = "–" if row["arm"] == base else _interval(row["entropy_change"], 3)
        lines.append(f"| {row['arm']} | {agree} | {ent} | {change} |")
    return "\n".join(lines)


def posterior_csv(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)``: one line per arm and seed (agreement: per pair for the baseline)."""
    header = ["arm", "seed", "entropy_nats", "agreement_percent"]
    out: list[list[Any]] = []
    for row in rows:
        per_seed = len(row["agreement"]) == len(row["seeds"])
        for i, seed in enumerate(row["seeds"]):
            agree = repr(row["agreement"][i]) if per_seed else ""
            out.append([row["arm"], seed, repr(row["entropy"][i]), agree])
    return header, out


def plot_posteriors(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> Path:
    """Two panels: agreement per arm (mean and 95 % interval) and the paired entropy change."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = [r["arm"] for r in rows]
    for ax, key, label in (
        (left, "agreement", "test agreement between students (%)"),
        (right, "entropy_change", f"entropy change vs {exp.baseline} (nats)"),
    ):
        ms, hs = [], []
        for row in rows:
            v = row[key]
            m, h = (mean_ci95(v) if len(v) > 1 else (v[0], 0.0)) if v else (float("nan"), 0.0)
            ms.append(m)
            hs.append(h)
        ax.bar(range(len(rows)), ms, 0.6, yerr=hs, capsize=2, color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
    valid = [r["agreement"] for r in rows if r["agreement"]]
    low = min(min(v) for v in valid) if valid else 0.0
    left.set_ylim(max(0.0, low - 2.0), 100.0)
    right.axhline(0, color="black", linewidth=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
