"""Small networks for small images (the bundled 8x8 digits, quick tests, toy cohorts)."""

from __future__ import annotations

from torch import Tensor, nn

from dmlkit.models.registry import MODELS


class SmallCNN(nn.Module):
    """Two conv blocks (conv-BN-ReLU, max-pool) and a linear classifier.

    Works for any input of at least 4x4 pixels thanks to the adaptive pooling.

    Args:
        num_classes: output classes C.
        in_channels: input channels.
        width: channels of the first block (the second has 2x).
        dropout: dropout probability before the classifier.
        batchnorm: use BatchNorm after each convolution.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: int = 32,
        dropout: float = 0.0,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            norm: nn.Module = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm), norm, nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        return self.classifier(self.dropout(self.features(x)))


class MLP(nn.Module):
    """Flatten, hidden layers with ReLU, linear classifier.

    Args:
        num_classes: output classes C.
        in_channels: input channels.
        image_size: input (H, W); the first layer takes ``in_channels * H * W`` features.
        hidden: sizes of the hidden layers.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: tuple[int, int] = (8, 8),
        hidden: tuple[int, ...] | list[int] = (128,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_channels * image_size[0] * image_size[1]
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C_in, H, W]`` with ``(H, W) == image_size`` -> logits ``[B, num_classes]``."""
        return self.net(x)


@MODELS.register("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, **kwargs) -> nn.Module:
    """SmallCNN, width 32 (~0.03M parameters at 10 classes)."""
    return SmallCNN(num_classes, in_channels, **kwargs)


@MODELS.register("mlp")
def mlp(
    num_classes: int, in_channels: int = 1, image_size: tuple[int, int] = (8, 8), **kwargs
) -> nn.Module:
    """MLP on the flattened image (default: one hidden layer of 128 units)."""
    return MLP(num_classes, in_channels, image_size, **kwargs)
