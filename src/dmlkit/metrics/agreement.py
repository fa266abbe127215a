"""Peer agreement: do the peers of a cohort predict the same class, with the same posterior?

Mimicry pulls the peers' posteriors together; these numbers say how far it got. They are
computed from predictions already made (no model here), so they are cheap and exact. The
trainer's evaluation sums :func:`agreement_sums` over batches; analysis calls :func:`agreement`
on a whole split.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def agreement_sums(log_probs: Tensor) -> Tensor:
    """Per-batch sums behind :func:`agreement` (add them over batches, divide by N).

    Args:
        log_probs: ``[K, B, C]`` the K peers' log-probabilities on the same B samples.

    Returns:
        ``[3]`` float64: the number of samples on which all K peers predict the same class;
        the number of agreeing (sample, pair) cases averaged over the K(K-1)/2 pairs; and
        ``KL(p_i || p_j)`` summed over classes and samples, averaged over the K(K-1) ordered
        pairs (both pair terms 0 when K = 1).
    """
    k = log_probs.shape[0]
    preds = log_probs.argmax(dim=2)  # [K, B]
    all_agree = (preds == preds[0]).all(dim=0).sum().double()
    if k == 1:
        zero = torch.zeros((), dtype=torch.float64, device=log_probs.device)
        return torch.stack([all_agree, zero, zero])
    pairs = list(itertools.combinations(range(k), 2))
    pair_agree = sum((preds[i] == preds[j]).sum().double() for i, j in pairs) / len(pairs)
    ordered = list(itertools.permutations(range(k), 2))
    kl = sum(
        (log_probs[i].exp() * (log_probs[i] - log_probs[j])).sum().double() for i, j in ordered
    ) / len(ordered)
    return torch.stack([all_agree, pair_agree, kl])


def agreement(logits: Sequence[Tensor]) -> dict[str, float | None]:
    """Agreement and mean pairwise KL divergence between the peers' predictions.

    Args:
        logits: K tensors ``[N, C]``, the peers' logits on the same N samples.

    Returns:
        ``all_agree``: fraction of samples on which all K peers predict the same class;
        ``pairwise_agree``: the same fraction averaged over the K(K-1)/2 pairs;
        ``pairwise_kl``: ``KL(p_i || p_j)`` summed over classes, averaged over samples and over
        the K(K-1) ordered pairs (nats). The pairwise values are ``None`` when K = 1.
    """
    if not logits:
        raise ValueError("agreement needs the logits of at least one peer")
    log_p = torch.stack([F.log_softmax(z.float(), dim=1) for z in logits])  # [K, N, C]
    return agreement_of_sums(agreement_sums(log_p), log_p.shape[1], len(logits))


def agreement_of_sums(sums: Tensor, n: int, k: int) -> dict[str, float | None]:
    """:func:`agreement`'s values from :func:`agreement_sums` added over batches.

    Args:
        sums: ``[3]`` the sums over ``n`` samples (or valid tokens).
        n: the number of samples summed (> 0).
        k: the number of peers.
    """
    sums = (sums / n).tolist()
    pairwise = k > 1
    return {
        "all_agree": sums[0],
        "pairwise_agree": sums[1] if pairwise else None,
        "pairwise_kl": sums[2] if pairwise else None,
    }
