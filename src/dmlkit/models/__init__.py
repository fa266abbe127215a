"""Networks by name: the registry (:mod:`dmlkit.models.registry`) and the modules that fill it.

``timm:NAME``, ``torchvision:NAME`` and ``package.module:function`` names build through
:mod:`dmlkit.models.external`. Every registered model returns logits ``[B, num_classes]``
for an image batch ``[B, C, H, W]``.
"""

from __future__ import annotations

# Importing the modules registers their models.
from dmlkit.models import small  # noqa: F401
from dmlkit.models import cifar  # noqa: F401
from dmlkit.models import mobilenet_v1  # noqa: F401
from dmlkit.models import multibranch  # noqa: F401
from dmlkit.models.registry import MODELS, build_model, check_arch, list_models

__all__ = ["MODELS", "build_model", "check_arch", "list_models"]
