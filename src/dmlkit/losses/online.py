"""The losses of DML's online-distillation successors, as pure functions of logits.

One function per method (and DML against the mean of the others' logits, the "DML" of the
OKDDip code), plus the small pieces each teacher is built from (ONE's gate
ensemble, KDCL's min-logit / naive teachers, OKDDip's attention, PCL's temporal mean). *When*
and on *what* each network steps lives in :mod:`dmlkit.methods.online`.

References (equations; where a paper leaves a choice open the docstring says what was picked):

* ONE: Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018.
* KDCL: Guo, Wang, Wu, Yu, Liang, Hu, Luo, "Online Knowledge Distillation via Collaborative
  Learning", CVPR 2020.
* OKDDip: Chen, Mei, Wang, Feng, Chen, "Online Knowledge Distillation with Diverse Peers",
  AAAI 2020 (arXiv 1912.00350).
* PCL: Wu, Gong, "Peer Collaborative Learning for Online Knowledge Distillation", AAAI 2021.

Conventions are those of :mod:`dmlkit.losses`: logits ``[B, C]``, targets ``[B]`` with ``-1``
for unlabelled samples (no CE), KL summed over classes and averaged over the batch, soft terms
at temperature ``T`` multiplied by ``T**2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.losses.dml import UNLABELLED, cross_entropy, kl_from_log_probs, mimicry_kl, rampup


def soft_kl(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(softmax(teacher/T) || softmax(logits/T))`` with the teacher NOT detached.

    For teachers that must learn through the distillation term (OKDDip's attention);
    :func:`dmlkit.losses.mimicry_kl` is the detached form.
    """
    t = temperature
    log_p = F.log_softmax(logits / t, dim=1)
    log_q = F.log_softmax(teacher_logits / t, dim=1)
    return kl_from_log_probs(log_q, log_p) * t**2


class OnlineTerms(NamedTuple):
    """One step's loss split into its parts: ``total`` is what is minimised."""

    total: Tensor
    ce: Tensor  # the labelled terms, summed over the networks that have one
    distill: Tensor  # the soft terms, unweighted, summed


# ------------------------------------------------------------------------------------------------
# DML against the mean of the other peers' logits (the "DML" baseline of the OKDDip code)


def dml_mean_logits_losses(
    logits: Sequence[Tensor], targets: Tensor, *, temperature: float = 3.0, weight: float = 1.0
) -> list[OnlineTerms]:
    """One loss per peer: ``CE(z_k) + weight * T**2 KL(softmax(zbar_k / T) || softmax(z_k / T))``
    with ``zbar_k`` the mean of the *logits* of the other peers, detached.

    DML's variant as the OKDDip authors' code runs its "DML" baseline (T = 3 against the
    mean of the other peers' logits), which differs from the DML paper's Eq. 10 (the mean of
    the KLs to each peer, T = 1) and Eq. 11 (DML_e: the mean of the others' probabilities).
    With K = 2 the target is the other peer's logits, so it equals DML at the same T.

    Args:
        logits: K >= 2 tensors ``[B, C]``.
        targets: ``[B]`` (``-1`` = unlabelled).
    """
    if len(logits) < 2:
        raise ValueError("dml_mean_logits_losses needs at least two peers' logits")
    z = torch.stack([t.detach() for t in logits])  # [K, B, C]
    total = z.sum(dim=0)
    out = []
    for k, zk in enumerate(logits):
        target = (total - z[k]) / (len(logits) - 1)
        ce = cross_entropy(zk, targets)
        kl = mimicry_kl(zk, target, temperature)
        out.append(OnlineTerms(ce + weight * kl, ce, kl))
    return out


# ------------------------------------------------------------------------------------------------
# ONE


def gate_ensemble(logits: Sequence[Tensor], gate: Tensor) -> Tensor:
    """ONE's teacher logits: ``z_e = sum_i g_i z_i`` (Lan et al. 2018, Eq. 1).

    Args:
        logits: K branch logits ``[B, C]``.
        gate: ``[B, K]`` gate weights (a softmax over the branches, per sample).

    Returns:
        ``[B, C]``.
    """
    stacked = torch.stack(list(logits), dim=1)  # [B, K, C]
    return (gate.unsqueeze(-1) * stacked).sum(dim=1)


def one_loss(
    logits: Sequence[Tensor], gate: Tensor, targets: Tensor, temperature: float = 3.0
) -> OnlineTerms:
    """ONE: ``sum_i CE(z_i) + CE(z_e) + T**2 sum_i KL(p_e^T || p_i^T)`` (Lan et al., Eq. 2-4).

    The ensemble teacher is detached in the distillation term (the paper treats it as the
    teacher; its own CE term trains the gate and, through it, the branches), T = 3 as in the
    paper's experiments.

    Args:
        logits: K branch logits ``[B, C]``.
        gate: ``[B, K]`` gate weights.
        targets: ``[B]`` (``-1`` = unlabelled).
    """
    ens = gate_ensemble(logits, gate)
    ce = sum(cross_entropy(z, targets) for z in logits) + cross_entropy(ens, targets)
    distill = sum(mimicry_kl(z, ens, temperature) for z in logits)
    return OnlineTerms(ce + distill, ce, distill)


# ------------------------------------------------------------------------------------------------
# KDCL

KDCL_VARIANTS = ("minlogit", "naive")


def kdcl_teacher(logits: Sequence[Tensor], targets: Tensor, variant: str = "minlogit") -> Tensor:
    """KDCL's ensemble teacher logits ``[B, C]`` from the peers' logits, detached.

    * ``minlogit`` (KDCL-MinLogit): each peer's logits shifted so that the true class scores 0,
      ``z_i - z_{i,y}``, then the element-wise minimum over peers. An unlabelled sample has no
      true class: its teacher is the element-wise mean of the peers' logits.
    * ``naive`` (KDCL-Naive): per sample, the logits of the peer with the lowest CE. An
      unlabelled sample takes the mean of the peers' logits. (That the choice is made per
      sample, not per batch, is our reading of the paper; not checked against the authors'
      code, which we could not find.)
    """
    if variant not in KDCL_VARIANTS:
        raise ValueError(f"variant must be one of {KDCL_VARIANTS}, got {variant!r}")
    z = torch.stack([t.detach() for t in logits])  # [K, B, C]
    labelled = targets != UNLABELLED
    idx = targets.clamp_min(0)
    mean = z.mean(dim=0)
    if variant == "minlogit":
        true = z.gather(2, idx.view(1, -1, 1).expand(z.shape[0], -1, 1))  # [K, B, 1]
        teacher = (z - true).min(dim=0).values
    else:
        ce = torch.stack([F.cross_entropy(t, idx, reduction="none") for t in z])  # [K, B]
        best = ce.argmin(dim=0)  # [B]
        teacher = z[best, torch.arange(z.shape[1], device=z.device)]
    return torch.where(labelled.unsqueeze(1), teacher, mean)


def kdcl_losses(
    logits: Sequence[Tensor],
    targets: Tensor,
    *,
    temperature: float = 2.0,
    weight: float = 1.0,
    variant: str = "minlogit",
) -> list[OnlineTerms]:
    """KDCL, one loss per peer: ``CE(z_i) + weight * T**2 KL(p_t^T || p_i^T)``.

    The teacher (:func:`kdcl_teacher`) is a constant, so each loss reaches only its own peer.
    """
    teacher = kdcl_teacher(logits, targets, variant)
    out = []
    for z in logits:
        ce = cross_entropy(z, targets)
        kl = mimicry_kl(z, teacher, temperature)
        out.append(OnlineTerms(ce + weight * kl, ce, kl))
    return out


# ------------------------------------------------------------------------------------------------
# OKDDip


def peer_attention(queries: Tensor, keys: Tensor) -> Tensor:
    """OKDDip's aggregation weights ``a_ij = softmax_j(q_i . k_j)`` (Chen et al. 2020, Eq. 5).

    Args:
        queries: ``[B, M, D]`` projections ``L_q h_i`` of the M auxiliary peers' features.
        keys: ``[B, M, D]`` projections ``L_k h_j``.

    Returns:
        ``[B, M, M]``, rows summing to 1 (a peer's own prediction included, as in the authors'
        code).
    """
    return F.softmax(torch.bmm(queries, keys.transpose(1, 2)), dim=-1)


def okddip_loss(
    peer_logits: Sequence[Tensor],
    leader_logits: Tensor,
    attention: Tensor,
    targets: Tensor,
    *,
    temperature: float = 3.0,
    weight: float = 1.0,
) -> OnlineTerms:
    """OKDDip's two-level distillation.

    ``sum_i CE(z_i) + CE(z_L) + weight * [sum_i T**2 KL(p(t_i) || p_i) + T**2 KL(p(mean_i z_i)
    || p_L)]`` with ``t_i = sum_j a_ij z_j`` the attention-weighted ensemble of the M auxiliary
    peers and ``z_L`` the group leader (the network deployed).

    Gradient: following the authors' code, neither target is detached, so the attention
    weights (and the peers, through their ensembles) learn from the distillation term; the
    peers' mean that teaches the leader also receives gradient.

    Args:
        peer_logits: M auxiliary peers' logits ``[B, C]``.
        leader_logits: ``[B, C]``.
        attention: ``[B, M, M]`` from :func:`peer_attention`.
    """
    z = torch.stack(list(peer_logits), dim=1)  # [B, M, C]
    ens = torch.bmm(attention, z)  # [B, M, C]: row i is peer i's teacher
    ce = sum(cross_entropy(p, targets) for p in peer_logits) + cross_entropy(leader_logits, targets)
    group = sum(soft_kl(p, ens[:, i], temperature) for i, p in enumerate(peer_logits))
    lead = soft_kl(leader_logits, z.mean(dim=1), temperature)
    distill = group + lead
    return OnlineTerms(ce + weight * distill, ce, distill)


# ------------------------------------------------------------------------------------------------
# PCL


def pcl_loss(
    logits: Sequence[Tensor],
    ensemble_logits: Tensor,
    mean_logits: Sequence[Tensor],
    targets: Tensor,
    *,
    temperature: float = 3.0,
    weight: float = 1.0,
) -> OnlineTerms:
    """PCL: ``sum_i CE(z_i) + CE(z_e) + weight * (L_pe + L_pm)`` (Wu & Gong 2021, Eq. 3-7).

    * ``L_pe = T**2 sum_i KL(p_e^T || p_i^T)``: the peer ensemble teacher ``z_e`` (here the
      output of the fusion head over the branches' features) teaches every peer; detached.
    * ``L_pm = T**2 sum_i 1/(m-1) sum_{j != i} KL(p(z~_j)^T || p_i^T)``: the temporal means
      (EMA) of the *other* peers teach each peer; constants (no gradient reaches the EMA).

    Args:
        logits: m branch logits ``[B, C]``.
        ensemble_logits: ``[B, C]`` peer-ensemble logits (trained by its own CE).
        mean_logits: m temporal-mean branch logits ``[B, C]``.
    """
    m = len(logits)
    ce = sum(cross_entropy(z, targets) for z in logits) + cross_entropy(ensemble_logits, targets)
    pe = sum(mimicry_kl(z, ensemble_logits, temperature) for z in logits)
    pm = logits[0].new_zeros(())
    if m > 1:
        for i, z in enumerate(logits):
            others = [mean_logits[j] for j in range(m) if j != i]
            pm = pm + sum(mimicry_kl(z, o, temperature) for o in others) / (m - 1)
    distill = pe + pm
    return OnlineTerms(ce + weight * distill, ce, distill)


@torch.no_grad()
def ema_update(mean: Sequence[Tensor], current: Sequence[Tensor], decay: float) -> None:
    """Temporal mean, in place: ``mean <- decay * mean + (1 - decay) * current``.

    Floating tensors are averaged; integer ones (BatchNorm's step counter) are copied.
    """
    for m, c in zip(mean, current):
        if m.is_floating_point():
            m.mul_(decay).add_(c.detach(), alpha=1.0 - decay)
        else:
            m.copy_(c)


def ema_decay(step: int, decay: float) -> float:
    """Mean-teacher warm-up: ``min(decay, 1 - 1/(step + 1))`` after ``step`` updates (0-based),
    so that the early mean is not dominated by the random initialisation (Tarvainen & Valpola
    2017, whose temporal mean PCL uses)."""
    return min(decay, 1.0 - 1.0 / (step + 1))


def sigmoid_rampup(epoch: float, length: float) -> float:
    """``exp(-5 (1 - t)**2)``, ``t = min(epoch / length, 1)``: :func:`dmlkit.losses.rampup`'s
    ``sigmoid`` shape (``method.rampup_shape=sigmoid``); 1 when ``length <= 0``."""
    return rampup(epoch, length, "sigmoid")
