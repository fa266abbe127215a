"""The trainer's side that reads and writes the run folder: checkpoints, resume, full disks.

:class:`RunPersistence` is a part of :class:`dmlkit.engine.trainer.Trainer` (it holds one),
kept apart so that the loop reads as a loop: the checks of ``--out`` / ``--resume``, the
checkpoint's content (``state``), loading it back, writing it, and every other write into the
run folder, each failing in one line that says what was kept and how to go on. It changes no
attribute of the trainer: loading a checkpoint returns the :class:`ResumePoint` to go on from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dmlkit.cohort import CohortLike
from dmlkit.config import Config, config_differences
from dmlkit.engine.checkpoint import load_checkpoint, newest_valid_checkpoint, save_checkpoint
from dmlkit.engine.lock import LOCK_NAME
from dmlkit.engine.records import EpochProgress
from dmlkit.errors import UserError, first_line, write_advice

log = logging.getLogger("dmlkit")

# Keys whose change does not alter what a resumed run computes.
RESUMABLE_CHANGES = (
    "train.epochs",
    "train.iterations",
    "train.progress",
    "train.threads",
    "train.eval_every",
    "train.checkpoint_every",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.loggers",  # what is logged, not what is computed
    "train.log_every",
    "train.callbacks",
    "train.device",
    "train.channels_last",  # a layout, not a state: weights load into either
    "distributed.timeout_s",
    "distributed.backend",
    "data.strict",
    "data.download",
    "data.num_workers",  # the stream path seeds each sample: any number of workers, same batches
    "data.on_bad_image",  # stop -> skip, to go on past the file a stopped run named
)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class ResumePoint(NamedTuple):
    """Where a loaded checkpoint says training stands."""

    epoch: int  # completed epochs
    iteration: int  # completed steps
    within_epoch: EpochProgress | None  # the epoch under way (a mid-epoch checkpoint), or None


class RunPersistence:
    """Checkpoints and run-folder writes of a :class:`~dmlkit.engine.trainer.Trainer`.

    Args:
        cfg: the run's config.
        run: its run folder (``RunDir``, or ``FollowerRunDir`` on ranks other than 0).
        dist: this process's place in the job (``DistContext``).
        device: where the cohort lives (checkpoints load there in one process).
        resume: whether ``--resume`` continues the run in ``run``.
    """

    def __init__(
        self, cfg: Config, run: Any, dist: Any, device: torch.device, *, resume: bool
    ) -> None:
        self.cfg, self.run, self.dist, self.device, self.resume = cfg, run, dist, device, resume

    def check_run_dir(self) -> None:
        """``--out`` holds no run (or, with ``--resume``, a run this config may continue)."""
        run = self.run
        if self.resume:
            if not run.config_path.is_file():
                raise UserError(f"--resume {run.path}: no run there (no config.yaml)")
            saved = run.load_config()
            diff = [k for k in config_differences(saved, self.cfg) if k not in RESUMABLE_CHANGES]
            if diff:
                raise UserError(
                    f"--resume {run.path}: the config differs from the run's in {', '.join(diff)}; "
                    f"resume without changing them, or train into a new --out"
                )
        elif run.has_run():
            raise UserError(
                f"--out {run.path} already holds a run; continue it with --resume {run.path} "
                f"or choose another --out"
            )
        elif run.path.is_dir() and any(p.name != LOCK_NAME for p in run.path.iterdir()):
            # summary.json, metrics.jsonl... of something else would be overwritten or appended to
            raise UserError(
                f"--out {run.path} is not empty and holds no dmlkit run; choose an empty or "
                f"new folder"
            )

    def _newest_checkpoint(self) -> tuple[Path | None, dict[str, Any] | None]:
        found, skipped = newest_valid_checkpoint(self.run.checkpoints)
        for path, reason in skipped:
            log.warning("skipping checkpoint %s: %s", path.name, reason)
        if found is None:
            log.warning("no valid checkpoint in %s: starting from scratch", self.run.checkpoints)
            return None, None
        # On the CPU when it is sent to the other processes; load_state_dict moves it.
        where = self.device if self.dist.world == 1 else "cpu"
        return found, load_checkpoint(found, map_location=where)

    def load(self, cohort: CohortLike, method: Any, events: Any) -> ResumePoint | None:
        """Load the newest valid checkpoint into the cohort, the method's precision, the
        callbacks' state and the RNG; None when there is none (training starts afresh)."""
        found, state = self.dist.on_main(self._newest_checkpoint)  # rank 0 reads, all load
        if found is None:
            return None
        self.dist.check_resume(state, self.run.path)  # same number of processes
        saved = [(p["name"], p["arch"]) for p in state["peers"]]
        ours = [(self.cfg.peer_name(i), p.arch) for i, p in enumerate(self.cfg.peers)]
        if saved != ours:
            raise UserError(
                f"{found}: holds peers {saved}, the config has {ours}; resume with the run's "
                f"own config"
            )
        try:
            cohort.load_training_state(state["cohort"])
            method.precision.load_state_dict(state.get("precision", {}))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(
                f"{found}: does not fit this cohort ({first_line(exc, 160)}); "
                f"resume with the run's own config"
            ) from None
        if self.dist.is_main:
            log.info("resuming from %s", found)
        within = state.get("within_epoch")
        events.load_state_dict(state.get("callbacks", []))  # early stopping's best value
        rng = self.dist.rng_state(state)  # this process's own
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        return ResumePoint(
            state["epoch"],
            state["iteration"],
            EpochProgress.from_state(within) if within is not None else None,
        )

    def state(
        self, cohort: CohortLike, method: Any, events: Any, epoch: int, iteration: int
    ) -> dict[str, Any]:
        """The checkpoint's content after ``epoch`` epochs and ``iteration`` steps."""
        return {
            "epoch": epoch,
            "iteration": iteration,
            "peers": [vars(s) for s in cohort.specs],
            "cohort": cohort.training_state(),
            "lr": cohort.lrs(),  # the schedules are functions of the iteration above
            "precision": method.precision.state_dict(),  # fp16's loss scale
            "method": {"name": self.cfg.method.name, "update": self.cfg.method.update},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None,
            },
            "config": self.cfg.to_dict(),
            "callbacks": events.state_dict(),
            "distributed": self.dist.checkpoint_info(),  # world size, every rank's RNG state
        }

    def save(
        self,
        cohort: CohortLike,
        method: Any,
        events: Any,
        epoch: int,
        iteration: int,
        within: EpochProgress | None = None,
    ) -> Path:
        """Checkpoint the cohort; a failed write (full disk...) stops the run, losing nothing.

        ``within``: the progress of the epoch under way, for a checkpoint taken inside it
        (``train.checkpoint_every_steps``); ``None`` at the end of an epoch.
        """
        state = self.state(cohort, method, events, epoch, iteration)
        if within is not None:
            state["within_epoch"] = within.state_dict()
        for spec, peer_state in zip(cohort.specs, state["cohort"]["models"]):
            bad = [
                n
                for n, p in peer_state.items()
                if p.is_floating_point() and not bool(torch.isfinite(p).all())
            ]
            if bad:
                raise TrainingError(
                    f"non-finite weights in peer {spec.name!r} ({bad[0]}) after epoch "
                    f"{epoch}, not checkpointed; {self.kept()}; lower optim.lr"
                )
        try:
            return self.dist.on_main(
                save_checkpoint,
                self.run.checkpoints,
                state,
                epoch,
                self.cfg.train.keep_checkpoints,
                None if within is None else iteration,
            )
        except OSError as exc:
            what = f"epoch {epoch}" if within is None else f"step {iteration}"
            raise TrainingError(
                f"cannot write the checkpoint of {what} in {self.run.checkpoints} "
                f"({exc.strerror or exc}); {self.kept()}; {self._advice(exc)}"
            ) from None

    def _advice(self, exc: OSError) -> str:
        """What to do after a failed write: free space, fix permissions, or the folder is gone."""
        return write_advice(exc, self.run.path, f"resume with dml train --resume {self.run.path}")

    def kept(self) -> str:
        """What survives a failure now: the last good checkpoint, named."""
        if not self.run.path.is_dir():
            return "the run folder is gone with its checkpoints"
        previous = newest_valid_checkpoint(self.run.checkpoints)[0]
        if previous is None:
            return "no checkpoint was written before this"
        return f"the last good checkpoint {previous} is intact"

    def write(self, name: str, write: Callable[..., Any], *args: Any) -> Any:
        """A write into the run folder; a full disk (any OSError) stops the run in one line.

        ``name``: the file or folder written, named in the message unless the error names its
        own file (a logger's).
        """
        try:
            return write(*args)
        except OSError as exc:
            where = exc.filename or self.run.path / name
            raise TrainingError(
                f"cannot write {where} ({exc.strerror or exc}); {self.kept()}; {self._advice(exc)}"
            ) from None
