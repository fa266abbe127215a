"""Model registry. A model is a constructor ``fn(num_classes, in_channels, **kwargs) -> Module``.

Every registered model returns logits ``[B, num_classes]`` for an image batch ``[B, C, H, W]``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dmlkit.registry import Registry

MODELS: Registry = Registry("model", "peers[].arch")


def build_model(arch: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names raise a ConfigError listing the valid ones."""
    return MODELS.get(arch)(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models() -> list[str]:
    return MODELS.names()


# Importing the modules registers their models.
from dmlkit.models import small  # noqa: E402,F401
