"""PNG figures of the analysis (matplotlib's object API: no pyplot, no global backend change).

Every figure compares *labels* (e.g. the arms ``independent``, ``dml``, ``dml_e`` of a grid),
one colour per label, aggregated over the runs that share the label (seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, ScalarFormatter

# One colour per label, in label order (matplotlib's default cycle, without the grey); past
# the colours, the line style changes too, so that up to 28 labels stay apart.
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
STYLES = ["-", "--", ":", "-."]


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def style(i: int) -> str:
    return STYLES[(i // len(COLOURS)) % len(STYLES)]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight" keeps the outside legends
    return path


class _PlainLogFormatter(LogFormatter):
    """matplotlib's log-axis labels (which ticks get one), written as plain numbers."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        # matplotlib writes values below 1 as "1e-01": as wide as the gap between two panels,
        # so a right panel's labels ran into the left one (issue 29); "0.1" is short and plain
        return f"{x:g}"


def _plain_log_ticks(ax: Any) -> None:
    """Log-axis tick labels as plain numbers ("4", "0.5", "0.01"), never "4×10⁰" or "1e-01"."""
    ax.yaxis.set_major_formatter(_PlainLogFormatter())
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _min_span(ax: Any, values: list[float], span: float, floor: float | None = None) -> None:
    """Show at least ``span`` on the y axis: a nearly flat line (0.00 vs 0.01 % error) is not
    stretched over the whole axis into a zig-zag of noise."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    if hi - lo >= span:
        return
    mid = (lo + hi) / 2
    bottom = mid - span / 2 if floor is None else max(floor, mid - span / 2)
    ax.set_ylim(bottom, bottom + span)
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))


def _legend_outside(ax: Any, fontsize: int) -> None:
    """The legend right of the axes, where it covers no bar and no curve."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0
        )


def _mean_band(series: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over runs of equally long series (shorter ones are NaN-padded)."""
    n = max(len(s) for s in series)
    arr = np.full((len(series), n), np.nan)
    for i, s in enumerate(series):
        arr[i, : len(s)] = s
    with np.errstate(all="ignore"):
        return np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0)


def plot_curves(
    curves: dict[str, dict[str, list[dict[str, list[float]]]]],
    val: dict[str, dict[str, list[dict[str, list[float]]]]],
    peers: list[str],
    labels: list[str],
    path: Path,
) -> Path:
    """Training CE per epoch (top row) and validation error (bottom row), one column per peer.

    Args:
        curves: ``{label: {peer: [per-run {"epoch": [...], "ce": [...]}]}}``.
        val: the same for validation curves (``"top1"``); may be empty.
        peers: the columns.
        labels: the lines, in legend order.
        path: the PNG to write.
    """
    return _save(curves_figure(curves, val, peers, labels), path)


def curves_figure(
    curves: dict[str, dict[str, list[dict[str, list[float]]]]],
    val: dict[str, dict[str, list[dict[str, list[float]]]]],
    peers: list[str],
    labels: list[str],
) -> Figure:
    """The figure :func:`plot_curves` writes (arguments as there)."""
    has_val = any(val.get(lab, {}).get(p) for lab in labels for p in peers)
    several = any(len(c.get(p, [])) > 1 for c in curves.values() for p in peers)
    # with more labels the min..max bands hide the lines; with one run each there is no band
    bands = len(labels) <= 4 and several
    rows = 2 if has_val else 1
    width = 3.6 if len(labels) <= 6 else 5.0  # room for a long legend
    fig = Figure(figsize=(width * len(peers) + 0.6, 3.0 * rows + 0.4))
    # room between the panels for the right ones' y tick labels
    axes = fig.subplots(rows, len(peers), squeeze=False, gridspec_kw={"wspace": 0.3})
    for j, peer in enumerate(peers):
        ax = axes[0][j]
        for i, lab in enumerate(labels):
            runs = curves.get(lab, {}).get(peer, [])
            if not runs:
                continue
            mean, lo, hi = _mean_band([r["ce"] for r in runs])
            epochs = np.arange(1, len(mean) + 1)
            ax.plot(
                epochs, mean, color=colour(i), ls=style(i), label=f"{lab} (n={len(runs)})", lw=1.4
            )
            if len(runs) > 1 and bands:
                ax.fill_between(epochs, lo, hi, color=colour(i), alpha=0.18, lw=0)
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_title(peer, fontsize=9)
        ax.set_xlabel("epoch")
        if j == 0:
            ax.set_ylabel("training cross-entropy")
        ax.grid(alpha=0.3, which="both")
        if has_val:
            ax = axes[1][j]
            shown: list[float] = []
            for i, lab in enumerate(labels):
                runs = val.get(lab, {}).get(peer, [])
                if not runs:
                    continue
                series = [[100 * (1 - v) for v in r["top1"]] for r in runs]
                mean, lo, hi = _mean_band(series)
                shown += [*lo.tolist(), *hi.tolist()]
                epochs = runs[0]["epoch"][: len(mean)]
                ax.plot(epochs, mean, marker="o", ls=style(i), color=colour(i), ms=3, lw=1.2)
                if len(runs) > 1 and bands:
                    ax.fill_between(epochs, lo, hi, color=colour(i), alpha=0.18, lw=0)
            _min_span(ax, shown, span=2.0, floor=0.0)  # percentage points
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("validation error %")
            ax.grid(alpha=0.3)
    _legend_outside(axes[0][-1], 7 if len(labels) > 6 else 8)
    title = "Training loss (mean" + (", band = min..max over runs)" if bands else " over runs)")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_noise(
    increase: dict[str, dict[str, np.ndarray]],
    sigmas: list[float],
    relative: bool,
    peers: list[str],
    labels: list[str],
    path: Path,
) -> Path:
    """Rise of the training loss vs weight-noise sigma, one column per peer.

    Args:
        increase: ``{label: {peer: [R*D, S] loss increases}}`` (all runs and draws stacked).
        sigmas: the S noise levels.
        relative: for the axis label.
        peers, labels: columns and lines.
        path: the PNG to write.
    """
    width = 3.6 if len(labels) <= 6 else 5.0
    fig = Figure(figsize=(width * len(peers) + 0.6, 3.3 if len(labels) <= 6 else 4.2))
    axes = fig.subplots(1, len(peers), squeeze=False)[0]
    n = max(len(labels), 1)
    for j, peer in enumerate(peers):
        ax = axes[j]
        # Small horizontal offsets keep the error bars of different labels apart.
        span = (max(sigmas) - min(sigmas)) or 1.0
        for i, lab in enumerate(labels):
            arr = increase.get(lab, {}).get(peer)
            if arr is None or len(arr) == 0:
                continue
            offset = (i - (n - 1) / 2) * 0.008 * span
            ax.errorbar(
                np.asarray(sigmas) + offset,
                arr.mean(0),
                yerr=arr.std(0),
                marker="o",
                ls=style(i),
                ms=3,
                lw=1.2,
                capsize=2,
                color=colour(i),
                label=f"{lab} ({len(arr)} draws)",
            )
        ax.set_title(peer, fontsize=9)
        ax.set_xlabel("sigma (x tensor std)" if relative else "sigma (absolute)")
        if j == 0:
            ax.set_ylabel("training loss increase")
        ax.grid(alpha=0.3)
    _legend_outside(axes[-1], 7 if len(labels) > 6 else 8)
    fig.suptitle("Wide-minima probe: Gaussian noise on every weight (mean ± std)", fontsize=10)
    return _save(fig, path)


def _bars(
    ax: Any,
    values: dict[str, dict[str, list[float]]],
    labels: list[str],
    groups: list[str],
    ylabel: str,
    title: str,
    hline: float | None,
) -> None:
    width = 0.8 / max(len(groups), 1)
    hatches = ["", "//", "..", "xx"]
    for i, lab in enumerate(labels):
        for g, group in enumerate(groups):
            vals = [v for v in values.get(lab, {}).get(group, []) if v is not None]
            vals = [v for v in vals if not math.isnan(v)]
            if not vals:
                continue
            x = i + (g - (len(groups) - 1) / 2) * width
            ax.bar(
                x,
                float(np.mean(vals)),
                width * 0.92,
                yerr=float(np.std(vals)) if len(vals) > 1 else None,
                capsize=3,
                color=colour(i),
                hatch=hatches[g % len(hatches)],
                edgecolor="black",
                lw=0.5,
                label=group if i == 0 else None,
            )
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=0.8)
    if len(labels) > 4:  # long arm names: slant them
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=35, ha="right")
    else:
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if len(groups) > 1:
        _legend_outside(ax, 8)
    ax.grid(alpha=0.3, axis="y")


def plot_bars(panels: list[dict[str, Any]], labels: list[str], path: Path) -> Path:
    """Side-by-side panels of grouped bars: one group per label, mean ± std (std over samples).

    Args:
        panels: each ``{"values": {label: {group: [samples]}}, "groups": [bar names],
            "ylabel": str, "title": str, "hline": float | None}``; bars within a group are
            told apart by hatching, labels by colour.
        labels: the x-axis groups, in order.
        path: the PNG to write.
    """
    width = 1.2 + 0.9 * len(labels) * max(len(p["groups"]) for p in panels) ** 0.5
    fig = Figure(figsize=(width * len(panels), 3.3))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        _bars(
            ax,
            panel["values"],
            labels,
            panel["groups"],
            panel["ylabel"],
            panel["title"],
            panel.get("hline"),
        )
    fig.tight_layout()
    return _save(fig, path)
