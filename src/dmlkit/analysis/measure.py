"""``dml analyze`` on one run: rebuild its peers from the checkpoint and take every measurement.

Training-loss curves (from ``metrics.jsonl``), the wide-minima probe (weight noise), posterior
entropy and peer agreement (train and test), dead ReLU units, and the run's test metrics.

A text run (dict batches, :mod:`dmlkit.losses.batches`) gets the curves, the entropy and the
agreement, per valid token for a causal LM (``[B, T, V]`` logits: positions whose aligned label
is not -100) and per sample for a sequence classifier; the weight-noise probe and the dead ReLU
units take image tensors and are skipped with one line each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.analysis.curves import eval_curves, train_curves
from dmlkit.analysis.entropy import entropy
from dmlkit.analysis.minima import noise_probe
from dmlkit.analysis.runs import run_label
from dmlkit.analysis.units import dead_units
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError
from dmlkit.losses.batches import (
    batch_len,
    causal_models,
    flatten_valid,
    model_logits,
    slice_batch,
    split_batch,
)
from dmlkit.losses.dml import ensemble_log_probs, entropy_of_probs
from dmlkit.metrics.agreement import agreement_of_sums, agreement_sums

# Absolute sigmas suit networks whose weights are O(0.1) (the small digits nets); relative
# sigmas are fractions of each tensor's own std and suit any network.
DEFAULT_SIGMAS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05)
DEFAULT_RELATIVE_SIGMAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


@dataclass
class AnalysisOptions:
    """What ``analyze`` measures.

    Attributes:
        sigmas: weight-noise levels (None: the defaults for ``relative``).
        relative: noise relative to each parameter tensor's std instead of absolute.
        draws: noise draws per sigma (common to every peer and run).
        probe_samples: training images on which the noisy loss is measured (a fixed subset).
        entropy_samples: training images on which the train-split entropy is measured.
        seed: seed of the noise draws.
        device: where the networks are evaluated.
        trust_code: build import-path archs the runs' checkpoints name (``--trust-code``;
            :mod:`dmlkit.trust`); without it such a run is refused before anything is imported.
    """

    sigmas: Sequence[float] | None = None
    relative: bool = False
    draws: int = 5
    probe_samples: int = 1000
    entropy_samples: int = 5000
    seed: int = 0
    device: str = "cpu"
    trust_code: bool = False

    def noise_levels(self) -> list[float]:
        if self.sigmas is not None:
            return [float(s) for s in self.sigmas]
        return list(DEFAULT_RELATIVE_SIGMAS if self.relative else DEFAULT_SIGMAS)

    def validate(self) -> None:
        sig = self.noise_levels()
        if not sig or any(not math.isfinite(s) or s < 0 for s in sig):
            raise UserError(f"--sigmas must be numbers >= 0, got {sig}")
        if self.draws < 1:
            raise UserError(f"--draws must be >= 1, got {self.draws}")
        if self.probe_samples < 1 or self.entropy_samples < 1:
            raise UserError("--samples must be >= 1")


@torch.no_grad()
def _predict(models: list[torch.nn.Module], x: Tensor, batch: int = 1024) -> list[Tensor]:
    """Each model's logits ``[N, C]`` on ``x`` in eval mode (float32, on the CPU)."""
    out = []
    for m in models:
        m.eval()
        out.append(torch.cat([m(x[i : i + batch]).float().cpu() for i in range(0, len(x), batch)]))
    return out


def _collect(loader: Any, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``limit`` samples of a loader, unaugmented and in order: ``x [N, ...], y [N]``."""
    if hasattr(loader, "train"):
        loader.train = False  # plain, unshuffled batches
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        n += len(y)
        if limit is not None and n >= limit:
            break
    if not xs:
        raise UserError("the run's data split is empty; nothing to analyse")
    x, y = torch.cat(xs), torch.cat(ys)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


def posterior_stats(
    names: list[str], batches: Iterable[list[Tensor]]
) -> tuple[dict[str, float], dict[str, float | None]]:
    """Mean posterior entropy (every peer and the ensemble) and peer agreement over batches.

    Summed batch by batch, so that a text split's ``[N, V]`` rows never have to be held at once.

    Args:
        names: the K peers' names.
        batches: per batch, the K peers' logits ``[N_b, C]`` on the same rows (samples, or a
            language model's valid tokens).

    Returns:
        ``({peer | "ensemble": mean entropy, nats}, agreement)`` (see
        :func:`dmlkit.metrics.agreement.agreement`), means over all rows.
    """
    ent = torch.zeros(len(names) + 1, dtype=torch.float64)
    agree = torch.zeros(3, dtype=torch.float64)
    n = 0
    for logits in batches:
        if not len(logits[0]):
            continue
        ens = entropy_of_probs(ensemble_log_probs(logits).exp())
        rows = [*(entropy(z) for z in logits), ens]
        ent += torch.stack([r.double().sum() for r in rows]).cpu()
        log_p = torch.stack([F.log_softmax(z.float(), dim=1) for z in logits])
        agree += agreement_sums(log_p).cpu()
        n += len(logits[0])
    if n == 0:
        raise UserError("the run's data split has no sample or scored token; nothing to analyse")
    means = (ent / n).tolist()
    return dict(zip([*names, ENSEMBLE], means)), agreement_of_sums(agree, n, len(names))


def _posteriors(
    names: list[str], splits: dict[str, Iterable[list[Tensor]]]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float | None]]]:
    """:func:`posterior_stats` of each split."""
    ent: dict[str, dict[str, float]] = {}
    agree: dict[str, dict[str, float | None]] = {}
    for split, batches in splits.items():
        ent[split], agree[split] = posterior_stats(names, batches)
    return ent, agree


@torch.no_grad()
def text_logits(
    models: list[torch.nn.Module], loader: Any, limit: int | None = None
) -> Iterator[list[Tensor]]:
    """The peers' logits on a text split, batch by batch, one row per scored position.

    Args:
        models: the K peers (put in eval mode).
        loader: dict batches (:class:`dmlkit.data.text.TextLoader`), read unshuffled.
        limit: the first ``limit`` samples (sequences) only; None: all.

    Yields:
        K tensors ``[N_b, C]``: per sample for a classifier (every sample, labelled or not, as
        for images: entropy and agreement need no label); per valid token for a causal LM
        (labels aligned by the model's convention, padding and ``-100`` left out:
        :func:`dmlkit.losses.batches.flatten_valid`).
    """
    if hasattr(loader, "train"):
        loader.train = False  # plain, unshuffled batches
    causal = causal_models(models)
    for m in models:
        m.eval()
    seen = 0
    for batch in loader:
        inputs, targets = split_batch(batch, causal=causal)
        if limit is not None:
            take = min(batch_len(inputs), limit - seen)
            inputs, targets = slice_batch(inputs, 0, take), targets[:take]
        seen += len(targets)
        logits = [model_logits(m, inputs).float() for m in models]
        rows, _ = flatten_valid(logits, targets)
        yield [z.cpu() for z in rows]
        if limit is not None and seen >= limit:
            break


def _noise(
    names: list[str], models: list[Any], x: Tensor, y: Tensor, options: AnalysisOptions
) -> dict[str, Any]:
    """The wide-minima probe of every peer on the images ``x [N, ...]``, labels ``y [N]``."""
    sigmas = options.noise_levels()
    noise: dict[str, Any] = {
        "relative": options.relative,
        "sigmas": sigmas,
        "draws": options.draws,
        "samples": int((y >= 0).sum()),
        "seed": options.seed,
        "peers": {},
    }
    for name, model in zip(names, models):
        probe = noise_probe(
            model, x, y, sigmas, draws=options.draws, relative=options.relative, seed=options.seed
        )
        noise["peers"][name] = {"base": probe.base_loss, "losses": probe.losses.tolist()}
    return noise


def _test_metrics(run: RunDir) -> dict[str, dict[str, float]]:
    """The test metrics of every peer and the ensemble from summary.json ({} if unfinished)."""
    if not run.is_finished():
        return {}
    summary = run.read_summary()
    test_metrics = {p["name"]: p["metrics"] for p in summary["peers"]}
    test_metrics[ENSEMBLE] = summary[ENSEMBLE]["metrics"]
    return test_metrics


def analyze_run(
    path: str | Path, options: AnalysisOptions, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every measurement of one finished run, as plain (JSON-able) values.

    Returns:
        ``{"path", "label", "method", "update", "seed", "peers", "archs", "num_classes",
        "curves": {peer: {...}}, "val": {peer: {...}}, "noise": {...},
        "entropy": {split: {peer|"ensemble": nats}}, "agreement": {split: {...}},
        "dead_units": {peer: fraction}, "test": {peer|"ensemble": {"top1", ...}}}``
    """
    from dmlkit.data import build_data
    from dmlkit.engine.checkpoint import load_cohort
    from dmlkit.engine.devices import resolve_device

    run = RunDir(path)
    if not run.config_path.is_file():
        raise UserError(f"{run.path}: not a run directory (no config.yaml)")
    cfg = run.load_config()
    text = (run.path / "text-data.json").is_file()  # dict batches of a tokenizer's ids
    device = resolve_device(options.device, "--device")
    cohort, state = load_cohort(run.path, device, trust_code=options.trust_code)
    specs, models = cohort.specs, list(cohort.peers)
    names = [s.name for s in specs]
    records = run.read_metrics()
    # run_dir: a text run re-reads its own tokenizer (and refuses data that changed since)
    data = build_data(cfg.data, seed=cfg.seed, device=device, run_dir=run.path)
    if text:
        splits = {
            "train": text_logits(models, data.train, options.entropy_samples),
            "test": text_logits(models, data.test),
        }
        ent, agree = _posteriors(names, splits)
        noise, dead = _skipped_noise(options), {}
        log(f"{run.path}: a text run: {noise['skipped']}")
        log(f"{run.path}: a text run: dead ReLU units not counted (they are probed on images)")
    else:
        ent, agree, noise, dead = _image_measures(names, models, data, options)
    log(f"analysed {run.path} ({run_label(run.path)}, {len(names)} peers)")
    return {
        "path": str(run.path),
        "label": run_label(run.path),
        "method": cfg.method.name,
        "update": cfg.method.update,
        "seed": cfg.seed,
        "epoch": state["epoch"],
        "peers": names,
        "archs": [s.arch for s in specs],
        "num_classes": specs[0].num_classes,
        "curves": train_curves(records),
        "val": eval_curves(records, "val"),
        "noise": noise,
        "entropy": ent,
        "agreement": agree,
        "dead_units": dead,
        "test": _test_metrics(run),
    }


def _skipped_noise(options: AnalysisOptions) -> dict[str, Any]:
    """The noise record of a run the probe does not apply to: no sigma, no peer, and why."""
    return {
        "relative": options.relative,
        "sigmas": [],
        "draws": options.draws,
        "samples": 0,
        "seed": options.seed,
        "peers": {},
        "skipped": "wide-minima probe skipped (it measures the loss of image batches)",
    }


def _image_measures(
    names: list[str], models: list[Any], data: Any, options: AnalysisOptions
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, float]]:
    """Entropy, agreement, the noise probe and dead units of an image run's peers."""
    # One fixed subset of the training split (the first images, unaugmented): the same images
    # for every run of a grid, since the split does not depend on the run seed.
    x_train, y_train = _collect(data.train, max(options.probe_samples, options.entropy_samples))
    x_test, _ = _collect(data.test)
    splits = {
        "train": [_predict(models, x_train[: options.entropy_samples])],
        "test": [_predict(models, x_test)],
    }
    ent, agree = _posteriors(names, splits)
    xp, yp = x_train[: options.probe_samples], y_train[: options.probe_samples]
    noise = _noise(names, models, xp, yp, options)
    dead = {n: dead_units(m, xp) for n, m in zip(names, models)}
    return ent, agree, noise, dead
