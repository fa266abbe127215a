"""Posterior entropy: how spread out a peer's predicted distribution is.

The paper (Sec. 4.5, "Why does DML work?") finds that DML peers make *less* confident
predictions (higher posterior entropy) than independently trained ones, and that DML_e's peers
are more confident than DML's -- its stated reason why DML_e generalises worse.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dmlkit.losses.dml import entropy_of_probs

__all__ = ["entropy", "entropy_of_probs"]


def entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` for each sample.

    Computed from log-probabilities, so very confident logits give a small positive number
    instead of ``0 * -inf = NaN``.

    Args:
        logits: ``[N, C]``.

    Returns:
        ``[N]`` in ``[0, log C]``.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)
