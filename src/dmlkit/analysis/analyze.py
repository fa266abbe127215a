"""``dml analyze``: the paper's three measurements on finished runs, as CSV, PNG and Markdown.

For each run directory: training-loss curves (from ``metrics.jsonl``), the wide-minima probe
(weight noise), posterior entropy (train and test) and peer agreement (test and train). Several
runs are compared by *label*: the arm of a grid (``GRID/<arm>/seed<N>`` -> ``<arm>``), else the
run directory's name; runs sharing a label are aggregated (mean ± std over seeds).

Outputs (``OUT/``): ``curves.csv``, ``noise.csv``, ``entropy.csv``, ``agreement.csv``,
``units.csv``, ``loss_curves.png``, ``noise.png``, ``entropy.png``, ``agreement.png``,
``summary.md`` (the tables) and ``analysis.json`` (every number, read back by ``dml report``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.analysis import plots
from dmlkit.analysis.agreement import agreement
from dmlkit.analysis.curves import eval_curves, train_curves
from dmlkit.analysis.entropy import entropy
from dmlkit.analysis.minima import noise_probe
from dmlkit.analysis.units import dead_units
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError

# Absolute sigmas suit networks whose weights are O(0.1) (the small digits nets); relative
# sigmas are fractions of each tensor's own std and suit any network.
DEFAULT_SIGMAS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05)
DEFAULT_RELATIVE_SIGMAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
_SEED_DIR = re.compile(r"^seed\d+$")


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
    """

    sigmas: Sequence[float] | None = None
    relative: bool = False
    draws: int = 5
    probe_samples: int = 1000
    entropy_samples: int = 5000
    seed: int = 0
    device: str = "cpu"

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


# ------------------------------------------------------------------------------------------------
# finding and loading runs


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories: each path is a run (has ``config.yaml``) or a folder holding runs.

    Raises:
        UserError: a path does not exist or holds no run.
    """
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such run or grid directory")
        if (path / "config.yaml").is_file():
            found = [path]
        else:
            found = sorted(
                p.parent
                for p in path.rglob("config.yaml")
                if (p.parent / "metrics.jsonl").is_file() and "analysis" not in p.parts
            )
        if not found:
            raise UserError(
                f"{path}: holds no run directory (no config.yaml + metrics.jsonl under it); "
                f"give a folder written by dml train or dml reproduce"
            )
        runs += [p for p in found if p not in runs]
    return runs


def run_label(path: Path) -> str:
    """The arm of a grid run (``GRID/<arm>/seed<N>`` -> ``<arm>``), else the folder's name."""
    path = Path(path)
    return path.parent.name if _SEED_DIR.match(path.name) else path.name


def order_labels(labels: Iterable[str], methods: dict[str, str]) -> list[str]:
    """Labels in order of appearance, the independent baseline(s) first."""
    seen = list(dict.fromkeys(labels))
    return sorted(seen, key=lambda lab: (methods.get(lab) != "independent", seen.index(lab)))


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


def _ensemble_logp(logits: list[Tensor]) -> Tensor:
    """Log of the mean of the peers' probabilities ``[N, C]`` (the cohort ensemble)."""
    lp = torch.stack([F.log_softmax(z, dim=1) for z in logits])
    return torch.logsumexp(lp, dim=0) - math.log(len(logits))


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

    run = RunDir(path)
    if not run.config_path.is_file():
        raise UserError(f"{run.path}: not a run directory (no config.yaml)")
    cfg = run.load_config()
    device = torch.device(options.device)
    cohort, state = load_cohort(run.path, device)
    specs, models = cohort.specs, list(cohort.peers)
    names = [s.name for s in specs]
    records = run.read_metrics()
    data = build_data(cfg.data, seed=cfg.seed, device=device)

    # One fixed subset of the training split (the first images, unaugmented): the same images
    # for every run of a grid, since the split does not depend on the run seed.
    x_train, y_train = _collect(data.train, max(options.probe_samples, options.entropy_samples))
    x_test, y_test = _collect(data.test)
    splits = {
        "train": _predict(models, x_train[: options.entropy_samples]),
        "test": _predict(models, x_test),
    }
    ent: dict[str, dict[str, float]] = {}
    agree: dict[str, dict[str, float | None]] = {}
    for split, logits in splits.items():
        ent[split] = {n: float(entropy(z).mean()) for n, z in zip(names, logits)}
        ens_p = _ensemble_logp(logits).exp()
        ent[split][ENSEMBLE] = float(-(torch.special.xlogy(ens_p, ens_p)).sum(1).mean())
        agree[split] = agreement(logits)

    sigmas = options.noise_levels()
    xp, yp = x_train[: options.probe_samples], y_train[: options.probe_samples]
    noise: dict[str, Any] = {
        "relative": options.relative,
        "sigmas": sigmas,
        "draws": options.draws,
        "samples": int((yp >= 0).sum()),
        "seed": options.seed,
        "peers": {},
    }
    for name, model in zip(names, models):
        probe = noise_probe(
            model, xp, yp, sigmas, draws=options.draws, relative=options.relative, seed=options.seed
        )
        noise["peers"][name] = {"base": probe.base_loss, "losses": probe.losses.tolist()}

    dead = {n: dead_units(m, x_train[: options.probe_samples]) for n, m in zip(names, models)}

    test_metrics: dict[str, dict[str, float]] = {}
    if run.is_finished():
        summary = json.loads(run.summary_path.read_text(encoding="utf-8"))
        test_metrics = {p["name"]: p["metrics"] for p in summary["peers"]}
        test_metrics[ENSEMBLE] = summary[ENSEMBLE]["metrics"]
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
        "test": test_metrics,
    }


# ------------------------------------------------------------------------------------------------
# aggregation and tables


def _mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    vals = [scale * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _pct(values: Sequence[float]) -> str:
    text = _mean_std(values, 100, 2)
    return text if text == "-" else f"{text} %"


@dataclass
class Grouped:
    """Run analyses grouped by label (the arms), in display order."""

    labels: list[str]
    peers: list[str]
    by_label: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, results: list[dict[str, Any]]) -> Grouped:
        methods = {r["label"]: r["method"] for r in results}
        labels = order_labels([r["label"] for r in results], methods)
        peers = list(dict.fromkeys(p for r in results for p in r["peers"]))
        by_label = {lab: [r for r in results if r["label"] == lab] for lab in labels}
        return cls(labels, peers, by_label)


def _noise_increase(runs: list[dict[str, Any]], peer: str | None) -> np.ndarray:
    """``[R*D, S]`` loss increases of ``peer`` (None: every peer) over the runs and draws."""
    rows = []
    for r in runs:
        for name, rec in r["noise"]["peers"].items():
            if peer is None or name == peer:
                rows.append(np.asarray(rec["losses"]).T - rec["base"])
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def _early_table(g: Grouped, epochs: Sequence[int] = (1, 2, 3, 5, 10)) -> str:
    """The first epochs, where a collapse shows: training CE / mimicry term per label."""
    shown = [
        e
        for e in epochs
        if any(e in c["epoch"] for runs in g.by_label.values() for r in runs
               for c in r["curves"].values())
    ]  # fmt: skip
    lines = [
        "| label | " + " | ".join(f"epoch {e}" for e in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for lab in g.labels:
        cells = []
        for e in shown:
            ce, mim = [], []
            for r in g.by_label[lab]:
                for c in r["curves"].values():
                    if e in c["epoch"]:
                        i = c["epoch"].index(e)
                        ce.append(c["ce"][i])
                        mim.append(c["mimicry"][i])
            cells.append(f"{statistics.fmean(ce):.2f} / {statistics.fmean(mim):.2f}" if ce else "-")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return (
        "The first epochs: training CE / mimicry term, mean over runs and peers (a cohort "
        "whose CE sits near log C with a mimicry term near 0 has collapsed onto a shared, "
        "uninformative prediction).\n\n" + "\n".join(lines)
    )


def summary_tables(results: list[dict[str, Any]]) -> dict[str, str]:
    """Markdown tables, aggregated per label over runs and peers (mean ± std).

    Returns:
        ``{"loss": ..., "noise": ..., "entropy": ..., "agreement": ...}``.
    """
    g = Grouped.of(results)
    out = {}
    lines = [
        "| label | runs | final training CE | final training mimicry KL | max mimicry KL "
        "(epoch mean) | dead ReLU units % | test top-1 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for lab in g.labels:
        runs = g.by_label[lab]
        curves = [c for r in runs for c in r["curves"].values()]
        ce = [c["ce"][-1] for c in curves if c["ce"]]
        mim = [c["mimicry"][-1] for c in curves if c["mimicry"]]
        peak = [max(c["mimicry"]) for c in curves if c["mimicry"]]
        dead = [v for r in runs for v in r.get("dead_units", {}).values()]
        top1 = [m["top1"] for r in runs for p, m in r["test"].items() if p != ENSEMBLE]
        lines.append(
            f"| {lab} | {len(runs)} | {_mean_std(ce, digits=4)} | {_mean_std(mim, digits=4)} "
            f"| {_mean_std(peak, digits=3)} | {_mean_std(dead, 100, 1)} "
            f"| {_mean_std(top1, 100, 2)} |"
        )
    out["loss"] = (
        "Per peer, mean ± std over runs and peers: the last epoch's training CE and mimicry "
        "term, the largest epoch-mean mimicry term of the run, the ReLU units that never "
        "fire on the probe images (a peer with 100 % dead units in a layer is collapsed), "
        "and the test top-1.\n\n" + "\n".join(lines) + "\n\n" + _early_table(g)
    )

    first = results[0]["noise"]
    sigmas = first["sigmas"]
    unit = "x tensor std" if first["relative"] else "absolute"
    head = " | ".join(f"σ={s:g}" for s in sigmas if s > 0)
    lines = [
        f"| label | base loss | {head} |",
        "|---|---|" + "---|" * sum(s > 0 for s in sigmas),
    ]
    for lab in g.labels:
        runs = g.by_label[lab]
        base = [rec["base"] for r in runs for rec in r["noise"]["peers"].values()]
        inc = _noise_increase(runs, None)
        cells = [_mean_std(inc[:, i].tolist(), digits=4) for i, s in enumerate(sigmas) if s > 0]
        lines.append(f"| {lab} | {_mean_std(base, digits=4)} | " + " | ".join(cells) + " |")
    out["noise"] = (
        f"Rise of the training loss under Gaussian weight noise (sigma {unit}; "
        f"{first['draws']} draws x every peer x every run; {first['samples']} training "
        f"images, BatchNorm in eval mode), mean ± std.\n\n" + "\n".join(lines)
    )

    lines = [
        "| label | peers, train | peers, test | ensemble, test |",
        "|---|---|---|---|",
    ]
    for lab in g.labels:
        runs = g.by_label[lab]

        def vals(split: str, ens: bool, runs: list[dict[str, Any]] = runs) -> list[float]:
            return [
                v for r in runs for p, v in r["entropy"][split].items() if (p == ENSEMBLE) == ens
            ]

        lines.append(
            f"| {lab} | {_mean_std(vals('train', False), digits=4)} | "
            f"{_mean_std(vals('test', False), digits=4)} | "
            f"{_mean_std(vals('test', True), digits=4)} |"
        )
    c = results[0]["num_classes"]
    out["entropy"] = (
        f"Mean posterior entropy in nats (uniform over {c} classes: log {c} = "
        f"{math.log(c):.3f}), mean ± std over runs and peers.\n\n" + "\n".join(lines)
    )

    lines = [
        "| label | all peers agree, test | pairwise agreement, test | pairwise KL, test "
        "| pairwise KL, train |",
        "|---|---|---|---|---|",
    ]
    for lab in g.labels:
        runs = g.by_label[lab]

        def col(split: str, key: str, runs: list[dict[str, Any]] = runs) -> list[float]:
            return [r["agreement"][split][key] for r in runs]

        lines.append(
            f"| {lab} | {_pct(col('test', 'all_agree'))} | "
            f"{_pct(col('test', 'pairwise_agree'))} | "
            f"{_mean_std(col('test', 'pairwise_kl'), digits=4)} | "
            f"{_mean_std(col('train', 'pairwise_kl'), digits=4)} |"
        )
    out["agreement"] = "Mean over runs (± std).\n\n" + "\n".join(lines)
    return out


# ------------------------------------------------------------------------------------------------
# files


def _csv(rows: list[list[Any]], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def write_outputs(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """CSV, PNG, ``summary.md`` and ``analysis.json`` of ``results`` under ``out``."""
    if not results:
        raise ValueError("write_outputs needs at least one analysed run")
    out.mkdir(parents=True, exist_ok=True)
    g = Grouped.of(results)
    written = []

    def text(name: str, content: str) -> None:
        atomic_write_text(out / name, content)
        written.append(out / name)

    rows = [
        [r["label"], r["path"], peer, e, c["ce"][i], c["mimicry"][i], c["loss"][i], c["lr"][i]]
        for r in results
        for peer, c in r["curves"].items()
        for i, e in enumerate(c["epoch"])
    ]
    text("curves.csv", _csv(rows, ["label", "run", "peer", "epoch", "ce", "mimicry", "loss", "lr"]))
    rows = [
        [
            r["label"],
            r["path"],
            peer,
            s,
            r["noise"]["relative"],
            d,
            loss,
            rec["base"],
            loss - rec["base"],
        ]
        for r in results
        for peer, rec in r["noise"]["peers"].items()
        for s, per_draw in zip(r["noise"]["sigmas"], rec["losses"])
        for d, loss in enumerate(per_draw)
    ]
    header = ["label", "run", "peer", "sigma", "relative", "draw", "loss", "base_loss", "increase"]
    text("noise.csv", _csv(rows, header))
    rows = [
        [r["label"], r["path"], peer, split, v]
        for r in results
        for split, per_peer in r["entropy"].items()
        for peer, v in per_peer.items()
    ]
    text("entropy.csv", _csv(rows, ["label", "run", "peer", "split", "entropy_nats"]))
    rows = [
        [r["label"], r["path"], split, a["all_agree"], a["pairwise_agree"], a["pairwise_kl"]]
        for r in results
        for split, a in r["agreement"].items()
    ]
    header = ["label", "run", "split", "all_agree", "pairwise_agree", "pairwise_kl"]
    text("agreement.csv", _csv(rows, header))

    rows = [
        [r["label"], r["path"], peer, v]
        for r in results
        for peer, v in r.get("dead_units", {}).items()
    ]
    text("units.csv", _csv(rows, ["label", "run", "peer", "dead_relu_fraction"]))

    tables = summary_tables(results)
    text(
        "summary.md",
        "# Analysis\n\n"
        + "\n\n".join(f"## {k}\n\n{v}" for k, v in tables.items())
        + "\n\nRuns: "
        + ", ".join(r["path"] for r in results)
        + "\n",
    )
    text("analysis.json", json.dumps({"runs": results}, indent=1))

    curves = {
        lab: {p: [r["curves"][p] for r in g.by_label[lab] if p in r["curves"]] for p in g.peers}
        for lab in g.labels
    }
    val = {
        lab: {p: [r["val"][p] for r in g.by_label[lab] if p in r["val"]] for p in g.peers}
        for lab in g.labels
    }
    written.append(plots.plot_curves(curves, val, g.peers, g.labels, out / "loss_curves.png"))
    increase = {lab: {p: _noise_increase(g.by_label[lab], p) for p in g.peers} for lab in g.labels}
    first = results[0]["noise"]
    written.append(
        plots.plot_noise(
            increase, first["sigmas"], first["relative"], g.peers, g.labels, out / "noise.png"
        )
    )
    ent = {
        lab: {
            split: [
                v for r in g.by_label[lab] for p, v in r["entropy"][split].items() if p != ENSEMBLE
            ]
            for split in ("train", "test")
        }
        for lab in g.labels
    }
    panel = {
        "values": ent,
        "groups": ["train", "test"],
        "ylabel": "mean entropy (nats)",
        "title": "Posterior entropy of the peers (mean ± std over runs x peers)",
    }
    written.append(plots.plot_bars([panel], g.labels, out / "entropy.png"))
    if any(r["agreement"]["test"]["pairwise_kl"] is not None for r in results):
        panels = [
            {
                "values": {
                    lab: {
                        split: [
                            100 * r["agreement"][split]["pairwise_agree"]
                            for r in g.by_label[lab]
                            if r["agreement"][split]["pairwise_agree"] is not None
                        ]
                        for split in ("train", "test")
                    }
                    for lab in g.labels
                },
                "groups": ["train", "test"],
                "ylabel": "pairwise agreement %",
                "title": "Peers predicting the same class",
            },
            {
                "values": {
                    lab: {
                        split: [
                            r["agreement"][split]["pairwise_kl"]
                            for r in g.by_label[lab]
                            if r["agreement"][split]["pairwise_kl"] is not None
                        ]
                        for split in ("train", "test")
                    }
                    for lab in g.labels
                },
                "groups": ["train", "test"],
                "ylabel": "mean pairwise KL (nats)",
                "title": "Distance between the peers' posteriors",
            },
        ]
        written.append(plots.plot_bars(panels, g.labels, out / "agreement.png"))
    return written


def analyze(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    options: AnalysisOptions | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Analyse run directories (or folders of runs) and write the outputs.

    With ``out``: everything (every run, overlaid) goes there. Without: each run's own files go
    to ``RUN/analysis/``, and when several runs are given the comparison goes to
    ``<their common parent>/analysis/``.

    Returns:
        ``{"runs": [per-run results], "out": Path of the comparison (or the single run's)
        folder, "files": [written paths], "seconds": wall time}``.
    """
    start = time.perf_counter()
    options = options or AnalysisOptions()
    options.validate()
    runs = find_runs(paths)
    results = [analyze_run(p, options, log=log) for p in runs]
    for hint in collapse_hints(results):
        log(hint)
    files: list[Path] = []
    if out is not None:
        target = Path(out)
    else:
        for r, p in zip(results, runs):
            files += write_outputs([r], p / "analysis")
        target = _common_parent(runs) / "analysis" if len(runs) > 1 else runs[0] / "analysis"
    if out is not None or len(runs) > 1:
        files += write_outputs(results, target)
    seconds = time.perf_counter() - start
    meta = {"options": asdict(options), "seconds": seconds, "runs": [str(p) for p in runs]}
    atomic_write_text(target / "options.json", json.dumps(meta, indent=1))
    return {"runs": results, "out": target, "files": files, "seconds": seconds}


def collapse_hints(results: list[dict[str, Any]]) -> list[str]:
    """One line per peer that looks collapsed, with what to change.

    A peer is flagged when at least half of its ReLU units never fire on the probe images, or
    when its last-epoch training cross-entropy is still above 90 % of ``log C`` (chance).
    """
    hints = []
    for r in results:
        chance = math.log(r["num_classes"])
        for peer in r["peers"]:
            dead = r.get("dead_units", {}).get(peer, float("nan"))
            ce = r["curves"].get(peer, {}).get("ce") or [float("nan")]
            if dead >= 0.5 or ce[-1] > 0.9 * chance:
                fix = (
                    "lower optim.lr or warm the mimicry up (method.mimicry_rampup=5)"
                    if r["method"] in ("dml", "dml_e")
                    else "lower optim.lr"
                )
                hints.append(
                    f"hint: {peer} of {r['path']} looks collapsed ({100 * dead:.0f} % dead ReLU "
                    f"units, final training CE {ce[-1]:.2f} vs chance {chance:.2f}); {fix}"
                )
    return hints


def _common_parent(paths: list[Path]) -> Path:
    parts = [p.resolve().parts for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path(".")
