"""One cell of a grid (one arm, one seed) run where a launcher puts it: a local process, a Ray
task or a Slurm array task.

The worker gets a *spec*, a plain JSON-able dict (so that every launcher can carry it)::

    {"config": Config.to_dict(), "run": RUN_DIR, "desc": "dml seed 0", "cwd": DIR,
     "threads": 1 or None, "log": LOG_FILE or None, "marker": {"path": P, "token": T} or None}

and trains the run exactly as ``dml reproduce`` does in its own process: a finished run is
returned as it is, an interrupted one (``config.yaml`` present, no ``summary.json``) resumed from
its last checkpoint. So a worker killed mid-cell leaves a run the next invocation resumes.

``python -m dmlkit.experiments.cell`` is a worker of the ``--jobs N`` launcher: it reads specs
from stdin, one per line, and answers each with one JSON line (:func:`serve`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dmlkit.errors import UserError, first_line
from dmlkit.experiments.launch import NOT_SHARED


def check_marker(marker: dict[str, str] | None) -> None:
    """Fail in one line unless this worker reads the token the launching command wrote.

    The launching command writes a random token into ``--out`` before it starts any cell; a
    worker on a machine that does not share that folder finds no file, or another command's.
    """
    if not marker:
        return
    path = Path(marker["path"])
    try:
        found = path.read_text().strip()
    except OSError:
        found = None
    if found != marker["token"]:
        raise UserError(
            f"--out {path.parent} {NOT_SHARED} the worker on {socket.gethostname()} (it cannot "
            f"read {path.name} there); put --out on a filesystem every worker mounts "
            f"(NFS, Lustre, GPFS...)"
        )


def probe_marker(marker: dict[str, str]) -> str:
    """:func:`check_marker` on a worker; returns the worker's host name (Ray's per-node probe)."""
    check_marker(marker)
    return socket.gethostname()


@contextlib.contextmanager
def _logged_to(path: str | None) -> Iterator[None]:
    """Everything this process writes (file descriptors 1 and 2, so native libraries' output
    too, and dmlkit's log messages) appended to ``path``; nothing changes when None.

    A worker runs one cell at a time, so moving its descriptors for the cell is safe.
    """
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("dmlkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dml: %(message)s"))
    level = logger.level
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        if not logger.handlers:  # a Ray or Slurm worker: nobody set up dmlkit's messages
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            logger.removeHandler(handler)
            logger.setLevel(level)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def execute_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or reuse) the run of one cell; returns its ``summary.json`` content."""
    check_marker(spec.get("marker"))  # before anything is written under --out
    try:
        os.chdir(spec["cwd"])  # relative paths of the config (data.root) mean what they meant
    except OSError:
        raise UserError(
            f"the folder the command was started in, {spec['cwd']}, does not exist on the "
            f"worker on {socket.gethostname()}; start it from a folder every worker mounts"
        ) from None
    with _logged_to(spec.get("log")):
        if spec.get("threads"):
            # read by train.threads=auto (an explicit train.threads wins, as in any run)
            os.environ["OMP_NUM_THREADS"] = str(spec["threads"])
        from dmlkit.config import config_from_dict
        from dmlkit.engine.rundir import RunDir
        from dmlkit.engine.trainer import Trainer

        try:
            cfg = config_from_dict(spec["config"])
            run = RunDir(spec["run"])
            if run.is_finished():
                return run.read_summary()
            trainer = Trainer(cfg, run.path, resume=run.config_path.is_file(), desc=spec["desc"])
            return trainer.fit()
        except UserError as exc:
            print(f"dml: error: {exc}", file=sys.stderr)  # the log says why, as `dml train`
            raise
        except Exception:
            traceback.print_exc()
            raise


def serve() -> int:
    """The ``--jobs N`` worker: one spec per line on stdin, one result line per cell.

    The worker lives for many cells (torch is imported once, not once per cell); its result
    lines go to the descriptor that was its stdout, every other output to the cell's log.
    """
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a stray print between cells must not corrupt the result lines
    logger = logging.getLogger("dmlkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dml: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        try:
            execute_cell(spec)
            answer = {"ok": True}
        except UserError as exc:
            answer = {"ok": False, "error": f"dml: error: {first_line(exc)}"}
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {first_line(exc)}"}
        results.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(serve())
