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
# quoted in this project's notes. NOT VERIFIED against the paper: the reachable copies of it
# gave its abstract and introduction only, not its tables, so neither the table number nor
# which network each value measures (a branch, the ensemble or the deployed model) is checked.
# The same five values (with ± std: DML 73.68±0.14, ONE 73.79±0.41, OKDDip 73.25±0.38, KDCL
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
    "Published: the CIFAR-100 ResNet-32 comparison of the PCL paper (Wu & Gong, AAAI 2021) as "
    "a public PCL reimplementation's README (shaoeric/Peer-Collaborative-Learning-for-Online-"
    "Knowledge-Distillation) gives it, not checked against the paper's own table; its schedule "
    "and number of students may differ from this grid's. Every reference code reports the best "
    "test accuracy over epochs, of the member named in the 'reported member' column."
)

# Which member each method's published figure measures, keyed by arm: (what
# `dml reproduce online-kd-table` measures for it, what is known of the source). Measures:
# "first" = the first member (branch 1, or peer 1); "deployed" = the network the method deploys
# (OKDDip's group leader, PCL's temporal-mean branch 1); "students" = the mean over members.
ONLINE_KD_REPORTED: dict[str, tuple[str, str]] = {
    "independent": ("first", "the single network"),
    "dml": (
        "students",
        "not known which peer (the PCL paper's table was not read); the mean of the students",
    ),
    "dml_e": ("students", "no published figure here; the mean of the students"),
    "dml_logits_t3": ("students", "no published figure here; the mean of the students"),
    "kdcl": ("students", "not known (no KDCL code found); the mean of the students"),
    "one": ("first", "branch 1, as ONE's code prints it (the authors' ONE_NeurIPS2018 script)"),
    "okddip": (
        "deployed",
        "the group leader, the network OKDDip deploys (which output the OKDDip code's printed "
        "figure is was not re-checked)",
    ),
    "pcl": (
        "deployed",
        "the first peer, says the PCL reimplementation's README; here the temporal mean's "
        "branch 1, which PCL deploys (unverified against the paper)",
    ),
}

# Which DML each published DML figure is. The DML paper's Eq. 10: the mean over the other
# peers of KL(p_l || p_k) at T = 1 (arm `dml`); Eq. 11 (DML_e): KL to the mean of the others'
# probabilities (arm `dml_e`); the OKDDip authors' code runs its "DML" baseline at T = 3 against
# the mean of the other peers' *logits* (arm `dml_logits_t3`, method `dml_mean_logits`).
DML_VARIANTS: dict[str, str] = {
    "DML paper, Table 1": "Eq. 10 at T = 1, two peers (there Eq. 10 = the mean-of-logits form "
    "at T = 1): arm dml",
    "PCL paper's comparison (ONLINE_KD_CIFAR100_RESNET32['dml'])": "not known: the paper's text "
    "was not read; if the row was taken from OKDDip's paper or re-run with OKDDip's code, it is "
    "the mean-of-logits form at T = 3 (arm dml_logits_t3)",
    "third-party READMEs (THIRD_PARTY_DML)": "not checked: their code was not read",
}

# Independent reproductions of DML on CIFAR-100, from the READMEs of public repositories: what
# a user can check at the source. Quoted in this project's notes and NOT re-checked at the
# source (the repositories were not reachable when this was written); values as given there.
# Each: source (repository, file; the owners of MCL-OKD and Knowledge-Distillation-Zoo are
# not recorded in those notes), network, settings as stated, metric, {arm: value}; a pair of
# values is (net 1, net 2).
THIRD_PARTY_DML: list[dict[str, object]] = [
    {
        "source": "the MCL-OKD repository (GitHub), README.md",
        "network": "ResNet-32",
        "settings": "CIFAR-100; schedule as in that repository",
        "metric": "top-1 error %",
        "values": {"independent": 28.91, "dml": 24.92},
    },
    {
        "source": "the Knowledge-Distillation-Zoo repository (GitHub), README.md",
        "network": "ResNet-20 pair",
        "settings": "CIFAR-100; schedule as in that repository",
        "metric": "top-1 %, independent -> DML (net 1 / net 2)",
        "values": {"independent": 68.92, "dml": (70.39, 70.22)},
    },
    {
        "source": "the Knowledge-Distillation-Zoo repository (GitHub), README.md",
        "network": "ResNet-110 pair",
        "settings": "CIFAR-100; schedule as in that repository",
        "metric": "top-1 %, independent -> DML (net 1 / net 2)",
        "values": {"independent": 73.15, "dml": (74.72, 75.55)},
    },
    {
        "source": "the yukiharada1228/deep-mutual-learning repository (GitHub), README.md",
        "network": "ResNet-32",
        "settings": "CIFAR-100, 200 epochs, cosine LR",
        "metric": "top-1 %",
        "values": {"independent": 71.19, "dml_2": 72.12, "dml_3": 72.64, "dml_4": 73.21},
    },
]
THIRD_PARTY_NOTE = (
    "Quoted from the repositories' READMEs as recorded in this project's notes; not re-checked "
    "at the source, and the DML variant each ran was not checked."
)
