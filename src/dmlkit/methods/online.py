"""DML's online-distillation successors as methods: ``one``, ``kdcl``, ``okddip``, ``pcl``; and
``dml_mean_logits``, DML as the OKDDip code's baseline runs it.

Each is a small :class:`dmlkit.methods.base.Method` over the pure losses of
:mod:`dmlkit.losses.online`, named in the registry table of :mod:`dmlkit.methods` (``METHODS``).

* ``kdcl`` trains a cohort of separate (possibly heterogeneous) peers, like DML.
* ``one``, ``okddip`` and ``pcl`` train ONE multi-branch network (``peers: [resnet32_mb]`` or
  ``[wrn_mb]``, :mod:`dmlkit.models.multibranch`): its branches are the cohort's members, so they
  are logged, evaluated and ensembled like peers; one optimizer steps the whole network on the
  method's total loss.

The config keys they read: ``method.temperature`` (the papers use 3 for ONE, OKDDip and PCL, 2
for KDCL; the recipes set them), ``method.mimicry_weight``, ``method.mimicry_rampup`` and
``method.rampup_shape`` (the weight of the distillation terms and its ramp-up, linear or the
sigmoid of OKDDip's and PCL's code), ``method.ensemble`` (kdcl), ``method.ema_decay`` and
``method.mean_teacher`` (pcl) and
``method.member_views`` (kdcl, pcl: every member trains on its own random augmentation of the
batch, as in both papers; the loader then yields ``x: [K, B, ...]``, view k for member k).

Not implemented: CL-ILR and feature-level mimicry.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from dmlkit.errors import ConfigError
from dmlkit.losses.dml import cross_entropy, mimicry_kl
from dmlkit.losses.online import (
    dml_mean_logits_losses,
    ema_decay,
    ema_update,
    gate_ensemble,
    kdcl_losses,
    okddip_loss,
    one_loss,
    pcl_loss,
    peer_attention,
)
from dmlkit.methods.base import Method, PeerLog, peer_log
from dmlkit.models.layers import global_avg_pool


class DMLMeanLogits(Method):
    """DML as the OKDDip authors' code runs its "DML" baseline: every peer mimics the mean of
    the other peers' *logits* (:func:`dml_mean_logits_losses`), at ``method.temperature`` (that
    code: 3), weighted by ``method.mimicry_weight``; simultaneous update only."""

    name = "dml_mean_logits"

    def __init__(self, cohort: Any, cfg: Any, precision: Any = None, sync: Any = None) -> None:
        super().__init__(cohort, cfg, precision, sync)
        if cfg.update != "simultaneous":
            raise ConfigError(
                "method.name=dml_mean_logits steps every peer against one forward pass; set "
                "method.update=simultaneous"
            )
        if len(cohort.names) < 2:
            raise ConfigError(
                "method.name=dml_mean_logits needs at least 2 peers, e.g. peers=[resnet32,resnet32]"
            )

    @classmethod
    def update_order(cls, cfg: Any) -> str | None:
        return "simultaneous"

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with self.precision.autocast():
            terms = dml_mean_logits_losses(
                self.cohort(x), y, temperature=self.cfg.temperature, weight=self.mimicry_weight
            )
        self.step_all([t.total for t in terms])
        return [peer_log(t.total, t.ce, t.distill) for t in terms]


class KDCL(Method):
    """KDCL (Guo et al. CVPR 2020): every peer distils from a teacher built from all peers'
    logits (``method.ensemble``: ``minlogit`` or ``naive``, :func:`kdcl_teacher`), detached, at
    ``method.temperature``, weighted by ``method.mimicry_weight``; plus its own CE. The
    recipes' temperature (2) and weight (1), and the naive teacher's choice per sample, are
    unverified (no KDCL code or equations were reachable). With
    ``method.member_views`` (the recipes' setting, as in the paper) each peer trains on its own
    augmentation of the batch."""

    name = "kdcl"
    supports_views = True

    def __init__(self, cohort: Any, cfg: Any, precision: Any = None, sync: Any = None) -> None:
        super().__init__(cohort, cfg, precision, sync)
        if cfg.member_views and not hasattr(cohort, "forward_views"):
            raise ConfigError(
                "method.member_views=true: this cohort cannot run one view per peer; set "
                "distributed.mode=none or method.member_views=false"
            )

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        """x: ``[B, ...]``, or ``[K, B, ...]`` with ``method.member_views`` (peer k on view k:
        KDCL's per-peer augmentation; the teacher is built from the K peers' logits, each on
        its own view, as in the paper)."""
        with self.precision.autocast():
            logits = self.cohort.forward_views(x) if self.cfg.member_views else self.cohort(x)
            terms = kdcl_losses(
                logits,
                y,
                temperature=self.cfg.temperature,
                weight=self.mimicry_weight,
                variant=self.cfg.ensemble,
            )
        self.step_all([t.total for t in terms])
        return [peer_log(t.total, t.ce, t.distill) for t in terms]


class BranchMethod(Method):
    """A method over one multi-branch network: the cohort must be that single peer."""

    def __init__(self, cohort: Any, cfg: Any, precision: Any = None, sync: Any = None) -> None:
        super().__init__(cohort, cfg, precision, sync)
        branches = getattr(cohort, "branches", [None])
        if len(branches) != 1 or branches[0] is None:
            raise ConfigError(
                f"method.name={self.name} trains one multi-branch network: set "
                f"peers=[resnet32_mb] (or wrn_mb; peers.0.kwargs.branches=K)"
            )
        self.net = cohort.peers[0]
        self.peer = cohort.specs[0].name
        self.eval_heads = self._heads

    def _heads(self, x: Tensor) -> dict[str, Tensor]:
        return {}

    def _logs(self, logits: list[Tensor], y: Tensor, teachers: list[Tensor]) -> list[PeerLog]:
        """Per branch: its CE, its soft term against its teacher, their weighted sum."""
        t, w = self.cfg.temperature, self.mimicry_weight
        with torch.no_grad():
            ce = [cross_entropy(z, y) for z in logits]
            kl = [mimicry_kl(z, q, t) for z, q in zip(logits, teachers)]
        return [peer_log(c + w * k, c, k) for c, k in zip(ce, kl)]


class ONE(BranchMethod):
    """ONE (Lan et al. NeurIPS 2018): a gate weights the branches' logits into an ensemble
    teacher, trained with CE; each branch distils from it (detached) at ``method.temperature``
    (paper: 3), the soft terms weighted by ``method.mimicry_weight`` (paper: 1). The gate
    ensemble is evaluated as ``<peer>.gate``."""

    name = "one"
    model_kwargs: ClassVar[dict[str, Any]] = {"gate": True}

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with self.precision.autocast():
            out = self.net.branch_outputs(x)
            gate = self.net.gate(out.trunk)
            terms = one_loss(out.logits, gate, y, self.cfg.temperature)
            # one_loss weighs its soft term 1; the configured weight scales it here
            total = terms.ce + self.mimicry_weight * terms.distill
        self.step_all([total])
        ens = gate_ensemble(out.logits, gate).detach()
        return self._logs(out.logits, y, [ens] * len(out.logits))

    def _heads(self, x: Tensor) -> dict[str, Tensor]:
        out = self.net.branch_outputs(x)
        return {f"{self.peer}.gate": gate_ensemble(out.logits, self.net.gate(out.trunk))}


class OKDDip(BranchMethod):
    """OKDDip (Chen et al. AAAI 2020): the first K - 1 branches are auxiliary peers, each
    distilling from its own attention-weighted ensemble of the peers; the last branch is the
    group leader, distilled from the peers' mean and deployed. Soft terms at
    ``method.temperature`` (paper: 3), weighted by ``method.mimicry_weight``; targets not
    detached, as in the authors' code (see :func:`okddip_loss`). The recipes ramp the weight up
    with the sigmoid of the OKDDip and PCL code (``method.rampup_shape=sigmoid``)."""

    name = "okddip"
    model_kwargs: ClassVar[dict[str, Any]] = {"attention": True}

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with self.precision.autocast():
            out = self.net.branch_outputs(x)
            peers, leader = out.logits[:-1], out.logits[-1]
            att = peer_attention(*self.net.attention(out.features[:-1]))
            terms = okddip_loss(
                peers,
                leader,
                att,
                y,
                temperature=self.cfg.temperature,
                weight=self.mimicry_weight,
            )
        self.step_all([terms.total])
        z = torch.stack(peers, dim=1).detach()
        teachers = list(torch.bmm(att.detach(), z).unbind(1)) + [z.mean(dim=1)]
        return self._logs(out.logits, y, teachers)

    def deployed(self) -> str | None:
        return self.cohort.names[-1]  # the group leader


class PCL(BranchMethod):
    """PCL (Wu & Gong AAAI 2021): a fusion head over the branches' features is the peer
    ensemble teacher (trained with CE); the temporal mean (EMA, ``method.ema_decay``) of the
    network gives the peer mean teachers; each branch distils from the ensemble and from the
    other branches' means (:func:`pcl_loss`). ``method.mean_teacher``: ``train`` (default, as
    the public PCL reimplementation) runs the temporal mean in train mode for its targets and
    averages the parameters only (its BatchNorm running statistics come from its own forward
    passes); ``eval`` runs it in eval mode on running statistics averaged with the parameters.
    The temporal-mean network is what is deployed: its first branch, ``<peer>.mean.b1``
    (evaluated in eval mode, like every network); all its branches and the fusion head are
    evaluated too. The recipes
    give each branch its own augmentation (``method.member_views``, as in the paper) and ramp
    the distillation weight up with the sigmoid of the code (``method.rampup_shape=sigmoid``)."""

    name = "pcl"
    model_kwargs: ClassVar[dict[str, Any]] = {"temporal_mean": True, "fusion": True}
    supports_views = True

    def __init__(self, cohort: Any, cfg: Any, precision: Any = None, sync: Any = None) -> None:
        super().__init__(cohort, cfg, precision, sync)
        self.mean = self.net.mean_net
        if self.mean is None:
            raise ConfigError("method.name=pcl: peers.0.kwargs.temporal_mean must be true")

    def _outputs(self, net: Any, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Every branch's (logits, pooled features): on the batch, or with
        ``method.member_views`` branch k on view k of ``x: [K, B, ...]``, the shared trunk run
        once per view (as PCL's public reimplementation, shaoeric/Peer-Collaborative-Learning-
        for-Online-Knowledge-Distillation, does; the authors' code we could not find)."""
        if not self.cfg.member_views:
            out = net.branch_outputs(x)
            return out.logits, out.features
        feats = [global_avg_pool(b(net.trunk(v))) for b, v in zip(net.branch_nets, x)]
        return [fc(f) for fc, f in zip(net.classifiers, feats)], feats

    @torch.no_grad()
    def _mean_logits(self, x: Tensor) -> list[Tensor]:
        """The temporal mean's branch logits: in train mode (``method.mean_teacher=train``,
        the reference: batch statistics, and its BatchNorm running statistics move with
        them) or in eval mode (``eval``: the averaged running statistics)."""
        # with views, mean branch j sees view j, as branch j does
        was = self.mean.training
        self.mean.train(self.cfg.mean_teacher == "train")
        try:
            return self._outputs(self.mean, x)[0]
        finally:
            self.mean.train(was)

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        """x: ``[B, ...]``, or ``[K, B, ...]`` with ``method.member_views`` (branch k, and the
        temporal mean's branch k, on view k; the fusion head on the K branches' features)."""
        with self.precision.autocast():
            mean_logits = self._mean_logits(x)
            logits, features = self._outputs(self.net, x)
            ens = self.net.fusion(features)
            terms = pcl_loss(
                logits,
                ens,
                mean_logits,
                y,
                temperature=self.cfg.temperature,
                weight=self.mimicry_weight,
            )
        self.step_all([terms.total])
        self._update_mean()
        return self._logs(logits, y, [ens.detach()] * len(logits))

    def _update_mean(self) -> None:
        """EMA of the parameters (``method.mean_teacher=train``, the reference), or of every
        parameter and buffer, BatchNorm's running statistics included (``eval``)."""
        # The update count is a buffer of the network (saved with its weights), so a resumed
        # run continues the same mean-teacher warm-up.
        count = self.net.mean_updates
        decay = ema_decay(int(count), self.cfg.ema_decay)
        own = self.net.state_dict()
        mine = self.mean.state_dict()
        if self.cfg.mean_teacher == "train":
            names = [n for n, _ in self.mean.named_parameters()]
        else:
            names = list(mine)
        ema_update([mine[n] for n in names], [own[n] for n in names], decay)
        count += 1

    def _heads(self, x: Tensor) -> dict[str, Tensor]:
        out = self.net.branch_outputs(x)
        heads = {f"{self.peer}.fusion": self.net.fusion(out.features)}
        for i, z in enumerate(self.mean.branch_logits(x)):
            heads[f"{self.peer}.mean.b{i + 1}"] = z
        return heads

    def deployed(self) -> str | None:
        return f"{self.peer}.mean.b1"
