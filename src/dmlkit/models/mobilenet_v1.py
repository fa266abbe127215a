"""MobileNet v1 (Howard et al. 2017, arXiv 1704.04861), ImageNet layout: the re-id backbone of
Deep Mutual Learning (Zhang et al. CVPR 2018, Sec. 4.1 and Table 3, Market-1501).

A 3x3 stride-2 convolution to 32 channels, 13 depthwise-separable blocks (3x3 depthwise + 1x1
pointwise, each followed by BatchNorm and ReLU6) up to 1024 channels at stride 32, global average
pooling (the feature used for retrieval), dropout and a linear classifier over the training
identities.

Contract used by the re-id evaluation (:func:`dmlkit.engine.evaluation.evaluate_reid`):
``forward(x)`` returns logits ``[B, C]`` (train and eval), ``features(x)`` the pooled
``[B, 1024]`` feature, and in eval mode ``forward(x) == classifier(features(x))``.

ImageNet weights (``pretrained``): a local file, or ``"imagenet"``: the file named by the
environment variable ``DMLKIT_MOBILENET_V1_WEIGHTS``, else timm's ``mobilenetv1_100`` weights if
they are in timm's offline cache (Hugging Face hub cache). The module names follow timm's layout,
so timm state dicts load by name; other layouts load by position when every shape agrees. Only
the backbone is loaded: each peer keeps its own randomly initialised classifier (drawn from its
own seed) and its own dropout noise, so peers started from the same weights still disagree and
the mimicry gradient is non-zero from the first step. The weights expect inputs scaled to
[-1, 1] (mean 0.5, std 0.5), which is what the re-id data pipeline produces.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.errors import UserError, first_line
from dmlkit.models.layers import global_avg_pool
from dmlkit.models.registry import MODELS

# (output channels, stride) of the depthwise-separable blocks, grouped in stages as timm does.
STAGES: list[list[tuple[int, int]]] = [
    [(64, 1)],
    [(128, 2), (128, 1)],
    [(256, 2), (256, 1)],
    [(512, 2)] + [(512, 1)] * 5,
    [(1024, 2), (1024, 1)],
]
WEIGHTS_ENV = "DMLKIT_MOBILENET_V1_WEIGHTS"
TIMM_NAME = "mobilenetv1_100"
TIMM_HUB_PREFIX = "models--timm--mobilenetv1_100."
HOW_TO_GET_WEIGHTS = (
    "give a weights file: peers.N.kwargs.pretrained=/path/to/mobilenetv1_100.safetensors (or "
    f"set {WEIGHTS_ENV}=/path), or fill timm's cache once on a machine with network: "
    "pip install 'dmlkit[timm]' && python -c \"import timm; "
    "timm.create_model('mobilenetv1_100', pretrained=True)\""
)


def _channels(c: int, width: float) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(c * width + 4) // 8 * 8)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv - BN - ReLU6 - 1x1 pointwise conv - BN - ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, cin, H, W]`` -> ``[B, cout, H / stride, W / stride]``."""
        x = self.act(self.bn1(self.conv_dw(x)))
        return self.act(self.bn2(self.conv_pw(x)))


class MobileNetV1(nn.Module):
    """MobileNet v1 with a pooled-feature output for retrieval.

    Args:
        num_classes: output classes (751 training identities on Market-1501).
        in_channels: input channels (3 for ImageNet weights).
        width: width multiplier (1.0 = the ImageNet layout, 1024-d features).
        dropout: dropout probability before the classifier (train mode only).
        pretrained: ImageNet weights for the backbone: a file path, or ``"imagenet"`` (see the
            module docstring); None = random initialisation.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        dropout: float = 0.2,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise UserError(f"mobilenet_v1: width must be > 0, got {width}")
        if not 0 <= dropout < 1:
            raise UserError(f"mobilenet_v1: dropout must be in [0, 1), got {dropout}")
        stem = _channels(32, width)
        self.conv_stem = nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act = nn.ReLU6(inplace=True)
        stages, cin = [], stem
        for stage in STAGES:
            blocks = []
            for cout, stride in stage:
                blocks.append(DepthwiseSeparable(cin, _channels(cout, width), stride))
                cin = _channels(cout, width)
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.feature_dim = cin
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)
        self._init_weights()
        if pretrained:
            if in_channels != 3:
                raise UserError(
                    f"mobilenet_v1: ImageNet weights need in_channels=3, got {in_channels}"
                )
            load_backbone(self, resolve_weights(pretrained))

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` -> the pooled feature ``[B, 1024]`` (the re-id descriptor)."""
        x = self.act(self.bn1(self.conv_stem(x)))
        return global_avg_pool(self.blocks(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        return self.classifier(self.dropout(self.features(x)))


# --------------------------------------------------------------------------------------------
# pretrained weights


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def timm_cached_weights() -> Path | None:
    """timm's ``mobilenetv1_100`` ImageNet weights in the local cache, or None (no network)."""
    cache = _hub_cache()
    if not cache.is_dir():
        return None
    found = []
    for repo in sorted(cache.glob(TIMM_HUB_PREFIX + "*")):
        for name in ("model.safetensors", "pytorch_model.bin"):
            found += sorted(repo.glob(f"snapshots/*/{name}"))
    return found[0] if found else None


def resolve_weights(pretrained: str) -> Path:
    """The weights file for ``pretrained`` (a path, or ``"imagenet"``); UserError if none."""
    if pretrained == "imagenet":
        env = os.environ.get(WEIGHTS_ENV)
        if env:
            path = Path(env).expanduser()
            if not path.is_file():
                raise UserError(f"{WEIGHTS_ENV}={env}: no such file; {HOW_TO_GET_WEIGHTS}")
            return path
        cached = timm_cached_weights()
        if cached is None:
            raise UserError(
                f"mobilenet_v1 pretrained=imagenet: no ImageNet weights found offline "
                f"(not in {WEIGHTS_ENV}, not in timm's cache {_hub_cache()}); {HOW_TO_GET_WEIGHTS}"
            )
        return cached
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise UserError(
            f"mobilenet_v1 pretrained={pretrained}: no such file; use 'imagenet' or "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file (or a dmlkit
    checkpoint: its first peer), loaded without running code (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(
                f"{path}: reading .safetensors needs the safetensors package "
                f"(pip install safetensors, or pip install 'dmlkit[timm]')"
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not a readable weights file ({first_line(exc, 160)})") from None
    if isinstance(state, dict) and state.get("format") == "dmlkit-cohort":
        state = state["cohort"]["models"][0]
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path}: holds no state dict of tensors")
    return state


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "model.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_backbone(model: MobileNetV1, path: Path) -> None:
    """Copy every backbone tensor of the file at ``path`` into ``model`` (not the classifier).

    By name when the file uses this module's (= timm's) names, else by position when the
    sequence of shapes agrees; otherwise a UserError naming the first mismatch.
    """
    source = _strip_prefix(read_state_dict(path))
    target = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")
    }
    if all(k in source and source[k].shape == v.shape for k, v in target.items()):
        chosen = {k: source[k] for k in target}
    else:
        # scalars (BatchNorm's num_batches_tracked, whatever its name) carry no weights
        tensors = [v for v in source.values() if v.ndim > 0]
        for i, (name, want) in enumerate(target.items()):
            have = tuple(tensors[i].shape) if i < len(tensors) else None
            if have != tuple(want.shape):
                raise UserError(
                    f"{path}: not MobileNet v1 (width 1.0) weights: tensor {i} ({name}) should "
                    f"be {tuple(want.shape)}, the file has {have}; use timm's mobilenetv1_100 "
                    f"weights or a dmlkit mobilenet_v1 state dict"
                )
        chosen = dict(zip(target, tensors))
    with torch.no_grad():
        own = model.state_dict()
        for name, value in chosen.items():
            own[name].copy_(value.to(own[name].dtype))


@MODELS.register("mobilenet_v1")
def mobilenet_v1(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """MobileNet v1, width 1.0 (~3.2M backbone parameters, 1024-d features); the DML paper's
    re-id network. kwargs: ``width``, ``dropout``, ``pretrained`` (path or ``"imagenet"``)."""
    return MobileNetV1(num_classes, in_channels, **kwargs)
