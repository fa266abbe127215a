"""The cohort: K peers, each with its own initialisation, optimizer and learning-rate schedule.

This is the loop implementation (one module per peer, launched one after another). It is the
reference every faster path must match.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.config import Config, OptimConfig
from dmlkit.models import build_model


@dataclass
class PeerSpec:
    """What is needed to rebuild a peer's network (stored in every checkpoint)."""

    name: str
    arch: str
    num_classes: int
    in_channels: int
    seed: int
    image_size: tuple[int, int] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The network, initialised from this peer's own seed (independent of global RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kwargs = dict(self.kwargs)
            image_size = kwargs.pop("image_size", self.image_size)  # a model kwarg wins
            return build_model(self.arch, self.num_classes, self.in_channels, image_size, **kwargs)


class LRSchedule:
    """Learning rate as a function of the fractional epoch, set before every optimizer step.

    ``constant``; ``step``: x gamma every ``step_size`` epochs; ``multistep``: x gamma at each
    milestone; ``cosine``: half a cosine from the base LR to 0 over ``total_epochs``. Stateless:
    the trainer's iteration counter is all a resumed run needs.
    """

    def __init__(self, cfg: OptimConfig, total_epochs: float) -> None:
        self.cfg = cfg
        self.total_epochs = max(total_epochs, 1e-12)

    def factor(self, epoch: float) -> float:
        c = self.cfg
        if c.schedule == "constant":
            return 1.0
        if c.schedule == "step":
            return c.gamma ** math.floor(epoch / c.step_size + 1e-9)
        if c.schedule == "multistep":
            return c.gamma ** sum(epoch >= m - 1e-9 for m in c.milestones)
        # cosine
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch / self.total_epochs, 1.0)))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.factor(epoch)


def build_optimizer(params: Iterator[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov) or Adam, with ``initial_lr`` recorded for the schedule."""
    params = list(params)
    if cfg.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    else:
        opt = torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
    return opt


@contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[None]:
    """Run a forward pass without letting it change BatchNorm running statistics.

    The sequential update re-predicts a peer on a batch it has already seen in this step; the
    prediction must use batch statistics (train mode) like the first one, but the running
    statistics must be updated once per batch, as in independent training.
    """
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, old in zip(module.buffers(), saved):
                buf.copy_(old)


class Cohort(nn.Module):
    """K peers with their optimizers and schedules.

    Args:
        specs: one :class:`PeerSpec` per peer (K >= 1).
        optim: one :class:`OptimConfig` per peer.
        total_epochs: length of the run, for the cosine schedule.
        device: where the peers live.
    """

    def __init__(
        self,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if not specs:
            raise ValueError("a cohort needs at least one peer")
        self.specs = specs
        self.peers = nn.ModuleList([s.build() for s in specs]).to(device)
        self.optimizers = [build_optimizer(p.parameters(), o) for p, o in zip(self.peers, optim)]
        self.schedules = [LRSchedule(o, total_epochs) for o in optim]
        self._warn_identical()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __len__(self) -> int:
        return len(self.peers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, ...]`` -> K logits ``[B, C]``."""
        return [peer(x) for peer in self.peers]

    @torch.no_grad()
    def repredict(self, k: int, x: Tensor) -> Tensor:
        """Peer k's current prediction on ``x`` (train mode, no grad, running stats untouched)."""
        with preserved_buffers(self.peers[k]):
            return self.peers[k](x)

    def set_lr(self, epoch: float) -> None:
        """Set every peer's learning rate for the (fractional) epoch about to be trained."""
        for opt, sched in zip(self.optimizers, self.schedules):
            sched.apply(opt, epoch)

    def lrs(self) -> list[float]:
        return [opt.param_groups[0]["lr"] for opt in self.optimizers]

    def _warn_identical(self) -> None:
        for (i, a), (j, b) in itertools.combinations(enumerate(self.peers), 2):
            sa, sb = a.state_dict(), b.state_dict()
            if sa.keys() == sb.keys() and all(
                sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]) for key in sa
            ):
                warnings.warn(
                    f"peers {self.specs[i].name!r} and {self.specs[j].name!r} start with "
                    f"IDENTICAL weights: mimicry between identical peers is zero at the start. "
                    f"Give them different seeds (peers.N.seed).",
                    stacklevel=3,
                )

    # -- checkpoint state ---------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """Weights and optimizer states of every peer (plain containers of tensors)."""
        return {
            "models": [p.state_dict() for p in self.peers],
            "optimizers": [o.state_dict() for o in self.optimizers],
        }

    def load_training_state(self, state: dict[str, Any], *, optimizers: bool = True) -> None:
        for peer, sd in zip(self.peers, state["models"]):
            peer.load_state_dict(sd)
        if optimizers:
            for opt, sd in zip(self.optimizers, state["optimizers"]):
                opt.load_state_dict(sd)


def peer_specs(
    cfg: Config, num_classes: int, in_channels: int, image_size: tuple[int, int] | None = None
) -> list[PeerSpec]:
    """The PeerSpecs of a config's cohort, for a dataset of ``num_classes`` classes."""
    return [
        PeerSpec(
            name=cfg.peer_name(i),
            arch=p.arch,
            num_classes=num_classes,
            in_channels=in_channels,
            seed=cfg.peer_seed(i),
            image_size=image_size,
            kwargs=dict(p.kwargs),
        )
        for i, p in enumerate(cfg.peers)
    ]
