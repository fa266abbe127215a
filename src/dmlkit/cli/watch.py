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

It stops by itself once the run wrote ``summary.json`` (the test row is then shown too), and
when the run stopped without finishing (a crash, SIGKILL: its lock is free and there is no
``summary.json``; it then names the last checkpoint and the resume command, exit 1) or its folder
was deleted (exit 1). Started before ``dml train`` has created the folder, it waits for it
(``--wait`` seconds, 60 by default).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shlex
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
LOCK_NAME = ".dml.lock"  # dmlkit.engine.lock.LOCK_NAME (not imported: watch stays a light leaf)
CHECKPOINT = re.compile(r"epoch_(\d+)(?:_step_(\d+))?\.pt")
# Control characters of names read from the run's files are shown escaped, never sent raw to a
# terminal (an ESC sequence in a peer name must not redraw the screen).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

FINISHED, RUNNING, STOPPED, GONE = "finished", "running", "not running", "gone"


def _safe(text: str) -> str:
    return CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


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

    def state(self) -> str:
        """``finished``, ``running``, ``not running`` (stopped unfinished) or ``gone``.

        A run holds ``flock`` on its ``.dml.lock`` from before ``config.yaml`` is written until
        after ``summary.json`` is; the kernel frees it when the process dies in any way. So a
        free lock without ``summary.json`` is a run that stopped without finishing.
        """
        if not (self.run_dir / "config.yaml").is_file():
            return GONE
        if self.finished:
            return FINISHED
        if _lock_held(self.run_dir / LOCK_NAME):
            return RUNNING
        # the run may have written summary.json and released its lock since the check above
        return FINISHED if self.finished else STOPPED

    def last_checkpoint(self) -> str | None:
        """``epoch N`` (or ``epoch N step S``) of the newest checkpoint with its checksum file.

        Read from the file names only: a run folder is data, nothing in it is loaded.
        """
        best: tuple[int, int] | None = None
        try:
            names = [p.name for p in (self.run_dir / "checkpoints").iterdir()]
        except OSError:
            return None
        for name in names:
            m = CHECKPOINT.fullmatch(name)
            if m and f"{name}.sha256" in names:  # a checkpoint without it was cut by the crash
                key = (int(m.group(1)), int(m.group(2) or 0))
                best = key if best is None or key > best else best
        if best is None:
            return None
        return f"epoch {best[0]}" + (f" step {best[1]}" if best[1] else "")

    def stopped_line(self) -> str:
        """What to say about a run that is not running and did not finish."""
        run = _safe(str(self.run_dir))
        last = self.last_checkpoint()
        if last is None:
            return f"{run}: not running; it stopped before its first checkpoint"
        resume = _safe(shlex.quote(str(self.run_dir)))
        return (
            f"{run}: not running; last checkpoint {last}; resume with dml train --resume {resume}"
        )

    def poll(self) -> bool:
        """Read the records appended since the last poll; True if there were any."""
        try:
            size = self.path.stat().st_size
        except OSError:  # not written yet, or the folder was deleted
            return False
        if size < self.offset:  # trimmed by a resume: start over
            self._reset()
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = self.partial + f.read()
                self.offset = f.tell()
        except OSError:
            return False
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
        for key in ("step", "epoch"):
            value = r.get(key, 0)
            if isinstance(value, int) and not isinstance(value, bool):  # crafted lines: ignored
                setattr(self, key, max(getattr(self, key), value))

    def table(self, state: str | None = None) -> str:
        """The current table as text (header line, one row per peer, the ensemble)."""
        head = f"{_safe(str(self.run_dir))}  epoch {self.epoch}"
        head += f"/{self.total_epochs}" if self.total_epochs and not self.total_steps else ""
        head += f"  step {self.step}" + (f"/{self.total_steps}" if self.total_steps else "")
        head += f"  {state or self.state()}"
        columns: list[tuple[str, str]] = [("train", k) for k in TRAIN_KEYS]
        for split in ("val", "test"):
            keys = {k for (s, _), r in self.latest.items() if s == split for k in r}
            columns += [(split, k) for k in _ordered(keys - set(INDEX) - set(COHORT_KEYS))]
        columns = [
            c for c in columns if any(c[1] in r for (s, _), r in self.latest.items() if s == c[0])
        ]
        header = ["peer", *(_safe(k if s == "train" else f"{s} {k}") for s, k in columns)]
        rows = [header]
        for name in [*self.peers, "ensemble"] if self.latest else []:
            rows.append(
                [
                    _safe(name),
                    *(_fmt(k, self.latest.get((s, name), {}).get(k)) for s, k in columns),
                ]
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
        return _safe(str(value))
    if key in FRACTIONS:
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def _lock_held(path: Path) -> bool:
    """Whether a live process holds ``flock`` on ``path`` (the run folder's lock file).

    Probed with a shared, non-blocking lock taken and dropped at once; a missing file means no
    dmlkit process ever trained there.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _wait_for_run(run_dir: Path, wait: float, interval: float, err: TextIO) -> None:
    """Wait up to ``wait`` seconds for ``run_dir/config.yaml`` (a run that is starting)."""
    if (run_dir / "config.yaml").is_file() or wait <= 0:
        return
    print(f"dml watch: waiting for {_safe(str(run_dir))} (up to {wait:g} s)", file=err)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(min(interval, 0.5, max(deadline - time.monotonic(), 0)))
        if (run_dir / "config.yaml").is_file():
            return
    raise UserError(
        f"dml watch {_safe(str(run_dir))}: no run there after waiting {wait:g} s (no config.yaml);"
        f" give a run directory (dml train --out), or a longer --wait"
    )


def watch(
    run_dir: str | Path,
    *,
    once: bool = False,
    interval: float = 2.0,
    wait: float = 0.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the table of ``run_dir``, then redraw it as the run writes until it ends.

    Args:
        once: print the table once and return.
        interval: seconds between reads.
        wait: seconds to wait for ``run_dir`` to appear (a ``dml train`` just started).

    Returns the exit status: 0 once the run has finished (or after ``once``); 1 when the run
    stopped without finishing or its folder was deleted (one line on ``err`` says which, and how
    to resume). Ctrl-C stops watching (not the run), status 0.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    _wait_for_run(Path(run_dir), wait, interval, err)
    watcher = Watcher(run_dir)
    redraw = out.isatty()
    last = ""
    try:
        while True:
            state = watcher.state()  # before reading: the last records come first
            if state == GONE:
                print(
                    f"dml watch: {_safe(str(watcher.run_dir))}: the run folder is gone "
                    f"(deleted or moved); stopped watching",
                    file=err,
                )
                return 1
            watcher.poll()
            text = watcher.table(state)
            if text != last:
                # On a terminal the table is redrawn in place; in a file each new state is
                # appended, separated by a blank line.
                out.write(("\x1b[H\x1b[2J" if redraw else ("\n" if last else "")) + text + "\n")
                out.flush()
                last = text
            if state == STOPPED:
                print(f"dml watch: {watcher.stopped_line()}", file=err if not once else out)
                return 0 if once else 1
            if once or state == FINISHED:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _seconds(flag: str, text: str, *, zero: bool) -> float:
    """A finite number of seconds > 0 (>= 0 with ``zero``), or a one-line user error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise UserError(f"{flag} {_safe(text)[:40]}: give a number of seconds {bound}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``dml watch RUN_DIR [--once] [--interval S] [--wait S]``; a user error: one line, exit 2."""
    import argparse

    p = argparse.ArgumentParser(
        prog="dml watch",
        description="The peers' latest metrics of a run, redrawn as the run writes them. "
        "Exits 0 when the run has finished, 1 when it stopped without finishing (it then "
        "names the last checkpoint and the resume command) or its folder was deleted.",
    )
    p.add_argument("run_dir", help="the run directory (dml train --out)")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--interval", default="2", help="seconds between reads (2)")
    p.add_argument(
        "--wait",
        default=None,
        help="seconds to wait for RUN_DIR to appear, for a dml train just started "
        "(60; with --once: 0)",
    )
    args = p.parse_args(argv)
    try:
        interval = _seconds("--interval", args.interval, zero=False)
        default_wait = "0" if args.once else "60"
        wait = _seconds("--wait", args.wait if args.wait is not None else default_wait, zero=True)
        return watch(args.run_dir, once=args.once, interval=interval, wait=wait)
    except UserError as exc:
        print(f"dml: error: {exc}", file=sys.stderr)
        return 2
