"""The one trainer every method shares.

It owns the loop (epochs or iterations), when each step's learning rate is set (the cohort's
schedules compute it), evaluation cadence, checkpoints, logging and resume; the method owns
what happens inside a step (:mod:`dmlkit.methods.update`). Model selection
never looks at the test split: the test split is evaluated once, after the final epoch, and
that is what ``summary.json`` reports.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dmlkit.cohort import CohortLike, PeerSpec, build_cohort, peer_specs
from dmlkit.config import Config
from dmlkit.config.usage import resolve_threads, resolved_root, unused_data_keys
from dmlkit.data import DataBundle, build_data
from dmlkit.data.protocol import ShardedLoader
from dmlkit.data.text import save_text_state
from dmlkit.distributed import DistContext, DistributedError, init_distributed
from dmlkit.engine.callbacks import CallbackList, Record, RunContext, build_callback
from dmlkit.engine.checkpoint import (
    load_teacher,
    repair_last,
)
from dmlkit.engine.devices import resolve_device, seed_everything
from dmlkit.engine.evaluation import check_reid_support, evaluate, evaluate_split
from dmlkit.engine.faults import maybe_kill
from dmlkit.engine.hf_peers import is_pretrained_model, save_pretrained_peers
from dmlkit.engine.hints import early_instability
from dmlkit.engine.lock import FolderLock
from dmlkit.engine.loggers import build_loggers
from dmlkit.engine.names import check_names
from dmlkit.engine.persistence import RunPersistence, TrainingError
from dmlkit.engine.records import (
    EpochFunction,
    EpochProgress,
    postfix,
    split_records,
    step_records,
    train_records,
)
from dmlkit.engine.rundir import run_dir_for
from dmlkit.engine.summary import make_summary
from dmlkit.errors import UserError
from dmlkit.losses.batches import causal_models, split_batch
from dmlkit.methods.dml import Method, NonFiniteLoss, build_method, model_kwargs, update_order
from dmlkit.metrics.text import attach_token_bytes
from dmlkit.models.hf import data_kwargs
from dmlkit.models.registry import accepts

log = logging.getLogger("dmlkit")


def _nonfinite(x: Any) -> bool:
    """Whether a batch's inputs (a tensor, or a dict of them) hold NaN or inf."""
    tensors = x.values() if isinstance(x, dict) else [x]
    return any(
        isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
        for t in tensors
    )


class Trainer:
    """Train a configured cohort into a run directory.

    Args:
        cfg: the resolved config.
        run_dir: where everything is written.
        resume: continue from the run directory's last checkpoint.
        desc: label of the progress bar.
        dist: this process's place in a ``torchrun`` job; by default joined from the
            environment as ``cfg.distributed`` says (a one-process context when ``mode=none``).
        trust_code: build a kd teacher whose checkpoint names an import-path arch (the user's
            opt-in, ``--trust-code``; :mod:`dmlkit.trust`).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        desc: str = "",
        dist: DistContext | None = None,
        data: DataBundle | None = None,
        cohort_factory: Callable[[list[PeerSpec], float, int], Any] | None = None,
        trust_code: bool = False,
    ) -> None:
        check_names(cfg)  # a misspelt name fails before any work (and any writing)
        self.cfg = cfg = self._settle(cfg)
        self.resume = resume
        self.trust_code = trust_code
        self.desc = desc or cfg.method.name
        self._join(dist, run_dir)
        self._build_callbacks()
        seed_everything(cfg.seed, cfg.train.deterministic)
        self._build_data(data)
        self._build_cohort(cohort_factory)
        self._build_method()
        self._reset_progress()

    # -- set-up, in the order of __init__ -------------------------------------------------------
    @staticmethod
    def _settle(cfg: Config) -> Config:
        """The config as the run records it (data roots absolute: ``dml eval RUN`` then works
        from any folder); this process's thread count set from it."""
        torch.set_num_threads(resolve_threads(cfg.train.threads))
        return dataclasses.replace(cfg, data=resolved_root(cfg.data))

    def _join(self, dist: DistContext | None, run_dir: str | Path) -> None:
        """This process's place in the job, its device, the run folder (rank 0 writes, the
        other ranks only read) and its persistence; ``--out`` / ``--resume`` checked."""
        if dist is None:
            dist = init_distributed(self.cfg.distributed, resolve_device(self.cfg.train.device))
        self.dist = dist
        self.device = dist.device
        self.run = run_dir_for(dist.is_main, run_dir)
        self.store = RunPersistence(self.cfg, self.run, dist, self.device, resume=self.resume)
        for message in unused_data_keys(self.cfg.data) if dist.is_main else []:
            warnings.warn(message, stacklevel=3)
        dist.on_main(self.store.check_run_dir)

    def _build_callbacks(self) -> None:
        """Before any slow work: a logger not installed or a callback not importable fails now.
        The loggers write from the main process only; a user's callbacks run in every one."""
        cfg, is_main = self.cfg, self.dist.is_main
        self.loggers = build_loggers(cfg.train.loggers, self.run.path) if is_main else []
        self.callbacks: list[Any] = [build_callback(c) for c in cfg.train.callbacks]

    def _build_data(self, data: DataBundle | None) -> None:
        """The splits (built from the config, or a user's, dmlkit.fit), this process's share of
        every batch in data mode, and the run's length in steps and epochs."""
        cfg, dist = self.cfg, self.dist
        if data is None:
            # a resumed text run re-loads its tokenizer and checks its data
            run_dir = self.run.path if self.resume else None
            data = build_data(cfg.data, seed=cfg.seed, device=self.device, run_dir=run_dir)
        else:  # a user's data (dmlkit.fit): batches move to the device as they come
            for loader in (data.train, data.val, data.test):
                if loader is not None:
                    loader.to(self.device)
        self.data: DataBundle = data
        attach_token_bytes(data)  # a language model's text: bits per byte in its evaluation
        sharded = isinstance(data.train, ShardedLoader)
        if cfg.distributed.mode == "data" and dist.world > 1 and sharded:
            # each process reads only its share of every global batch (the stream path)
            data.train.shard(dist.rank, dist.world)
        self.steps_per_epoch = len(self.data.train)
        if self.steps_per_epoch == 0:
            raise UserError(
                "data: the training split is empty; lower data.val_fraction or data.batch_size"
            )
        t = cfg.train
        self.total_steps = t.iterations if t.iterations else t.epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    def _build_cohort(
        self, cohort_factory: Callable[[list[PeerSpec], float, int], Any] | None
    ) -> None:
        """The peers (built from the config, or a user's modules), as the whole cohort seen
        from this process (its share of it in cohort mode)."""
        cfg, dist, data = self.cfg, self.dist, self.data
        specs = peer_specs(cfg, data.num_classes, data.in_channels, data.image_size)
        specs = [_with_method_kwargs(s, model_kwargs(cfg.method)) for s in specs]
        specs = [_with_data_kwargs(s, self.data) for s in specs]  # hf peers: task, vocabulary
        optims = [cfg.peer_optim(i) for i in range(len(specs))]
        total_epochs = self.total_steps / self.steps_per_epoch
        mine = dist.peer_slice(len(specs))  # all peers, or this process's share (cohort mode)
        if cohort_factory is not None:  # the user's own modules (dmlkit.fit)
            if dist.world > 1 and dist.mode != "data":
                # every process holds all of the user's modules: the batch is what is split
                raise UserError(
                    f"dmlkit.fit under torchrun: distributed.mode={dist.mode} is not supported "
                    f"for your own modules; use distributed.mode=data"
                )
            cohort = cohort_factory(specs, total_epochs, self.steps_per_epoch)
        else:
            cohort = build_cohort(
                cfg.train.cohort_impl,
                specs[mine],
                optims[mine],
                total_epochs=total_epochs,
                device=self.device,
                update=update_order(cfg.method) or "simultaneous",
                compile=cfg.train.compile,
                channels_last=cfg.train.channels_last,
            )
        self.cohort: CohortLike = dist.wrap_cohort(cohort, specs, optims, total_epochs)
        self._causal = causal_models(self.cohort)  # causal LMs: their labels are shifted

    def _build_method(self) -> None:
        """The method over the cohort (kd's teacher loaded first; in data mode it averages its
        losses and gradients over the processes), and the loader asked for what it takes."""
        cfg = self.cfg
        # kd's, or None; its arch is read from a checkpoint: data, unless the user trusts it
        teacher = load_teacher(cfg.method, self.data.num_classes, self.device, self.trust_code)
        sync = self.dist.step_sync(cfg.data.batch_size)
        self.method: Method = build_method(
            cfg, self.cohort, device=self.device, teacher=teacher, sync=sync
        )
        self.method.prepare_loader(self.data.train)  # e.g. one augmented view per member
        if self.data.task == "reid":  # fail now, not after training, if a peer has no features
            check_reid_support(self.cohort)

    def _reset_progress(self) -> None:
        """Counters at the start of a run (a resume sets them from its checkpoint), the
        callbacks' event list and the context they receive."""
        self.epoch = 0  # completed epochs
        self.iteration = 0  # completed steps
        self.skipped_steps = 0  # steps skipped for a non-finite loss (train.nonfinite=skip)
        self._resumed_epoch: EpochProgress | None = None  # from a mid-epoch checkpoint
        self._hinted = False  # the early-instability hint is given once per run
        self.events = CallbackList([*self.loggers, *self.callbacks])
        self.context = RunContext(
            run_dir=self.run.path,
            peers=self.cohort.names,
            config=self.cfg.to_dict(),
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            num_epochs=self.num_epochs,
        )

    # -- the loop -------------------------------------------------------------------------------
    def fit(
        self,
        callbacks: Sequence[Any] = (),
        *,
        on_epoch: Callable[[int, list[Record]], Any] | None = None,
    ) -> dict[str, Any]:
        """Train to the end, evaluate the test split, write summary.json and return it.

        The run folder is locked (rank 0) from here to the end, whatever the exit.

        Args:
            callbacks: objects with some of the events of :mod:`dmlkit.engine.callbacks`,
                called after the configured loggers and ``train.callbacks``; a function of
                ``(epoch, records)`` after every epoch is ``EpochFunction(f)``
                (:mod:`dmlkit.engine.records`).
            on_epoch: deprecated alias of ``callbacks=[EpochFunction(on_epoch)]`` (warns).
        """
        extra = list(callbacks)
        if on_epoch is not None:
            warnings.warn(
                "Trainer.fit(on_epoch=f) is deprecated: pass callbacks=[EpochFunction(f)] "
                "(from dmlkit.engine.records)",
                DeprecationWarning,
                stacklevel=2,
            )
            extra.append(EpochFunction(on_epoch))
        self.events = CallbackList([*self.loggers, *self.callbacks, *extra])
        lock = FolderLock(self.run.path, f"--out {self.run.path}")
        try:
            self.dist.on_main(lock.acquire)
        except OSError as exc:
            raise UserError(
                f"--out {self.run.path}: cannot write the run directory ({exc.strerror}); "
                f"choose a writable folder"
            ) from None
        try:
            self.dist.on_main(self.store.check_run_dir)  # again, now that no one else can write
            self._start()
            return self._fit()
        finally:
            lock.release()

    def _start(self) -> None:
        """Create the run folder, or load the newest checkpoint to resume from."""
        if self.resume:
            point = self.store.load(self.cohort, self.method, self.events)
            if point is not None:
                self.epoch, self.iteration, self._resumed_epoch = point
            self.store.write("checkpoints", self.dist.on_main, repair_last, self.run.checkpoints)
            self.store.write("config.yaml", self.dist.on_main, self.run.update_config, self.cfg)
            return
        try:
            self.dist.on_main(self.run.create, self.cfg, self.device)
        except OSError as exc:
            raise UserError(
                f"--out {self.run.path}: cannot write the run directory ({exc.strerror}); "
                f"choose a writable folder"
            ) from None
        text = getattr(self.data, "text", None)
        if text is not None and text.tokenizer is not None:  # read back by eval / resume
            self.store.write("tokenizer", self.dist.on_main, save_text_state, text, self.run.path)

    def _fit(self) -> dict[str, Any]:
        run = self.context
        run.step, run.epoch, run.resumed = self.iteration, self.epoch, self.resume
        # loggers drop what followed the checkpoint
        self.store.write("metrics.jsonl", self.events.fire, "on_fit_start", run)
        cfg = self.cfg
        bar = tqdm(
            total=self.total_steps,
            initial=self.iteration,
            desc=self.desc,
            # redirected output gets no bar: a log of redraws helps no one
            disable=not cfg.train.progress or not self.dist.is_main or not _is_terminal(),
            leave=False,
            dynamic_ncols=True,
        )
        try:
            while self.epoch < self.num_epochs and not run.should_stop:
                start = time.perf_counter()
                # data mode: logs and BatchNorm statistics averaged over the processes
                train_logs = self.dist.end_epoch(self.cohort, self._train_epoch(bar))
                run.epoch = self.epoch = self.epoch + 1
                self._hint(self.epoch, train_logs)
                run.step = self.iteration
                seconds = time.perf_counter() - start
                records = train_records(run, train_logs, self.cohort.lrs(), seconds)
                last = self.epoch == self.num_epochs
                if self.data.val is not None and (self.epoch % cfg.train.eval_every == 0 or last):
                    metrics = evaluate(self.cohort, self.data.val, self.method.eval_heads)
                    val = split_records(run, "val", metrics)
                    self.store.write("metrics.jsonl", self.events.fire, "on_eval_end", run, val)
                    records += val
                every = cfg.train.test_every
                if every and self.epoch % every == 0 and not last:  # reporting only, see schema
                    metrics = evaluate(self.cohort, self.data.test, self.method.eval_heads)
                    records += split_records(run, "test_epoch", metrics)
                self._end_epoch(run, records, self.epoch % cfg.train.checkpoint_every == 0 or last)
                bar.set_postfix_str(postfix(records))
        except DistributedError as exc:  # another process died or hung: say how to go on
            raise DistributedError(
                f"{exc}; {self.store.kept()}; "
                f"resume with: {self.dist.resume_command(self.run.path)}"
            ) from None
        finally:
            bar.close()
        if run.should_stop and self.dist.is_main:
            log.info("%s (epoch %d)", run.stop_reason, self.epoch)
        return self.finish()

    def _hint(self, epoch: int, train_logs: list[dict[str, float]]) -> None:
        """One warning, once per run, for an unstable start (epochs 1-2)."""
        if self.dist.is_main and not self._hinted:
            hint = early_instability(epoch, self.cohort.names, train_logs, self.data.num_classes)
            if hint:
                self._hinted = True
                warnings.warn(hint, stacklevel=2)

    def _end_epoch(self, run: RunContext, records: list[Record], checkpoint: bool) -> None:
        """The loggers write, the checkpoint (if due), then the other callbacks' on_epoch_end.

        The loggers write before the checkpoint: records of a crash in between are dropped on
        resume and written again, never missing. The other callbacks see the epoch after its
        checkpoint; one that asks to stop then still gets the cohort checkpointed.
        """
        self.store.write(
            "metrics.jsonl", CallbackList(self.loggers).fire, "on_epoch_end", run, records
        )
        others = CallbackList([c for c in self.events if all(c is not x for x in self.loggers)])
        due = checkpoint or run.should_stop
        if due:
            self._checkpoint(run)
        others.fire("on_epoch_end", run, records)
        if run.should_stop and not due:  # asked for in on_epoch_end
            self._checkpoint(run)

    def _save(self, within: EpochProgress | None = None) -> Path:
        """A checkpoint of where training stands (``within``: inside an epoch)."""
        store, args = self.store, (self.cohort, self.method, self.events)
        return store.save(*args, self.epoch, self.iteration, within)

    def _checkpoint(self, run: RunContext) -> None:
        self.events.fire("on_checkpoint", run, self._save())
        maybe_kill("kill-after-checkpoint", self.epoch)

    def _train_epoch(self, bar: tqdm) -> list[dict[str, float]]:
        cohort, method = self.cohort, self.method
        cohort.train()
        loader = self.data.train
        # a run resumed from a mid-epoch checkpoint goes on with the epoch's next batch and the
        # sums of the steps it had done (so the epoch's train record is the uninterrupted one)
        acc, self._resumed_epoch = self._resumed_epoch or EpochProgress(), None
        loader.set_epoch(self.epoch, acc.batches)
        every_steps = self.cfg.train.checkpoint_every_steps
        for batch in loader:
            x, y = split_batch(batch, causal=self._causal)  # a dict batch: inputs, labels
            acc.batches += 1
            if self.iteration >= self.total_steps:
                break
            maybe_kill("kill-at-step", self.iteration + 1)
            if not (isinstance(loader, ShardedLoader) and loader.sharded):  # reads its share
                x, y = self.dist.shard(x, y)  # data mode: this process's share of the batch
            progress = self.iteration / self.steps_per_epoch
            cohort.set_lr(progress)
            method.set_progress(progress)
            try:
                logs = method.train_step(x, y)
            except NonFiniteLoss as exc:
                if self.cfg.train.nonfinite == "stop" and _nonfinite(x):
                    # the data, not the optimisation: no learning rate would help
                    raise TrainingError(
                        f"non-finite input at step {self.iteration + 1} (epoch {self.epoch + 1}):"
                        f" the batch itself holds NaN or inf values; {self.store.kept()}; "
                        f"check the data (a file, a transform, data.std of 0), not optim.lr"
                    ) from None
                if self.cfg.train.nonfinite == "stop":
                    raise TrainingError(
                        f"non-finite loss at step {self.iteration + 1} (epoch {self.epoch + 1}) "
                        f"for peer {exc.peer!r}: {exc.values}; {self.store.kept()}; "
                        f"lower optim.lr, or set train.nonfinite=skip"
                    ) from None
                self.skipped_steps += 1
                log.warning(
                    "step %d: skipped, non-finite loss for peer %r %s",
                    self.iteration + 1,
                    exc.peer,
                    exc.values,
                )
                self.iteration += 1
                bar.update(1)
                continue
            # each peer's gradient norm, as left by its step (kept on the device: no sync)
            norms = cohort.grad_norms()
            logs = [{**peer_log, "grad_norm": norms[i]} for i, peer_log in enumerate(logs)]
            acc.add(logs)
            self.iteration += 1
            bar.update(1)
            every = self.cfg.train.log_every
            run = self.context
            run.step = self.iteration
            if every and self.iteration % every == 0:
                records = step_records(run, self.epoch + 1, logs, cohort.lrs())
                self.store.write("metrics.jsonl", self.events.fire, "on_step_end", run, records)
            if every_steps and self.iteration % every_steps == 0 and acc.batches < len(loader):
                self.events.fire("on_checkpoint", run, self._save(acc))
        if acc.sums is None:
            raise TrainingError(
                f"every step of epoch {self.epoch + 1} had a non-finite loss and was skipped; "
                f"{self.store.kept()}; lower optim.lr"
            )
        return acc.means()

    def finish(self) -> dict[str, Any]:
        """Evaluate the final cohort on the test split; write and return summary.json."""
        # top-k (with the method's own heads), or re-id mAP/CMC
        test = evaluate_split(self.cohort, self.data.test, self.method.eval_heads)
        run = self.context
        run.step, run.epoch = self.iteration, self.epoch
        self.store.write(
            "metrics.jsonl", self.events.fire, "on_eval_end", run, split_records(run, "test", test)
        )
        members = self.cohort.member_specs  # a multi-branch peer's branches are members
        summary = make_summary(
            self.cfg,
            members,
            test,
            self.epoch,
            self.iteration,
            data=self.data,
            device=self.device,
        )
        deployed = self.method.deployed()
        if deployed is not None:
            summary["deployed"] = {"name": deployed, "metrics": test[deployed]}
        skipped = {
            split: len(loader.skipped)
            for split, loader in (("train", self.data.train), ("val", self.data.val))
            if hasattr(loader, "skipped")
        }
        if hasattr(self.data.test, "skipped"):
            skipped["test"] = len(self.data.test.skipped)
        if skipped:  # data.on_bad_image=skip: what the metrics leave out, in the record
            summary["skipped_images"] = skipped
        self.store.write("summary.json", self.run.write_summary, summary)
        self.store.write("peers", self.dist.on_main, self._save_pretrained_peers)  # HF peers
        self.events.fire("on_fit_end", run, summary)
        return summary

    def _save_pretrained_peers(self) -> None:
        """``transformers`` peers as ``save_pretrained`` folders in ``RUN/peers/NAME``."""
        peers = getattr(self.cohort, "peers", None)
        if peers is not None and any(is_pretrained_model(p) for p in peers):
            names = [s.name for s in self.cohort.specs]
            save_pretrained_peers(
                list(peers), names, self.run.path, class_names=self.data.class_names
            )


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _with_data_kwargs(spec: PeerSpec, data: DataBundle) -> PeerSpec:
    """The spec plus what a text dataset tells a Hugging Face peer (dmlkit.models.hf)."""
    extra = data_kwargs(
        spec.arch, spec.kwargs, data.task, getattr(data, "text", None), data.image_size
    )
    return replace(spec, kwargs={**spec.kwargs, **extra}) if extra else spec


def _with_method_kwargs(spec: PeerSpec, kwargs: dict[str, Any]) -> PeerSpec:
    """The spec plus the method's model arguments that its model takes (the method itself
    refuses a cohort it cannot train, in one line)."""
    extra = {k: v for k, v in kwargs.items() if accepts(spec.arch, k)}
    return replace(spec, kwargs={**spec.kwargs, **extra}) if extra else spec
