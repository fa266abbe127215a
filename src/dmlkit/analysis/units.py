"""Dead units: ReLU channels that never fire, the signature of a collapsed peer.

A ReLU network whose units all output 0 on every input has constant logits and receives no
gradient below them: it is stuck at chance for good. On the digits this happens to DML peers
that took a few very large early steps (high learning rate, or a strong early mimicry term
between confidently disagreeing peers): BatchNorm's shift is pushed so far negative that
every unit of a layer is off (see ``docs/digits-why.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def dead_units(model: nn.Module, x: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ReLU units that output 0 on every sample of ``x`` (eval mode).

    A unit is a channel of a convolutional activation ``[B, C, H, W]`` (dead when 0 at every
    position of every image) or a feature of a dense one ``[B, F]``. Only ``nn.ReLU`` modules
    are seen (a functional ``F.relu`` inside ``forward`` is not).

    Args:
        model: the network; its train/eval mode is restored afterwards.
        x: ``[N, ...]`` inputs.
        batch_size: samples per forward pass.

    Returns:
        Dead units / all units over every ReLU module, or ``nan`` when the model has none.
    """
    alive: dict[nn.Module, Tensor] = {}

    def hook(module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        fired = out > 0
        if fired.dim() > 2:
            fired = fired.flatten(2).any(dim=2)  # [B, C]
        fired = fired.any(dim=0)
        alive[module] = alive[module] | fired if module in alive else fired

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = sum(v.numel() for v in alive.values())
    if total == 0:
        return float("nan")
    return sum(int((~v).sum()) for v in alive.values()) / total
