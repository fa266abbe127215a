"""The four CIFAR-100 networks of the paper (Zhang et al., CVPR 2018, Sec. 4.1 and Table 1).

* ``resnet32``: the CIFAR ResNet of He et al. (2016), 3 stages x 5 basic blocks, 16/32/64
  channels, parameter-free shortcuts; ~0.47M parameters at 100 classes ("typical student size").
  ``shortcut="conv"`` gives the 1x1-conv shortcuts of the online-distillation codes.
* ``mobilenet``: MobileNet v1 (Howard et al., 2017) adapted to 32x32 inputs; ~3.3M parameters.
* ``inception_v1``: GoogLeNet (Szegedy et al., 2015) adapted to 32x32 inputs, with BatchNorm.
* ``wrn28_10``: Wide ResNet 28-10 (Zagoruyko & Komodakis, 2016); ~36.5M parameters
  ("typical teacher size").

The paper does not say how MobileNet and InceptionV1 were adapted to 32x32; the adaptations
below are stated in each class's docstring. Every network ends in a global average pool, so it
also accepts smaller inputs (down to 8x8, as the registry tests use).

Initialisation draws from the global torch RNG, which :meth:`dmlkit.cohort.PeerSpec.build` seeds
per peer: two peers of the same architecture start from different weights (the paper's "peers
start from different initial conditions").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.errors import ConfigError
from dmlkit.models.layers import global_avg_pool
from dmlkit.models.registry import MODELS


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions (fan-out, as in the ResNet/WRN reference code), unit BatchNorm.

    Linear layers keep PyTorch's default (uniform) initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn_relu(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


# ------------------------------------------------------------------------------------------------
# ResNet-32 (He et al. 2016, Sec. 4.2: the CIFAR-10 networks of depth 6n + 2)


SHORTCUTS = ("pad", "conv")


def check_shortcut(shortcut: str) -> None:
    """Raise ConfigError unless ``shortcut`` is one of :data:`SHORTCUTS`."""
    if shortcut not in SHORTCUTS:
        raise ConfigError(
            f"peers[].kwargs.shortcut must be 'pad' (parameter-free, the DML paper's ResNet-32) "
            f"or 'conv' (1x1 conv + BN, the online-distillation codes'), got {shortcut!r}"
        )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (post-activation, as in He et al. 2016).

    When the block halves the resolution and doubles the channels, the shortcut is either

    * ``"pad"``: subsample the input and pad the new channels with zeros ("option A" of the
      ResNet paper's CIFAR experiments): parameter-free, which is what keeps ResNet-32 at
      ~0.47M parameters (100 classes), the size the DML paper states;
    * ``"conv"``: a strided 1x1 convolution and BatchNorm ("option B"), which the public code
      of ONE, OKDDip and the PCL reimplementation use (their ResNet-32 networks are larger by
      these projections).

    Args:
        cin: input channels.
        cout: output channels.
        stride: 1, or 2 to halve the resolution.
        shortcut: ``"pad"`` or ``"conv"`` (only used where the shape changes).
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "pad") -> None:
        super().__init__()
        check_shortcut(shortcut)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.pad = cout - cin
        self.project: nn.Module | None = None
        if shortcut == "conv" and (stride > 1 or cin != cout):
            self.project = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )

    def shortcut(self, x: Tensor) -> Tensor:
        if self.project is not None:
            return self.project(x)
        if self.stride > 1:
            # == x[:, :, ::s, ::s], but its gradient keeps x's memory format (the slice's
            # backward scatters into a contiguous NCHW buffer; see global_avg_pool)
            x = F.avg_pool2d(x, 1, self.stride)
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))  # zero channels appended
        return x

    def forward(self, x: Tensor) -> Tensor:
        # In place where autograd allows it (BN backward needs its input, not its output; ReLU
        # backward needs its output): fewer passes over the largest activations.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class CifarResNet(nn.Module):
    """ResNet for 32x32 images: a 3x3 conv, 3 stages of n basic blocks (16, 32, 64 channels,
    strides 1, 2, 2), global average pool, linear classifier. Depth = 6n + 2 weighted layers.

    Args:
        num_classes: output classes C.
        in_channels: input channels.
        depth: 6n + 2; 32 (n = 5) is the paper's ResNet-32.
        shortcut: ``"pad"`` (parameter-free, the default) or ``"conv"`` (1x1 conv + BN), see
            :class:`BasicBlock`.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, depth: int = 32, shortcut: str = "pad"
    ) -> None:
        super().__init__()
        check_shortcut(shortcut)
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"peers[].kwargs.depth of the CIFAR ResNet must be 6n + 2 (e.g. 20, 32, 56), "
                f"got {depth}"
            )
        n = (depth - 2) // 6
        self.stem = conv_bn_relu(in_channels, 16, 3)
        blocks: list[nn.Module] = []
        cin = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(cin, width, stride if i == 0 else 1, shortcut))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        return self.fc(global_avg_pool(self.blocks(self.stem(x))))


# ------------------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis 2016)


class WideBlock(nn.Module):
    """Pre-activation block of the WRN paper: BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3.

    A 1x1 convolution on the pre-activated input forms the shortcut when the shape changes.
    """

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.project = (
            nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout or stride > 1 else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x), inplace=True)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out), inplace=True)))
        return out + (self.project(pre) if self.project is not None else x)


class WideResNet(nn.Module):
    """WRN-d-k: a 3x3 conv (16), 3 groups of (d - 4) / 6 wide blocks (16k, 32k, 64k channels,
    strides 1, 2, 2), BN-ReLU, global average pool, linear classifier.

    Args:
        num_classes: output classes C.
        in_channels: input channels.
        depth: 6n + 4 (28 for WRN-28-10).
        widen_factor: k (10 for WRN-28-10).
        dropout: dropout between the two convolutions of a block. The DML paper does not say;
            0 (the default) is the WRN paper's plain setting, 0.3 its best CIFAR variant.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(
                f"peers[].kwargs.depth of the Wide ResNet must be 6n + 4 (e.g. 16, 28, 40), "
                f"got {depth}"
            )
        if widen_factor < 1:
            raise ConfigError(f"peers[].kwargs.widen_factor must be >= 1, got {widen_factor}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"peers[].kwargs.dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = 16
        for width, stride in zip(widths, (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBlock(cin, width, stride if i == 0 else 1, dropout))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        x = F.relu(self.bn(self.blocks(self.stem(x))), inplace=True)
        return self.fc(global_avg_pool(x))


# ------------------------------------------------------------------------------------------------
# MobileNet v1 (Howard et al. 2017)

# (output channels, stride) of the 13 depthwise-separable layers, as in Table 1 of the paper.
_MOBILENET_LAYERS = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *[(512, 1)] * 5,
    (1024, 2),
    (1024, 1),
]


class CifarMobileNetV1(nn.Module):
    """MobileNet v1 (width 1.0) for 32x32 images (registry name ``mobilenet``).

    The ImageNet layout (the re-id backbone ``mobilenet_v1``) is
    :class:`dmlkit.models.mobilenet_v1.MobileNetV1`.

    Adaptation: the first 3x3 convolution has stride 1 instead of 2; every other layer is the
    ImageNet network's. Why: on ImageNet the network downsamples 224 -> 7 (x32); on a 32x32
    image the same strides would leave a 1x1 map already before the last stage (the final
    1024-channel layers would see a single pixel). With the stem's stride removed the total is
    x16 (32 -> 16 -> 8 -> 4 -> 2), and the 4 remaining stride-2 layers keep their place in the
    depthwise stack. Strides carry no parameters, so the count is the ImageNet network's with
    a C-way classifier: ~3.3M at 100 classes.

    Args:
        num_classes: output classes C.
        in_channels: input channels.
        dropout: dropout before the classifier (MobileNet v1 on ImageNet used none).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, 32, 3, stride=1)]
        cin = 32
        for cout, stride in _MOBILENET_LAYERS:
            layers.append(conv_bn_relu(cin, cin, 3, stride, groups=cin))  # depthwise
            layers.append(conv_bn_relu(cin, cout, 1))  # pointwise
            cin = cout
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        return self.fc(self.dropout(global_avg_pool(self.features(x))))


# ------------------------------------------------------------------------------------------------
# Inception v1 / GoogLeNet (Szegedy et al. 2015)


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> 5x5;
    3x3 max-pool (stride 1) -> 1x1. Every convolution is conv-BN-ReLU.
    """

    def __init__(
        self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int
    ) -> None:
        super().__init__()
        self.b1 = conv_bn_relu(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn_relu(cin, c3r, 1), conv_bn_relu(c3r, c3, 3))
        self.b5 = nn.Sequential(conv_bn_relu(cin, c5r, 1), conv_bn_relu(c5r, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(cin, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, cin, H, W]`` -> ``[B, out_channels, H, W]``."""
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


# (c1, c3 reduce, c3, c5 reduce, c5, pool proj) of each module, Table 1 of the GoogLeNet paper;
# "pool" marks a 3x3 stride-2 max-pool.
_INCEPTION_LAYOUT: list[tuple[int, ...] | str] = [
    (64, 96, 128, 16, 32, 32),  # 3a -> 256
    (128, 128, 192, 32, 96, 64),  # 3b -> 480
    "pool",
    (192, 96, 208, 16, 48, 64),  # 4a -> 512
    (160, 112, 224, 24, 64, 64),  # 4b -> 512
    (128, 128, 256, 24, 64, 64),  # 4c -> 512
    (112, 144, 288, 32, 64, 64),  # 4d -> 528
    (256, 160, 320, 32, 128, 128),  # 4e -> 832
    "pool",
    (256, 160, 320, 32, 128, 128),  # 5a -> 832
    (384, 192, 384, 48, 128, 128),  # 5b -> 1024
]


class InceptionV1(nn.Module):
    """GoogLeNet (Inception v1) for 32x32 images.

    Adaptation: the ImageNet stem (7x7/2 conv, 3x3/2 max-pool, LRN, 1x1 conv, 3x3 conv, LRN,
    3x3/2 max-pool) downsamples x8 before the first Inception module; on a 32x32 image that
    would leave 4x4 maps for modules 3a-3b and 1x1 for 5a-5b. Here the stem keeps its
    convolutions but not their downsampling: 3x3/1 conv (64), 1x1 conv (64), 3x3/1 conv (192),
    no max-pools, no LRN. The nine Inception modules and the two stride-2 max-pools between
    them are the paper's, so they run at 32x32 (3a-3b), 16x16 (4a-4e) and 8x8 (5a-5b). Every
    convolution is followed by BatchNorm (GoogLeNet predates it; it lets the net train from
    scratch with the WRN recipe's LR of 0.1), and the two auxiliary classifiers are left out
    (a training aid for ImageNet; DML's losses are on the final logits).

    Args:
        num_classes: output classes C.
        in_channels: input channels.
        dropout: dropout before the classifier (0.4 in GoogLeNet).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn_relu(in_channels, 64, 3),
            conv_bn_relu(64, 64, 1),
            conv_bn_relu(64, 192, 3),
        )
        layers: list[nn.Module] = []
        cin = 192
        for spec in _INCEPTION_LAYOUT:
            if spec == "pool":
                layers.append(nn.MaxPool2d(3, 2, 1))
            else:
                module = InceptionModule(cin, *spec)
                layers.append(module)
                cin = module.out_channels
        self.inception = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        return self.fc(self.dropout(global_avg_pool(self.inception(self.stem(x)))))


# ------------------------------------------------------------------------------------------------
# registered constructors


@MODELS.register("resnet32")
def resnet32(num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """CIFAR ResNet-32 (0.470M parameters at 100 classes); ``depth`` gives other 6n + 2,
    ``shortcut="conv"`` 1x1-conv shortcuts (0.473M)."""
    return CifarResNet(num_classes, in_channels, **kwargs)


@MODELS.register("wrn28_10")
def wrn28_10(num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Wide ResNet 28-10 (36.5M parameters at 100 classes); options depth, widen_factor,
    dropout."""
    return WideResNet(num_classes, in_channels, **kwargs)


@MODELS.register("mobilenet")
def mobilenet(num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """MobileNet v1 for 32x32 inputs (3.3M parameters at 100 classes); option dropout."""
    return CifarMobileNetV1(num_classes, in_channels, **kwargs)


@MODELS.register("inception_v1")
def inception_v1(num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """GoogLeNet / Inception v1 for 32x32 inputs (6.1M parameters at 100 classes)."""
    return InceptionV1(num_classes, in_channels, **kwargs)
