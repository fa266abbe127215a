"""The wide-minima probe: how much does the training loss rise when the weights are shaken?

Paper, Sec. 4.5: "adding the same Gaussian noise to the weights" raises the training loss of a
DML-trained network less than that of an independently trained one, which the authors read as
DML finding a wider (more robust) minimum. Here every parameter tensor ``W`` becomes
``W + sigma * s_W * eps`` with ``eps ~ N(0, I)``: ``s_W = 1`` for absolute noise, or
``s_W = std(W)`` (the tensor's own spread) for relative noise, which compares networks whose
weights have different scales fairly. BatchNorm running statistics are buffers, not weights,
and are left alone; the loss is measured in eval mode so that the perturbed network is a fixed
function of its input.

Noise draws use common random numbers: draw ``d`` uses the same ``eps`` for every sigma and,
for peers of the same architecture, for every peer and every run, so differences between
peers come from the peers and not from the luck of the draw.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.losses.dml import UNLABELLED


@dataclass
class NoiseProbe:
    """The training loss of one network under weight noise.

    Attributes:
        sigmas: the S noise levels.
        relative: whether sigma was relative to each tensor's std.
        base_loss: the loss of the unperturbed network.
        losses: ``[S, D]`` loss for each sigma and each of the D draws.
    """

    sigmas: list[float]
    relative: bool
    base_loss: float
    losses: Tensor

    @property
    def increase(self) -> Tensor:
        """``[S, D]``: the rise of the loss over the unperturbed network's."""
        return self.losses - self.base_loss


@torch.no_grad()
def training_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Mean cross-entropy of ``model`` (eval mode: BatchNorm uses running statistics).

    Args:
        model: the network; its train/eval mode is restored afterwards.
        x: ``[N, ...]`` inputs, already normalised.
        y: ``[N]`` labels; unlabelled samples (``-1``) are skipped.
        batch_size: samples per forward pass.

    Returns:
        The mean over labelled samples (``nan`` when there are none).
    """
    keep = y != UNLABELLED
    x, y = x[keep], y[keep]
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size]).float()
        total += float(F.cross_entropy(logits, y[i : i + batch_size], reduction="sum"))
    model.train(was_training)
    return total / len(y)


def _scale(p: Tensor, relative: bool) -> Tensor:
    """The per-tensor factor of the noise: 1, or the tensor's own (population) std."""
    if not relative:
        return torch.ones((), dtype=p.dtype, device=p.device)
    return p.detach().float().std(unbiased=False).to(p.dtype)


def unit_noise(model: nn.Module, seed: int) -> list[Tensor]:
    """One standard-normal tensor per parameter, from a CPU generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype)
        for p in model.parameters()
    ]


@torch.no_grad()
def perturb_(model: nn.Module, sigma: float, *, relative: bool = False, seed: int = 0) -> nn.Module:
    """Add Gaussian noise to every parameter of ``model`` in place and return it.

    Args:
        model: changed in place (deep-copy it first to keep the original).
        sigma: noise standard deviation (absolute, or relative to each tensor's std).
        relative: scale each tensor's noise by that tensor's std.
        seed: seed of the noise (the same seed gives the same noise on every device).
    """
    for p, eps in zip(model.parameters(), unit_noise(model, seed)):
        p.add_(eps * (sigma * _scale(p, relative)))
    return model


@torch.no_grad()
def noise_probe(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    sigmas: Sequence[float],
    *,
    draws: int = 5,
    relative: bool = False,
    seed: int = 0,
) -> NoiseProbe:
    """Training loss of ``model`` under weight noise of each level in ``sigmas``.

    The model itself is not changed (a copy is perturbed). ``sigma = 0`` reproduces the
    unperturbed loss exactly.

    Args:
        model: the trained network.
        x: ``[N, ...]`` a fixed subset of the training inputs (normalised, not augmented).
        y: ``[N]`` their labels (``-1`` = unlabelled, skipped).
        sigmas: S noise levels.
        draws: noise draws per level (D).
        relative: noise relative to each parameter tensor's std.
        seed: draw ``d`` uses the noise seeded with ``seed + d``.

    Returns:
        A :class:`NoiseProbe` with ``losses: [S, D]``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    base = training_loss(model, x, y)
    probe = copy.deepcopy(model).eval()
    originals = [p.detach().clone() for p in model.parameters()]
    scales = [_scale(p, relative) for p in originals]
    losses = torch.empty(len(sigmas), draws, dtype=torch.float64)
    for d in range(draws):
        noise = unit_noise(model, seed + d)
        for s, sigma in enumerate(sigmas):
            for p, w, eps, scale in zip(probe.parameters(), originals, noise, scales):
                p.copy_(w + eps * (float(sigma) * scale))
            losses[s, d] = training_loss(probe, x, y)
    return NoiseProbe([float(s) for s in sigmas], relative, base, losses)
