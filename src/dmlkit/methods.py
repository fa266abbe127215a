"""Training schemes: one small class each, one contract.

``method.train_step(x, y) -> list[dict[str, Tensor]]``: one optimisation step of the whole
cohort on a batch, returning one dict of detached scalars per peer (``loss``, ``ce``,
``mimicry``). What a peer minimises is in :mod:`dmlkit.losses` (DML's: :func:`dml_loss`); the
two update orders (``simultaneous``, ``sequential``) are :func:`dmlkit.update.step_peers`, the
one step that :func:`dmlkit.step` and Lightning's ``DMLModule`` run too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dmlkit.cohort import Cohort
from dmlkit.config import Config, MethodConfig
from dmlkit.errors import ConfigError
from dmlkit.losses import cross_entropy, dml_loss, kd_loss, mimicry_kl, rampup
from dmlkit.registry import Registry
from dmlkit.update import (
    NonFiniteLoss,
    PeerLog,
    Precision,
    StepSync,
    check_finite,
    step_all,
    step_peers,
)

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

METHODS: Registry = Registry("method", "method.name")


class Method:
    """Base class: holds the cohort, the method's config, the step's precision and sync.

    Args:
        cohort: the peers (a whole cohort, or its distributed stand-in).
        cfg: the ``method`` config section.
        precision: autocast and loss scaling of a step (default fp32).
        sync: what a step shares with other processes (default: nothing, one process).
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False  # True: built with a trained teacher network
    # Constructor arguments the method needs in every peer's model (e.g. PCL's temporal mean);
    # the trainer adds them to the peers' kwargs before building the cohort.
    model_kwargs: ClassVar[dict[str, Any]] = {}
    # x -> {name: logits}: what the method evaluates besides the peers (None: nothing).
    eval_heads: Any = None
    # True: with ``method.member_views`` every member trains on its own augmentation of the
    # batch: train_step then gets ``x: [K, B, ...]``, view k for member k (see member_views()).
    supports_views: ClassVar[bool] = False

    def __init__(
        self,
        cohort: Cohort,
        cfg: MethodConfig,
        precision: Precision | None = None,
        sync: StepSync | None = None,
    ) -> None:
        self.cohort = cohort
        self.cfg = cfg
        self.precision = precision or Precision()
        self.epoch = 0.0  # fractional epoch of the next step, set by the trainer
        self.sync = sync or StepSync()

    @classmethod
    def update_order(cls, cfg: MethodConfig) -> str | None:
        """The update order this method follows with ``cfg``, None if it has no choice of one.

        The cohort is built for it (the sequential update cannot be stacked) and the summary
        reports it.
        """
        return None

    def deployed(self) -> str | None:
        """The name of the evaluated output this method deploys, if it defines one."""
        return None

    def member_views(self) -> int:
        """How many augmented views of each batch a step takes: one per member with
        ``method.member_views`` (K), else 0 (one ``[B, ...]`` batch for every member)."""
        return len(self.cohort.names) if self.cfg.member_views else 0

    def prepare_loader(self, loader: Any) -> None:
        """Ask the training loader for what train_step takes (one view per member, if set)."""
        views = self.member_views()
        if not views:
            return
        if not hasattr(loader, "set_views"):
            raise ConfigError(
                "method.member_views=true needs a dmlkit dataset's loader (it augments one view "
                "per member); set method.member_views=false for your own loader"
            )
        loader.set_views(views)

    def set_progress(self, epoch: float) -> None:
        """Tell the method where training stands (fractional epoch) before a step."""
        self.epoch = epoch

    @property
    def mimicry_weight(self) -> float:
        """The mimicry weight of the next step: ``cfg.mimicry_weight``, ramped up over
        ``cfg.mimicry_rampup`` epochs in the ``cfg.rampup_shape`` (:func:`losses.rampup`)."""
        scale = rampup(self.epoch, self.cfg.mimicry_rampup, self.cfg.rampup_shape)
        return self.cfg.mimicry_weight * scale

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        """One step for every peer on the batch ``x: [B, ...]``, ``y: [B]`` (-1 = unlabelled)."""
        raise NotImplementedError

    def check_finite(self, losses: list[Tensor], first: int = 0) -> None:
        """Raise NonFiniteLoss naming the first peer whose loss is not finite (one host sync)."""
        check_finite(losses, self.cohort.names, self.sync, first)

    def step_all(self, losses: list[Tensor]) -> None:
        """Step every peer on its own loss with one backward pass (:func:`update.step_all`)."""
        step_all(
            losses,
            self.cohort.optimizers,
            names=self.cohort.names,
            precision=self.precision,
            sync=self.sync,
        )


def peer_log(loss: Tensor, ce: Tensor, mimicry: Tensor) -> PeerLog:
    """A peer's step record: its detached ``loss``, ``ce`` and ``mimicry`` scalars."""
    return {"loss": loss.detach(), "ce": ce.detach(), "mimicry": mimicry.detach()}


@METHODS.register("independent")
class Independent(Method):
    """Every peer trained alone on the labels (the paper's baseline)."""

    name = "independent"

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with self.precision.autocast():
            ce = [cross_entropy(z, y) for z in self.cohort(x)]
        self.step_all(ce)
        return [peer_log(c, c, torch.zeros_like(c)) for c in ce]


@METHODS.register("dml")
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


@METHODS.register("dml_e")
class DMLEnsemble(DML):
    """DML_e: each peer mimics the mean probability of the other peers (paper Sec. 3.3)."""

    name = "dml_e"
    mode = "dml_e"


@METHODS.register("kd")
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
        cohort: Cohort,
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
            teacher_logits = self.teacher(x)
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


def update_order(cfg: MethodConfig) -> str | None:
    """The update order the configured method follows (``sequential`` | ``simultaneous``), or
    None for a method without one (independent, kd)."""
    return METHODS.get(cfg.name).update_order(cfg)


def model_kwargs(cfg: MethodConfig) -> dict[str, Any]:
    """The model arguments the configured method needs in every peer (see Method.model_kwargs)."""
    return dict(METHODS.get(cfg.name).model_kwargs)


def build_method(
    cfg: Config,
    cohort: Cohort,
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
