"""The model registry and :func:`build_model` (their own module so that model files can import it).

A model is a constructor ``fn(num_classes, in_channels, **kwargs) -> Module``. Every registered
model returns logits ``[B, num_classes]`` for an image batch ``[B, C, H, W]``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from dmlkit.errors import ConfigError
from dmlkit.registry import Registry

MODELS: Registry = Registry("model", "peers[].arch")


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; unknown names raise a ConfigError listing the valid ones.

    ``image_size`` (H, W) is passed to constructors that take an ``image_size`` argument
    (networks whose layer sizes depend on it, like the MLP); the others never see it.
    ``timm:NAME``, ``torchvision:NAME`` and ``package.module:function`` build through
    :mod:`dmlkit.models.external`.
    """
    if ":" in arch:
        from dmlkit.models.external import build_external

        return build_external(arch, num_classes, in_channels, image_size, **kwargs)
    fn = MODELS.get(arch)
    if image_size is not None and "image_size" in inspect.signature(fn).parameters:
        kwargs.setdefault("image_size", tuple(image_size))
    try:
        return fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise ConfigError(
            f"peers[].kwargs for model {arch!r}: {exc}; see the docstring of dmlkit.models "
            f"'{arch}' for its arguments"
        ) from None


def accepts(arch: str, argument: str) -> bool:
    """Whether the constructor of the registered model ``arch`` takes ``argument`` (a
    ``timm:`` / ``torchvision:`` / import-path arch: no)."""
    if ":" in arch:
        return False
    return argument in inspect.signature(MODELS.get(arch)).parameters


def check_arch(arch: str, key: str) -> None:
    """Raise a ConfigError naming ``key`` if ``arch`` names no model (nothing is built)."""
    if ":" in arch:
        from dmlkit.models.external import check_arch as check_external

        check_external(arch, key)
    else:
        MODELS.get(arch, key=key)


def list_models() -> list[str]:
    return MODELS.names()
