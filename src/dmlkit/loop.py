"""One DML step for your own training loop: :func:`step` (exported as ``dmlkit.step``).

No Cohort, no config: your models, your optimizers, one batch. It does what
:class:`dmlkit.methods.DML` does inside the Trainer, and a test checks that the two give the
same weights:

* ``update="simultaneous"``: one forward of every peer, every peer steps against those
  predictions (one backward of the summed losses: each loss reaches only its own peer).
* ``update="sequential"`` (the paper's Algorithm 1): peer 1 steps, is re-predicted, then peer
  2 steps against peer 1's *updated* prediction, and so on. Only the peer that just moved is
  re-predicted (the others' weights did not change), in train mode like the first forward but
  without touching its BatchNorm running statistics, which are updated once per batch as in
  independent training.

An ``extra_loss(k, output, y) -> scalar`` hook adds a per-peer term to CE + mimicry, e.g. a
triplet loss on features for re-identification. ``output`` is what peer k's ``forward``
returned: a logits tensor ``[B, C]``, or a tuple/list whose first item is the logits (the
rest is yours: features for the hook).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# logits_of: a tensor, a tuple's first item, or a ModelOutput's / dict's .logits
from dmlkit.batches import (
    call_model,
    causal_models,
    cross_entropy,
    logits_of,
    mimicry_term,
    split_batch,
)
from dmlkit.cohort import preserved_buffers
from dmlkit.losses import DML_MODES
from dmlkit.methods import NonFiniteLoss

#: ``extra_loss(k, output_k, y) -> scalar``: added to peer k's CE + mimicry.
ExtraLoss = Callable[[int, Any, Tensor], Tensor]

UPDATES = ("simultaneous", "sequential")


def _peer_loss(
    k: int,
    output: Any,
    others: list[Tensor],
    y: Tensor,
    *,
    mode: str,
    temperature: float,
    mimicry_weight: float,
    extra_loss: ExtraLoss | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    z = logits_of(output)
    ce = cross_entropy(z, y)
    mim = mimicry_term(z, others, y, mode=mode, temperature=temperature)
    loss = ce + mimicry_weight * mim
    log = {"ce": ce.detach(), "mimicry": mim.detach()}
    if extra_loss is not None:
        extra = extra_loss(k, output, y)
        loss = loss + extra
        log["extra"] = extra.detach()
    log["loss"] = loss.detach()
    return loss, log


def _check_finite(k: int, loss: Tensor) -> None:
    if not bool(torch.isfinite(loss.detach())):
        raise NonFiniteLoss(f"peer{k}", {"loss": float(loss.detach())})


def step(
    models: Sequence[nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    x: Any,
    y: Tensor | None = None,
    *,
    update: str = "simultaneous",
    mode: str = "dml",
    temperature: float = 1.0,
    mimicry_weight: float = 1.0,
    extra_loss: ExtraLoss | None = None,
) -> list[dict[str, Tensor]]:
    """One Deep Mutual Learning step of every peer on one batch (Zhang et al. 2018, Alg. 1).

    Peer k minimises ``CE(y, p_k) + mimicry_weight * mimicry_k (+ extra_loss(k, ...))``, the
    mimicry term being ``1/(K-1) sum_{l != k} KL(p_l || p_k)`` (``mode="dml"``) or
    ``KL(p_avg || p_k)`` (``mode="dml_e"``). The models are used in whatever mode they are in
    (call ``model.train()`` first, as in any loop).

    Args:
        models: K peers; ``model(x)`` returns logits ``[B, C]`` or ``(logits, ...)``.
        optimizers: K optimizers, optimizer k over model k's parameters (stepped here; LR
            schedulers are yours to step).
        x: ``[B, ...]`` the batch, on the models' device; or a dict batch of Hugging Face
            models (``input_ids``, ``attention_mask``, ``labels``, ...), passed to them as
            keyword arguments (without the labels), with ``y`` left out.
        y: ``[B]`` class indices; ``-1`` marks an unlabelled sample (no CE, still mimicry).
            Left out for a dict batch: its ``labels`` (``[B]``, or ``[B, T]`` with ``-100`` on
            ignored tokens, shifted for causal LMs), and the losses of ``[B, T, V]`` logits are
            taken per valid token (:mod:`dmlkit.sequence_losses`).
        update: ``"simultaneous"`` or ``"sequential"`` (see the module docstring).
        mode: ``"dml"`` or ``"dml_e"``.
        temperature: mimicry softmax temperature (paper: 1).
        mimicry_weight: weight of the mimicry term (paper: 1).
        extra_loss: optional per-peer term ``(k, output_k, y) -> scalar``.

    Returns:
        One dict per peer of detached scalars: ``loss``, ``ce``, ``mimicry`` (and ``extra``).

    Raises:
        dmlkit.methods.NonFiniteLoss: a peer's loss is NaN/inf; raised before that peer steps.
    """
    if len(models) != len(optimizers) or not models:
        raise ValueError(
            f"step: give one optimizer per model, got {len(models)} models and "
            f"{len(optimizers)} optimizers"
        )
    if update not in UPDATES:
        raise ValueError(f"step: update must be one of {UPDATES}, got {update!r}")
    if mode not in DML_MODES:
        raise ValueError(f"step: mode must be one of {DML_MODES}, got {mode!r}")
    if y is None:
        x, y = split_batch(x, causal=causal_models(models))
    opts = dict(mode=mode, temperature=temperature, mimicry_weight=mimicry_weight)
    outputs = [call_model(m, x) for m in models]  # every graph, built before any peer moves
    current = [logits_of(o).detach() for o in outputs]  # the predictions the others mimic
    if update == "simultaneous":
        pairs = [
            _peer_loss(k, o, current[:k] + current[k + 1 :], y, extra_loss=extra_loss, **opts)
            for k, o in enumerate(outputs)
        ]
        for k, (loss, _) in enumerate(pairs):
            _check_finite(k, loss)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        torch.stack([loss for loss, _ in pairs]).sum().backward()
        for opt in optimizers:
            opt.step()
        return [log for _, log in pairs]
    logs = []
    for k, (model, opt) in enumerate(zip(models, optimizers)):
        others = current[:k] + current[k + 1 :]
        loss, log = _peer_loss(k, outputs[k], others, y, extra_loss=extra_loss, **opts)
        _check_finite(k, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k < len(models) - 1:  # the last peer's new prediction is not used in this step
            with torch.no_grad(), preserved_buffers(model):
                current[k] = logits_of(call_model(model, x))
        logs.append(log)
    return logs
