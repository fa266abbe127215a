"""Evaluation of every peer and of the cohort ensemble.

Classification: top-k accuracy, the ensemble is the mean of the peers' probabilities.
Re-identification (:func:`evaluate_reid`): retrieval by the pooled features, mAP and CMC; the
ensemble concatenates the peers' features. :func:`evaluate_split` picks one by the split's type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.cohort import Cohort
from dmlkit.data.reid import RetrievalSplit
from dmlkit.errors import UserError
from dmlkit.losses.batches import causal_models, flatten_valid, is_sequence, split_batch
from dmlkit.losses.dml import entropy_of_probs, mean_log_probs
from dmlkit.metrics.agreement import agreement_sums
from dmlkit.metrics.classification import topk_correct
from dmlkit.metrics.reid import average_by_identity_camera, retrieval_metrics

ENSEMBLE = "ensemble"


@torch.no_grad()
def evaluate(
    cohort: Cohort,
    batches: Iterable[tuple[Tensor, Tensor]],
    heads: Callable[[Tensor], dict[str, Tensor]] | None = None,
) -> dict[str, dict[str, float]]:
    """Top-1, top-5 and cross-entropy of every peer and of the ensemble, in eval mode.

    Args:
        cohort: the peers (switched to eval mode here, restored afterwards).
        batches: ``(x [B, ...], y [B])`` pairs, or dict batches of Hugging Face models (see
            :func:`dmlkit.losses.batches.split_batch`). Sequence logits ``[B, T, V]`` are scored per
            valid token (top-k token accuracy, per-token cross-entropy), with ``perplexity``
            and ``bits_per_token`` besides.
        heads: ``x -> {name: logits [B, C]}``, outputs a method evaluates besides the peers
            (a teacher head, a temporal-mean network); not part of the ensemble.

    Returns:
        ``{peer name, head name or "ensemble": {"top1": f, "top5": f, "ce": f}}``, accuracies
        as fractions in [0, 1]; the ensemble's entry also has the peers' agreement ``all_agree``
        (fraction of samples on which all peers predict the same class) and, for K >= 2,
        ``pairwise_kl`` (mean ``KL(p_i || p_j)`` over ordered pairs, nats).
    """
    was_training = cohort.training
    cohort.eval()
    names = [*cohort.names, ENSEMBLE]
    acc: dict[str, list[Tensor]] = {n: [] for n in names}
    total = 0
    agree: Tensor | float = 0.0
    causal = causal_models(cohort)
    sequence = False
    token_bytes = getattr(batches, "token_bytes", None)  # [V]: bits per byte of an LM's text
    n_bytes = 0
    for batch in batches:
        x, y = split_batch(batch, causal=causal)
        logits = cohort(x)
        sequence = sequence or is_sequence(logits[0])
        logits, y = flatten_valid(logits, y)  # [B, T, V]: one row per valid token
        if sequence and token_bytes is not None:
            n_bytes += int(token_bytes.to(y.device)[y].sum())
        log_probs = [F.log_softmax(z.float(), dim=1) for z in logits]
        agree = agree + agreement_sums(torch.stack(log_probs))
        ens = mean_log_probs(log_probs)
        extra = heads(x) if heads is not None else {}
        for name in extra:
            acc.setdefault(name, [])
        outputs = [*log_probs, ens, *[F.log_softmax(z.float(), dim=1) for z in extra.values()]]
        for name, lp in zip([*names, *extra], outputs):
            hits = topk_correct(lp, y, (1, 5))
            nll = F.nll_loss(lp, y, reduction="sum")
            acc[name].append(torch.stack([hits[1].double(), hits[5].double(), nll.double()]))
        total += len(y)
    cohort.train(was_training)
    if total == 0:
        raise ValueError("evaluate() got no batches")
    out = {}
    for name in acc:
        top1, top5, ce = (torch.stack(acc[name]).sum(0) / total).tolist()
        out[name] = {"top1": top1, "top5": top5, "ce": ce}
        if sequence:  # per valid token: ce in nats, its perplexity and bits
            out[name].update(perplexity=math.exp(min(ce, 700.0)), bits_per_token=ce / math.log(2))
            if n_bytes:  # the split's total bits over its bytes of text
                out[name]["bits_per_byte"] = ce * total / math.log(2) / n_bytes
    all_agree, _, pairwise_kl = (agree / total).tolist()
    out[ENSEMBLE]["all_agree"] = all_agree
    if len(names) > 2:  # two peers or more
        out[ENSEMBLE]["pairwise_kl"] = pairwise_kl
    return out


# ------------------------------------------------------------------------------------------------
# re-identification


def evaluate_split(
    cohort: Any, split: Any, heads: Callable[[Tensor], dict[str, Tensor]] | None = None
) -> dict[str, dict[str, float]]:
    """Evaluate a test/val split: retrieval metrics for a :class:`RetrievalSplit`, else top-k
    (with the method's ``heads``, see :func:`evaluate`)."""
    if isinstance(split, RetrievalSplit):
        return evaluate_reid(cohort, split)
    return evaluate(cohort, split, heads)


def check_reid_support(cohort: Any) -> None:
    """Fail early (before training) when a peer cannot give re-id features.

    Builds each architecture on the meta device (no memory, no weights read) and checks for a
    ``features(x) -> [B, D]`` method.
    """
    for spec in cohort.specs:
        try:
            with torch.device("meta"):
                probe = spec.without_pretrained().build()
        except Exception:  # noqa: BLE001 - a model that cannot be built on meta: check at eval
            continue
        if not callable(getattr(probe, "features", None)):
            raise UserError(
                f"peer {spec.name!r} ({spec.arch}) has no features() method, so it cannot be "
                f"evaluated by retrieval; use a re-id backbone such as mobilenet_v1"
            )


def peer_modules(cohort: Any) -> list[nn.Module]:
    """One module per peer: the loop cohort's own, or rebuilt from the stacked cohort's state."""
    peers = getattr(cohort, "peers", None)
    if peers is not None:
        return list(peers)
    device = next(iter(cohort.parameters())).device
    states = cohort.training_state()["models"]
    return [spec.restore(state, device) for spec, state in zip(cohort.specs, states)]


@torch.no_grad()
def _extract(
    peers: list[nn.Module], loader: Iterable[tuple[Tensor, Tensor]]
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """Features and posterior entropies of every peer over a loader (peers in eval mode).

    Returns:
        ``(features: K x [N, D_k], entropy: K x [N], ensemble entropy [N], labels [N])``; the
        ensemble's posterior is the mean of the peers' probabilities.
    """
    feats: list[list[Tensor]] = [[] for _ in peers]
    ents: list[list[Tensor]] = [[] for _ in peers]
    ens_ent, labels = [], []
    # Logits from the features through peer.classifier (one forward pass) when that is what
    # forward() computes -- checked on the first batch -- else from a second pass.
    use_head: list[bool | None] = [None] * len(peers)
    for x, y in loader:
        probs = []
        for k, peer in enumerate(peers):
            f = peer.features(x)
            if use_head[k] is None:
                use_head[k] = _head_matches(peer, f, x)
            logits = peer.classifier(f) if use_head[k] else peer(x)
            # A convolutional trunk's [B, C, H, W] map: average-pool it into the descriptor.
            f = (f.mean(dim=(2, 3)) if f.ndim == 4 else f.flatten(1)).float()
            p = F.softmax(logits.float(), dim=1)
            feats[k].append(f)
            ents[k].append(entropy_of_probs(p))
            probs.append(p)
        ens_ent.append(entropy_of_probs(torch.stack(probs).mean(0)))
        labels.append(y)
    if not labels:
        raise ValueError("evaluate_reid() got an empty loader")
    return (
        [torch.cat(f) for f in feats],
        [torch.cat(e) for e in ents],
        torch.cat(ens_ent),
        torch.cat(labels),
    )


def _head_matches(peer: nn.Module, features: Tensor, x: Tensor) -> bool:
    """Whether ``peer.classifier(features) == peer(x)`` (eval mode) on this batch."""
    head = getattr(peer, "classifier", None)
    if not isinstance(head, nn.Module):
        return False
    try:
        via_head = head(features)
    except (RuntimeError, TypeError, ValueError):
        return False
    direct = peer(x)
    return via_head.shape == direct.shape and torch.allclose(
        via_head.float(), direct.float(), rtol=1e-4, atol=1e-5
    )


def _retrieval(
    query: Tensor,
    gallery: Tensor,
    q_pids: Tensor,
    g_pids: Tensor,
    q_cams: Tensor,
    g_cams: Tensor,
    split: RetrievalSplit,
    prefix: str = "",
) -> dict[str, float]:
    """Retrieval metrics of features already normalised as ``split.normalize`` says."""
    try:
        return retrieval_metrics(
            query,
            gallery,
            q_pids,
            g_pids,
            q_cams,
            g_cams,
            metric=split.distance,
            normalize=False,
            prefix=prefix,
        )
    except ValueError as exc:
        raise UserError(f"re-id evaluation: {exc}") from None


@torch.no_grad()
def evaluate_reid(cohort: Any, split: RetrievalSplit) -> dict[str, dict[str, float]]:
    """Retrieval metrics of every peer and of the ensemble (Market-1501 protocol).

    Each peer describes an image by its pooled feature (``peer.features(x)``: the last
    pooling layer, as in Zhang et al. CVPR 2018, Sec. 4.1); the ensemble by the concatenation of
    the peers' features (each L2-normalised first when ``split.normalize``). Queries rank the
    gallery by ``split.distance``; see :mod:`dmlkit.metrics.reid` for the protocol.

    Returns:
        ``{peer name or "ensemble": {"mAP", "rank1", "rank5", "rank10", "rank20", "entropy"}}``
        (fractions in [0, 1]; ``entropy``: mean posterior entropy in nats over the query images,
        of the peer's softmax over the training identities, or of the peers' mean probability).
        With ``split.multi_query`` also ``mq_mAP``, ``mq_rank1``, ...
    """
    check_reid_support(cohort)
    peers = peer_modules(cohort)
    modes = [p.training for p in peers]
    for p in peers:
        p.eval()
    try:
        q_feats, q_ents, q_ens_ent, q_pids = _extract(peers, split.query)
        g_feats, _, _, g_pids = _extract(peers, split.gallery)
        e_feats: list[Tensor] | None = None
        if split.multi_query and split.extra_query is not None:
            e_feats, _, _, e_pids = _extract(peers, split.extra_query)
    finally:
        for p, mode in zip(peers, modes):
            p.train(mode)

    def prepare(f: Tensor) -> Tensor:
        return F.normalize(f, dim=1) if split.normalize else f

    dev = q_pids.device
    q_cams, g_cams = split.query_cams.to(dev), split.gallery_cams.to(dev)
    names = [*cohort.names, ENSEMBLE]
    q_sets = [prepare(f) for f in q_feats]
    g_sets = [prepare(f) for f in g_feats]
    q_sets.append(torch.cat(q_sets, dim=1))
    g_sets.append(torch.cat(g_sets, dim=1))
    entropies = [*q_ents, q_ens_ent]
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        metrics = _retrieval(q_sets[i], g_sets[i], q_pids, g_pids, q_cams, g_cams, split)
        if split.multi_query:
            mq, mq_pids, mq_cams = q_sets[i], q_pids, q_cams
            if e_feats is not None and split.extra_query_cams is not None:
                extra = [prepare(f) for f in e_feats]
                extra.append(torch.cat(extra, dim=1))
                mq = torch.cat([mq, extra[i]])
                mq_pids = torch.cat([q_pids, e_pids])
                mq_cams = torch.cat([q_cams, split.extra_query_cams.to(dev)])
            mq, mq_pids, mq_cams = average_by_identity_camera(mq, mq_pids, mq_cams)
            metrics.update(
                _retrieval(mq, g_sets[i], mq_pids, g_pids, mq_cams, g_cams, split, "mq_")
            )
        metrics["entropy"] = float(entropies[i].mean())
        out[name] = metrics
    return out
