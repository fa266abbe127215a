"""The cohort: K peers, each with its own initialisation, optimizer and learning-rate schedule.

Two implementations with one interface and one checkpoint format: :class:`Cohort`, the loop
(one module per peer, launched one after another), the reference every faster path must match;
and :class:`StackedCohort`, the K peers of one architecture batched through ``vmap``.
:func:`build_cohort` picks one for ``train.cohort_impl``; :class:`PeerSpec` rebuilds a peer.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from dmlkit.config import Config, OptimConfig
from dmlkit.errors import ConfigError
from dmlkit.models import build_model
from dmlkit.optim import ELEMENTWISE, LRSchedule, build_optimizer


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
        kwargs = {k: v for k, v in self.kwargs.items() if k != "pretrained"}
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
        _warn_identical(self.specs, [p.state_dict() for p in self.peers])
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
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, ...]`` -> one logits ``[B, C]`` per member (K for K one-branch peers)."""
        x = self._layout(x)
        out: list[Tensor] = []
        for f, peer, k in zip(self._forwards, self.peers, self.branches):
            if k is None:
                out.append(f(x))
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
            return self._forwards[k](self._layout(x))

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
        norms = [_grad_norm(list(p.parameters())) for p in self.peers]
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


def _grad_norm(params: list[nn.Parameter]) -> Tensor:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device)
    return torch.nn.utils.get_total_norm(grads).float()


def _warn_identical(specs: list[PeerSpec], states: list[dict[str, Tensor]]) -> None:
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


class StackedCohort(nn.Module):
    """K peers of one architecture run as one batched model: the fast path.

    Parameters and buffers of the K peers are stacked along a new leading dimension and the
    architecture is called once through ``torch.func.functional_call`` under ``vmap``: each layer
    becomes one kernel for the whole cohort (a grouped convolution, a batched matmul) instead of K
    small launches. BatchNorm running statistics stay per peer (they are stacked buffers, updated
    in place through vmap). One optimizer steps the stacked tensors; SGD and Adam act element by
    element, so this is exactly K per-peer optimizers with per-peer state. Checkpoints use the
    loop cohort's per-peer format, so the two are interchangeable.

    Requirements: identical architecture and constructor arguments, identical optimizer
    settings, and an update that steps every peer against one forward (simultaneous, independent,
    kd). Dropout masks differ per peer (``randomness="different"``) but are not the loop path's.

    Args:
        specs: K :class:`PeerSpec` that differ only in name and seed.
        optim: K equal :class:`OptimConfig`.
        total_epochs: length of the run, for the cosine schedule.
        device: where the stacked tensors live.
        compile: run the batched forward through ``torch.compile``.
    """

    def __init__(
        self,
        specs: list[PeerSpec],
        optim: list[OptimConfig],
        total_epochs: float,
        device: torch.device | str = "cpu",
        *,
        compile: bool = False,
    ) -> None:
        super().__init__()
        problem = stacking_problem(specs, optim)
        if problem:
            raise ValueError(f"cannot stack this cohort: {problem}")
        self.specs = specs
        models = [s.build().to(device) for s in specs]
        _warn_identical(specs, [m.state_dict() for m in models])
        # The architecture without storage; kept out of the module tree (a plain list) so it
        # has no parameters of its own. Its train/eval flag is set by train() below.
        self._template = [copy.deepcopy(models[0]).to("meta")]
        self._state_keys = list(models[0].state_dict().keys())
        params, buffers = stack_module_state(models)
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        self.stacked_params = nn.ParameterList([nn.Parameter(params[n].detach()) for n in params])
        for i, name in enumerate(self._buffer_names):
            self.register_buffer(f"stacked_buffer_{i}", buffers[name].detach().clone())
        self.optimizers = [build_optimizer(iter(self.stacked_params), optim[0])]
        self.schedules = [LRSchedule(optim[0], total_epochs)]
        self._batched = vmap(self._call, in_dims=(0, 0, None), randomness="different")
        self._forward_fn = torch.compile(self._batched) if compile else self._batched

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self._template[0], (params, buffers), (x,))

    def _buffers_dict(self) -> dict[str, Tensor]:
        return {n: getattr(self, f"stacked_buffer_{i}") for i, n in enumerate(self._buffer_names)}

    def train(self, mode: bool = True) -> StackedCohort:
        super().train(mode)
        self._template[0].train(mode)
        return self

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, ...]`` -> K logits ``[B, C]`` (views of one ``[K, B, C]`` tensor)."""
        params = dict(zip(self._param_names, self.stacked_params))
        return list(self._forward_fn(params, self._buffers_dict(), x).unbind(0))

    def forward_views(self, xs: Tensor) -> list[Tensor]:
        """xs: ``[K, B, ...]`` -> K logits ``[B, C]``, peer k on view k (one vmap call)."""
        params = dict(zip(self._param_names, self.stacked_params))
        views = vmap(self._call, in_dims=0, randomness="different")
        return list(views(params, self._buffers_dict(), xs).unbind(0))

    def repredict(self, k: int, x: Tensor) -> Tensor:
        raise NotImplementedError("the stacked cohort steps every peer at once (no sequential)")

    def set_lr(self, epoch: float) -> None:
        self.schedules[0].apply(self.optimizers[0], epoch)

    def lrs(self) -> list[float]:
        return [self.optimizers[0].param_groups[0]["lr"]] * len(self)

    def grad_norms(self) -> Tensor:
        """``[K]``: the L2 norm of each peer's gradient (its slice of every stacked gradient)."""
        grads = [
            p.grad.detach().float().flatten(1) for p in self.stacked_params if p.grad is not None
        ]
        if not grads:
            return torch.zeros(len(self), device=self.stacked_params[0].device)
        return torch.stack([g.norm(dim=1) for g in grads]).norm(dim=0)  # the norm of the norms

    # -- checkpoint state, in the loop cohort's per-peer format ---------------------------------
    def training_state(self) -> dict[str, Any]:
        stacked = {**dict(zip(self._param_names, self.stacked_params)), **self._buffers_dict()}
        models = [
            {key: stacked[key][k].detach().clone() for key in self._state_keys}
            for k in range(len(self))
        ]
        sd = self.optimizers[0].state_dict()
        optimizers = []
        for k in range(len(self)):
            state = {
                i: {key: _peer_slice(v, self.stacked_params[i], k) for key, v in per_param.items()}
                for i, per_param in sd["state"].items()
            }
            optimizers.append({"state": state, "param_groups": copy.deepcopy(sd["param_groups"])})
        return {"models": models, "optimizers": optimizers}

    def load_training_state(self, state: dict[str, Any], *, optimizers: bool = True) -> None:
        models = state["models"]
        if len(models) != len(self):
            raise ValueError(f"{len(models)} peers in the state, {len(self)} in the cohort")
        with torch.no_grad():
            targets = {
                **dict(zip(self._param_names, self.stacked_params)),
                **self._buffers_dict(),
            }
            for sd in models:
                if set(sd) != set(self._state_keys):
                    raise KeyError(
                        f"state keys differ: {sorted(set(sd) ^ set(self._state_keys))[:3]}"
                    )
            for key, target in targets.items():
                target.copy_(torch.stack([sd[key] for sd in models]).to(target.device))
        if not optimizers:
            return
        per = state["optimizers"]
        merged: dict[int, dict[str, Any]] = {}
        for i, _ in enumerate(self.stacked_params):
            if i not in per[0]["state"]:
                continue
            merged[i] = {}
            for key, v in per[0]["state"][i].items():
                if isinstance(v, Tensor) and v.dim() > 0:
                    merged[i][key] = torch.stack([p["state"][i][key] for p in per])
                else:
                    merged[i][key] = v
        self.optimizers[0].load_state_dict(
            {"state": merged, "param_groups": per[0]["param_groups"]}
        )


def _peer_slice(value: Any, stacked_param: Tensor, k: int) -> Any:
    """Peer k's part of an optimizer state entry (per-element tensors are sliced)."""
    if isinstance(value, Tensor) and value.shape == stacked_param.shape:
        return value[k].clone()
    return copy.deepcopy(value)


def stacking_problem(specs: list[PeerSpec], optim: list[OptimConfig]) -> str | None:
    """Why these peers cannot run as a :class:`StackedCohort` (None if they can)."""
    if len(specs) < 2:
        return "a single peer gains nothing from stacking"
    first = specs[0]
    for s in specs[1:]:
        if (s.arch, s.kwargs, s.num_classes, s.in_channels, s.image_size) != (
            first.arch,
            first.kwargs,
            first.num_classes,
            first.in_channels,
            first.image_size,
        ):
            return f"peers {first.name!r} and {s.name!r} differ in architecture or arguments"
    if any(o != optim[0] for o in optim[1:]):
        return "peers have different optimizer settings"
    if optim[0].name.lower() not in ELEMENTWISE:
        return f"optim.name={optim[0].name} does not update element by element"
    with torch.device("meta"):  # no memory, no weights read
        if num_branches(first.without_pretrained().build()) is not None:
            return "a multi-branch peer's branches are members of the loop cohort only"
    return None


def build_cohort(
    impl: str,
    specs: list[PeerSpec],
    optim: list[OptimConfig],
    total_epochs: float,
    device: torch.device,
    *,
    update: str = "simultaneous",
    compile: bool = False,
    channels_last: bool = True,
) -> Cohort | StackedCohort:
    """The cohort implementation for ``train.cohort_impl`` (loop | stacked | auto).

    ``auto`` stacks on CUDA when the cohort allows it (identical peers and optimizers, every
    peer stepping against one forward); on the CPU the loop is as fast (see benchmarks/).
    """
    problem = stacking_problem(specs, optim)
    if update == "sequential":
        problem = problem or "the sequential update steps the peers one at a time"
    if impl == "stacked" and problem:
        raise ConfigError(f"train.cohort_impl=stacked: {problem}; use train.cohort_impl=loop")
    stacked = impl == "stacked" or (impl == "auto" and not problem and device.type == "cuda")
    if stacked:
        return StackedCohort(specs, optim, total_epochs, device, compile=compile)
    cohort = Cohort(
        specs, optim, total_epochs, device, compile=compile, channels_last=channels_last
    )
    if update == "sequential" and any(k is not None for k in cohort.branches):
        raise ConfigError(
            "method.update=sequential steps one network at a time, but a multi-branch peer's "
            "branches share their trunk; use method.update=simultaneous"
        )
    return cohort


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
