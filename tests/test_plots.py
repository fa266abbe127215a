"""The analysis figures: plain log ticks, honest band titles, flat lines kept flat, legends off
the data, many arms told apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dmlkit.analysis import plots


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the plot functions build (drawn, so tick labels exist), nothing written."""
    made = []

    def keep(fig, path: Path) -> Path:
        FigureCanvasAgg(fig).draw()
        made.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return made


def _curves(labels: list[str], runs: int, ce: list[float], top1: list[float]):
    run = {"epoch": list(range(1, len(ce) + 1)), "ce": ce, "top1": top1}
    curves = {lab: {"p0": [dict(run) for _ in range(runs)]} for lab in labels}
    return curves, curves


def test_log_ticks_are_plain_numbers(figures):
    curves, val = _curves(["dml"], 1, [4.5, 4.0, 3.2], [0.5, 0.6, 0.7])
    plots.plot_curves(curves, val, ["p0"], ["dml"], Path("x.png"))
    ax = figures[0].axes[0]
    texts = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
    assert texts, "the log axis has labelled ticks"
    assert not any("10^" in t or "times" in t or "×" in t for t in texts), texts
    assert "4" in texts


def test_band_is_named_only_when_drawn(figures):
    curves, val = _curves(["dml"], 1, [2.0, 1.0], [0.5, 0.6])
    plots.plot_curves(curves, val, ["p0"], ["dml"], Path("x.png"))
    assert "band" not in figures[-1]._suptitle.get_text()
    curves, val = _curves(["dml"], 2, [2.0, 1.0], [0.5, 0.6])
    plots.plot_curves(curves, val, ["p0"], ["dml"], Path("x.png"))
    assert "band = min..max" in figures[-1]._suptitle.get_text()


def test_flat_validation_line_stays_flat(figures):
    curves, val = _curves(["dml"], 1, [2.0, 1.0, 0.5], [1.0, 0.9999, 1.0])
    plots.plot_curves(curves, val, ["p0"], ["dml"], Path("x.png"))
    lo, hi = figures[0].axes[1].get_ylim()
    assert hi - lo >= 2.0 and lo >= 0.0


def test_legend_is_outside_the_axes(figures):
    labels = ["independent", "dml", "dml_e"]
    curves, val = _curves(labels, 2, [2.0, 1.0], [0.5, 0.6])
    plots.plot_curves(curves, val, ["p0"], labels, Path("x.png"))
    ax = figures[0].axes[0]
    legend = ax.get_legend()
    assert legend is not None
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1


def test_eleven_arms_are_told_apart(figures):
    labels = [f"arm{i}" for i in range(11)]
    increase = {
        lab: {"p0": np.random.default_rng(i).random((3, 2))} for i, lab in enumerate(labels)
    }
    plots.plot_noise(increase, [0.0, 0.01], False, ["p0"], labels, Path("x.png"))
    lines = [h for h in figures[0].axes[0].get_legend_handles_labels()[0]]
    looks = {(line[0].get_color(), line[0].get_linestyle()) for line in lines}
    assert len(lines) == 11 and len(looks) == 11
