"""The paper's published numbers, in one place (a leaf: imports nothing of dmlkit).

Zhang, Xiang, Hospedales, Lu, *Deep Mutual Learning*, CVPR 2018. The CIFAR-100 results are its
Table 1; the Market-1501 numbers quoted here (MobileNet, ImageNet init, single and multiple
query, the mean of the two peers) are those of its comparison with the state of the art, which
this project calls Table 3. Every report, recipe comment and results table that sets the
paper's numbers beside ours reads them from here.
"""

from __future__ import annotations

CIFAR100_TABLE = "Table 1"
MARKET1501_TABLE = "Table 3"

# CIFAR-100 top-1 %: (Net1, Net2) -> {method: (Net1, Net2)}, independent and DML.
CIFAR100_TOP1: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("resnet32", "resnet32"): {"independent": (68.99, 68.99), "dml": (71.19, 70.75)},
    ("wrn28_10", "resnet32"): {"independent": (78.69, 68.99), "dml": (78.96, 70.73)},
    ("mobilenet", "resnet32"): {"independent": (73.65, 68.99), "dml": (76.13, 71.10)},
    ("mobilenet", "mobilenet"): {"independent": (73.65, 73.65), "dml": (76.21, 76.10)},
    ("wrn28_10", "mobilenet"): {"independent": (78.69, 73.65), "dml": (80.28, 77.39)},
    ("wrn28_10", "wrn28_10"): {"independent": (78.69, 78.69), "dml": (80.28, 80.08)},
}

# Market-1501, MobileNet from ImageNet weights, % (the mean of the two peers), keyed by the
# arm of `dml reproduce market1501-table`: (mAP, Rank-1), None where the paper gives none.
MARKET1501_SINGLE_QUERY: dict[str, tuple[float | None, float | None]] = {
    "independent_pretrained": (None, 83.94),
    "dml_pretrained": (68.83, 87.73),
}
MARKET1501_MULTI_QUERY: dict[str, tuple[float, float]] = {"dml_pretrained": (77.14, 91.66)}


def market1501_by_method() -> dict[str, dict[str, float]]:
    """The single-query numbers by method: ``{"dml": {"mAP": .., "rank1": ..}, ...}``."""
    out: dict[str, dict[str, float]] = {}
    for arm, values in MARKET1501_SINGLE_QUERY.items():
        given = {k: v for k, v in zip(("mAP", "rank1"), values) if v is not None}
        out[arm.removesuffix("_pretrained")] = given
    return out


# Online distillation, CIFAR-100, ResNet-32, top-1 %: the comparison table of Wu & Gong, "Peer
# Collaborative Learning for Online Knowledge Distillation", AAAI 2021 (arXiv 2006.04147), as
# quoted to us second-hand. NOT VERIFIED against the paper: the reachable copies of it gave
# its abstract and introduction only, not its tables, so neither the table number nor which
# network each value measures (a branch, the ensemble or the deployed model) is checked. The
# same five values (with ± std: DML 73.68±0.14, ONE 73.79±0.41, OKDDip 73.25±0.38, KDCL
# 73.76±0.34, PCL 74.14±0.16) head the CIFAR-100 table of a public reimplementation's README
# (github.com/shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation), which
# presents them as the paper's and says the paper reports its first peer; a second-hand source,
# not the paper. Keyed by the arm of `dml reproduce online-kd-table`.
ONLINE_KD_SOURCE = "Wu & Gong AAAI 2021, unverified"
ONLINE_KD_CIFAR100_RESNET32: dict[str, float] = {
    "dml": 73.68,
    "one": 73.79,
    "okddip": 73.25,
    "kdcl": 73.76,
    "pcl": 74.14,
}
ONLINE_KD_NOTE = (
    "Published: the PCL paper's CIFAR-100 ResNet-32 comparison as quoted second-hand, not "
    "checked against the paper (see dmlkit.paper); its schedule and number of students may "
    "differ from this grid's."
)
