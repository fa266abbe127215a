"""The results of a ``dml report`` page: test metrics per arm, paired gains, the paper's numbers.

Every number is read from the runs' ``summary.json``; the paper's published numbers come from
:mod:`dmlkit.paper`.
"""

from __future__ import annotations

import statistics
from typing import Any

from dmlkit import paper
from dmlkit.analysis.runs import RunInfo, SeedGroup, baseline_of
from dmlkit.analysis.stats import mean_std, paired_gains
from dmlkit.errors import UserError

# Shown in the metrics tables when present, as percentages.
_METRICS = ("top1", "mAP", "rank1")


_METRIC_NAMES = {"top1": "top-1 %", "mAP": "mAP %", "rank1": "Rank-1 %"}


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


def metrics_section(groups: list[SeedGroup]) -> str:
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
        f"{g.label} − {b.label}": (g, b)
        for g in groups
        if (b := baseline_of(g, groups)) is not None
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
                lambda m, name, key=key: mean_std([r.metric(m, key) for r in by_name[name].runs]),
            ),
        ]
        parts.append("\n".join(lines))
        if gains:

            def gain_cell(m: str, name: str, key: str = key) -> str:
                d = _paired(*gains[name], m, key)
                pos = sum(x > 1e-9 for x in d)
                neg = sum(x < -1e-9 for x in d)
                return f"{mean_std(d, signed=True)} [{pos}/{len(d) - pos - neg}/{neg}]"

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


def _collapsed(groups: list[SeedGroup]) -> str | None:
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


def _paired(g: SeedGroup, b: SeedGroup, member: str, key: str) -> list[float]:
    return paired_gains(
        {seed: r.metric(member, key) for seed, r in g.by_seed().items()},
        {seed: r.metric(member, key) for seed, r in b.by_seed().items()},
    )


def _cifar_rows(g: SeedGroup, archs: tuple[str, ...]) -> list[str]:
    """Rows of the paper's CIFAR-100 table for a pair of networks, in the group's peer order."""
    table = paper.CIFAR100_TOP1
    pair = archs if archs in table else tuple(reversed(archs))
    if len(archs) != 2 or pair not in table or g.method not in ("independent", "dml"):
        return []
    published = table[pair][g.method]
    if pair != archs:
        published = (published[1], published[0])
    names = [p["name"] for p in g.runs[0].summary["peers"]] if g.runs[0].summary else []
    rows = []
    for i, name in enumerate(names[:2]):
        ours = mean_std([r.metric(name, "top1") for r in g.runs])
        rows.append(
            f"| CIFAR-100 {' / '.join(archs)} | {g.method} | {name} | top-1 % "
            f"| {published[i]:.2f} | {ours} |"
        )
    return rows


def _market_rows(g: SeedGroup, archs: tuple[str, ...], peers_text: str) -> list[str]:
    """Rows of the paper's Market-1501 numbers (mean of the peers, single query)."""
    rows = []
    for key, paper_value in paper.market1501_by_method().get(g.method, {}).items():
        vals = [
            statistics.fmean(v)
            for r in g.runs
            if (v := [x for m in r.members[:-1] if (x := r.metric(m, key)) is not None])
        ]
        init = "ImageNet init" if "pretrained" in peers_text else "scratch"
        rows.append(
            f"| Market-1501 {' / '.join(archs)} (ours: {init}; paper: ImageNet init, "
            f"single query) | {g.method} | mean of peers | {key} % "
            f"| {paper_value:.2f} | {mean_std(vals)} |"
        )
    return rows


def paper_section(groups: list[SeedGroup]) -> str | None:
    """Our numbers beside the paper's, where a group's recipe is one of the paper's tables."""
    rows = []
    for g in groups:
        flat = g.runs[0].flat
        archs = tuple(p.split("(")[0] for p in _split_peers(flat.get("peers", "")))
        dataset = flat.get("data.name")
        if dataset == "cifar100":
            rows += _cifar_rows(g, archs)
        if dataset == "market1501":
            rows += _market_rows(g, archs, flat.get("peers", ""))
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
