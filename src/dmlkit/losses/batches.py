"""Batches and model outputs of any shape dmlkit trains on, and the losses picked by their rank.

Image classifiers take a tensor ``x: [B, C, H, W]`` and return logits ``[B, C]``; Hugging Face
models take a dict (``input_ids``, ``attention_mask``, ...) and return a ``ModelOutput`` whose
``logits`` are ``[B, C]`` (sequence classification) or ``[B, T, V]`` (a token per position).
This module is the one place that tells them apart, so that the methods, ``dmlkit.step``, the
cohort and the evaluation take both without wrapping:

* :func:`split_batch`: a batch -> ``(inputs, targets)``; a dict's ``labels`` become the targets
  (a causal LM's labels aligned with its logits by :func:`shift_labels`, the attention mask
  folded in as ``-100``, a ``[B]`` label of ``-100`` as dmlkit's ``-1``);
* :func:`call_model`: ``model(**inputs)`` for a dict, ``model(x)`` otherwise, and
  :func:`logits_of` on what it returns;
* the loss functions of :mod:`dmlkit.losses` under their own names, computed per sample for
  logits ``[B, C]`` and per valid token (:mod:`dmlkit.losses.sequence`) for ``[B, T, V]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.errors import UserError
from dmlkit.losses import dml as image
from dmlkit.losses import sequence as tokens
from dmlkit.losses.sequence import IGNORE_INDEX, logits_of, shift_labels

__all__ = [
    "IGNORE_INDEX",
    "batch_len",
    "call_model",
    "cross_entropy",
    "dml_terms",
    "flatten_valid",
    "is_causal_lm",
    "kd_loss",
    "logits_of",
    "mimicry_kl",
    "mimicry_term",
    "move_batch",
    "shift_labels",
    "slice_batch",
    "split_batch",
]

#: Keys of a dict batch that hold the targets (never passed to the model: a Hugging Face model
#: given ``labels`` computes a loss of its own over ``[B, T, V]``, which we would throw away).
LABEL_KEYS = ("labels", "label")


def is_sequence(logits: Tensor) -> bool:
    """Whether logits carry a position axis (``[B, T, V]``) rather than ``[B, C]``."""
    return logits.dim() >= 3


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a causal language model whose labels are its own inputs (Hugging
    Face's convention: the model shifts them). A model's ``dmlkit_causal_lm`` attribute decides
    when set; otherwise the Auto causal-LM mapping of ``transformers`` (if it is imported)."""
    model = getattr(model, "module", model)  # DDP / Accelerate wrappers
    flag = getattr(model, "dmlkit_causal_lm", None)
    if flag is not None:
        return bool(flag)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return False
    name = type(model).__name__
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - a config without transformers
        return name.endswith(("ForCausalLM", "LMHeadModel"))
    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def split_batch(batch: Any, *, causal: bool = False) -> tuple[Any, Tensor]:
    """A batch as ``(inputs, targets)``.

    Args:
        batch: ``(x, y)`` (returned as it is), or a dict / ``BatchEncoding`` with ``labels``
            (or ``label``) and the model's inputs.
        causal: the models are causal LMs: ``[B, T]`` labels are shifted one position left
            (:func:`shift_labels`), so that ``targets[b, t]`` is the target of
            ``logits[b, t]``.

    Returns:
        ``(inputs, targets)``: for a dict, the dict without its label keys, and
        ``[B]`` labels (``-100`` -> ``-1``, dmlkit's unlabelled sample) or ``[B, T]`` aligned
        labels with ``-100`` wherever the attention mask is 0.
    """
    if not isinstance(batch, Mapping):
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return batch[0], batch[1]
        raise UserError(
            f"a batch is a {type(batch).__name__}; give (inputs, labels) pairs or dicts with "
            f"'labels' (and the model's inputs, e.g. input_ids and attention_mask)"
        )
    key = next((k for k in LABEL_KEYS if k in batch), None)
    if key is None:
        raise UserError(
            f"a dict batch has no 'labels' (keys: {sorted(batch)[:8]}); add the targets under "
            f"'labels' (for a causal LM, a copy of input_ids)"
        )
    inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    labels = batch[key]
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() <= 1:  # one class per sequence: -100 is HF's "ignore", dmlkit's -1
        return inputs, labels.masked_fill(labels == IGNORE_INDEX, image.UNLABELLED)
    attention = inputs.get("attention_mask")
    if attention is not None and tuple(attention.shape) != tuple(labels.shape):
        attention = None
    if causal:
        return inputs, shift_labels(labels, attention)
    if attention is not None:
        labels = labels.masked_fill(~attention.bool(), IGNORE_INDEX)
    return inputs, labels


def call_model(model: Any, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict batch, ``model(inputs)`` for anything else."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def model_logits(model: Any, inputs: Any) -> Tensor:
    """The logits of ``model`` on ``inputs`` (see :func:`call_model`, :func:`logits_of`)."""
    return logits_of(call_model(model, inputs))


def move_batch(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """A tensor, or every tensor of a dict / tuple / list, moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_batch(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_batch(v, device, non_blocking) for v in batch)
    return batch


def slice_batch(inputs: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a tensor or of every tensor of a dict."""
    if isinstance(inputs, Mapping):
        return {
            k: v[start:stop] if isinstance(v, Tensor) and v.dim() else v for k, v in inputs.items()
        }
    return inputs[start:stop]


def batch_len(inputs: Any) -> int:
    """The number of samples of a tensor or of a dict batch (its first tensor's length)."""
    if isinstance(inputs, Mapping):
        for v in inputs.values():
            if isinstance(v, Tensor) and v.dim():
                return len(v)
        raise UserError("a dict batch holds no tensor [B, ...]")
    return len(inputs)


# -- the losses, by the rank of the logits -------------------------------------------------------
def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """:func:`dmlkit.losses.cross_entropy` for ``[B, C]``; per valid token for ``[B, T, V]``."""
    if is_sequence(logits):
        return tokens.token_cross_entropy(logits, targets)
    return image.cross_entropy(logits, targets)


def mimicry_kl(logits: Tensor, target_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """:func:`dmlkit.losses.mimicry_kl`; for ``[B, T, V]`` over every position (no labels are
    given here: use :func:`dmlkit.losses.sequence.token_mimicry_kl` to leave padding out)."""
    if is_sequence(logits):
        every = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
        return tokens.token_mimicry_kl(logits, target_logits, every, temperature=temperature)
    return image.mimicry_kl(logits, target_logits, temperature)


def mimicry_term(
    logits: Tensor,
    others: Sequence[Tensor],
    targets: Tensor | None = None,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
) -> Tensor:
    """:func:`dmlkit.losses.mimicry_term`; for ``[B, T, V]`` per valid token of ``targets``."""
    if is_sequence(logits):
        if targets is None:
            targets = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
        return tokens.token_mimicry_term(
            logits, others, targets, mode=mode, temperature=temperature
        )
    return image.mimicry_term(logits, others, mode=mode, temperature=temperature)


def dml_loss(
    logits: Tensor,
    others: Sequence[Tensor],
    targets: Tensor,
    *,
    mode: str = "dml",
    temperature: float = 1.0,
    mimicry_weight: float = 1.0,
) -> Any:
    """:func:`dmlkit.losses.dml_loss` (one peer's CE + weighted mimicry); per valid token of
    ``targets`` for ``[B, T, V]`` logits."""
    if not is_sequence(logits):
        return image.dml_loss(
            logits,
            others,
            targets,
            mode=mode,
            temperature=temperature,
            mimicry_weight=mimicry_weight,
        )
    ce = cross_entropy(logits, targets)
    mimicry = mimicry_term(logits, others, targets, mode=mode, temperature=temperature)
    return image.PeerLoss(ce + mimicry_weight * mimicry, ce, mimicry)


def dml_terms(
    logits: Sequence[Tensor], targets: Tensor, *, mode: str = "dml", temperature: float = 1.0
) -> Any:
    """:func:`dmlkit.losses.dml_terms`; per valid token for ``[B, T, V]`` logits."""
    if logits and is_sequence(logits[0]):
        return tokens.token_dml_terms(logits, targets, mode=mode, temperature=temperature)
    return image.dml_terms(logits, targets, mode=mode, temperature=temperature)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """:func:`dmlkit.losses.kd_loss`; per valid token for ``[B, T, V]`` logits."""
    if is_sequence(student_logits):
        return tokens.token_kd_loss(
            student_logits, teacher_logits, targets, temperature=temperature, alpha=alpha
        )
    return image.kd_loss(student_logits, teacher_logits, targets, temperature, alpha)


def flatten_valid(logits: Sequence[Tensor], targets: Tensor) -> tuple[list[Tensor], Tensor]:
    """Sequence logits as rows of their valid positions, for the per-sample metrics.

    Args:
        logits: K tensors ``[B, T, V]`` (``[B, C]`` are returned as they are).
        targets: ``[B, T]`` aligned, ``-100`` = ignored.

    Returns:
        ``(K tensors [N, V], targets [N])``, N the number of valid positions.
    """
    if not logits or not is_sequence(logits[0]):
        return list(logits), targets
    valid = targets != IGNORE_INDEX
    return [z[valid] for z in logits], targets[valid]


def causal_models(models: Sequence[nn.Module] | Any) -> bool:
    """Whether the peers are causal LMs (all of them; a mixed cohort is refused).

    Args:
        models: modules, or a cohort (its ``peers``, or its process-local cohort's).
    """
    peers = getattr(models, "peers", None)
    if peers is None:
        peers = getattr(getattr(models, "local", None), "peers", None)
    if peers is None:
        peers = models if isinstance(models, (list, tuple, nn.ModuleList)) else []
    peers = list(peers)
    flags = {is_causal_lm(m) for m in peers}
    if len(flags) > 1:
        raise UserError(
            "the peers mix causal language models with other models; a cohort's peers must "
            "predict the same targets"
        )
    return flags == {True}
