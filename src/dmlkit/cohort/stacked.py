"""The stacked cohort: K peers of one architecture batched through ``vmap``.

Same interface and checkpoint format as :class:`dmlkit.cohort.loop.Cohort`;
:func:`stacking_problem` says when a cohort cannot be stacked.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from dmlkit.cohort.loop import (
    PeerSpec,
    num_branches,
    warn_identical,
)
from dmlkit.config import OptimConfig
from dmlkit.optim import ELEMENTWISE, LRSchedule, build_optimizer


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
        warn_identical(specs, [m.state_dict() for m in models])
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

    @property
    def member_specs(self) -> list[PeerSpec]:
        """The peers' specs (stacked peers have no branches: one member each)."""
        return self.specs

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
