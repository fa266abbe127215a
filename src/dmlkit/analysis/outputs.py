"""The files of ``dml analyze``: CSV per measurement, ``summary.md``, ``analysis.json``, PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dmlkit.analysis import plots
from dmlkit.analysis.stats import csv_text
from dmlkit.analysis.tables import ArmAnalyses, noise_increase, summary_tables
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.evaluation import ENSEMBLE


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    """CSV text with floats to 6 significant digits."""
    return csv_text(header, ([f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows))


def csv_files(results: list[dict[str, Any]]) -> dict[str, str]:
    """``{file name: CSV text}``: every number of ``results``, one row per measured value."""
    curves = [
        [r["label"], r["path"], peer, e, c["ce"][i], c["mimicry"][i], c["loss"][i], c["lr"][i]]
        for r in results
        for peer, c in r["curves"].items()
        for i, e in enumerate(c["epoch"])
    ]
    noise = [
        [r["label"], r["path"], peer, s, r["noise"]["relative"], d, loss, rec["base"]]
        + [loss - rec["base"]]
        for r in results
        for peer, rec in r["noise"]["peers"].items()
        for s, per_draw in zip(r["noise"]["sigmas"], rec["losses"])
        for d, loss in enumerate(per_draw)
    ]
    entropy = [
        [r["label"], r["path"], peer, split, v]
        for r in results
        for split, per_peer in r["entropy"].items()
        for peer, v in per_peer.items()
    ]
    agree = [
        [r["label"], r["path"], split, a["all_agree"], a["pairwise_agree"], a["pairwise_kl"]]
        for r in results
        for split, a in r["agreement"].items()
    ]
    units = [
        [r["label"], r["path"], peer, v]
        for r in results
        for peer, v in r.get("dead_units", {}).items()
    ]
    run = ["label", "run"]
    return {
        "curves.csv": _csv([*run, "peer", "epoch", "ce", "mimicry", "loss", "lr"], curves),
        "noise.csv": _csv(
            [*run, "peer", "sigma", "relative", "draw", "loss", "base_loss", "increase"], noise
        ),
        "entropy.csv": _csv([*run, "peer", "split", "entropy_nats"], entropy),
        "agreement.csv": _csv([*run, "split", "all_agree", "pairwise_agree", "pairwise_kl"], agree),
        "units.csv": _csv([*run, "peer", "dead_relu_fraction"], units),
    }


def _bars(g: ArmAnalyses, value: Any) -> dict[str, dict[str, list[float]]]:
    """``{label: {split: [value(run, split) for the label's runs, None left out]}}``."""
    return {
        lab: {
            split: [v for r in g.by_label[lab] if (v := value(r, split)) is not None]
            for split in ("train", "test")
        }
        for lab in g.labels
    }


def write_figures(results: list[dict[str, Any]], g: ArmAnalyses, out: Path) -> list[Path]:
    """loss_curves.png, noise.png, entropy.png and (with two peers or more) agreement.png."""
    written = []
    curves = {
        lab: {p: [r["curves"][p] for r in g.by_label[lab] if p in r["curves"]] for p in g.peers}
        for lab in g.labels
    }
    val = {
        lab: {p: [r["val"][p] for r in g.by_label[lab] if p in r["val"]] for p in g.peers}
        for lab in g.labels
    }
    written.append(plots.plot_curves(curves, val, g.peers, g.labels, out / "loss_curves.png"))
    measured = [r["noise"] for r in results if r["noise"]["peers"]]
    if measured:  # text runs have no noise probe (analysis.measure)
        increase = {
            lab: {p: noise_increase(g.by_label[lab], p) for p in g.peers} for lab in g.labels
        }
        first = measured[0]
        written.append(
            plots.plot_noise(
                increase, first["sigmas"], first["relative"], g.peers, g.labels, out / "noise.png"
            )
        )
    ent = {
        lab: {
            split: [
                v for r in g.by_label[lab] for p, v in r["entropy"][split].items() if p != ENSEMBLE
            ]
            for split in ("train", "test")
        }
        for lab in g.labels
    }
    panel = {
        "values": ent,
        "groups": ["train", "test"],
        "ylabel": "mean entropy (nats)",
        "title": "Posterior entropy of the peers (mean ± std over runs x peers)",
    }
    written.append(plots.plot_bars([panel], g.labels, out / "entropy.png"))
    if any(r["agreement"]["test"]["pairwise_kl"] is not None for r in results):
        agree = _bars(
            g,
            lambda r, s: None if (v := r["agreement"][s]["pairwise_agree"]) is None else 100 * v,
        )
        kl = _bars(g, lambda r, s: r["agreement"][s]["pairwise_kl"])
        panels = [
            {
                "values": agree,
                "groups": ["train", "test"],
                "ylabel": "pairwise agreement %",
                "title": "Peers predicting the same class",
            },
            {
                "values": kl,
                "groups": ["train", "test"],
                "ylabel": "mean pairwise KL (nats)",
                "title": "Distance between the peers' posteriors",
            },
        ]
        written.append(plots.plot_bars(panels, g.labels, out / "agreement.png"))
    return written


def write_outputs(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """CSV, PNG, ``summary.md`` and ``analysis.json`` of ``results`` under ``out``."""
    if not results:
        raise ValueError("write_outputs needs at least one analysed run")
    out.mkdir(parents=True, exist_ok=True)
    tables = summary_tables(results)
    files = csv_files(results)
    files["summary.md"] = (
        "# Analysis\n\n"
        + "\n\n".join(f"## {k}\n\n{v}" for k, v in tables.items())
        + "\n\nRuns: "
        + ", ".join(r["path"] for r in results)
        + "\n"
    )
    files["analysis.json"] = json.dumps({"runs": results}, indent=1)
    written = []
    for name, content in files.items():
        atomic_write_text(out / name, content)
        written.append(out / name)
    return written + write_figures(results, ArmAnalyses.of(results), out)
