"""Person re-identification metrics: feature distances, CMC and mAP (the Market-1501 protocol).

The protocol (Zheng et al., *Scalable Person Re-identification: A Benchmark*, ICCV 2015; the one
re-id toolkits use, and the one Deep Mutual Learning reports, Zhang et al. CVPR 2018 Table 3):

* every query ranks the whole gallery by distance;
* gallery images of the query's identity taken by the query's camera are **removed** from that
  query's list (they are too easy); distractors (identity 0) stay, as negatives;
* a query with no true match left is **skipped**: it counts in neither the CMC nor the mAP;
* CMC(k) = fraction of the remaining queries with a true match within the first k;
* AP = non-interpolated average precision over the remaining ranked list
  (mean over the true matches of precision at the rank of that match); mAP = mean AP.

Ties between distances are broken by gallery order (a stable sort), so results are
deterministic. Everything is vectorised in torch and processed in chunks of queries, so memory
is bounded by ``chunk_size x num_gallery`` whatever the number of queries; it runs on the
device of the distance matrix. No compiled extension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DISTANCES = ("euclidean", "sqeuclidean", "cosine")
RANKS = (1, 5, 10, 20)  # the CMC ranks reported (Rank-1/5/10/20)

ArrayLike = Tensor | np.ndarray | Sequence[Any]


def _as_tensor(x: ArrayLike, device: torch.device | None = None) -> Tensor:
    """A tensor view of ``x`` (tensor, numpy array or nested sequence of numbers)."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device) if device is not None else t


def pairwise_distance(
    query: Tensor,
    gallery: Tensor,
    metric: str = "euclidean",
    *,
    normalize: bool = False,
) -> Tensor:
    """Distances between every query and every gallery feature.

    Args:
        query: ``[Nq, D]`` features.
        gallery: ``[Ng, D]`` features.
        metric: ``euclidean`` (``||q - g||``), ``sqeuclidean`` (``||q - g||^2``; same ranking)
            or ``cosine`` (``1 - cos(q, g)``, in [0, 2]).
        normalize: L2-normalise the features first (the DML authors' code: L2-normalised
            features, Euclidean distance).

    Returns:
        ``[Nq, Ng]`` float32 distances, on the features' device.
    """
    if metric not in DISTANCES:
        raise ValueError(f"unknown distance {metric!r}; valid: {', '.join(DISTANCES)}")
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"features must be [Nq, D] and [Ng, D], got {tuple(query.shape)} and "
            f"{tuple(gallery.shape)}"
        )
    q, g = query.float(), gallery.float()
    if normalize or metric == "cosine":
        q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    if metric == "cosine":
        return (1.0 - q @ g.T).clamp_(0.0, 2.0)
    # ||g||^2 - 2 q.g in one fused call, then + ||q||^2 in place: one [Nq, Ng] buffer in all.
    # Rounding can make it slightly negative.
    dist = torch.addmm((g * g).sum(1)[None, :], q, g.T, beta=1.0, alpha=-2.0)
    dist.add_((q * q).sum(1, keepdim=True)).clamp_(min=0.0)
    return dist if metric == "sqeuclidean" else dist.sqrt_()


_KEY_PAD = torch.iinfo(torch.int64).max


def _order_keys(dist: Tensor, g_index: Tensor) -> Tensor:
    """Unique int64 sort keys ``[c, Ng]``: (distance, gallery index) in lexicographic order.

    The float32 distance's bits become an order-preserving int32 (negative floats flipped), in
    the high half; the gallery index, in the low half, breaks ties as a stable sort would.
    """
    d = dist.float() + 0.0  # -0.0 -> +0.0, so that the two zeros tie (and a fresh copy)
    bits = d.view(torch.int32)
    negative = bits < 0
    if bool(negative.any()):  # distances are usually >= 0: skip the flip then
        bits = torch.where(negative, bits ^ 0x7FFFFFFF, bits)
    key = bits.to(torch.int64)
    return key.bitwise_left_shift_(32).bitwise_or_(g_index)


@dataclass
class RankResult:
    """Per-query outcome of :func:`rank_queries`.

    Attributes:
        cmc: ``[max_rank]`` CMC curve (fractions), over the valid queries.
        mAP: mean average precision over the valid queries.
        ap: ``[Nq]`` average precision per query (NaN for skipped queries).
        first_match: ``[Nq]`` 1-based rank of the first true match (0 for skipped queries).
        valid: ``[Nq]`` whether the query had a true match left after the camera filter.
    """

    cmc: np.ndarray
    mAP: float
    ap: np.ndarray
    first_match: np.ndarray
    valid: np.ndarray

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())


def rank_queries(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    *,
    chunk_size: int = 128,
) -> RankResult:
    """Rank the gallery for every query and score the ranking (Market-1501 protocol).

    Args:
        distmat: ``[Nq, Ng]`` distances (smaller = more similar).
        q_pids, g_pids: ``[Nq]``, ``[Ng]`` person identities.
        q_camids, g_camids: ``[Nq]``, ``[Ng]`` camera ids.
        max_rank: length of the CMC curve.
        chunk_size: queries processed at once (memory ~ ``32 * chunk_size * Ng`` bytes).

    Returns:
        A :class:`RankResult`.

    Raises:
        ValueError: on shape mismatches, or when no query has a valid match.
    """
    # Long by its docstring, its input checks and one chunked ranking loop that reads a dozen
    # per-query tensors set up just before it: split, they would travel as arguments.
    dist = _as_tensor(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be [Nq, Ng], got shape {tuple(dist.shape)}")
    nq, ng = dist.shape
    dev = dist.device
    qp, gp, qc, gc = (
        _as_tensor(x, dev).long().contiguous() for x in (q_pids, g_pids, q_camids, g_camids)
    )
    for name, t in (("q_pids", qp), ("q_camids", qc)):
        if t.shape != (nq,):
            raise ValueError(
                f"{name} must have shape [{nq}] (rows of distmat), got {tuple(t.shape)}"
            )
    for name, t in (("g_pids", gp), ("g_camids", gc)):
        if t.shape != (ng,):
            raise ValueError(
                f"{name} must have shape [{ng}] (columns of distmat), got {tuple(t.shape)}"
            )
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")

    # The gallery grouped by identity: the same-identity items of a query are a slice of it.
    by_pid = torch.argsort(gp, stable=True)
    pid_values, pid_counts = torch.unique_consecutive(gp[by_pid], return_counts=True)
    pid_offsets = pid_counts.cumsum(0) - pid_counts
    slot = torch.searchsorted(pid_values, qp).clamp_max(max(len(pid_values) - 1, 0))
    present = (pid_values[slot] == qp) if len(pid_values) else torch.zeros_like(qp, dtype=bool)
    q_count = torch.where(present, pid_counts[slot], 0)  # [Nq] same-identity gallery items
    q_offset = pid_offsets[slot]

    ks = torch.arange(1, max_rank + 1, device=dev)
    g_index = torch.arange(ng, device=dev, dtype=torch.int64)
    cmc_hits = torch.zeros(max_rank, dtype=torch.float64, device=dev)
    ap = torch.full((nq,), float("nan"), dtype=torch.float64, device=dev)
    first_match = torch.zeros(nq, dtype=torch.long, device=dev)
    valid = torch.zeros(nq, dtype=torch.bool, device=dev)
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        c = stop - start
        key = _order_keys(dist[start:stop], g_index)  # [c, Ng], unique per row
        # The same-identity gallery items of each query: [c, M], padded with -1.
        m = max(int(q_count[start:stop].max()), 1)
        j = torch.arange(m, device=dev)
        real = j[None, :] < q_count[start:stop, None]
        items = torch.where(real, by_pid[(q_offset[start:stop, None] + j).clamp_max(ng - 1)], -1)
        item_key = torch.where(real, key.gather(1, items.clamp_min(0)), _KEY_PAD)
        item_key, perm = item_key.sort(dim=1)  # in ranked order
        items, real = items.gather(1, perm), real.gather(1, perm)
        junk = real & (gc[items.clamp_min(0)] == qc[start:stop, None])  # same id, same camera
        good = real & ~junk
        # 0-based rank of each item in the full list = how many keys are smaller: bucket every
        # gallery key among the sorted item keys, count per bucket, accumulate.
        bucket = torch.searchsorted(item_key, key, right=True)  # [c, Ng] in 0..M
        del key
        flat = bucket + (m + 1) * torch.arange(c, device=dev)[:, None]
        counts = torch.bincount(flat.reshape(-1), minlength=c * (m + 1)).view(c, m + 1)
        del bucket, flat
        before = counts.cumsum(1)[:, :m]  # [c, M] gallery items ranked before each item
        # 1-based rank after the protocol's removal of the junk items ranked before it.
        rank = before + 1 - (junk.cumsum(1) - junk.long())
        hits = good.cumsum(1)
        n_good = good.sum(1)
        ok = n_good > 0
        precision = torch.where(good, hits.double() / rank.double(), 0.0)
        first = torch.where(good, rank, ng + 1).min(1).values
        cmc_hits += (first[ok, None] <= ks[None, :]).sum(0, dtype=torch.float64)
        ap[start:stop] = torch.where(ok, precision.sum(1) / n_good.clamp_min(1), ap[start:stop])
        first_match[start:stop] = torch.where(ok, first, 0)
        valid[start:stop] = ok
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(
            "no query has a true match in the gallery from another camera: every query would be "
            "skipped (check that query and gallery share identities)"
        )
    return RankResult(
        cmc=(cmc_hits / n_valid).cpu().numpy(),
        mAP=float(ap[valid].mean()),
        ap=ap.cpu().numpy(),
        first_match=first_match.cpu().numpy(),
        valid=valid.cpu().numpy(),
    )


def average_by_identity_camera(
    features: Tensor, pids: ArrayLike, camids: ArrayLike
) -> tuple[Tensor, Tensor, Tensor]:
    """Multiple-query features: the mean feature of each (identity, camera) group.

    The Market-1501 *multiple query* setting (Zheng et al. 2015) describes a query by all the
    images of that person under that camera, pooled by averaging.

    Args:
        features: ``[N, D]``.
        pids, camids: ``[N]``.

    Returns:
        ``(features [G, D], pids [G], camids [G])``, one row per group, groups in sorted
        (identity, camera) order.
    """
    pid_t = _as_tensor(pids, features.device).long()
    cam_t = _as_tensor(camids, features.device).long()
    keys = torch.stack([pid_t, cam_t], dim=1)
    uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
    sums = torch.zeros(len(uniq), features.shape[1], dtype=torch.float32, device=features.device)
    sums.index_add_(0, inverse, features.float())
    counts = torch.bincount(inverse, minlength=len(uniq)).clamp_min(1)
    return sums / counts[:, None], uniq[:, 0].contiguous(), uniq[:, 1].contiguous()


def retrieval_metrics(
    query: Tensor,
    gallery: Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    *,
    metric: str = "euclidean",
    normalize: bool = True,
    ranks: tuple[int, ...] = RANKS,
    prefix: str = "",
) -> dict[str, float]:
    """mAP and Rank-k of query features against gallery features.

    The feature-level entry point (the cohort's evaluation uses it); :func:`rank_queries` is
    the one below it, from a distance matrix.

    Args:
        query: ``[Nq, D]``; gallery: ``[Ng, D]``.
        q_pids, g_pids, q_camids, g_camids: identities and cameras.
        metric, normalize: see :func:`pairwise_distance`.
        ranks: the CMC ranks to report.
        prefix: put before every key (e.g. ``"mq_"`` for multiple-query results).

    Returns:
        ``{"mAP": f, "rank1": f, "rank5": f, ...}`` as fractions in [0, 1].

    Raises:
        ValueError: no query has a true match in the gallery (see :func:`rank_queries`).
    """
    dist = pairwise_distance(query, gallery, metric, normalize=normalize)
    res = rank_queries(dist, q_pids, g_pids, q_camids, g_camids, max(ranks))
    out = {f"{prefix}mAP": res.mAP}
    out.update({f"{prefix}rank{k}": float(res.cmc[k - 1]) for k in ranks})
    return out


__all__ = [
    "DISTANCES",
    "RANKS",
    "RankResult",
    "average_by_identity_camera",
    "pairwise_distance",
    "rank_queries",
    "retrieval_metrics",
]
