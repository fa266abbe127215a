"""Loggers that write plain files into the run directory: ``metrics.jsonl`` and ``metrics.csv``.

Both keep one line per record, in the order the trainer produced them, and both are trimmed on
resume to what was written up to the checkpoint the run continues from: the resumed run then
writes the rest once (no duplicates, no gaps; see :func:`kept_on_resume`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from dmlkit.engine.callbacks import INDEX_KEYS, Callback, Record, RunContext, kept_on_resume
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.faults import maybe_enospc
from dmlkit.engine.rundir import RunDir


class RecordLogger(Callback):
    """A logger of records: "step" records as they come, an epoch's "train" and "val" records
    at its end (in that order), the "test" records at the end of the run."""

    def write(self, run: RunContext, records: list[Record]) -> None:
        raise NotImplementedError

    def on_step_end(self, run: RunContext, records: list[Record]) -> None:
        self.write(run, records)

    def on_epoch_end(self, run: RunContext, records: list[Record]) -> None:
        self.write(run, records)

    def on_eval_end(self, run: RunContext, records: list[Record]) -> None:
        if records and records[0].get("split") == "test":  # val records come with their epoch
            self.write(run, records)


class JsonlLogger(RecordLogger):
    """``metrics.jsonl``: one JSON object per record, flushed to disk at once.

    It is the run's own record (``dml analyze``, ``dml report`` and ``dml watch`` read it), so
    the trainer always writes it.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = RunDir(run_dir)
        self.path = self.run_dir.metrics_path

    def on_fit_start(self, run: RunContext) -> None:
        if run.resumed:
            maybe_enospc("enospc-in-resume", run.epoch, self.path)
            kept = [r for r in self.run_dir.read_metrics() if kept_on_resume(r, run)]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def write(self, run: RunContext, records: list[Record]) -> None:
        maybe_enospc("enospc-in-metrics", records[0].get("epoch", -1) if records else -1, self.path)
        with self.path.open("a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a crash loses nothing logged


class CsvLogger(RecordLogger):
    """``metrics.csv``: one row per record, one column per key (empty where a record has none).

    Columns: ``split, peer, epoch, step``, then the values in the order first seen. When a
    record brings a new key (the first evaluation, the test split) the file is rewritten once
    with the wider header, so it always reads with ``pandas.read_csv`` or a spreadsheet.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.columns: list[str] = list(INDEX_KEYS)

    def _read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            for c in reader.fieldnames or []:
                if c not in self.columns:
                    self.columns.append(c)
        return rows

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def on_fit_start(self, run: RunContext) -> None:
        rows = self._read() if run.resumed else []
        kept = [r for r in rows if kept_on_resume(_typed(r), run)]
        self._rewrite(kept)

    def write(self, run: RunContext, records: list[Record]) -> None:
        new = [k for r in records for k in r if k not in self.columns]
        if new:
            rows = self._read()
            self.columns += list(dict.fromkeys(new))
            self._rewrite(rows)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerows(records)
            f.flush()
            os.fsync(f.fileno())


def _typed(row: dict[str, str]) -> Record:
    """A CSV row's index keys as numbers again (for :func:`kept_on_resume`)."""
    out: Record = {k: v for k, v in row.items() if v != ""}
    for key in ("epoch", "step"):
        if key in out:
            out[key] = int(out[key])
    return out
