"""Evaluation of every peer and of the cohort ensemble (mean of the peers' probabilities)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.cohort import Cohort
from dmlkit.metrics.classification import topk_correct

ENSEMBLE = "ensemble"


@torch.no_grad()
def evaluate(
    cohort: Cohort, batches: Iterable[tuple[Tensor, Tensor]]
) -> dict[str, dict[str, float]]:
    """Top-1, top-5 and cross-entropy of every peer and of the ensemble, in eval mode.

    Args:
        cohort: the peers (switched to eval mode here, restored afterwards).
        batches: ``(x [B, ...], y [B])`` pairs.

    Returns:
        ``{peer name or "ensemble": {"top1": f, "top5": f, "ce": f}}``, accuracies as
        fractions in [0, 1].
    """
    was_training = cohort.training
    cohort.eval()
    names = [*cohort.names, ENSEMBLE]
    acc: dict[str, list[Tensor]] = {n: [] for n in names}
    total = 0
    for x, y in batches:
        log_probs = [F.log_softmax(z.float(), dim=1) for z in cohort(x)]
        ens = torch.logsumexp(torch.stack(log_probs), dim=0) - torch.log(
            torch.tensor(float(len(log_probs)), device=y.device)
        )
        for name, lp in zip(names, [*log_probs, ens]):
            hits = topk_correct(lp, y, (1, 5))
            nll = F.nll_loss(lp, y, reduction="sum")
            acc[name].append(torch.stack([hits[1].double(), hits[5].double(), nll.double()]))
        total += len(y)
    cohort.train(was_training)
    if total == 0:
        raise ValueError("evaluate() got no batches")
    out = {}
    for name in names:
        top1, top5, ce = (torch.stack(acc[name]).sum(0) / total).tolist()
        out[name] = {"top1": top1, "top5": top5, "ce": ce}
    return out
