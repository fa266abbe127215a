"""The losses of Deep Mutual Learning, as pure functions.

Everything that decides *what* a peer minimises lives here; *when* each peer steps lives in
:mod:`dmlkit.methods`. Reference: Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning",
CVPR 2018 (arXiv 1706.00384), Eq. (1)-(4) and Sec. 3.3 (DML_e).

Conventions
-----------
* ``logits``: ``[B, C]`` raw scores; probabilities are ``softmax(logits / T)``.
* ``targets``: ``[B]`` class indices; ``-1`` marks an unlabelled sample (semi-supervised DML):
  it takes no part in the cross-entropy but still takes part in the mimicry term.
* KL is summed over classes and averaged over the batch (``batchmean``). Averaging over the
  classes as well would shrink the mimicry term by a factor C (100x on CIFAR-100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.losses.sequence import logits_of, token_dml_losses

#: Label value of an unlabelled sample.
UNLABELLED = -1

DML_MODES = ("dml", "dml_e")


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy averaged over the *labelled* samples of the batch.

    Args:
        logits: ``[B, C]``.
        targets: ``[B]`` class indices, ``-1`` for unlabelled samples.

    Returns:
        A scalar. ``0`` (still attached to the graph) when no sample of the batch is labelled,
        where ``F.cross_entropy`` would return NaN.
    """
    labelled = targets != UNLABELLED
    n = labelled.sum()
    total = F.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    return (total * labelled).sum() / n.clamp_min(1)


def kl_from_log_probs(log_p_target: Tensor, log_p_self: Tensor) -> Tensor:
    """``KL(p_target || p_self)`` from two log-probability tensors ``[B, C]``: summed over
    classes, averaged over the batch (a scalar)."""
    p_target = log_p_target.exp()
    return (p_target * (log_p_target - log_p_self)).sum(dim=1).mean()


def mean_log_probs(log_probs: Sequence[Tensor]) -> Tensor:
    """Log of the mean of K distributions given as log-probabilities.

    The cohort's ensemble (the mean of the peers' probabilities) and DML_e's teacher (the mean
    of the other peers' probabilities), computed in log space so that no probability underflows.

    Args:
        log_probs: K tensors ``[N, C]``.

    Returns:
        ``[N, C]``: ``log(mean_k exp(log_probs[k]))``.
    """
    return torch.logsumexp(torch.stack(list(log_probs)), dim=0) - math.log(len(log_probs))


def ensemble_log_probs(logits: Sequence[Tensor]) -> Tensor:
    """Log-probabilities ``[N, C]`` of the cohort ensemble from K peers' logits ``[N, C]``
    (float32 softmax of each, then :func:`mean_log_probs`)."""
    return mean_log_probs([F.log_softmax(z.float(), dim=1) for z in logits])


def entropy_of_probs(probs: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row of a probability matrix.

    Args:
        probs: ``[N, C]``, rows summing to 1; zeros allowed (``0 log 0 = 0``).

    Returns:
        ``[N]``: between 0 (one-hot) and ``log C`` (uniform).
    """
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def mimicry_kl(logits: Tensor, target_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The mimicry loss of DML: ``KL(p_target || p_self)`` (paper Eq. 2).

    ``p_self = softmax(logits / T)`` is the distribution being trained; ``p_target`` is the
    peer's distribution and is a constant here (detached): no gradient reaches the peer that
    produced it. With ``T != 1`` the value is multiplied by ``T**2`` so that its gradient keeps
    the magnitude of the ``T = 1`` loss (Hinton et al., 2015).

    Args:
        logits: ``[B, C]`` logits of the peer being trained.
        target_logits: ``[B, C]`` logits of the peer being mimicked.
        temperature: softmax temperature ``T > 0``.

    Returns:
        A scalar: summed over classes, averaged over the batch.
    """
    log_p_self = F.log_softmax(logits / temperature, dim=1)
    log_p_target = F.log_softmax(target_logits.detach() / temperature, dim=1)
    return kl_from_log_probs(log_p_target, log_p_self) * temperature**2


def mimicry_term(
    logits: Tensor, others: Sequence[Tensor], *, mode: str = "dml", temperature: float = 1.0
) -> Tensor:
    """The (unweighted) mimicry term of one peer against the other peers of its cohort.

    ``mode="dml"``: 1/(K-1) * sum_{l != k} KL(p_l || p_k) (paper Eq. 10).
    ``mode="dml_e"``: KL(p_avg || p_k), p_avg the mean of the other peers' *probabilities*
    (paper Eq. 11: the ensemble of the others teaches).

    Args:
        logits: ``[B, C]`` logits of the peer being trained (peer k).
        others: K-1 tensors ``[B, C]``, the other peers' logits; detached here.
        mode: ``"dml"`` or ``"dml_e"``.
        temperature: softmax temperature; the value is scaled by ``T**2``.

    Returns:
        A scalar; 0 when ``others`` is empty (K = 1).
    """
    if mode not in DML_MODES:
        raise ValueError(f"mode must be one of {DML_MODES}, got {mode!r}")
    if not others:
        return logits.new_zeros(())
    t = temperature
    if mode == "dml":
        return sum(mimicry_kl(logits, z, t) for z in others) / len(others)
    log_p_avg = mean_log_probs([F.log_softmax(z.detach() / t, dim=1) for z in others])
    return kl_from_log_probs(log_p_avg, F.log_softmax(logits / t, dim=1)) * t**2


class PeerLoss(NamedTuple):
    """One peer's DML loss and its two parts (scalars)."""

    loss: Tensor  # ce + mimicry_weight * mimicry: what the peer minimises
    ce: Tensor
    mimicry: Tensor  # unweighted


def dml_loss(
    logits: Tensor,
    others: Sequence[Tensor],
    targets: Tensor,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
    mimicry_weight: float = 1.0,
) -> PeerLoss:
    """The loss one peer minimises in Deep Mutual Learning (paper Eq. 10 / 11):
    ``CE(y, p_k) + mimicry_weight * mimicry_k``.

    This is THE mutual-learning loss: the Trainer's ``dml`` / ``dml_e`` methods,
    :func:`dmlkit.step` and Lightning's ``DMLModule`` all call it, once per peer (the update
    order that decides which ``others`` a peer sees is :mod:`dmlkit.methods.update`).

    Args:
        logits: ``[B, C]`` logits of the peer being trained (peer k).
        others: K-1 tensors ``[B, C]``, the other peers' logits (constants: detached).
        targets: ``[B]`` class indices (``-1`` = unlabelled: no CE, still mimicry).
        mode: ``"dml"`` or ``"dml_e"`` (see :func:`mimicry_term`).
        temperature: mimicry softmax temperature (paper: 1; the CE always uses T = 1).
        mimicry_weight: weight of the mimicry term (paper: 1).

    Returns:
        ``PeerLoss(loss, ce, mimicry)``; with no ``others`` (K = 1) the mimicry term is 0.
    """
    ce = cross_entropy(logits, targets)
    mimicry = mimicry_term(logits, others, mode=mode, temperature=temperature)
    return PeerLoss(ce + mimicry_weight * mimicry, ce, mimicry)


class DMLTerms(NamedTuple):
    """The two parts of each peer's DML loss, one scalar per peer."""

    ce: list[Tensor]
    mimicry: list[Tensor]


def dml_terms(
    logits: Sequence[Tensor],
    targets: Tensor,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
) -> DMLTerms:
    """Cross-entropy and (unweighted) mimicry term of every peer of a cohort.

    Args:
        logits: K tensors ``[B, C]``, one per peer. Each is a constant in the other peers' terms.
        targets: ``[B]``; ``-1`` marks unlabelled samples (CE ignores them, mimicry does not).
        mode: ``"dml"`` or ``"dml_e"`` (see :func:`mimicry_term`).
        temperature: softmax temperature of the mimicry term (the CE always uses T = 1).

    Returns:
        ``DMLTerms(ce=[K scalars], mimicry=[K scalars])``; with K = 1 the mimicry term is 0.
    """
    if len(logits) == 0:
        raise ValueError("dml_terms needs at least one peer's logits")
    peers = _every_peer(logits, targets, mode=mode, temperature=temperature)
    return DMLTerms([p.ce for p in peers], [p.mimicry for p in peers])


def _every_peer(logits: Sequence[Tensor], targets: Tensor, **kwargs: Any) -> list[PeerLoss]:
    """:func:`dml_loss` of every peer against all the others (the simultaneous update)."""
    others = [[o for j, o in enumerate(logits) if j != k] for k in range(len(logits))]
    return [dml_loss(z, rest, targets, **kwargs) for z, rest in zip(logits, others)]


def dml_losses(
    logits: Sequence[Tensor],
    targets: Tensor,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
    mimicry_weight: float = 1.0,
) -> list[Tensor]:
    """Total DML loss of every peer: ``CE_k + mimicry_weight * mimicry_k`` (:func:`dml_loss`).

    See :func:`dml_terms` for the two modes. Because each peer's targets are detached,
    ``sum(dml_losses(...)).backward()`` gives every peer exactly the gradient of its own loss.

    Args:
        logits: K tensors ``[B, C]``.
        targets: ``[B]`` class indices (``-1`` = unlabelled).
        mode: ``"dml"`` (paper Eq. 10) or ``"dml_e"`` (paper Eq. 11).
        temperature: mimicry softmax temperature (paper: 1).
        mimicry_weight: weight of the mimicry term (paper: 1).

    Returns:
        K scalars. K = 1 gives plain cross-entropy.
    """
    if len(logits) == 0:
        raise ValueError("dml_losses needs at least one peer's logits")
    kwargs = dict(mode=mode, temperature=temperature, mimicry_weight=mimicry_weight)
    return [p.loss for p in _every_peer(logits, targets, **kwargs)]


RAMPUP_SHAPES = ("linear", "sigmoid")


def rampup(epoch: float, length: float, shape: str = "linear") -> float:
    """The factor in ``[0, 1]`` that ramps the mimicry weight up over ``length`` epochs.

    ``t = clamp(epoch / length, 0, 1)``; ``linear``: ``t`` (DML's ``method.mimicry_rampup``);
    ``sigmoid``: ``exp(-5 (1 - t)**2)``, the consistency ramp-up of the mean-teacher code
    (Tarvainen & Valpola 2017) that OKDDip's and PCL's code use for the distillation weight
    (it starts at ``exp(-5) ~ 0.0067``, not 0). ``length <= 0``: 1 from the first step.
    """
    if shape not in RAMPUP_SHAPES:
        raise ValueError(f"shape must be one of {RAMPUP_SHAPES}, got {shape!r}")
    if length <= 0:
        return 1.0
    t = min(max(epoch / length, 0.0), 1.0)
    return t if shape == "linear" else math.exp(-5.0 * (1.0 - t) ** 2)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Hinton et al. (2015) knowledge distillation, one way from a frozen teacher.

    ``alpha * T**2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(y, p_student)``.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``; detached here.
        targets: ``[B]`` (``-1`` = unlabelled, ignored by the CE).
        temperature: softmax temperature of the soft targets.
        alpha: weight of the soft-target term, in ``[0, 1]``.
    """
    soft = mimicry_kl(student_logits, teacher_logits, temperature)
    return alpha * soft + (1.0 - alpha) * cross_entropy(student_logits, targets)


class DMLLoss(torch.nn.Module):
    """Deep Mutual Learning as a criterion for your own training loop.

    ``DMLLoss()(logits_list, targets)`` is ``sum_k dml_losses(...)[k]``: since each peer's
    mimicry targets are detached, one ``backward()`` of this sum gives every peer exactly the
    gradient of its own loss (the simultaneous update). Use :func:`dmlkit.step` for the paper's
    sequential update (Algorithm 1).

    Args:
        mode: ``"dml"`` (paper Eq. 10) or ``"dml_e"`` (paper Eq. 11).
        temperature: mimicry softmax temperature (paper: 1); the mimicry term is scaled by T^2.
        mimicry_weight: weight of the mimicry term (paper: 1).
        reduction: ``"sum"`` (a scalar, the sum over peers) or ``"none"`` (``[K]``, one loss
            per peer).

    Shapes:
        logits: K tensors ``[B, C]``; targets: ``[B]`` class indices (``-1`` = unlabelled).
        Or K sequence logits ``[B, T, V]`` (or model outputs with ``.logits``) and targets
        ``[B, T]`` aligned with them (``-100`` = ignored; a causal LM's labels shifted by
        :func:`dmlkit.losses.sequence.shift_labels`): every term per valid token.
    """

    def __init__(
        self,
        mode: str = "dml",
        temperature: float = 1.0,
        mimicry_weight: float = 1.0,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        if mode not in DML_MODES:
            raise ValueError(f"DMLLoss: mode must be one of {DML_MODES}, got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"DMLLoss: temperature must be > 0, got {temperature}")
        if reduction not in ("sum", "none"):
            raise ValueError(f"DMLLoss: reduction must be 'sum' or 'none', got {reduction!r}")
        self.mode = mode
        self.temperature = temperature
        self.mimicry_weight = mimicry_weight
        self.reduction = reduction

    def forward(self, logits: Sequence[Tensor], targets: Tensor) -> Tensor:
        if isinstance(logits, Tensor):
            raise TypeError("DMLLoss: pass a list of K logits tensors [B, C], one per peer")
        logits = [logits_of(z) for z in logits]  # a ModelOutput / dict gives its .logits
        # [B, T, V] with aligned labels [B, T] (-100 = ignored): per valid token
        loss_fn = token_dml_losses if logits and logits[0].dim() >= 3 else dml_losses
        losses = torch.stack(
            loss_fn(
                logits,
                targets,
                mode=self.mode,
                temperature=self.temperature,
                mimicry_weight=self.mimicry_weight,
            )
        )
        return losses.sum() if self.reduction == "sum" else losses

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, temperature={self.temperature}, "
            f"mimicry_weight={self.mimicry_weight}, reduction={self.reduction!r}"
        )
