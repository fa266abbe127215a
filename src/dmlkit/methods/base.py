"""The base of every training method: :class:`Method` (one small class per method over pure
losses and :func:`dmlkit.methods.update.step_peers`) and :func:`peer_log`, a step's record of
a peer.

The methods themselves and their registry are :mod:`dmlkit.methods`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from dmlkit.cohort import CohortLike
from dmlkit.config import MethodConfig
from dmlkit.data.protocol import TrainLoader, ViewsLoader
from dmlkit.errors import ConfigError
from dmlkit.losses.dml import rampup
from dmlkit.methods.update import PeerLog, Precision, StepSync, check_finite, step_all

__all__ = ["Method", "PeerLog", "peer_log"]


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
        cohort: CohortLike,
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

    def prepare_loader(self, loader: TrainLoader) -> None:
        """Ask the training loader for what train_step takes (one view per member, if set)."""
        views = self.member_views()
        if not views:
            return
        if not isinstance(loader, ViewsLoader):
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
