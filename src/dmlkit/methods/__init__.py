"""What one training step does: the update order of K peers (``update``), the method
base class (``base``), DML / KD / independent (``dml``), ONE / KDCL / OKDDip / PCL
(``online``) and ``dmlkit.step`` for users' own loops (``step``).

Importing this package fills the method registry (``METHODS``).
"""

from dmlkit.methods.base import Method, peer_log
from dmlkit.methods.dml import (
    Independent,
    DML,
    DMLEnsemble,
    KnowledgeDistillation,
    METHODS,
    update_order,
    model_kwargs,
    build_method,
)
from dmlkit.methods.update import (
    NonFiniteLoss,
    PeerLog,
    Precision,
    StepSync,
    step_peers,
)

__all__ = [
    "Method",
    "peer_log",
    "NonFiniteLoss",
    "PeerLog",
    "Precision",
    "StepSync",
    "step_peers",
    "Independent",
    "DML",
    "DMLEnsemble",
    "KnowledgeDistillation",
    "METHODS",
    "update_order",
    "model_kwargs",
    "build_method",
]
