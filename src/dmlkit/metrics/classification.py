"""Top-k accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def topk_correct(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, Tensor]:
    """Number of samples whose label is among the k highest scores, for each k.

    Args:
        scores: ``[B, C]`` logits or probabilities.
        targets: ``[B]`` class indices.
        ks: the k values; a k larger than C counts every sample as correct.

    Returns:
        ``{k: 0-dim int64 tensor}`` (on the scores' device; no host sync here).
    """
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # [B, kmax]
    hit = top == targets[:, None]
    return {k: hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks}


def accuracy(scores: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    return float(topk_correct(scores, targets, (1,))[1]) / max(len(targets), 1)


__all__ = ["accuracy", "topk_correct"]
