"""loss_curves.png: the right panels' log tick labels stay clear of the left panels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from dmlkit.analysis.plots import curves_figure  # noqa: E402


def test_log_tick_labels_are_plain_and_clear_of_the_left_panel() -> None:
    epochs = list(range(1, 31))
    ce = np.geomspace(2.3, 0.02, 30).tolist()  # a full run: CE over two decades
    runs = {p: [{"epoch": epochs, "ce": ce}, {"epoch": epochs, "ce": ce[::-1][::-1]}] for p in "ab"}
    val = {"dml": {p: [{"epoch": [10, 20, 30], "top1": [0.9, 0.95, 0.97]}] for p in "ab"}}
    fig = curves_figure({"dml": runs}, val, ["a", "b"], ["dml"])
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    left, right = fig.axes[0], fig.axes[1]
    labels = [
        t for t in right.yaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()
    ]
    assert labels, "the right panel has y tick labels"
    texts = [t.get_text() for t in labels]
    assert "0.1" in texts and not any("e" in t or "10^" in t for t in texts), texts
    left_edge = left.get_window_extent(renderer).x1
    assert all(t.get_window_extent(renderer).x0 > left_edge for t in labels)
