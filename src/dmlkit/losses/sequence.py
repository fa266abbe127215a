"""The losses of Deep Mutual Learning for sequence models, per valid token, as pure functions.

The token-level counterpart of :mod:`dmlkit.losses` (Zhang et al., "Deep Mutual Learning",
CVPR 2018, Eq. (1)-(4) and Sec. 3.3): every term is taken over the *valid* positions only and
averaged per valid position, the per-token analogue of ``batchmean``. Padding and prompt
positions contribute nothing to the value and receive an exactly zero gradient.

Conventions
-----------
* ``logits``: ``[..., V]`` raw scores, usually ``[B, T, V]``; any leading shape works (``[N, V]``
  is N positions).
* ``labels``: ``[...]`` (``[B, T]``) class indices *aligned with the logits*: ``labels[b, t]`` is
  the target of ``logits[b, t]``. ``-100`` (Hugging Face's ignore index) marks a position that
  takes no part in any term. A causal LM's labels in Hugging Face's convention (a copy of
  ``input_ids``, shifted inside the model) are aligned by :func:`shift_labels`.
* ``mask``: optional ``[...]`` bool / 0-1 tensor (an attention mask): a position is valid when
  its label is not ``-100`` *and* its mask is set.

Memory: a vocabulary of 32k over 16 x 256 positions is 0.5 GiB per ``[B, T, V]`` fp32 tensor, so
the cohort's loss keeps *one* such tensor per peer alive until the backward pass: its
log-probabilities at the mimicry temperature. Cross-entropy at ``T = 1`` reads the same tensor
(or, at another temperature, the logits through ``logsumexp``), and the mimicry term's backward
recomputes the targets' probabilities from the targets' own log-probabilities instead of
keeping a copy (:class:`_MimicryRows`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: Label of a position that takes part in no loss term (Hugging Face's convention).
IGNORE_INDEX = -100

DML_MODES = ("dml", "dml_e")


def logits_of(output: Any) -> Tensor:
    """The logits of a model's output: a tensor, a tuple/list whose first item is the logits,
    a ``ModelOutput`` / dict with a ``logits`` entry, or an object with a ``.logits`` tensor."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"a peer returned {type(output).__name__}; return logits [B, C] or [B, T, V], a tuple "
        f"whose first item is the logits, or a ModelOutput / dict with 'logits'"
    )


def shift_labels(labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Align a causal LM's labels with its logits: position t predicts token t + 1.

    Args:
        labels: ``[B, T]`` in Hugging Face's convention (``labels = input_ids``, ``-100`` on
            ignored tokens; the model does not shift them for us because we compute the loss).
        attention_mask: ``[B, T]`` optional; a position is kept only when both it and the next
            one are attended (right or left padding alike). With left padding this leaves out
            the last pad's "prediction" of the first token, which Hugging Face's own loss
            counts (a query over masked keys only); with right padding the two agree.

    Returns:
        ``[B, T]``: ``labels[:, 1:]`` followed by one ``-100`` column (the last position has no
        next token).
    """
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    if attention_mask is not None:
        keep = attention_mask.bool()
        both = torch.zeros_like(keep)
        both[:, :-1] = keep[:, :-1] & keep[:, 1:]
        out = out.masked_fill(~both, IGNORE_INDEX)
    return out


def valid_positions(labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[...]`` bool: the positions that take part in the losses (label != -100, mask set)."""
    valid = labels != IGNORE_INDEX
    return valid if mask is None else valid & mask.bool()


def _mean_over(rows: Tensor, valid: Tensor) -> Tensor:
    """Sum of ``rows`` over the valid positions / their number (0, in the graph, when none).

    ``where`` rather than a product: an invalid position's value (even inf or NaN) is dropped
    and its gradient is exactly zero.
    """
    return torch.where(valid, rows, rows.new_zeros(())).sum() / valid.sum().clamp_min(1)


def token_log_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / T)`` over the last dimension, in float32: ``[..., V]``."""
    z = logits if temperature == 1.0 else logits / temperature
    return F.log_softmax(z, dim=-1, dtype=torch.float32)


def _ce_rows_from_log_probs(log_probs: Tensor, labels: Tensor) -> Tensor:
    """``[...]``: ``-log p(label)`` at every position (ignored labels read class 0)."""
    return -log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def _ce_rows_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``[...]``: ``logsumexp(z) - z[label]``, without a ``[..., V]`` log-probability tensor."""
    z = logits.float()
    return torch.logsumexp(z, dim=-1) - z.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def token_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy averaged over the valid positions.

    Args:
        logits: ``[..., V]`` (``[B, T, V]``).
        labels: ``[...]`` aligned targets, ``-100`` = ignored.
        mask: optional ``[...]`` attention mask.

    Returns:
        A scalar; 0 (still in the graph) when no position is valid.
    """
    return _mean_over(_ce_rows_from_logits(logits, labels), valid_positions(labels, mask))


class _MimicryRows(torch.autograd.Function):
    """Per-position mimicry value against one or more detached targets, keeping no copy of
    the targets' probabilities for the backward pass.

    ``mean_of_kls=True`` (DML): ``1/L sum_l KL(p_l || p_self)``; ``False`` (DML_e):
    ``KL(mean_l p_l || p_self)``. Both have the same gradient with respect to
    ``log p_self``: ``-mean_l p_l``, recomputed in ``backward`` from the targets'
    log-probabilities, which are alive anyway (each is its own peer's log-softmax output).
    """

    @staticmethod
    def forward(ctx: Any, log_p_self: Tensor, mean_of_kls: bool, *targets: Tensor) -> Tensor:
        ctx.save_for_backward(*targets)
        rows = log_p_self.new_zeros(log_p_self.shape[:-1])
        if mean_of_kls:
            for lpt in targets:
                diff = lpt - log_p_self
                rows += diff.mul_(lpt.exp()).sum(-1)
            return rows / len(targets)
        if len(targets) == 1:
            lp_avg = targets[0]
        else:
            lp_avg = torch.logsumexp(torch.stack(targets), dim=0) - math.log(len(targets))
        diff = lp_avg - log_p_self
        return diff.mul_(lp_avg.exp()).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        targets = ctx.saved_tensors
        p_avg = targets[0].exp()
        for lpt in targets[1:]:
            p_avg += lpt.exp()
        p_avg.mul_(-grad.unsqueeze(-1) / len(targets))
        return (p_avg, None, *[None] * len(targets))


def _mimicry_from_log_probs(
    log_p_self: Tensor, targets: Sequence[Tensor], valid: Tensor, mode: str, temperature: float
) -> Tensor:
    if mode not in DML_MODES:
        raise ValueError(f"mode must be one of {DML_MODES}, got {mode!r}")
    if not targets:
        return log_p_self.new_zeros(())
    detached = [t.detach() for t in targets]
    rows = _MimicryRows.apply(log_p_self, mode == "dml", *detached)
    return _mean_over(rows, valid) * temperature**2


def token_mimicry_kl(
    logits: Tensor,
    target_logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """``KL(p_target || p_self)`` per valid position, averaged over them, times ``T**2``.

    Args:
        logits: ``[..., V]`` of the peer being trained.
        target_logits: ``[..., V]`` of the peer mimicked; detached here.
        labels: ``[...]`` aligned targets (only their ``-100`` positions are used: ignored).
        mask: optional ``[...]`` attention mask.
        temperature: softmax temperature ``T > 0`` (the value is scaled by ``T**2``, Hinton et
            al. 2015, so that its gradient keeps the magnitude of ``T = 1``).
    """
    lp = token_log_probs(logits, temperature)
    target = token_log_probs(target_logits.detach(), temperature)
    return _mimicry_from_log_probs(lp, [target], valid_positions(labels, mask), "dml", temperature)


def token_mimicry_term(
    logits: Tensor,
    others: Sequence[Tensor],
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
) -> Tensor:
    """One peer's (unweighted) mimicry term against the others, per valid token.

    ``mode="dml"``: ``1/(K-1) sum_{l != k} KL(p_l || p_k)`` (paper Eq. 10); ``mode="dml_e"``:
    ``KL(p_avg || p_k)``, ``p_avg`` the mean of the others' probabilities (paper Eq. 11).

    Args:
        logits: ``[..., V]`` of peer k.
        others: K-1 tensors ``[..., V]``; detached here.
        labels: ``[...]`` aligned targets (``-100`` = ignored).
        mask: optional ``[...]`` attention mask.
    """
    if mode not in DML_MODES:
        raise ValueError(f"mode must be one of {DML_MODES}, got {mode!r}")
    if not others:
        return logits.new_zeros((), dtype=torch.float32)
    lp = token_log_probs(logits, temperature)
    targets = [token_log_probs(z.detach(), temperature) for z in others]
    return _mimicry_from_log_probs(lp, targets, valid_positions(labels, mask), mode, temperature)


class TokenTerms(NamedTuple):
    """The two parts of each peer's loss, one scalar per peer."""

    ce: list[Tensor]
    mimicry: list[Tensor]


def token_dml_terms(
    logits: Sequence[Tensor],
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
) -> TokenTerms:
    """Cross-entropy and (unweighted) mimicry term of every peer, per valid token.

    Each peer's log-probabilities are computed once and serve as its own prediction and, detached,
    as the other peers' target: one ``[..., V]`` tensor per peer outlives this call.

    Args:
        logits: K tensors ``[..., V]``.
        labels: ``[...]`` aligned targets, ``-100`` = ignored (in every term).
        mask: optional ``[...]`` attention mask.
        mode: ``"dml"`` or ``"dml_e"``.
        temperature: of the mimicry term (the cross-entropy always uses T = 1).
    """
    if len(logits) == 0:
        raise ValueError("token_dml_terms needs at least one peer's logits")
    if mode not in DML_MODES:
        raise ValueError(f"mode must be one of {DML_MODES}, got {mode!r}")
    valid = valid_positions(labels, mask)
    lps = [token_log_probs(z, temperature) for z in logits]
    if temperature == 1.0:
        ce = [_mean_over(_ce_rows_from_log_probs(lp, labels), valid) for lp in lps]
    else:
        ce = [_mean_over(_ce_rows_from_logits(z, labels), valid) for z in logits]
    mimicry = [
        _mimicry_from_log_probs(lp, lps[:k] + lps[k + 1 :], valid, mode, temperature)
        for k, lp in enumerate(lps)
    ]
    return TokenTerms(ce, mimicry)


def token_dml_losses(
    logits: Sequence[Tensor],
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
    mimicry_weight: float = 1.0,
) -> list[Tensor]:
    """Every peer's ``CE_k + mimicry_weight * mimicry_k`` per valid token (see
    :func:`token_dml_terms`); ``sum(...).backward()`` gives each peer its own gradient."""
    terms = token_dml_terms(logits, labels, mask, mode=mode, temperature=temperature)
    return [ce + mimicry_weight * m for ce, m in zip(terms.ce, terms.mimicry)]


def token_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Hinton et al. (2015) distillation per valid token:
    ``alpha * T**2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE``.

    Args:
        student_logits: ``[..., V]``.
        teacher_logits: ``[..., V]``; detached here.
        labels: ``[...]`` aligned targets (``-100`` = ignored).
        mask: optional ``[...]`` attention mask.
    """
    soft = token_mimicry_kl(student_logits, teacher_logits, labels, mask, temperature)
    return alpha * soft + (1.0 - alpha) * token_cross_entropy(student_logits, labels, mask)
