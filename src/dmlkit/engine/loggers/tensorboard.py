"""TensorBoard: event files in ``RUN_DIR/tensorboard/`` (``tensorboard --logdir RUN_DIR``).

Tags are ``SPLIT/QUANTITY/PEER`` with the global step as x-axis, e.g. ``step/ce/resnet32_1``,
``train/mimicry/resnet32_2``, ``val/top1/ensemble``, ``test/top1/resnet32_1``; the peers'
agreement is ``val/all_agree`` and ``val/pairwise_kl`` (one value for the cohort). A Custom
Scalars layout puts the peers of one run on one chart per quantity (the "Custom Scalars" tab:
a section per split, a chart per quantity, a line per peer and the ensemble), which is where
DML's story shows: the peers' CE falling together while the mimicry term shrinks.

The resolved config is the run's hyperparameters (HParams tab, with the final test metrics)
and a ``config`` text; the summary is a ``summary`` text. On resume the writer purges every
event after the checkpoint's step (``purge_step``), so the curves have no duplicate points.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from dmlkit.engine.callbacks import INDEX_KEYS, Record, RunContext
from dmlkit.engine.loggers.files import RecordLogger

#: Keys of the ensemble's record that describe the whole cohort, tagged without a peer.
COHORT_KEYS = ("all_agree", "pairwise_agree", "pairwise_kl")
#: Keys that are bookkeeping, not curves.
SKIPPED_KEYS = (*INDEX_KEYS, "seconds")


def tag_of(record: Record, key: str) -> str:
    """The TensorBoard tag of value ``key`` of ``record``: ``split/key/peer`` (``split/key``
    for the cohort-level agreement values)."""
    if key in COHORT_KEYS:
        return f"{record['split']}/{key}"
    return f"{record['split']}/{key}/{record['peer']}"


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as TensorBoard hyperparameters: dotted keys, scalar values (lists and
    ``None`` as their text)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{prefix}{k}."))
        elif isinstance(v, bool | int | float | str):
            out[f"{prefix}{k}"] = v
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


class TensorBoardLogger(RecordLogger):
    """Writes the records as TensorBoard scalars (needs the ``tensorboard`` package).

    Args:
        run_dir: the run directory; events go to ``run_dir/tensorboard``.
    """

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs `tensorboard` installed

        self._writer_cls = SummaryWriter
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer: Any = None
        self.charts: dict[str, set[str]] = {}  # split -> quantities seen (the layout)

    def on_fit_start(self, run: RunContext) -> None:
        purge = None
        if run.resumed:
            purge = run.step + 1  # everything logged after the checkpoint is written again
            _wait_past(self.log_dir)
        self.writer = self._writer_cls(str(self.log_dir), purge_step=purge)
        if not run.resumed:
            self.writer.add_text("config", _code(json.dumps(run.config, indent=2)), 0)

    def write(self, run: RunContext, records: list[Record]) -> None:
        new_chart = False
        for r in records:
            for key, value in r.items():
                if key in SKIPPED_KEYS or not isinstance(value, int | float) or value is None:
                    continue
                self.writer.add_scalar(tag_of(r, key), float(value), int(r["step"]))
                seen = self.charts.setdefault(r["split"], set())
                if key not in seen:
                    seen.add(key)
                    new_chart = True
        if new_chart:  # TensorBoard shows the layout written last
            self.writer.add_custom_scalars(self._layout())
        self.writer.flush()

    def _layout(self) -> dict[str, dict[str, list[Any]]]:
        layout: dict[str, dict[str, list[Any]]] = {}
        for split in ("step", "train", "val", "test"):
            for key in sorted(self.charts.get(split, ())):
                prefix = f"{split}/{key}"
                # One chart per quantity; its lines are the tags under it: one per peer.
                pattern = f"^{re.escape(prefix)}(/.*)?$"
                layout.setdefault(split, {})[key] = ["Multiline", [pattern]]
        return layout

    def on_fit_end(self, run: RunContext, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {
            f"test/{key}/{p['name']}": v
            for p in summary.get("peers", [])
            for key, v in p["metrics"].items()
        }
        for key, v in summary.get("ensemble", {}).get("metrics", {}).items():
            metrics[f"test/{key}/ensemble"] = v
        for part in hparams(flat_hparams(run.config), metrics):
            self.writer.file_writer.add_summary(part)
        self.writer.add_text("summary", _code(json.dumps(summary, indent=2)), run.step)
        self.writer.close()


def _code(text: str) -> str:
    # TensorBoard renders text as Markdown: indent it to keep the JSON as written.
    return "\n".join("    " + line for line in text.splitlines())


def _wait_past(log_dir: Path) -> None:
    """Sleep until the clock is past the newest event file's second.

    Event files are named ``events.out.tfevents.<unix second>....`` and read in name order;
    the resumed run's file must sort after the interrupted run's for the purge to apply to it.
    """
    newest = 0
    for p in log_dir.glob("events.out.tfevents.*"):
        try:
            newest = max(newest, int(p.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    while time.time() < newest + 1:
        time.sleep(0.05)
