"""The paper's person re-identification experiments on Market-1501 (``dml reproduce NAME``).

Zhang et al., *Deep Mutual Learning*, CVPR 2018, Sec. 4.1 and 4.3:

* ``market1501-table`` (Table 3): MobileNet trained independently vs with DML (2 peers), from
  scratch and from ImageNet weights. Paper, single query, ImageNet MobileNet + DML: mAP 68.83,
  Rank-1 87.73 (the mean of the two peers); independent ImageNet MobileNet Rank-1 83.94.
* ``market1501-cohort-size`` (Fig. 3): cohorts of 1..5 MobileNets, independent vs DML: the mean
  (± std) of the individual peers' mAP and the mAP of the cohort ensemble (concatenated features).
* ``market1501-dml-e`` (Sec. 4.5): 5 MobileNets, DML vs DML_e (each peer mimics the cohort's
  mean posterior): mAP and the mean posterior entropy.

The recipe (paper, Sec. 4.1): peers trained as 751-way identity classifiers with Adam, LR 2e-4,
beta1 0.5, beta2 0.999, batch 16, 100,000 iterations; test features = the last pooling layer,
L2-normalised, Euclidean distance (the authors' code). Not stated in the paper, from the
authors' TF-slim code: weight decay 4e-5; they also used label smoothing 0.1 (not applied here:
plain cross-entropy, as in the paper's Eq. 1) and resized the 128x64 crops to 224x224; here the
input is 256x128 (``--set data.image_height=224 --set data.image_width=224`` for theirs). The
update is simultaneous (the authors' code updates both networks from one forward pass). The
whole training folder is used for training (``data.val_fraction: 0``); the final iteration is
reported.

ImageNet weights: the ``*_pretrained`` arms use ``pretrained: imagenet``, resolved from the file
named by ``DMLKIT_MOBILENET_V1_WEIGHTS`` or timm's offline cache (see
:mod:`dmlkit.models.mobilenet_v1`); without weights they stop at once with the error that says
how to provide them, so they run first. Skip them with ``--arms independent,dml``. The
cohort-size and DML_e grids start from scratch; ``--set 'peers.*.kwargs.pretrained=imagenet'``
starts every peer of every arm from ImageNet weights.

``configs/paper/market1501_*.yaml``, for ``dml train -c``, are generated from these recipes
(``python configs/paper/generate.py``); a test checks that each file is what the generator
writes and loads to the config the grid trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlkit import paper
from dmlkit.analysis.stats import MISSING, mean_std
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.experiments.core import (
    Experiment,
    RunResult,
    markdown_table,
    register_experiment,
    write_results_files,
)
from dmlkit.experiments.market1501_plots import MAX_COHORT, plot_cohort_size, plot_dml_e
from dmlkit.experiments.recipes import PaperConfig, recipe_dict

ARCH = "mobilenet_v1"
METRICS = ("mAP", "rank1", "rank5", "rank10", "rank20")
MQ_METRICS = ("mq_mAP", "mq_rank1")

BASE: dict[str, Any] = {
    "method": {"name": "dml", "update": "simultaneous"},
    "peers": [{"arch": ARCH}, {"arch": ARCH}],
    "optim": {
        "name": "adam",
        "lr": 2e-4,
        "betas": [0.5, 0.999],
        "weight_decay": 4e-5,
        "schedule": "constant",
    },
    "data": {
        "name": "market1501",
        "root": None,
        "val_fraction": 0.0,
        "batch_size": 16,
        "eval_batch_size": 128,
        "image_height": 256,
        "image_width": 128,
        "crop_padding": 0,
        "hflip": True,
        "reid_distance": "euclidean",
        "reid_normalize": True,
    },
    "train": {"iterations": 100_000, "eval_every": 10, "checkpoint_every": 5},
}


def _peers(k: int, pretrained: bool = False) -> list[dict[str, Any]]:
    peer: dict[str, Any] = {"arch": ARCH}
    if pretrained:
        peer["kwargs"] = {"pretrained": "imagenet"}
    return [dict(peer) for _ in range(k)]


# ------------------------------------------------------------------------------------------------
# helpers over summaries


def _peer_values(summary: dict[str, Any], key: str) -> list[float]:
    return [100 * p["metrics"][key] for p in summary["peers"] if key in p["metrics"]]


def _ensemble_value(summary: dict[str, Any], key: str) -> float | None:
    value = summary[ENSEMBLE]["metrics"].get(key)
    return None if value is None else (value if key == "entropy" else 100 * value)


def _by_arm(results: list[RunResult]) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for r in results:
        out.setdefault(r.arm, []).append(r)
    return out


def _scale_note(scale: float) -> str:
    return f"Smoke run at --scale {scale:g} (iterations and data x {scale:g}).\n\n" * (scale != 1)


def write_page(
    exp: Experiment,
    results: list[RunResult],
    out: Path,
    scale: float,
    intro: str,
    table: list[str],
    after: str = "",
) -> str:
    """The report's text (a smoke run's note, ``intro``, the ``table`` lines, ``after``),
    returned and written as results.md, with results.csv: one row per run and member (peer or
    ensemble), every re-id metric."""
    text = _scale_note(scale) + intro + "\n".join(table) + after
    keys = [*METRICS, *MQ_METRICS, "entropy"]
    rows = []
    for r in results:
        members = [(p["name"], p["metrics"]) for p in r.summary["peers"]]
        members.append((ENSEMBLE, r.summary[ENSEMBLE]["metrics"]))
        for name, m in members:
            rows.append([r.arm, r.seed, name, *[f"{m[k]:.6f}" if k in m else "" for k in keys]])
    write_results_files(exp, out, text, ["arm", "seed", "member", *keys], rows)
    return text


# ------------------------------------------------------------------------------------------------
# market1501-table


def table_report(exp: Experiment, results: list[RunResult], out: Path, scale: float) -> str:
    """Table 3: per arm, the peers' mean ± std (over peers and seeds) and the ensemble."""
    arms = _by_arm(results)
    multi = any("mq_mAP" in r.summary[ENSEMBLE]["metrics"] for r in results)
    header = ["init", "method", "mAP", "Rank-1", "Rank-5", "Rank-10", "Rank-20"]
    header += ["MQ mAP", "MQ Rank-1"] * multi
    header += ["ensemble mAP", "ensemble Rank-1", "paper mAP / Rank-1"]
    rows = []
    scratch_first = sorted(exp.arms, key=lambda a: a.endswith("_pretrained"))  # stable
    for arm in scratch_first:
        if arm not in arms:
            continue
        runs = arms[arm]
        init = "ImageNet" if arm.endswith("_pretrained") else "scratch"
        method = arm.removesuffix("_pretrained")
        keys = [*METRICS, *(MQ_METRICS * multi)]
        cells = [mean_std([v for r in runs for v in _peer_values(r.summary, k)]) for k in keys]
        for key in ("mAP", "rank1"):
            ens = [_ensemble_value(r.summary, key) for r in runs]
            cells.append(mean_std([v for v in ens if v is not None]))
        published = paper.MARKET1501_SINGLE_QUERY.get(arm, (None, None))
        paper_text = " / ".join(MISSING if v is None else f"{v:.2f}" for v in published)
        if arm in paper.MARKET1501_MULTI_QUERY and multi:
            mq = paper.MARKET1501_MULTI_QUERY[arm]
            paper_text += " (MQ " + " / ".join(f"{v:.2f}" for v in mq) + ")"
        rows.append([init, method, *cells, paper_text])
    n_seeds = len({r.seed for r in results})
    gains = []
    for init, suffix in (("scratch", ""), ("ImageNet", "_pretrained")):
        ind, dml = arms.get("independent" + suffix), arms.get("dml" + suffix)
        if not ind or not dml:
            continue
        paired = []
        by_seed = {r.seed: r.summary for r in ind}
        for r in dml:
            if r.seed in by_seed:
                a, b = _peer_values(by_seed[r.seed], "mAP"), _peer_values(r.summary, "mAP")
                paired += [y - x for x, y in zip(a, b)]
        gains.append(f"{init} {mean_std(paired, signed=True)}")
    intro = (
        f"Market-1501, single query unless MQ, % over {n_seeds} seed(s): peers' mean ± std "
        f"(over peers and seeds); ensemble = concatenated L2-normalised features.\n\n"
    )
    gain = f"\n\nDML − independent, peers' mAP paired by seed and peer: {'; '.join(gains)}."
    table = markdown_table(header, rows)
    return write_page(exp, results, out, scale, intro, table, gain if gains else "")


TABLE = register_experiment(
    Experiment(
        name="market1501-table",
        description="Market-1501: MobileNet independent vs DML, from scratch and from ImageNet",
        base=BASE,
        # The ImageNet arms first: without weights they fail at once, before hours of training.
        arms={
            "independent_pretrained": {
                "method": {"name": "independent"},
                "peers": _peers(2, pretrained=True),
            },
            "dml_pretrained": {"method": {"name": "dml"}, "peers": _peers(2, pretrained=True)},
            "independent": {"method": {"name": "independent"}},
            "dml": {"method": {"name": "dml"}},
        },
        baseline="independent",
        seeds=1,
        needs_data_root=True,
        report=table_report,
        notes=[
            "ImageNet arms: set DMLKIT_MOBILENET_V1_WEIGHTS=/path/to/weights or fill timm's "
            "cache; skip them with --arms independent,dml"
        ],
    )
)


# ------------------------------------------------------------------------------------------------
# market1501-cohort-size


def _cohort_arms() -> dict[str, dict[str, Any]]:
    arms: dict[str, dict[str, Any]] = {
        "k1": {"method": {"name": "independent"}, "peers": _peers(1)}
    }
    for k in range(2, MAX_COHORT + 1):
        arms[f"independent_k{k}"] = {"method": {"name": "independent"}, "peers": _peers(k)}
        arms[f"dml_k{k}"] = {"method": {"name": "dml"}, "peers": _peers(k)}
    return arms


def _cohort_points(
    arms: dict[str, list[RunResult]], method: str
) -> list[tuple[int, list[float], list[float]]]:
    """(K, individual peers' mAP over seeds, ensemble mAP over seeds) for one method."""
    points = []
    for k in range(1, MAX_COHORT + 1):
        runs = arms.get("k1" if k == 1 else f"{method}_k{k}")
        if not runs:
            continue
        peers = [v for r in runs for v in _peer_values(r.summary, "mAP")]
        ens = [v for r in runs if (v := _ensemble_value(r.summary, "mAP")) is not None]
        points.append((k, peers, ens))
    return points


def cohort_size_report(exp: Experiment, results: list[RunResult], out: Path, scale: float) -> str:
    """Fig. 3: mAP vs cohort size, individual peers (mean ± std) and the ensemble; a PNG."""
    arms = _by_arm(results)
    curves = {m: _cohort_points(arms, m) for m in ("independent", "dml")}
    header = ["K", "independent peers", "DML peers", "independent ensemble", "DML ensemble"]
    rows = []
    for k in range(1, MAX_COHORT + 1):
        row = {m: next((p for p in curves[m] if p[0] == k), None) for m in curves}
        if not any(row.values()):
            continue
        cells = [str(k)]
        cells += [mean_std(row[m][1]) if row[m] else MISSING for m in ("independent", "dml")]
        cells += [mean_std(row[m][2]) if row[m] else MISSING for m in ("independent", "dml")]
        rows.append(cells)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "cohort_size.png"
    plot_cohort_size(curves, png)
    intro = (
        f"Market-1501 mAP % vs cohort size (MobileNets, single query), over "
        f"{len({r.seed for r in results})} seed(s): peers = mean ± std over the individual "
        f"peers; ensemble = concatenated features. K = 1 is one network trained alone.\n\n"
    )
    table = markdown_table(header, rows)
    return write_page(exp, results, out, scale, intro, table, f"\n\nPlot: {png}")


COHORT_SIZE = register_experiment(
    Experiment(
        name="market1501-cohort-size",
        description="Market-1501: cohorts of 1..5 MobileNets, independent vs DML (mAP vs K)",
        base=BASE,
        arms=_cohort_arms(),
        baseline="k1",
        seeds=1,
        needs_data_root=True,
        report=cohort_size_report,
        notes=["from ImageNet weights: --set 'peers.*.kwargs.pretrained=imagenet'"],
    )
)


# ------------------------------------------------------------------------------------------------
# market1501-dml-e


def dml_e_report(exp: Experiment, results: list[RunResult], out: Path, scale: float) -> str:
    """DML vs DML_e (5 peers): mAP and mean posterior entropy; a PNG of both."""
    arms = _by_arm(results)
    header = [
        "method",
        "peers mAP",
        "peers Rank-1",
        "ensemble mAP",
        "peers entropy (nats)",
        "ensemble entropy (nats)",
    ]
    rows = []
    bars: dict[str, dict[str, list[float]]] = {}
    for arm in exp.arms:
        runs = arms.get(arm)
        if not runs:
            continue
        peers_map = [v for r in runs for v in _peer_values(r.summary, "mAP")]
        peers_r1 = [v for r in runs for v in _peer_values(r.summary, "rank1")]
        ens_map = [v for r in runs if (v := _ensemble_value(r.summary, "mAP")) is not None]
        ent = [p["metrics"]["entropy"] for r in runs for p in r.summary["peers"]]
        ens_ent = [v for r in runs if (v := _ensemble_value(r.summary, "entropy")) is not None]
        bars[arm] = {"mAP": peers_map, "ensemble mAP": ens_map, "entropy": ent}
        label = "DML_e" if arm == "dml_e" else "DML"
        rows.append(
            [
                label,
                mean_std(peers_map),
                mean_std(peers_r1),
                mean_std(ens_map),
                mean_std(ent, 3),
                mean_std(ens_ent, 3),
            ]
        )
    out.mkdir(parents=True, exist_ok=True)
    png = out / "dml_e.png"
    plot_dml_e(bars, png)
    intro = (
        "Market-1501, 5 MobileNets, single query, % over "
        f"{len({r.seed for r in results})} seed(s). Entropy: the mean entropy of each peer's "
        "posterior over the training identities, on the query images (the paper: DML_e is worse, "
        "its peers' posteriors peakier).\n\n"
    )
    table = markdown_table(header, rows)
    return write_page(exp, results, out, scale, intro, table, f"\n\nPlot: {png}")


DML_E = register_experiment(
    Experiment(
        name="market1501-dml-e",
        description="Market-1501: 5 MobileNets, DML vs DML_e (mAP and posterior entropy)",
        base=BASE,
        arms={
            "dml": {"method": {"name": "dml"}, "peers": _peers(MAX_COHORT)},
            "dml_e": {"method": {"name": "dml_e"}, "peers": _peers(MAX_COHORT)},
        },
        baseline="dml",
        seeds=1,
        needs_data_root=True,
        report=dml_e_report,
        notes=["from ImageNet weights: --set 'peers.*.kwargs.pretrained=imagenet'"],
    )
)


# ------------------------------------------------------------------------------------------------
# configs/paper/market1501_*.yaml, generated from the recipes above

COMMENTS: dict[str, str] = {
    "seed": "run seed: data order and (per peer) initialisation",
    "method.update": "the authors' code updates every network from one forward",
    "optim.name": "paper: Adam",
    "optim.lr": "paper: learning rate 2e-4",
    "optim.betas": "paper: beta1 0.5, beta2 0.999",
    "optim.weight_decay": "not in the paper; the authors' TF-slim code",
    "optim.schedule": "paper: no schedule stated",
    "data.root": "the Market-1501 folder: --set data.root=PATH",
    "data.val_fraction": "train on all 12,936 images; the final iteration is reported",
    "data.batch_size": "paper: batch 16",
    "data.image_height": "the usual re-id input; the authors' code: 224 x 224",
    "data.hflip": "random horizontal flip",
    "data.reid_distance": "the authors' code: L2-normalised features, Euclidean distance",
    "train.iterations": "paper: 100,000 iterations",
    "train.eval_every": "validation only if data.val_fraction > 0",
    "train.checkpoint_every": "epochs (808 iterations each)",
}

# File name -> (experiment, arm, what it trains). One file per distinct recipe: the DML arm of
# market1501-dml-e is the dml_k5 arm of market1501-cohort-size.
PAPER_CONFIG_ARMS: dict[str, tuple[str, str, str]] = {
    "market1501_independent": (
        "market1501-table",
        "independent",
        "two MobileNets trained alone (CE only), from scratch",
    ),
    "market1501_dml": ("market1501-table", "dml", "two MobileNets with DML, from scratch"),
    "market1501_independent_pretrained": (
        "market1501-table",
        "independent_pretrained",
        "two ImageNet MobileNets trained alone",
    ),
    "market1501_dml_pretrained": (
        "market1501-table",
        "dml_pretrained",
        "two ImageNet MobileNets with DML",
    ),
    "market1501_dml_k5": (
        "market1501-cohort-size",
        "dml_k5",
        "five MobileNets with DML (also market1501-dml-e, arm dml)",
    ),
    "market1501_dml_e_k5": (
        "market1501-dml-e",
        "dml_e",
        "five MobileNets with DML_e (each mimics the others' mean posterior)",
    ),
}


def _paper_lines(arm: str) -> list[str]:
    """The paper's numbers for an arm of market1501-table (none for the other arms)."""
    if arm not in paper.MARKET1501_SINGLE_QUERY:
        return []
    names = ("mAP", "Rank-1")
    values = paper.MARKET1501_SINGLE_QUERY[arm]
    given = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, values) if v is not None)
    lines = [f"Paper ({paper.MARKET1501_TABLE}, single query): {given} (mean of the two peers)."]
    if arm in paper.MARKET1501_MULTI_QUERY:
        mq = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, paper.MARKET1501_MULTI_QUERY[arm]))
        lines.append(f"Multiple query (data.multi_query: true): {mq}.")
    return lines


def paper_config(name: str) -> PaperConfig:
    """``configs/paper/<name>.yaml`` (``name``: a key of :data:`PAPER_CONFIG_ARMS`)."""
    from dmlkit.experiments.core import EXPERIMENTS

    experiment, arm, what = PAPER_CONFIG_ARMS[name]
    exp = EXPERIMENTS.get(experiment)
    header = [
        'Market-1501 person re-identification, Zhang et al. (CVPR 2018) "Deep Mutual Learning".',
        f"{experiment}, arm {arm}: {what}.",
        *_paper_lines(arm),
        "GENERATED from src/dmlkit/experiments/market1501.py: do not edit; regenerate with",
        "  python configs/paper/generate.py",
        f"Train this run alone: dml train -c configs/paper/{name}.yaml --set data.root=PATH \\",
        f"  --out runs/{name}",
    ]
    if arm.endswith("_pretrained"):
        header += [
            "ImageNet weights: pretrained: imagenet = the file in $DMLKIT_MOBILENET_V1_WEIGHTS,",
            "else timm's mobilenetv1_100 weights from its offline cache; or give a path:",
            "  --set 'peers.*.kwargs.pretrained=PATH'",
        ]
    return PaperConfig(name, header, recipe_dict(exp.base, exp.arms[arm]), COMMENTS)


def paper_configs() -> list[PaperConfig]:
    """Every ``configs/paper/market1501_*.yaml``."""
    return [paper_config(name) for name in PAPER_CONFIG_ARMS]
