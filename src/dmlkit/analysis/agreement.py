"""Peer agreement: do the peers of a cohort predict the same class, with the same posterior?

Mimicry pulls the peers' posteriors together; these two numbers say how far it got. Both are
computed from predictions already made (no model here), so they are cheap and exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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
    preds = log_p.argmax(dim=2)  # [K, N]
    out: dict[str, float | None] = {
        "all_agree": float((preds == preds[0]).all(dim=0).float().mean()),
        "pairwise_agree": None,
        "pairwise_kl": None,
    }
    k = len(logits)
    if k == 1:
        return out
    pairs = list(itertools.combinations(range(k), 2))
    out["pairwise_agree"] = sum(float((preds[i] == preds[j]).float().mean()) for i, j in pairs) / (
        len(pairs)
    )
    kls = [
        float((log_p[i].exp() * (log_p[i] - log_p[j])).sum(dim=1).mean())
        for i, j in itertools.permutations(range(k), 2)
    ]
    out["pairwise_kl"] = sum(kls) / len(kls)
    return out
