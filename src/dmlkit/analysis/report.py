"""``dml report``: one Markdown page for an experiment (a grid of runs, or any runs).

The page holds: the command(s) that produced the runs, the config they share and what differs
between the arms, test metrics per peer and for the ensemble (mean ± std over seeds for runs that
differ only by seed), the paired gain of every arm over its independent baseline, the paper's
numbers beside ours where the recipe is one of the paper's, the paper's "why it works" claims
checked against this experiment's measurements (when ``dml analyze`` has run), the analysis
figures, the machine and software versions, the timing, and every run it was given.

Every number on the page is read from the run directories and the analysis files: nothing is
typed in, except the paper's published numbers (:data:`PAPER_CIFAR100`, :data:`PAPER_MARKET`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlkit.analysis.analyze import find_runs, order_labels, run_label
from dmlkit.engine.checkpoint import atomic_write_text
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError
from dmlkit.machine import cpu_name

# Paper Table 1 (CIFAR-100 top-1 %): (net1, net2) -> ((independent 1, 2), (DML 1, 2)).
PAPER_CIFAR100: dict[tuple[str, str], tuple[tuple[float, float], tuple[float, float]]] = {
    ("resnet32", "resnet32"): ((68.99, 68.99), (71.19, 70.75)),
    ("wrn28_10", "resnet32"): ((78.69, 68.99), (78.96, 70.73)),
    ("mobilenet", "resnet32"): ((73.65, 68.99), (76.13, 71.10)),
    ("mobilenet", "mobilenet"): ((73.65, 73.65), (76.21, 76.10)),
    ("wrn28_10", "mobilenet"): ((78.69, 73.65), (80.28, 77.39)),
    ("wrn28_10", "wrn28_10"): ((78.69, 78.69), (80.28, 80.08)),
}
# Paper Table 2 (Market-1501, MobileNet, ImageNet init, single query, mean of the two peers).
PAPER_MARKET: dict[str, dict[str, float]] = {
    "dml": {"mAP": 68.83, "rank1": 87.73},
    "independent": {"rank1": 83.94},
}
# Config keys that do not change what a run computes, or that differ between seeds by design.
_IGNORED = ("seed", "train.progress", "train.device", "method.teacher")
# Always shown in the config summary (other keys only when they differ from the defaults).
_CORE_KEYS = (
    "method.name",
    "method.update",
    "method.temperature",
    "method.mimicry_weight",
    "method.mimicry_rampup",
    "peers",
    "optim.name",
    "optim.lr",
    "optim.weight_decay",
    "optim.schedule",
    "data.name",
    "data.train_size",
    "data.batch_size",
    "train.epochs",
)
# Shown in the metrics tables when present, as percentages.
_METRICS = ("top1", "mAP", "rank1")
_METRIC_NAMES = {"top1": "top-1 %", "mAP": "mAP %", "rank1": "Rank-1 %"}
_FIGURES = (
    ("loss_curves.png", "Training cross-entropy per epoch and validation error"),
    ("noise.png", "Wide-minima probe: rise of the training loss under Gaussian weight noise"),
    ("entropy.png", "Mean posterior entropy of the peers"),
    ("agreement.png", "Peer agreement and pairwise KL"),
)


# ------------------------------------------------------------------------------------------------
# loading


@dataclass
class RunInfo:
    """What the report needs of one run directory."""

    path: Path
    label: str
    seed: int
    method: str
    flat: dict[str, Any]  # flattened config
    summary: dict[str, Any] | None
    env: dict[str, Any]
    started: float | None  # mtime of env.json (written when the run starts)
    finished: float | None  # mtime of summary.json
    train_seconds: float  # sum of the logged per-epoch times

    def metric(self, member: str, key: str) -> float | None:
        """Test metric ``key`` of a peer or the ensemble, in percent, or None."""
        if self.summary is None:
            return None
        if member == ENSEMBLE:
            m = self.summary[ENSEMBLE]["metrics"]
        else:
            found = [p["metrics"] for p in self.summary["peers"] if p["name"] == member]
            if not found:
                return None
            m = found[0]
        v = m.get(key)
        return None if v is None else 100.0 * float(v)

    @property
    def members(self) -> list[str]:
        if self.summary is None:
            return []
        return [p["name"] for p in self.summary["peers"]] + [ENSEMBLE]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif k == "peers" and isinstance(v, list):
            out[key] = _peers_text(v)
        else:
            out[key] = v
    return out


def _peers_text(peers: list[dict[str, Any]]) -> str:
    """``small_cnn x3`` / ``small_cnn(width=16), mlp`` (seeds left out: they follow the run)."""
    parts = []
    for p in peers:
        extra = {**p.get("kwargs", {}), **{f"optim.{k}": v for k, v in p.get("optim", {}).items()}}
        text = p["arch"] + (
            "(" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")" if extra else ""
        )
        parts.append(text)
    if len(set(parts)) == 1:
        return f"{parts[0]} x{len(parts)}"
    return ", ".join(parts)


def load_run_info(path: Path) -> RunInfo:
    run = RunDir(path)
    cfg = run.load_config()
    summary = (
        json.loads(run.summary_path.read_text(encoding="utf-8")) if run.is_finished() else None
    )
    env_path = run.path / "env.json"
    env = json.loads(env_path.read_text(encoding="utf-8")) if env_path.is_file() else {}
    seconds = sum(
        float(r.get("seconds", 0.0))
        for r in run.read_metrics()
        if r.get("split") == "train" and r.get("peer") == cfg.peer_name(0)
    )
    return RunInfo(
        path=run.path,
        label=run_label(run.path),
        seed=cfg.seed,
        method=cfg.method.name,
        flat=_flatten(cfg.to_dict()),
        summary=summary,
        env=env,
        started=env_path.stat().st_mtime if env_path.is_file() else None,
        finished=run.summary_path.stat().st_mtime if summary is not None else None,
        train_seconds=seconds,
    )


@dataclass
class Group:
    """Runs whose configs differ only by seed."""

    label: str
    runs: list[RunInfo]

    @property
    def key(self) -> dict[str, Any]:
        return {k: v for k, v in self.runs[0].flat.items() if k not in _IGNORED}

    @property
    def method(self) -> str:
        return self.runs[0].method

    def by_seed(self) -> dict[int, RunInfo]:
        return {r.seed: r for r in self.runs}


def group_runs(runs: list[RunInfo]) -> list[Group]:
    """Group runs that differ only by seed; labels from the arm names, made unique if needed."""
    groups: list[Group] = []
    for r in runs:
        key = {k: v for k, v in r.flat.items() if k not in _IGNORED}
        for g in groups:
            if g.key == key:
                g.runs.append(r)
                break
        else:
            groups.append(Group(r.label, [r]))
    labels = [g.label for g in groups]
    for g in groups:
        if labels.count(g.label) > 1 or len({r.label for r in g.runs}) > 1:
            g.label = f"{g.method} ({len(g.runs)} runs from {g.runs[0].path.parent})"
    order = order_labels([g.label for g in groups], {g.label: g.method for g in groups})
    return sorted(groups, key=lambda g: order.index(g.label))


def _baseline(group: Group, groups: list[Group]) -> Group | None:
    """The independent group whose config differs from ``group``'s only in ``method.*`` keys."""
    if group.method == "independent":
        return None
    for other in groups:
        if other.method != "independent":
            continue
        a, b = group.key, other.key
        diff = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
        if all(k.startswith("method.") for k in diff):
            return other
    return None


# ------------------------------------------------------------------------------------------------
# numbers


def _ms(values: Sequence[float | None], digits: int = 2, signed: bool = False) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    sign = "+" if signed and mean >= 0 else ""
    if len(vals) == 1:
        return f"{sign}{mean:.{digits}f}"
    return f"{sign}{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then ~1.96).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def _ci(diffs: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student's t over seeds)."""
    mean = statistics.fmean(diffs)
    n = len(diffs)
    if n < 2:
        return mean, math.inf
    t = _T975[n - 2] if n - 2 < len(_T975) else 1.96
    return mean, t * statistics.stdev(diffs) / math.sqrt(n)


def _table(corners: tuple[str, str], rows: list[str], cols: list[str], cell: Any) -> list[str]:
    """A Markdown table of ``cell(row, col)``; with more than 4 columns it is transposed so
    that a page with many arms grows down rather than sideways (``corners``: the corner cell
    of the table as given and of the transposed one)."""
    corner = corners[0]
    if len(cols) > 4 and len(cols) > len(rows):
        rows, cols, cell, corner = cols, rows, (lambda c, r, f=cell: f(r, c)), corners[1]
    lines = ["| " + " | ".join([corner, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {r} | " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return lines


def metrics_section(groups: list[Group]) -> str:
    """Test metrics per peer and ensemble for every group, and paired gains over baselines."""
    members = list(dict.fromkeys(m for g in groups for r in g.runs for m in r.members))
    metrics = [
        k
        for k in _METRICS
        if any(r.metric(m, k) is not None for g in groups for r in g.runs for m in r.members)
    ]
    if not metrics:
        return "No finished run (no summary.json): no test metrics yet."
    parts = []
    by_name = {f"{g.label} (n={len(g.runs)})": g for g in groups}
    gains = {
        f"{g.label} − {b.label}": (g, b) for g in groups if (b := _baseline(g, groups)) is not None
    }
    for key in metrics:
        lines = [
            f"Test {_METRIC_NAMES[key]}, mean ± std over seeds (the final epoch; the test split "
            f"is never used for selection).",
            "",
            *_table(
                ("member", "arm"),
                members,
                list(by_name),
                lambda m, name, key=key: _ms([r.metric(m, key) for r in by_name[name].runs]),
            ),
        ]
        parts.append("\n".join(lines))
        if gains:

            def gain_cell(m: str, name: str, key: str = key) -> str:
                d = _paired(*gains[name], m, key)
                pos = sum(x > 1e-9 for x in d)
                neg = sum(x < -1e-9 for x in d)
                return f"{_ms(d, signed=True)} [{pos}/{len(d) - pos - neg}/{neg}]"

            lines = [
                f"Paired gain in {_METRIC_NAMES[key]} points (same seed: same initialisations and "
                f"data order), mean ± std over seeds; in brackets the seeds where the gain is "
                f"> 0 / = 0 / < 0.",
                "",
                *_table(("member", "arm − baseline"), members, list(gains), gain_cell),
            ]
            parts.append("\n".join(lines))
    collapsed = _collapsed(groups)
    if collapsed:
        parts.append(collapsed)
    return "\n\n".join(parts)


def _collapsed(groups: list[Group]) -> str | None:
    """A line per group with peers that ended near chance (top-1 below twice 1/C)."""
    lines = []
    for g in groups:
        hits = []
        for r in g.runs:
            for m in r.members[:-1]:
                v = r.metric(m, "top1")
                # Only a poor peer costs a look at the checkpoint (for the number of classes).
                if v is not None and v < 50 and v < 200.0 / max(_num_classes(r), 1):
                    hits.append(f"{m} of seed {r.seed} ({v:.1f} %)")
        if hits:
            lines.append(
                f"- **{g.label}**: {len(hits)} peer(s) ended at chance level: " + ", ".join(hits)
            )
    if not lines:
        return None
    return "Collapsed peers (test top-1 below twice the chance level):\n\n" + "\n".join(lines)


def _num_classes(r: RunInfo) -> int:
    """The number of classes, from the run's checkpointed peer specs (0 if unknown)."""
    ckpt = r.path / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        return 0
    from dmlkit.engine.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(ckpt)["peers"][0]["num_classes"])
    except (UserError, KeyError, IndexError):
        return 0


def _paired(g: Group, b: Group, member: str, key: str) -> list[float]:
    gs, bs = g.by_seed(), b.by_seed()
    out = []
    for seed in sorted(gs.keys() & bs.keys()):
        x, y = gs[seed].metric(member, key), bs[seed].metric(member, key)
        if x is not None and y is not None:
            out.append(x - y)
    return out


def paper_section(groups: list[Group]) -> str | None:
    """Our numbers beside the paper's, where a group's recipe is one of the paper's tables."""
    rows = []
    for g in groups:
        flat = g.runs[0].flat
        archs = tuple(p.split("(")[0] for p in _split_peers(flat.get("peers", "")))
        dataset = flat.get("data.name")
        if dataset == "cifar100" and len(archs) == 2 and g.method in ("independent", "dml"):
            pair = archs if archs in PAPER_CIFAR100 else tuple(reversed(archs))
            if pair in PAPER_CIFAR100:
                paper = PAPER_CIFAR100[pair][0 if g.method == "independent" else 1]
                if pair != archs:
                    paper = tuple(reversed(paper))
                names = [p["name"] for p in g.runs[0].summary["peers"]] if g.runs[0].summary else []
                for i, name in enumerate(names[:2]):
                    ours = _ms([r.metric(name, "top1") for r in g.runs])
                    rows.append(
                        f"| CIFAR-100 {' / '.join(archs)} | {g.method} | {name} | top-1 % "
                        f"| {paper[i]:.2f} | {ours} |"
                    )
        if dataset == "market1501" and g.method in PAPER_MARKET:
            for key, paper_value in PAPER_MARKET[g.method].items():
                vals = [
                    statistics.fmean(v)
                    for r in g.runs
                    if (v := [x for m in r.members[:-1] if (x := r.metric(m, key)) is not None])
                ]
                init = "ImageNet init" if "pretrained" in flat.get("peers", "") else "scratch"
                rows.append(
                    f"| Market-1501 {' / '.join(archs)} (ours: {init}; paper: ImageNet init, "
                    f"single query) | {g.method} | mean of peers | {key} % "
                    f"| {paper_value:.2f} | {_ms(vals)} |"
                )
    if not rows:
        return None
    return "\n".join(
        [
            "| recipe | method | member | metric | paper | ours (mean ± std over seeds) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )


def _split_peers(text: str) -> list[str]:
    if " x" in text and "," not in text:
        arch, n = text.rsplit(" x", 1)
        return [arch] * int(n) if n.isdigit() else [text]
    return [p.strip() for p in text.split(",") if p.strip()]


def claims_section(analysis: list[dict[str, Any]], groups: list[Group]) -> str | None:
    """The paper's Sec. 4.5 claims, checked for every DML arm against its independent baseline.

    Every comparison is paired by seed (the arms of a seed share initialisations and data
    order): the per-seed difference is averaged over the peers (and noise draws), and a claim
    holds only when the 95 % confidence interval of the mean difference (Student's t over
    seeds) excludes 0 on the paper's side.
    """
    where = {str(r.path.resolve()): g for g in groups for r in g.runs}
    by_group: dict[str, dict[int, dict[str, Any]]] = {}
    group_of: dict[str, Group] = {}
    for r in analysis:
        g = where.get(str(Path(r["path"]).resolve()))
        if g is not None:
            by_group.setdefault(g.label, {})[r["seed"]] = r
            group_of[g.label] = g
    pairs = []  # (arm, baseline, kind)
    for label, g in group_of.items():
        base = _baseline(g, groups)
        if g.method in ("dml", "dml_e") and base is not None and base.label in by_group:
            pairs.append((label, base.label))
    e_pairs = []
    for label, g in group_of.items():
        if g.method != "dml_e":
            continue
        for other, h in group_of.items():
            diff = [k for k in g.key.keys() | h.key.keys() if g.key.get(k) != h.key.get(k)]
            if h.method == "dml" and diff == ["method.name"]:
                e_pairs.append((label, other))
    if not pairs:
        return None

    def paired(a: str, b: str, fn: Any) -> list[float]:
        seeds = sorted(by_group[a].keys() & by_group[b].keys())
        return [fn(by_group[a][s]) - fn(by_group[b][s]) for s in seeds]

    def peers_mean(fn: Any) -> Any:
        return lambda r: statistics.fmean(fn(r, p) for p in r["peers"])

    final_ce = peers_mean(lambda r, p: r["curves"][p]["ce"][-1])
    test_top1 = peers_mean(lambda r, p: 100 * r["test"][p]["top1"])
    test_ent = peers_mean(lambda r, p: r["entropy"]["test"][p])

    def noise_rise(r: dict[str, Any]) -> float:
        i = len(r["noise"]["sigmas"]) - 1  # the largest sigma
        return statistics.fmean(
            statistics.fmean(rec["losses"][i]) - rec["base"] for rec in r["noise"]["peers"].values()
        )

    def cell(a: str, b: str, fn: Any, sign: int, digits: int) -> str:
        d = paired(a, b, fn)
        if not d:
            return "-"
        mean, half = _ci(d)
        return f"{mean:+.{digits}f} ± {half:.{digits}f} {_mark(mean, half, sign)}"

    def ce_cell(a: str, b: str) -> str:
        d = paired(a, b, final_ce)
        if not d:
            return "-"
        mean, half = _ci(d)
        ref = statistics.fmean(final_ce(r) for r in by_group[b].values())
        rel = 100 * mean / ref if ref else math.inf
        # "Similar" has no threshold in the paper: within 10 % counts as similar here.
        return f"{rel:+.0f} % ({mean:+.4f} ± {half:.4f}) {'✓' if abs(rel) <= 10 else '✗'}"

    sigma = analysis[0]["noise"]["sigmas"][-1]
    lines = [
        "The paper's claims (Sec. 4.5), for each DML arm against its independent baseline: "
        "(1) DML tests better, (2) with a similar training loss, (3) weight noise raises its "
        f"training loss less (here σ = {sigma:g}), (4) its posteriors have higher entropy. "
        "Each cell: the paired per-seed difference *arm − baseline*, averaged over the peers, "
        "mean ± the half-width of its 95 % confidence interval (Student's t over seeds); "
        "✓ the claim holds here (interval excludes 0 on the paper's side), ✗ the opposite holds, "
        "~ not resolved (interval includes 0). Similar training loss: ✓ within 10 %.",
        "",
        "| arm − baseline | seeds | (1) test top-1, points | (2) final training CE, relative "
        "| (3) training-loss rise under noise | (4) test entropy, nats |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in pairs:
        n = len(by_group[a].keys() & by_group[b].keys())
        lines.append(
            f"| {a} − {b} | {n} | {cell(a, b, test_top1, +1, 2)} | {ce_cell(a, b)} "
            f"| {cell(a, b, noise_rise, -1, 4)} | {cell(a, b, test_ent, +1, 4)} |"
        )
    if e_pairs:
        lines += [
            "",
            "DML_e against DML (paper: DML_e tests worse, with lower posterior entropy):",
            "",
            "| arm − arm | seeds | test top-1, points | test entropy, nats |",
            "|---|---|---|---|",
        ]
        for a, b in e_pairs:
            n = len(by_group[a].keys() & by_group[b].keys())
            lines.append(
                f"| {a} − {b} | {n} | {cell(a, b, test_top1, -1, 2)} "
                f"| {cell(a, b, test_ent, -1, 4)} |"
            )
    return "\n".join(lines)


def _mark(mean: float, half: float, expected_sign: int) -> str:
    """✓ / ✗ / ~: whether a paired difference agrees with the sign the paper expects."""
    if not math.isfinite(half):
        return "(1 seed)"
    if mean * expected_sign > half:
        return "✓"
    if -mean * expected_sign > half:
        return "✗"
    return "~"


def config_section(groups: list[Group]) -> str:
    """The config every run shares (the main keys and any changed default), then the arms."""
    from dmlkit.config import Config

    defaults = _flatten(Config().to_dict())
    flats = [r.flat for g in groups for r in g.runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    shared = {
        k: flats[0].get(k)
        for k in keys
        if k not in _IGNORED and all(f.get(k) == flats[0].get(k) for f in flats)
    }
    shown = {k: v for k, v in shared.items() if k in _CORE_KEYS or defaults.get(k) != v}
    rows = [f"| `{k}` | {_fmt(v)} |" for k, v in shown.items()]
    lines = [
        "Shared by every run (the main keys, and every other key changed from its default; "
        "each run's full config is its `config.yaml`):",
        "",
        "| key | value |",
        "|---|---|",
        *rows,
    ]
    varying = [k for k in keys if k not in shared and k not in _IGNORED]
    if varying:
        lines += ["", "What differs between the arms:", ""]
        lines += ["| arm | runs | seeds | " + " | ".join(f"`{k}`" for k in varying) + " |"]
        lines += ["|---|---|---|" + "---|" * len(varying)]
        for g in groups:
            seeds = ", ".join(str(s) for s in sorted(g.by_seed()))
            cells = [_fmt(g.runs[0].flat.get(k)) for k in varying]
            lines.append(f"| {g.label} | {len(g.runs)} | {seeds} | " + " | ".join(cells) + " |")
    else:
        seeds = sorted({r.seed for g in groups for r in g.runs})
        lines += ["", f"Seeds: {', '.join(map(str, seeds))}."]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    return str(v)


def environment_section(runs: list[RunInfo]) -> str:
    keys = (
        "dmlkit",
        "git_commit",
        "python",
        "torch",
        "torchvision",
        "platform",
        "machine",
        "cpu_count",
        "torch_threads",
        "device",
        "gpu",
        "cuda",
    )
    lines = ["| | value (from the runs' env.json) |", "|---|---|"]
    for k in keys:
        vals = list(dict.fromkeys(str(r.env[k]) for r in runs if k in r.env))
        if vals:
            lines.append(f"| {k} | {'; '.join(vals)} |")
    cpu = cpu_name()
    if cpu:
        lines.append(f"| CPU of the machine that wrote this page | {cpu} |")
    return "\n".join(lines)


def timing_section(runs: list[RunInfo], analysis_seconds: float | None) -> str:
    starts = [r.started for r in runs if r.started is not None]
    ends = [r.finished for r in runs if r.finished is not None]
    lines = []
    train = sum(r.train_seconds for r in runs)
    lines.append(
        f"- Training: {len(runs)} runs, {train:.0f} s of logged epoch time in total "
        f"({train / max(len(runs), 1):.1f} s per run)."
    )
    if starts and ends:
        span = max(ends) - min(starts)
        first = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(min(starts)))
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(ends)))
        lines.append(
            f"- Wall clock from the first run's start ({first}) to the last run's end ({last}): "
            f"{span:.0f} s ({span / 60:.1f} min)."
        )
    if analysis_seconds is not None:
        lines.append(f"- `dml analyze` of these runs: {analysis_seconds:.0f} s.")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()
        lines.append(
            f"- Load average when this page was written: {load[0]:.2f} / {load[1]:.2f} / "
            f"{load[2]:.2f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs: a load above the CPU "
            f"count means other work shared the machine and the times above are inflated."
        )
    return "\n".join(lines)


def commands_section(runs: list[RunInfo], extra: Sequence[str]) -> str:
    cmds = []
    for r in runs:
        argv = r.env.get("argv")
        if argv:
            cmds.append(_command(argv))
    cmds = list(dict.fromkeys(cmds))
    cmds += [c for c in extra if c not in cmds]
    return "```bash\n" + "\n".join(cmds) + "\n```" if cmds else "(no command recorded)"


def _command(argv: Sequence[str]) -> str:
    argv = list(argv)
    if argv and Path(argv[0]).name == "dml":
        argv[0] = "dml"
    elif argv and argv[0].endswith(".py"):
        argv.insert(0, "python")
    return shlex.join(argv)


def runs_section(runs: list[RunInfo], base: Path) -> str:
    lines = ["| run | label | seed | test top-1 % per peer | ensemble |", "|---|---|---|---|---|"]
    for r in runs:
        if r.summary is None:
            peers, ens = "(not finished)", "-"
        else:
            peers = (
                ", ".join(
                    f"{r.metric(m, 'top1'):.2f}"
                    for m in r.members[:-1]
                    if r.metric(m, "top1") is not None
                )
                or "-"
            )
            ens_v = r.metric(ENSEMBLE, "top1")
            ens = f"{ens_v:.2f}" if ens_v is not None else "-"
        lines.append(f"| `{_rel(r.path, base)}` | {r.label} | {r.seed} | {peers} | {ens} |")
    return "\n".join(lines)


def _rel(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# the page


def default_analysis_dir(paths: Sequence[str | Path], runs: list[Path]) -> Path | None:
    """Where ``dml analyze`` put the comparison of these runs, if it did."""
    candidates = [Path(p) / "analysis" for p in paths]
    if len(runs) == 1:
        candidates.append(runs[0] / "analysis")
    for c in candidates:
        if (c / "analysis.json").is_file():
            return c
    return None


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    title: str | None = None,
    description: str | None = None,
    notes: Sequence[str] = (),
    analysis_dir: str | Path | None = None,
    commands: Sequence[str] = (),
) -> str:
    """Write the Markdown page for the runs under ``paths`` to ``out`` and return its text.

    Figures of the analysis are linked relative to the page; those not already below the page's
    folder are copied into ``<page folder>/<page stem>/``.

    Args:
        paths: run directories or folders holding runs (e.g. a ``dml reproduce`` output).
        out: the ``.md`` file to write.
        title: the page title (default: from the paths).
        description: a paragraph under the title.
        notes: further paragraphs (Markdown) after the results.
        analysis_dir: a ``dml analyze`` output of these runs (default: ``PATH/analysis`` when it
            exists).
        commands: commands to list besides the ones recorded in the runs (e.g. this report's).
    """
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise UserError(f"--out {out}: the report is Markdown; give a file name ending in .md")
    run_paths = find_runs(paths)
    runs = [load_run_info(p) for p in run_paths]
    groups = group_runs(runs)
    adir = Path(analysis_dir) if analysis_dir else default_analysis_dir(paths, run_paths)
    analysis: list[dict[str, Any]] = []
    analysis_seconds = None
    if adir is not None and (adir / "analysis.json").is_file():
        analysis = json.loads((adir / "analysis.json").read_text(encoding="utf-8"))["runs"]
        given = {str(p.resolve()) for p in run_paths}
        analysis = [a for a in analysis if str(Path(a["path"]).resolve()) in given]
        opts = adir / "options.json"
        if opts.is_file():
            analysis_seconds = json.loads(opts.read_text(encoding="utf-8")).get("seconds")
    title = title or f"Report: {', '.join(str(p) for p in paths)}"

    parts = [f"# {title}"]
    if description:
        parts.append(description)
    parts += ["## How to reproduce", commands_section(runs, commands)]
    parts += ["## Setup", config_section(groups)]
    parts += ["## Results", metrics_section(groups)]
    paper = paper_section(groups)
    parts += ["### Beside the paper's numbers"]
    parts.append(
        paper
        if paper
        else "This recipe is not one of the paper's tables (Zhang et al. report CIFAR-100 and "
        "Market-1501), so there is no published number to set beside it; the paper's "
        "qualitative claims are checked below when the analysis has run."
    )
    if analysis:
        from dmlkit.analysis.analyze import summary_tables

        claims = claims_section(analysis, groups)
        parts.append("## Why it works: the paper's analysis, measured here")
        if claims:
            parts.append(claims)
        tables = summary_tables(analysis)
        figures = _place_figures(adir, out)
        titles = {
            "loss": "### Training loss",
            "noise": "### Wide minima",
            "entropy": "### Posterior entropy",
            "agreement": "### Peer agreement",
        }
        fig_for = {
            "loss": "loss_curves.png",
            "noise": "noise.png",
            "entropy": "entropy.png",
            "agreement": "agreement.png",
        }
        for key, heading in titles.items():
            parts.append(heading)
            if fig_for[key] in figures:
                alt = dict(_FIGURES)[fig_for[key]]
                parts.append(f"![{alt}]({figures[fig_for[key]]})")
            parts.append(tables[key])
        parts.append(
            f"Every number above, per run and peer: `{_rel(adir, Path.cwd())}/` (curves.csv, "
            f"noise.csv, entropy.csv, agreement.csv, units.csv, analysis.json), written by "
            f"`dml analyze` (run directories are not part of the repository: the command at the "
            f"top regenerates them)."
        )
    else:
        parts.append(
            "## Why it works\n\nNo analysis found for these runs: run `dml analyze "
            + " ".join(str(p) for p in paths)
            + "` (or `dml report --analyze`) to add the loss curves, the wide-minima probe, "
            "posterior entropy and peer agreement."
        )
    parts += list(notes)
    parts += ["## Machine and software", environment_section(runs)]
    parts += ["### Timing", timing_section(runs, analysis_seconds)]
    parts += ["## Every run in this report", runs_section(runs, Path.cwd())]
    text = "\n\n".join(p.strip() for p in parts if p) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    _readable(out)
    return text


def _place_figures(adir: Path, out: Path) -> dict[str, str]:
    """Figure name -> link relative to the page, copying figures next to the page if needed."""
    page_dir = out.parent.resolve()
    links = {}
    for name, _ in _FIGURES:
        src = adir / name
        if not src.is_file():
            continue
        if page_dir in src.resolve().parents:
            links[name] = Path(os.path.relpath(src.resolve(), page_dir)).as_posix()
            continue
        dest_dir = out.parent / out.stem
        dest_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest_dir / name)
        _readable(dest_dir / name)
        links[name] = f"{out.stem}/{name}"
    return links


def _readable(path: Path) -> None:
    """Files of a report are for sharing: rw-r--r-- (the atomic writer creates them 0600)."""
    with contextlib.suppress(OSError):
        path.chmod(0o644)


def publish_experiment(exp: Any, results: Sequence[Any], out: Path, docs: Path) -> Path:
    """Write the report page of a ``dml reproduce`` grid to ``docs/<name>.md``.

    Args:
        exp: the :class:`~dmlkit.experiments.core.Experiment`.
        results: its :class:`~dmlkit.experiments.core.RunResult` list (the runs of this call).
        out: the grid folder (its ``analysis/`` is used when ``dml analyze`` wrote one).
        docs: the folder of the page; figures go to ``docs/<name>/``.

    Returns:
        The page's path.
    """
    import sys

    page = Path(docs) / f"{exp.name}.md"
    adir = Path(out) / "analysis"
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    write_report(
        [r.path for r in results],
        page,
        title=f"{exp.name}: {exp.description}",
        description="\n\n".join(exp.notes),
        analysis_dir=adir if (adir / "analysis.json").is_file() else None,
        commands=[shlex.join(argv)] if argv and argv[0] == "dml" else [],
    )
    return page
