"""``dml watch RUN_DIR``: the peers' latest metrics as a compact table, refreshed as they come.

For people without TensorBoard: it reads ``metrics.jsonl`` as the run appends to it (only the
new bytes each time; a resume that trims the file is noticed and the file read again) and
redraws one row per peer and one for the ensemble::

    runs/dml  epoch 3/10  step 450/1500  running
    peer     loss    ce      mimicry  lr      grad_norm  val top1  val top5  val ce
    net_1    0.8123  0.7011  0.1112   0.1     1.93       71.20%    93.10%    0.9412
    net_2    ...
    ensemble                                             73.40%    94.00%    0.8733
    agreement: all_agree 81.30%  pairwise_kl 0.1214

It stops by itself once the run wrote ``summary.json`` (the test row is then shown too).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from dmlkit.errors import UserError
from dmlkit.trust import printable

TRAIN_KEYS = ("loss", "ce", "mimicry", "lr", "grad_norm")
COHORT_KEYS = ("all_agree", "pairwise_agree", "pairwise_kl")
FRACTIONS = ("top1", "top5", "mAP", "rank1", "rank5", "rank10", "all_agree", "pairwise_agree")
INDEX = ("split", "peer", "epoch", "step", "seconds")


class Watcher:
    """Follows one run directory's ``metrics.jsonl``; :meth:`poll` reads what is new."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "config.yaml").is_file():
            raise UserError(
                f"dml watch {run_dir}: no run there (no config.yaml); give a run directory"
            )
        self.path = self.run_dir / "metrics.jsonl"
        cfg = yaml.safe_load((self.run_dir / "config.yaml").read_text()) or {}
        train = cfg.get("train", {}) if isinstance(cfg, dict) else {}
        self.total_epochs = train.get("epochs")
        self.total_steps = train.get("iterations") or None
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        self.partial = b""
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}  # (split, peer) -> record
        self.peers: list[str] = []
        self.step = 0
        self.epoch = 0

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").is_file()

    def poll(self) -> bool:
        """Read the records appended since the last poll; True if there were any."""
        if not self.path.is_file():
            return False
        size = self.path.stat().st_size
        if size < self.offset:  # trimmed by a resume: start over
            self._reset()
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = self.partial + f.read()
            self.offset = f.tell()
        *lines, self.partial = data.split(b"\n")  # the last piece may be a line half-written
        for line in lines:
            try:
                self._add(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        return bool(lines)

    def _add(self, r: dict[str, Any]) -> None:
        split, peer = r.get("split"), r.get("peer")
        if not isinstance(split, str) or not isinstance(peer, str):
            return
        if split == "step":
            split = "train"  # the newest of the step and epoch values is shown
        self.latest[(split, peer)] = r
        if peer != "ensemble" and peer not in self.peers:
            self.peers.append(peer)
        self.step = max(self.step, int(r.get("step", 0)))
        self.epoch = max(self.epoch, int(r.get("epoch", 0)))

    def table(self) -> str:
        """The current table as text (header line, one row per peer, the ensemble)."""
        head = f"{self.run_dir}  epoch {self.epoch}"
        head += f"/{self.total_epochs}" if self.total_epochs and not self.total_steps else ""
        head += f"  step {self.step}" + (f"/{self.total_steps}" if self.total_steps else "")
        head += "  finished" if self.finished else "  running"
        columns: list[tuple[str, str]] = [("train", k) for k in TRAIN_KEYS]
        for split in ("val", "test"):
            keys = {k for (s, _), r in self.latest.items() if s == split for k in r}
            columns += [(split, k) for k in _ordered(keys - set(INDEX) - set(COHORT_KEYS))]
        columns = [
            c for c in columns if any(c[1] in r for (s, _), r in self.latest.items() if s == c[0])
        ]
        header = ["peer", *(k if s == "train" else f"{s} {k}" for s, k in columns)]
        rows = [header]
        for name in [*self.peers, "ensemble"] if self.latest else []:
            rows.append(
                [name, *(_fmt(k, self.latest.get((s, name), {}).get(k)) for s, k in columns)]
            )
        rows = [[printable(c) for c in row] for row in rows]  # names read from metrics.jsonl
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [head]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        for split in ("val", "test"):
            ens = self.latest.get((split, "ensemble"), {})
            parts = [f"{k} {_fmt(k, ens[k])}" for k in COHORT_KEYS if ens.get(k) is not None]
            if parts:
                lines.append(f"{split} agreement: " + "  ".join(parts))
        if not self.latest:
            lines.append("(no records yet)")
        return "\n".join(lines)


def _ordered(keys: set[str]) -> list[str]:
    first = [k for k in ("top1", "top5", "mAP", "rank1", "rank5", "rank10", "ce") if k in keys]
    return first + sorted(keys - set(first))


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, int | float):
        return str(value)
    if key in FRACTIONS:
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def watch(
    run_dir: str | Path,
    *,
    once: bool = False,
    interval: float = 2.0,
    out: TextIO | None = None,
) -> int:
    """Print the table of ``run_dir``, then redraw it as the run writes until it finishes.

    Returns the exit status (0). Ctrl-C stops watching (not the run).
    """
    out = out or sys.stdout
    watcher = Watcher(run_dir)
    redraw = out.isatty()
    last = ""
    try:
        while True:
            done = once or watcher.finished  # before reading: the last records come first
            watcher.poll()
            text = watcher.table()
            if text != last:
                # On a terminal the table is redrawn in place; in a file each new state is
                # appended, separated by a blank line.
                out.write(("\x1b[H\x1b[2J" if redraw else ("\n" if last else "")) + text + "\n")
                out.flush()
                last = text
            if done:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    """``dml watch RUN_DIR [--once] [--interval S]``; a user error prints one line, exit 2."""
    import argparse

    p = argparse.ArgumentParser(
        prog="dml watch",
        description="The peers' latest metrics of a run, redrawn as the run writes them "
        "(stops when the run has finished).",
    )
    p.add_argument("run_dir", help="the run directory (dml train --out)")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between reads (2)")
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error(f"--interval {args.interval}: give a number of seconds > 0")
    try:
        return watch(args.run_dir, once=args.once, interval=args.interval)
    except UserError as exc:
        print(f"dml: error: {exc}", file=sys.stderr)
        return 2
