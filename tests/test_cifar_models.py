"""The paper's four CIFAR networks: parameter counts, shapes at 32x32, stated adaptations.

Forward/backward on small inputs, per-peer seeding and kwargs errors of every registered model
are covered by tests/test_models.py (parametrised over the registry).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dmlkit.cohort import PeerSpec
from dmlkit.errors import ConfigError
from dmlkit.models import build_model
from dmlkit.models.cifar import CifarMobileNetV1, InceptionModule, WideBlock


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Counted at 100 classes; the paper quotes ~0.47M (ResNet-32), ~3.3M (MobileNet), ~36.5M
# (WRN-28-10) and gives no count for InceptionV1.
EXPECTED = {
    "resnet32": (470_004, 0.46e6, 0.48e6, 64),
    "mobilenet": (3_309_476, 3.2e6, 3.35e6, 1024),
    "inception_v1": (6_075_652, 5.9e6, 6.2e6, 1024),
    "wrn28_10": (36_536_884, 36.4e6, 36.6e6, 640),
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_parameter_counts(arch):
    exact, low, high, features = EXPECTED[arch]
    n100 = n_params(build_model(arch, num_classes=100, in_channels=3))
    assert n100 == exact
    assert low <= n100 <= high
    # num_classes only changes the classifier: (features + 1) per class
    n10 = n_params(build_model(arch, num_classes=10, in_channels=3))
    assert n100 - n10 == 90 * (features + 1)


def spatial_sizes(model: nn.Module, kind: type, x: torch.Tensor) -> list[int]:
    """Output height of every submodule of type ``kind`` during one forward pass."""
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
        for m in model.modules()
        if isinstance(m, kind)
    ]
    with torch.no_grad():
        logits = model.eval()(x)
    for h in hooks:
        h.remove()
    assert logits.shape == (x.shape[0], 100)
    assert torch.isfinite(logits).all()
    return sizes


def test_resnet32_structure_at_32x32():
    torch.manual_seed(0)
    model = build_model("resnet32", 100, 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 32  # 6n + 2 weighted layers, n = 5
    assert [c.out_channels for c in convs[1::2][::5]] == [16, 32, 64]  # 3 stages of 5 blocks
    assert all(c.kernel_size == (3, 3) for c in convs)  # parameter-free shortcuts (option A)
    from dmlkit.models.cifar import BasicBlock

    sizes = spatial_sizes(model, BasicBlock, torch.randn(2, 3, 32, 32))
    assert sizes == [32] * 5 + [16] * 5 + [8] * 5


def test_resnet_depth_kwarg():
    assert n_params(build_model("resnet32", 10, 3, depth=20)) < n_params(
        build_model("resnet32", 10, 3)
    )
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        build_model("resnet32", 10, 3, depth=33)


def test_mobilenet_adaptation_at_32x32():
    torch.manual_seed(0)
    model = build_model("mobilenet", 100, 3)
    assert isinstance(model, CifarMobileNetV1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups == c.in_channels and c.groups > 1]
    assert len(depthwise) == 13
    assert convs[0].stride == (1, 1)  # the one stride changed from ImageNet's MobileNet
    assert [c.stride[0] for c in depthwise].count(2) == 4  # the others kept
    sizes = spatial_sizes(model, nn.Conv2d, torch.randn(2, 3, 32, 32))
    assert sizes[0] == 32 and sizes[-1] == 2  # 32 -> 2 (x16), not 32 -> 1


def test_inception_adaptation_at_32x32():
    torch.manual_seed(0)
    model = build_model("inception_v1", 100, 3)
    sizes = spatial_sizes(model, InceptionModule, torch.randn(1, 3, 32, 32))
    assert sizes == [32, 32, 16, 16, 16, 16, 16, 8, 8]  # 3a-3b, 4a-4e, 5a-5b
    outs = [m.out_channels for m in model.modules() if isinstance(m, InceptionModule)]
    assert outs == [256, 480, 512, 512, 512, 528, 832, 832, 1024]  # GoogLeNet's Table 1


def test_wrn28_10_structure_at_32x32():
    torch.manual_seed(0)
    model = build_model("wrn28_10", 100, 3)
    blocks = [m for m in model.modules() if isinstance(m, WideBlock)]
    assert len(blocks) == 12  # (28 - 4) / 6 = 4 per group
    assert [b.conv2.out_channels for b in blocks[::4]] == [160, 320, 640]
    sizes = spatial_sizes(model, WideBlock, torch.randn(1, 3, 32, 32))
    assert sizes == [32] * 4 + [16] * 4 + [8] * 4


def test_wrn_dropout_option():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    plain = build_model("wrn28_10", 10, 3, depth=10, widen_factor=1).train()
    with torch.no_grad():
        assert torch.equal(plain(x), plain(x))  # no dropout by default
    drop = build_model("wrn28_10", 10, 3, depth=10, widen_factor=1, dropout=0.5).train()
    with torch.no_grad():
        assert not torch.allclose(drop(x), drop(x))
        drop.eval()
        assert torch.equal(drop(x), drop(x))
    with pytest.raises(ConfigError, match="6n \\+ 4"):
        build_model("wrn28_10", 10, 3, depth=27)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("wrn28_10", 10, 3, dropout=1.5)


@pytest.mark.parametrize("arch", ["resnet32", "mobilenet"])
def test_two_peers_of_one_arch_start_apart(arch):
    """The paper's peers start from different initial conditions: per-peer seeds."""
    a = PeerSpec(name="a", arch=arch, num_classes=100, in_channels=3, seed=1).build()
    b = PeerSpec(name="b", arch=arch, num_classes=100, in_channels=3, seed=18).build()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a.eval()(x), b.eval()(x))


def _channels_fastest(t: torch.Tensor) -> bool:
    """Channels-last order: channel stride 1 (a channels-last tensor, or the global pool's
    gradient broadcast over H x W). A contiguous NCHW tensor has channel stride H * W."""
    return t.dim() == 4 and t.stride(1) == 1 and t.shape[2] * t.shape[3] > 1


@pytest.mark.parametrize("shortcut", ["pad", "conv"])
def test_resnet_gradients_keep_channels_last(shortcut):
    """Every activation gradient of a channels-last ResNet stays channels-last: a contiguous
    gradient meeting channels-last activations sends the ReLU backward down a strided path
    (measured ~20x slower on the CPU). The shortcut (subsample + zero channels) and the global
    pool are the two places that used to break it."""
    from dmlkit.models.cifar import BasicBlock

    model = build_model("resnet32", 10, 3, depth=14, shortcut=shortcut)
    model = model.to(memory_format=torch.channels_last)
    grads = []

    def watch(_module, _inputs, out):
        out.register_hook(grads.append)  # returns None: the output is left as it is

    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.register_forward_hook(watch)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    model(x).square().sum().backward()
    assert len(grads) == 6 and all(_channels_fastest(g) for g in grads)


def test_resnet_shortcut_is_subsample_and_zero_channels():
    from dmlkit.models.cifar import BasicBlock

    block = BasicBlock(4, 8, 2)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    out = block.shortcut(x)
    assert torch.equal(out[:, :4], x[:, :, ::2, ::2]) and not out[:, 4:].any()
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
    expected = torch.zeros_like(x)
    expected[:, :, ::2, ::2] = 1
    assert torch.equal(g, expected)


def test_resnet_conv_shortcut_is_a_strided_1x1_conv_and_bn():
    from dmlkit.models.cifar import BasicBlock

    torch.manual_seed(0)
    block = BasicBlock(4, 8, 2, shortcut="conv").eval()
    x = torch.randn(2, 4, 6, 6)
    conv, bn = block.project
    expected = bn(torch.nn.functional.conv2d(x, conv.weight, stride=2))
    torch.testing.assert_close(block.shortcut(x), expected)
    # where the shape is kept, the shortcut is the identity whatever the option
    same = BasicBlock(8, 8, 1, shortcut="conv")
    assert same.project is None
    y = torch.randn(2, 8, 6, 6)
    assert torch.equal(same.shortcut(y), y)
    # ResNet-32 with conv shortcuts: two projections, 32 * 16 + 2 * 32 and 64 * 32 + 2 * 64
    pad = n_params(build_model("resnet32", 100, 3))
    conv_net = n_params(build_model("resnet32", 100, 3, shortcut="conv"))
    assert conv_net - pad == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
