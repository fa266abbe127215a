"""The loop cohort: K peers, each its own module, optimizer and learning-rate schedule.

:class:`Cohort` launches the peers one after another; it is the reference every faster path
must match. :class:`PeerSpec` rebuilds a peer; :func:`peer_specs` gives a config's.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.config import Config, OptimConfig
from dmlkit.losses.batches import model_logits
from dmlkit.models import build_model
from dmlkit.optim import LRSchedule, build_optimizer, grad_norm


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

    def without_pretrained(self) -> PeerSpec:
        """This spec minus its ``pretrained`` kwarg, to rebuild a peer whose weights are known.

        A trained peer's weights replace whatever ``pretrained`` would load, so the ImageNet
        file it started from need not exist any more (or on this machine).
        """
        # and never trust_remote_code: a run folder is data (DESIGN.md, Trust); rebuilding a
        # Hugging Face peer that needs its folder's code is for an explicit opt-in
        kwargs = {
            k: v for k, v in self.kwargs.items() if k not in ("pretrained", "trust_remote_code")
        }
        return replace(self, kwargs=kwargs)

    def restore(self, weights: dict[str, Tensor], device: torch.device | str = "cpu") -> nn.Module:
        """The trained network: built without ``pretrained``, given ``weights``, in eval mode."""
        model = self.without_pretrained().build().to(device)
        model.load_state_dict(weights)
        return model.eval()


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
    """K peers with their optimizers and schedules (the loop implementation).

    Args:
        specs: one :class:`PeerSpec` per peer (K >= 1).
        optim: one :class:`OptimConfig` per peer.
        total_epochs: length of the run, for the cosine schedule.
        device: where the peers live.
        compile: run each peer's forward through ``torch.compile``.
        channels_last: keep conv weights in channels-last layout and convert 4-d inputs to it
            (faster convolutions on CUDA and on the CPU; see benchmarks/results/).
        modules: the peers themselves (a user's ``nn.Module`` instances, :func:`dmlkit.fit`)
            instead of building them from ``specs``; ``specs`` then only name them.
        optimizers, schedules: the peers' optimizers and schedules (anything with
            ``apply(optimizer, epoch)``), instead of building them from ``optim``.
    """

    def __init__(
        self,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
        device: torch.device | str = "cpu",
        *,
        compile: bool = False,
        channels_last: bool = False,
        modules: list[nn.Module] | None = None,
        optimizers: list[torch.optim.Optimizer] | None = None,
        schedules: list[Any] | None = None,
    ) -> None:
        super().__init__()
        if not specs:
            raise ValueError("a cohort needs at least one peer")
        self.specs = specs
        self.channels_last = channels_last
        built = modules if modules is not None else [s.build() for s in specs]
        self.peers = nn.ModuleList(built).to(device)
        if channels_last:
            self.peers.to(memory_format=torch.channels_last)
        self.optimizers = optimizers or [
            build_optimizer(p.parameters(), o) for p, o in zip(self.peers, optim)
        ]
        self.schedules = schedules or [LRSchedule(o, total_epochs) for o in optim]
        # Compiled callables share the peers' parameters; the peers themselves stay plain
        # modules so that state_dict keys do not change.
        self._forwards = [torch.compile(p) if compile else p for p in self.peers]
        warn_identical(self.specs, [p.state_dict() for p in self.peers])
        # A multi-branch peer (dmlkit.models.multibranch) gives one member per branch: the
        # members are what the methods, the logs and the evaluation see as the cohort's peers.
        self.branches = [num_branches(p) for p in self.peers]

    @property
    def names(self) -> list[str]:
        """One name per member: a peer's own, or ``<peer>.b<i>`` for each of its branches."""
        return [m.name for m in self.member_specs]

    @property
    def member_specs(self) -> list[PeerSpec]:
        """The spec of the network holding each member, renamed after the member."""
        out = []
        for spec, k in zip(self.specs, self.branches):
            if k is None:
                out.append(spec)
            else:
                out += [replace(spec, name=f"{spec.name}.b{i + 1}") for i in range(k)]
        return out

    def __len__(self) -> int:
        return len(self.peers)

    def _layout(self, x: Tensor) -> Tensor:
        # One conversion per batch, not one per peer: the peers share the converted input.
        if self.channels_last and isinstance(x, Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor | dict[str, Tensor]) -> list[Tensor]:
        """x: ``[B, ...]`` -> one logits ``[B, C]`` per member (K for K one-branch peers); a dict
        batch (Hugging Face models) is passed as keyword arguments and the outputs' ``logits``
        (``[B, C]`` or ``[B, T, V]``) are returned."""
        x = self._layout(x)
        out: list[Tensor] = []
        for f, peer, k in zip(self._forwards, self.peers, self.branches):
            if k is None:
                out.append(model_logits(f, x) if isinstance(x, dict) else f(x))
            else:
                out += peer.branch_logits(x)
        return out

    def forward_views(self, xs: Tensor) -> list[Tensor]:
        """xs: ``[K, B, ...]`` -> K logits ``[B, C]``, one-branch peer k on view k."""
        if any(k is not None for k in self.branches) or len(xs) != len(self.peers):
            raise ValueError(f"forward_views: one view per one-branch peer, got {len(xs)} views")
        return [f(self._layout(x)) for f, x in zip(self._forwards, xs)]

    @torch.no_grad()
    def repredict(self, k: int, x: Tensor) -> Tensor:
        """Peer k's current prediction on ``x`` (train mode, no grad, running stats untouched)."""
        if any(b is not None for b in self.branches):
            raise NotImplementedError("a multi-branch peer's branches step together")
        with preserved_buffers(self.peers[k]):
            return model_logits(self._forwards[k], self._layout(x))

    def set_lr(self, epoch: float) -> None:
        """Set every peer's learning rate for the (fractional) epoch about to be trained."""
        for opt, sched in zip(self.optimizers, self.schedules):
            sched.apply(opt, epoch)

    def lrs(self) -> list[float]:
        """The learning rate of each member (a branch has its network's)."""
        lrs = [opt.param_groups[0]["lr"] for opt in self.optimizers]
        return [lr for lr, k in zip(lrs, self.branches) for _ in range(k or 1)]

    def grad_norms(self) -> Tensor:
        """``[members]``: the L2 norm of each member's network's gradient as left by the last
        step (0 if none); a multi-branch network's branches report their whole network's norm."""
        norms = [grad_norm(p.parameters()) for p in self.peers]
        return torch.stack([n for n, k in zip(norms, self.branches) for _ in range(k or 1)])

    # -- checkpoint state ---------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """Weights and optimizer states of every peer (plain containers of tensors)."""
        state = {
            "models": [p.state_dict() for p in self.peers],
            "optimizers": [o.state_dict() for o in self.optimizers],
        }
        if any(hasattr(s, "state_dict") for s in self.schedules):  # a user's torch scheduler
            state["schedules"] = [
                s.state_dict() if hasattr(s, "state_dict") else None for s in self.schedules
            ]
        return state

    def load_training_state(self, state: dict[str, Any], *, optimizers: bool = True) -> None:
        for peer, sd in zip(self.peers, state["models"]):
            peer.load_state_dict(sd)
        if optimizers:
            for opt, sd in zip(self.optimizers, state["optimizers"]):
                opt.load_state_dict(sd)
            for sched, sd in zip(self.schedules, state.get("schedules") or []):
                if sd is not None and hasattr(sched, "load_state_dict"):
                    sched.load_state_dict(sd)


def num_branches(model: nn.Module) -> int | None:
    """K for a multi-branch network (``num_branches`` and ``branch_logits``), else None."""
    k = getattr(model, "num_branches", None)
    return k if isinstance(k, int) and callable(getattr(model, "branch_logits", None)) else None


def warn_identical(specs: list[PeerSpec], states: list[dict[str, Tensor]]) -> None:
    for (i, sa), (j, sb) in itertools.combinations(enumerate(states), 2):
        if sa.keys() == sb.keys() and all(
            sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]) for key in sa
        ):
            warnings.warn(
                f"peers {specs[i].name!r} and {specs[j].name!r} start with "
                f"IDENTICAL weights: mimicry between identical peers is zero at the start. "
                f"Give them different seeds (peers.N.seed).",
                stacklevel=4,
            )


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
