"""Pure loss functions of logits: DML / DML_e / KD (``dml``), the online-distillation
family (``online``), token-level losses over ``[B, T, V]`` (``sequence``), and the adapters
from batches and model outputs to them (``batches``).

``dmlkit.losses`` re-exports :mod:`dmlkit.losses.dml`, the public path users know.
"""

from dmlkit.losses.dml import (
    UNLABELLED,
    DML_MODES,
    cross_entropy,
    kl_from_log_probs,
    mean_log_probs,
    ensemble_log_probs,
    entropy_of_probs,
    mimicry_kl,
    mimicry_term,
    PeerLoss,
    dml_loss,
    DMLTerms,
    dml_terms,
    dml_losses,
    RAMPUP_SHAPES,
    rampup,
    kd_loss,
    DMLLoss,
)

__all__ = [
    "UNLABELLED",
    "DML_MODES",
    "cross_entropy",
    "kl_from_log_probs",
    "mean_log_probs",
    "ensemble_log_probs",
    "entropy_of_probs",
    "mimicry_kl",
    "mimicry_term",
    "PeerLoss",
    "dml_loss",
    "DMLTerms",
    "dml_terms",
    "dml_losses",
    "RAMPUP_SHAPES",
    "rampup",
    "kd_loss",
    "DMLLoss",
]
