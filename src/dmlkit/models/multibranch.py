"""Multi-branch CIFAR networks: shared low-level stages, K copies of the high-level ones.

The architecture of ONE (Lan et al. 2018), OKDDip (Chen et al. 2020) and PCL (Wu & Gong 2021):
the stem and the first ``branch_at`` stages are shared, every stage after the branch point (and
the classifier) is duplicated per branch. ``branch_at`` is an argument: ``2`` (the default) shares
stages 1-2 and duplicates stage 3, as in all three papers' ResNet-32; ``0`` shares only the stem;
``3`` shares every convolution and duplicates only the classifier.

Each branch is a *member* of the cohort (:class:`dmlkit.cohort.Cohort` evaluates, logs and
ensembles the branches like separate peers), so a plain DML run over one of these networks is
DML with a shared trunk. The small heads the successors need are built on request (the methods
ask for theirs through ``Method.model_kwargs``, so a plain run has none):

* ``gate=True``, ``gate(trunk) -> [B, K]``: ONE's gate, as in the authors' code a linear
  layer on the pooled trunk features, BatchNorm, ReLU, softmax over the branches.
* ``attention=True``, ``attention(features)``: OKDDip's query / key projections (``width // 8``
  dimensions, no bias, as in the authors' code) of the first ``M = K - 1`` branches (the last
  branch is the group leader).
* ``fusion=True``, ``fusion(features) -> [B, C]``: PCL's peer-ensemble teacher, a linear
  classifier on the concatenated branch features.
* ``temporal_mean=True`` adds ``mean_net``, a copy of the whole network whose weights are the
  exponential moving average of this one (PCL's temporal mean); it has no gradient, so SGD and
  Adam skip it, and it is saved with the weights (so a resumed run continues the same mean),
  as is ``mean_updates``, the number of updates so far (for the mean-teacher warm-up).

``forward(x)`` returns the log of the branches' mean probability (a ``[B, C]`` logits tensor),
so these networks also work wherever a one-output model is expected.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.errors import ConfigError
from dmlkit.losses.dml import mean_log_probs
from dmlkit.models.cifar import BasicBlock, WideBlock, check_shortcut, conv_bn_relu, init_weights
from dmlkit.models.layers import global_avg_pool
from dmlkit.models.registry import MODELS


class BranchOutputs(NamedTuple):
    """One forward pass of a multi-branch network."""

    logits: list[Tensor]  # K x [B, C]
    features: list[Tensor]  # K x [B, width]: each branch's pooled features
    trunk: Tensor  # [B, trunk_width]: the pooled shared features (ONE's gate input)


class MultiBranchNet(nn.Module):
    """A stem, ``branch_at`` shared stages, then ``branches`` copies of the remaining stages.

    Args:
        stem: the first layer (shared).
        make_stage: ``i -> Module``: a fresh stage i (0, 1, 2); called once per copy.
        make_tail: a fresh per-branch module applied after the last stage (e.g. WRN's BN-ReLU).
        widths: output channels of stages 0, 1, 2 (``widths[-1]``: the branch feature size).
        stem_width: output channels of the stem.
        num_classes: C.
        branches: K >= 2.
        branch_at: number of shared stages, 0..3.
        temporal_mean: also keep an EMA copy of the network (``mean_net``).
        heads: which of ``gate``, ``attention``, ``fusion`` to build.
    """

    def __init__(
        self,
        stem: nn.Module,
        make_stage: Callable[[int], nn.Module],
        make_tail: Callable[[], nn.Module],
        widths: tuple[int, int, int],
        stem_width: int,
        num_classes: int,
        branches: int,
        branch_at: int,
        temporal_mean: bool,
        heads: dict[str, bool],
    ) -> None:
        super().__init__()
        if branches < 2:
            raise ConfigError(f"peers[].kwargs.branches must be >= 2, got {branches}")
        if branch_at not in (0, 1, 2, 3):
            raise ConfigError(
                f"peers[].kwargs.branch_at must be 0, 1, 2 or 3 (shared stages), got {branch_at}"
            )
        self.num_branches = branches
        self.branch_at = branch_at
        self.trunk = nn.Sequential(stem, *[make_stage(i) for i in range(branch_at)])
        self.branch_nets = nn.ModuleList(
            nn.Sequential(*[make_stage(i) for i in range(branch_at, 3)], make_tail())
            for _ in range(branches)
        )
        width = widths[-1]
        trunk_width = widths[branch_at - 1] if branch_at else stem_width
        self.classifiers = nn.ModuleList(nn.Linear(width, num_classes) for _ in range(branches))
        if heads.get("gate"):
            self.gate_fc = nn.Linear(trunk_width, branches)
            self.gate_bn = nn.BatchNorm1d(branches)
        if heads.get("attention"):
            proj = max(1, width // 8)
            self.query = nn.Linear(width, proj, bias=False)
            self.key = nn.Linear(width, proj, bias=False)
        if heads.get("fusion"):
            self.fusion_fc = nn.Linear(width * branches, num_classes)
        init_weights(self)
        self.mean_net: MultiBranchNet | None = None
        if temporal_mean:
            # Built after every other layer so the copy starts equal to the network; it is a
            # submodule (saved and restored with the weights) without gradient.
            self.mean_net = copy.deepcopy(self).requires_grad_(False)
            self.register_buffer("mean_updates", torch.zeros((), dtype=torch.long))

    def branch_outputs(self, x: Tensor) -> BranchOutputs:
        """x: ``[B, C_in, H, W]`` -> every branch's logits and pooled features."""
        h = self.trunk(x)
        feats = [global_avg_pool(b(h)) for b in self.branch_nets]
        logits = [fc(f) for fc, f in zip(self.classifiers, feats)]
        return BranchOutputs(logits, feats, global_avg_pool(h))

    def branch_logits(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, C_in, H, W]`` -> K logits ``[B, C]``."""
        return self.branch_outputs(x).logits

    def gate(self, trunk: Tensor) -> Tensor:
        """ONE's gate: pooled trunk features ``[B, D]`` -> branch weights ``[B, K]``."""
        return F.softmax(F.relu(self.gate_bn(self.gate_fc(trunk))), dim=1)

    def attention(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """OKDDip: M branch features ``[B, width]`` -> (queries, keys), each ``[B, M, d]``."""
        h = torch.stack(features, dim=1)
        return self.query(h), self.key(h)

    def fusion(self, features: list[Tensor]) -> Tensor:
        """PCL's peer-ensemble teacher: K features ``[B, width]`` -> logits ``[B, C]``."""
        return self.fusion_fc(torch.cat(features, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """x -> ``[B, C]``: log of the branches' mean probability (a valid logits tensor)."""
        return mean_log_probs([F.log_softmax(z, dim=1) for z in self.branch_logits(x)])


def _stage(
    i: int,
    n: int,
    widths: tuple[int, int, int],
    in_width: int,
    block: Callable[[int, int, int], nn.Module],
) -> nn.Module:
    """Stage i (0, 1, 2) of a three-stage CIFAR net: ``n`` blocks ``block(cin, cout, stride)``,
    the first one taking the previous stage's width (``in_width`` for stage 0) at stride
    ``(1, 2, 2)[i]``."""
    cin = in_width if i == 0 else widths[i - 1]
    blocks = []
    for j in range(n):
        blocks.append(block(cin, widths[i], (1, 2, 2)[i] if j == 0 else 1))
        cin = widths[i]
    return nn.Sequential(*blocks)


@MODELS.register("resnet32_mb")
def resnet32_mb(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 32,
    branches: int = 3,
    branch_at: int = 2,
    temporal_mean: bool = False,
    gate: bool = False,
    attention: bool = False,
    fusion: bool = False,
    shortcut: str = "pad",
) -> MultiBranchNet:
    """Multi-branch CIFAR ResNet (default ResNet-32; ``depth=110`` for ResNet-110): the blocks of
    :class:`dmlkit.models.cifar.CifarResNet`, stages after ``branch_at`` duplicated per branch.
    ``shortcut``: ``"pad"`` (parameter-free) or ``"conv"`` (1x1 conv + BN, as in the public code
    of ONE, OKDDip and the PCL reimplementation; the online-KD recipes use it)."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"peers[].kwargs.depth of the CIFAR ResNet must be 6n + 2, got {depth}")
    check_shortcut(shortcut)
    n = (depth - 2) // 6
    return MultiBranchNet(
        conv_bn_relu(in_channels, 16, 3),
        lambda i: _stage(i, n, (16, 32, 64), 16, lambda c, o, st: BasicBlock(c, o, st, shortcut)),
        nn.Identity,
        (16, 32, 64),
        16,
        num_classes,
        branches,
        branch_at,
        temporal_mean,
        {"gate": gate, "attention": attention, "fusion": fusion},
    )


@MODELS.register("wrn_mb")
def wrn_mb(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 16,
    widen_factor: int = 2,
    dropout: float = 0.0,
    branches: int = 3,
    branch_at: int = 2,
    temporal_mean: bool = False,
    gate: bool = False,
    attention: bool = False,
    fusion: bool = False,
) -> MultiBranchNet:
    """Multi-branch Wide ResNet (default WRN-16-2; ``depth=28, widen_factor=10`` is the DML
    paper's WRN-28-10, three times over after the branch point): the blocks of
    :class:`dmlkit.models.cifar.WideResNet`, each branch ending in its own BN-ReLU."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"peers[].kwargs.depth of the Wide ResNet must be 6n + 4, got {depth}")
    if widen_factor < 1:
        raise ConfigError(f"peers[].kwargs.widen_factor must be >= 1, got {widen_factor}")
    n = (depth - 4) // 6
    w = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    return MultiBranchNet(
        nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
        lambda i: _stage(i, n, w, 16, lambda c, o, st: WideBlock(c, o, st, dropout)),
        lambda: nn.Sequential(nn.BatchNorm2d(w[2]), nn.ReLU(inplace=True)),
        w,
        16,
        num_classes,
        branches,
        branch_at,
        temporal_mean,
        {"gate": gate, "attention": attention, "fusion": fusion},
    )
