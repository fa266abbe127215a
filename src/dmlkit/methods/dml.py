"""Training schemes: one small class each, one contract, one registry.

``method.train_step(x, y) -> list[dict[str, Tensor]]``: one optimisation step of the whole
cohort on a batch, returning one dict of detached scalars per peer (``loss``, ``ce``,
``mimicry``). What a peer minimises is in :mod:`dmlkit.losses` (DML's: :func:`dml_loss`); the
two update orders (``simultaneous``, ``sequential``) are
:func:`dmlkit.methods.update.step_peers`, the one step that :func:`dmlkit.step` and
Lightning's ``DMLModule`` run too.

``METHODS`` names every method, this module's and :mod:`dmlkit.methods.online`', in one table
below: importing this module is all it takes to see them all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.cohort import CohortLike
from dmlkit.config import Config, MethodConfig
from dmlkit.errors import ConfigError

# the losses by the rank of the logits: per sample [B, C], per valid token [B, T, V]
from dmlkit.losses.batches import cross_entropy, dml_loss, kd_loss, mimicry_kl, model_logits
from dmlkit.methods.base import Method, peer_log
from dmlkit.methods.online import KDCL, ONE, PCL, DMLMeanLogits, OKDDip
from dmlkit.methods.update import NonFiniteLoss, PeerLog, Precision, StepSync, step_peers
from dmlkit.registry import Registry

__all__ = [
    "METHODS",
    "DML",
    "DMLEnsemble",
    "Independent",
    "KnowledgeDistillation",
    "Method",
    "NonFiniteLoss",
    "PeerLog",
    "Precision",
    "StepSync",
    "build_method",
    "model_kwargs",
    "peer_log",
    "update_order",
]


class Independent(Method):
    """Every peer trained alone on the labels (the paper's baseline)."""

    name = "independent"

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with self.precision.autocast():
            ce = [cross_entropy(z, y) for z in self.cohort(x)]
        self.step_all(ce)
        return [peer_log(c, c, torch.zeros_like(c)) for c in ce]


class DML(Method):
    """Deep Mutual Learning: CE + mimicry_weight * 1/(K-1) sum_l KL(p_l || p_k)."""

    name = "dml"
    mode = "dml"

    @classmethod
    def update_order(cls, cfg: MethodConfig) -> str | None:
        return cfg.update

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        cohort, w, t = self.cohort, self.mimicry_weight, self.cfg.temperature

        def peer_loss(k: int, others: list[Tensor]) -> dict[str, Tensor]:
            loss = dml_loss(logits[k], others, y, mode=self.mode, temperature=t, mimicry_weight=w)
            return loss._asdict()  # loss, ce, mimicry

        with self.precision.autocast():
            logits = cohort(x)  # every peer's graph, built before any peer moves
        return step_peers(
            logits,
            peer_loss,
            cohort.optimizers,
            update=self.cfg.update,
            repredict=lambda k: cohort.repredict(k, x),
            names=cohort.names,
            precision=self.precision,
            sync=self.sync,
        )


class DMLEnsemble(DML):
    """DML_e: each peer mimics the mean probability of the other peers (paper Sec. 3.3)."""

    name = "dml_e"
    mode = "dml_e"


class KnowledgeDistillation(Method):
    """Hinton distillation: a frozen teacher teaches every peer one way.

    Args:
        cohort: the students.
        cfg: ``temperature`` and ``alpha`` of :func:`dmlkit.losses.kd_loss`.
        teacher: the trained teacher network (kept in eval mode, never updated).
    """

    name = "kd"
    needs_teacher = True

    def __init__(
        self,
        cohort: CohortLike,
        cfg: MethodConfig,
        teacher: nn.Module,
        precision: Precision | None = None,
        sync: StepSync | None = None,
    ) -> None:
        super().__init__(cohort, cfg, precision, sync)
        self.teacher = teacher.eval().requires_grad_(False)

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with torch.no_grad(), self.precision.autocast():
            self.teacher.eval()  # the trainer's cohort.train() must not reach the teacher
            teacher_logits = model_logits(self.teacher, x)
        with self.precision.autocast():
            logits = self.cohort(x)
            losses = [
                kd_loss(z, teacher_logits, y, self.cfg.temperature, self.cfg.alpha) for z in logits
            ]
        self.step_all(losses)
        t = self.cfg.temperature
        return [
            peer_log(loss, cross_entropy(z, y), mimicry_kl(z, teacher_logits, t))
            for z, loss in zip(logits, losses)
        ]


# Every method by its config name (method.name): this table is the registry's whole content.
METHODS: Registry = Registry("method", "method.name")
for _method in (
    Independent,
    DML,
    DMLEnsemble,
    DMLMeanLogits,
    KnowledgeDistillation,
    KDCL,
    ONE,
    OKDDip,
    PCL,
):
    METHODS.register(_method.name)(_method)


def update_order(cfg: MethodConfig) -> str | None:
    """The update order the configured method follows (``sequential`` | ``simultaneous``), or
    None for a method without one (independent, kd)."""
    return METHODS.get(cfg.name).update_order(cfg)


def model_kwargs(cfg: MethodConfig) -> dict[str, Any]:
    """The model arguments the configured method needs in every peer (see Method.model_kwargs)."""
    return dict(METHODS.get(cfg.name).model_kwargs)


def build_method(
    cfg: Config,
    cohort: CohortLike,
    *,
    device: torch.device | str = "cpu",
    teacher: nn.Module | None = None,
    sync: StepSync | None = None,
) -> Method:
    """The configured method over ``cohort``.

    Args:
        teacher: kd's frozen teacher, loaded by the caller (see
            :func:`dmlkit.engine.checkpoint.load_teacher`); ignored by the other methods.
        sync: what each step shares with other processes (:mod:`dmlkit.distributed`).
    """
    cls = METHODS.get(cfg.method.name)
    if cfg.method.member_views and not cls.supports_views:
        raise ConfigError(
            f"method.member_views=true: method.name={cls.name} trains every member on the same "
            f"batch (only kdcl and pcl take one view per member); set method.member_views=false"
        )
    precision = Precision(cfg.train.precision, torch.device(device).type)
    if not cls.needs_teacher:
        return cls(cohort, cfg.method, precision, sync)
    if teacher is None:
        raise ValueError(f"method {cls.name} needs its teacher: build_method(..., teacher=...)")
    return cls(cohort, cfg.method, teacher, precision, sync)
