"""``dml reproduce cifar100-table``: the paper's CIFAR-100 table and its distillation comparison.

Zhang et al., *Deep Mutual Learning*, CVPR 2018: Table 1 (six pairs of networks, each trained
independently and with DML) and the comparison with distillation (a pretrained teacher
distilled one way into a student, vs DML of the same pair).

The grid, per seed, in this order:

* for each pair (Net1, Net2): ``independent_<net1>_<net2>`` (both peers trained alone, CE only)
  and ``dml_<net1>_<net2>``. Both arms give their peers the same initial weights and data
  order, so the DML gain is paired by seed.
* ``kd_wrn28_10_to_resnet32``: a ResNet-32 student distilled from the WRN-28-10 (Net1) of the
  ``independent_wrn28_10_resnet32`` run of the same seed (``"{run:ARM}"``), which is why the
  independent arms run first: no separate teacher pretraining is needed.

**One source for the recipes.** The recipes are defined here, in Python, because the
experiment needs them inside the installed package (``configs/`` is not) and builds arms that
refer to one another. ``configs/paper/cifar100_<arm>.yaml`` are *generated* from them
(``python configs/paper/generate.py``), with comments saying where each value
comes from; a test checks that every file is byte-identical to what the generator writes and
loads to the very config the grid trains, so the two cannot drift apart.

The paper's schedule (Sec. 4.1, "following the WRN recipe"): 200 epochs, batch 64, SGD with
Nesterov momentum 0.9, LR 0.1 divided by 10 every 60 epochs; random crops from the image
reflection-padded by 4 px and horizontal flips. Weight decay is not stated in the paper:
5e-4 is the WRN paper's (Zagoruyko & Komodakis 2016).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dmlkit import paper
from dmlkit.analysis.stats import mean_std, paired_gains
from dmlkit.experiments.core import Experiment, RunResult, register_experiment, write_results_files
from dmlkit.experiments.recipes import PaperConfig, recipe_dict

EXPERIMENT_NAME = "cifar100-table"
DEFAULT_OUT = Path("runs") / EXPERIMENT_NAME  # where `dml reproduce` writes without --out

TITLES = {
    "resnet32": "ResNet-32",
    "mobilenet": "MobileNet",
    "inception_v1": "InceptionV1",
    "wrn28_10": "WRN-28-10",
}

# The paper's CIFAR-100 table (dmlkit.paper): (Net1, Net2) -> {method: (Net1, Net2) top-1 %}.
PAPER_TOP1 = paper.CIFAR100_TOP1
PAIRS: list[tuple[str, str]] = list(PAPER_TOP1)

# Distillation comparison: (teacher, student). The teacher is Net1 of the pair's independent arm.
DISTILLATION: list[tuple[str, str]] = [("wrn28_10", "resnet32")]
# The paper does not state its distillation temperature and weight; these are the usual
# Hinton et al. (2015) choices. Change them with --set method.temperature=... on the kd arm.
KD_TEMPERATURE = 4.0
KD_ALPHA = 0.9

# The recipe shared by every arm; the comments become the YAML files' comments.
BASE: dict[str, Any] = {
    "optim": {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "step",
        "step_size": 60.0,
        "gamma": 0.1,
    },
    "data": {
        "name": "cifar100",
        "root": None,
        "val_fraction": 0.0,
        "batch_size": 64,
        "crop_padding": 4,
        "hflip": True,
    },
    "train": {"epochs": 200, "eval_every": 10},
}

COMMENTS: dict[str, str] = {
    "seed": "run seed: data order and (per peer) initialisation",
    "method.update": "the paper's Algorithm 1 (peer 1 steps, is re-predicted, then peer 2)",
    "method.mimicry_weight": "paper: weight 1 on the KL term",
    "method.alpha": "weight of the soft targets (not stated in the paper; the usual 0.9)",
    "method.teacher": "an independently trained teacher; `dml reproduce` sets its own run",
    "method.teacher_peer": "Net1 of that run (the teacher network)",
    "optim.name": "paper: SGD (following the WRN recipe)",
    "optim.lr": "paper: initial learning rate 0.1",
    "optim.momentum": "paper: Nesterov momentum 0.9",
    "optim.nesterov": "paper: Nesterov",
    "optim.weight_decay": "not stated in the paper; 5e-4 is the WRN paper's value",
    "optim.schedule": "paper: LR divided by 10 every 60 epochs",
    "optim.step_size": "epochs",
    "optim.gamma": "divided by 10",
    "data.root": "the folder holding cifar-100-python/: --data-root PATH or --set data.root=PATH",
    "data.val_fraction": "the paper trains on all 50,000 images and reports the final epoch",
    "data.batch_size": "paper: batch 64",
    "data.crop_padding": "paper: random crops from the image padded by 4 px (reflection)",
    "data.hflip": "paper: random horizontal flips",
    "train.epochs": "paper: 200 epochs",
    "train.eval_every": "validation cadence, only if data.val_fraction > 0",
}
# Comments that depend on the method.
METHOD_COMMENTS: dict[tuple[str, str], str] = {
    ("independent", "method.name"): "each peer on its own: cross-entropy only (the baseline)",
    ("dml", "method.name"): "each peer: CE + 1/(K-1) sum KL(p_other || p_self) (paper Eq. 10)",
    ("kd", "method.name"): "one-way distillation from a frozen teacher (Hinton et al. 2015)",
    ("dml", "method.temperature"): "paper: plain softmax (T = 1)",
    ("kd", "method.temperature"): "not stated in the paper; Hinton et al.'s usual T = 4",
}


def pair_slug(net1: str, net2: str) -> str:
    return f"{net1}_{net2}"


def pair_title(net1: str, net2: str) -> str:
    return f"{TITLES[net1]} / {TITLES[net2]}"


def pair_arm(net1: str, net2: str, method: str) -> dict[str, Any]:
    """The config changes of one pair arm (``method``: ``independent`` or ``dml``)."""
    m: dict[str, Any] = {"name": method}
    if method == "dml":
        m.update(update="sequential", temperature=1.0, mimicry_weight=1.0)
    return {"method": m, "peers": [{"arch": net1}, {"arch": net2}]}


def kd_arm_name(teacher: str, student: str) -> str:
    return f"kd_{teacher}_to_{student}"


def kd_arm(teacher: str, student: str) -> dict[str, Any]:
    """A student distilled one way from Net1 of the ``independent_<teacher>_<student>`` run."""
    return {
        "method": {
            "name": "kd",
            "teacher": "{run:" + f"independent_{pair_slug(teacher, student)}" + "}",
            "teacher_peer": 0,
            "temperature": KD_TEMPERATURE,
            "alpha": KD_ALPHA,
        },
        "peers": [{"arch": student}],
    }


def arm_info() -> dict[str, tuple[str, str, str]]:
    """Every arm of the grid -> (method, net1, net2), in the order it runs (teachers first).

    For the kd arm, net1 is the teacher and net2 the student.
    """
    info: dict[str, tuple[str, str, str]] = {}
    for net1, net2 in PAIRS:
        for method in ("independent", "dml"):
            info[f"{method}_{pair_slug(net1, net2)}"] = (method, net1, net2)
    for teacher, student in DISTILLATION:
        if (teacher, student) not in PAIRS:  # the teacher is Net1 of that pair's independent arm
            raise ValueError(f"distillation pair {(teacher, student)} is not one of PAIRS")
        info[kd_arm_name(teacher, student)] = ("kd", teacher, student)
    return info


def build_arms() -> dict[str, dict[str, Any]]:
    """Every arm's config changes, in the order the grid runs them."""
    return {
        arm: kd_arm(net1, net2) if method == "kd" else pair_arm(net1, net2, method)
        for arm, (method, net1, net2) in arm_info().items()
    }


# ------------------------------------------------------------------------------------------------
# the report


def _scale_line(scale: float, epochs: int | None) -> str:
    if scale == 1.0:
        return "Full recipe (--scale 1): 200 epochs on all 50,000 training images."
    return (
        f"**Smoke run at --scale {scale:g}**: epochs, LR steps and every data split x {scale:g}"
        + (f" ({epochs} epoch(s))" if epochs is not None else "")
        + ". Not comparable with the paper."
    )


def _per_peer(results: Iterable[RunResult]) -> dict[tuple[str, int], list[float]]:
    """(arm, peer index) -> top-1 % per seed, in seed order."""
    out: dict[tuple[str, int], list[float]] = {}
    for r in sorted(results, key=lambda r: (r.arm, r.seed)):
        for i, peer in enumerate(r.summary["peers"]):
            out.setdefault((r.arm, i), []).append(100 * peer["metrics"]["top1"])
    return out


def _paired_gain(results: list[RunResult], arm: str, base: str, peer: int) -> list[float]:
    def top1(name: str) -> dict[int, float]:
        return {
            r.seed: 100 * r.summary["peers"][peer]["metrics"]["top1"]
            for r in results
            if r.arm == name
        }

    return paired_gains(top1(arm), top1(base))


def format_report(exp: Experiment, results: list[RunResult], scale: float) -> str:
    """The Markdown of results.md: Table 1 (independent vs DML) and the distillation rows."""
    vals = _per_peer(results)
    seeds = sorted({r.seed for r in results})
    epochs = next((r.summary.get("epochs") for r in results), None)
    lines = [
        _scale_line(scale, epochs),
        f"Test top-1 % after the final epoch over {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), mean ± std; the gain is paired by seed (same "
        "initial weights and data order). Paper: Zhang et al. (CVPR 2018), Table 1.",
        "",
        "## Independent vs DML",
        "",
        "| Net1 / Net2 | peer | independent | DML | DML − independent | paper independent "
        "| paper DML |",
        "|---|---|---|---|---|---|---|",
    ]
    for net1, net2 in PAIRS:
        slug = pair_slug(net1, net2)
        paper = PAPER_TOP1[(net1, net2)]
        for i, net in enumerate((net1, net2)):
            ind, dml = f"independent_{slug}", f"dml_{slug}"
            lines.append(
                f"| {pair_title(net1, net2) if i == 0 else ''} | Net{i + 1} {TITLES[net]} "
                f"| {mean_std(vals.get((ind, i), []))} | {mean_std(vals.get((dml, i), []))} "
                f"| {mean_std(_paired_gain(results, dml, ind, i), signed=True)} "
                f"| {paper['independent'][i]:.2f} | {paper['dml'][i]:.2f} |"
            )
    lines += [
        "",
        "## Distillation vs DML",
        "",
        f"The teacher is Net1 of the pair's independent run (same seed), distilled one way "
        f"(method kd, T = {KD_TEMPERATURE:g}, alpha = {KD_ALPHA:g}); DML trains the same pair "
        "from scratch together. Paper numbers: Table 1 (the paper's distillation figures are "
        "not quoted here).",
        "",
        "| teacher → student | student independent | student kd | student DML "
        "| teacher independent | teacher DML | paper student independent / DML |",
        "|---|---|---|---|---|---|---|",
    ]
    for teacher, student in DISTILLATION:
        slug = pair_slug(teacher, student)
        ind, dml, kd = f"independent_{slug}", f"dml_{slug}", kd_arm_name(teacher, student)
        paper = PAPER_TOP1[(teacher, student)]
        lines.append(
            f"| {TITLES[teacher]} → {TITLES[student]} | {mean_std(vals.get((ind, 1), []))} "
            f"| {mean_std(vals.get((kd, 0), []))} | {mean_std(vals.get((dml, 1), []))} "
            f"| {mean_std(vals.get((ind, 0), []))} | {mean_std(vals.get((dml, 0), []))} "
            f"| {paper['independent'][1]:.2f} / {paper['dml'][1]:.2f} |"
        )
    return "\n".join(lines)


CSV_HEADER = [
    "arm",
    "method",
    "net1",
    "net2",
    "seed",
    "peer",
    "peer_name",
    "arch",
    "top1_percent",
    "paper_top1_percent",
    "scale",
]


def csv_rows(results: list[RunResult], scale: float) -> list[list[Any]]:
    """One row per run and peer; ``top1_percent`` is exactly ``100 * top1`` of summary.json."""
    info = arm_info()
    order = list(info)
    rows = []
    for r in sorted(results, key=lambda r: (order.index(r.arm), r.seed)):
        method, net1, net2 = info[r.arm]
        for i, peer in enumerate(r.summary["peers"]):
            paper: Any = ""
            if method in ("independent", "dml"):
                paper = PAPER_TOP1[(net1, net2)][method][i]
            label = "student" if method == "kd" else f"Net{i + 1}"
            rows.append(
                [
                    r.arm,
                    method,
                    net1,
                    net2,
                    r.seed,
                    label,
                    peer["name"],
                    peer["arch"],
                    repr(100 * peer["metrics"]["top1"]),
                    paper,
                    f"{scale:g}",
                ]
            )
    return rows


def cifar_table_report(exp: Experiment, results: list[RunResult], out: Path, scale: float) -> str:
    """Write ``results.md`` and ``results.csv`` under ``out``; return the Markdown."""
    text = format_report(exp, results, scale)
    write_results_files(exp, out, text, CSV_HEADER, csv_rows(results, scale))
    return text


CIFAR100_TABLE = register_experiment(
    Experiment(
        name=EXPERIMENT_NAME,
        description=(
            "CIFAR-100, the paper's Table 1 (6 pairs, independent vs DML) and distillation vs DML"
        ),
        base=BASE,
        arms=build_arms(),
        baseline=f"independent_{pair_slug(*PAIRS[0])}",
        # One seed by default: the full grid is ~13 runs of 200 epochs, 8 of them WRN-28-10
        # trainings; use --seeds 3 for mean ± std.
        seeds=1,
        needs_data_root=True,
        report=cifar_table_report,
        notes=["the kd arm's teacher is Net1 of independent_wrn28_10_resnet32 (same seed)"],
    )
)


# ------------------------------------------------------------------------------------------------
# configs/paper/*.yaml, generated from the recipes above


def recipe(arm: str, *, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """The config dict of one arm as a YAML file holds it (seed 0, ``{run:ARM}`` resolved
    against ``out``)."""
    return recipe_dict(BASE, CIFAR100_TABLE.arms[arm], runs=out)


def _header(arm: str) -> list[str]:
    method, net1, net2 = arm_info()[arm]
    header = ['CIFAR-100, Zhang et al. (CVPR 2018) "Deep Mutual Learning".']
    if method == "kd":
        header += [
            f"Distillation: {TITLES[net1]} (pretrained, frozen) distilled one way into "
            f"{TITLES[net2]};",
            f"compare with DML of the same pair (cifar100_dml_{pair_slug(net1, net2)}.yaml).",
        ]
    else:
        ind, dml = PAPER_TOP1[(net1, net2)]["independent"], PAPER_TOP1[(net1, net2)]["dml"]
        header += [
            f"{paper.CIFAR100_TABLE}: {pair_title(net1, net2)}, "
            f"{'DML' if method == 'dml' else 'each trained independently'}.",
            f"Paper top-1 % (Net1 / Net2): independent {ind[0]:.2f} / {ind[1]:.2f}, "
            f"DML {dml[0]:.2f} / {dml[1]:.2f}.",
        ]
    return header + [
        "Schedule: paper Sec. 4.1 (it follows the WRN recipe); the comments say where each",
        "value comes from.",
        f"One arm of `dml reproduce {EXPERIMENT_NAME}`, which runs the whole grid.",
        "GENERATED from src/dmlkit/experiments/cifar100.py: do not edit; regenerate with",
        "  python configs/paper/generate.py",
        f"Train this arm alone: dml train -c configs/paper/{config_filename(arm)} \\",
        "  --set data.root=PATH"
        + (f" --set method.teacher=RUN_DIR_OF_A_TRAINED_{net1.upper()}" if method == "kd" else ""),
    ]


def paper_config(arm: str) -> PaperConfig:
    """``configs/paper/cifar100_<arm>.yaml``: the recipe, its comments and a header."""
    method = arm_info()[arm][0]
    comments = {**COMMENTS, **{k: v for (m, k), v in METHOD_COMMENTS.items() if m == method}}
    return PaperConfig(f"cifar100_{arm}", _header(arm), recipe(arm), comments)


def paper_configs() -> list[PaperConfig]:
    """Every arm's file, in the order the grid runs them."""
    return [paper_config(arm) for arm in CIFAR100_TABLE.arms]


def render_yaml(arm: str) -> str:
    """The text of ``configs/paper/cifar100_<arm>.yaml``."""
    return paper_config(arm).render()


def config_filename(arm: str) -> str:
    return paper_config_name(arm) + ".yaml"


def paper_config_name(arm: str) -> str:
    return f"cifar100_{arm}"
