"""One DML step for your own training loop: :func:`step` (exported as ``dmlkit.step``).

No Cohort, no config: your models, your optimizers, one batch. It runs the step that
:class:`dmlkit.methods.DML` runs inside the Trainer (:func:`dmlkit.methods.update.step_peers` over
:func:`dmlkit.losses.dml_loss`), and a test checks that the two give the same weights:

* ``update="simultaneous"``: one forward of every peer, every peer steps against those
  predictions (one backward of the summed losses: each loss reaches only its own peer).
* ``update="sequential"`` (the paper's Algorithm 1): peer 1 steps, is re-predicted, then peer
  2 steps against peer 1's *updated* prediction, and so on. Only the peer that just moved is
  re-predicted (the others' weights did not change), in train mode like the first forward but
  without touching its BatchNorm running statistics, which are updated once per batch as in
  independent training.

An ``extra_loss(k, output, y) -> scalar`` hook adds a per-peer term to CE + mimicry, e.g. a
triplet loss on features for re-identification. ``output`` is what peer k's ``forward``
returned: a logits tensor ``[B, C]``, a tuple/list whose first item is the logits (the
rest is yours: features for the hook), or an object with a ``.logits`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# logits_of: a tensor, a tuple's first item, or a ModelOutput's / dict's .logits
from dmlkit.losses.batches import call_model, causal_models, dml_loss, logits_of, split_batch
from dmlkit.losses.dml import DML_MODES
from dmlkit.methods.update import UPDATES, repredict_module, step_peers

__all__ = ["ExtraLoss", "UPDATES", "logits_of", "step"]

#: ``extra_loss(k, output_k, y) -> scalar``: added to peer k's CE + mimicry.
ExtraLoss = Callable[[int, Any, Tensor], Tensor]


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
            taken per valid token (:mod:`dmlkit.losses.sequence`).
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
    outputs = [call_model(m, x) for m in models]  # every graph, built before any peer moves

    def peer_loss(k: int, others: list[Tensor]) -> dict[str, Tensor]:
        terms = dml_loss(
            logits_of(outputs[k]),
            others,
            y,
            mode=mode,
            temperature=temperature,
            mimicry_weight=mimicry_weight,
        )._asdict()
        if extra_loss is not None:
            terms["extra"] = extra_loss(k, outputs[k], y)
            terms["loss"] = terms["loss"] + terms["extra"]
        return terms

    return step_peers(
        [logits_of(o) for o in outputs],
        peer_loss,
        optimizers,
        update=update,
        repredict=lambda k: (
            repredict_module(models[k], **x)
            if isinstance(x, Mapping)
            else repredict_module(models[k], x)
        ),
        names=[f"peer{k}" for k in range(len(models))],
    )
