"""Multi-branch CIFAR networks: what is shared at each branch point, the heads, the EMA copy."""

from __future__ import annotations

import pytest
import torch

from dmlkit.errors import ConfigError
from dmlkit.models import build_model

SMALL = {"resnet32_mb": {"depth": 8}, "wrn_mb": {"depth": 10, "widen_factor": 1}}


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.parametrize("branch_at", [0, 1, 2, 3])
def test_branches_share_exactly_the_stages_before_the_branch_point(arch, branch_at) -> None:
    torch.manual_seed(0)
    net = build_model(arch, 7, 3, branches=3, branch_at=branch_at, **SMALL[arch]).eval()
    assert len(net.trunk) == 1 + branch_at  # the stem and the shared stages
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in b.modules()) for b in net.branch_nets]
    assert len(set(convs)) == 1 and (convs[0] > 0) == (branch_at < 3)
    x = torch.randn(4, 3, 8, 8)
    out = net.branch_outputs(x)
    assert [z.shape for z in out.logits] == [torch.Size([4, 7])] * 3
    # different initial weights per branch: different predictions
    assert not torch.allclose(out.logits[0], out.logits[1])
    # forward: the log of the branches' mean probability
    mean = torch.stack([z.softmax(1) for z in out.logits]).mean(0)
    torch.testing.assert_close(net(x).exp(), mean)


def test_a_branch_gradient_reaches_the_trunk_and_not_the_other_branches() -> None:
    net = build_model("resnet32_mb", 5, 3, depth=8, branches=2)
    net.branch_logits(torch.randn(2, 3, 8, 8))[0].sum().backward()
    assert all(p.grad is None for p in net.branch_nets[1].parameters())
    assert all(p.grad is not None for p in net.trunk.parameters())


def test_heads_gate_attention_fusion() -> None:
    heads = {"gate": True, "attention": True, "fusion": True}
    net = build_model("resnet32_mb", 5, 3, depth=8, branches=3, **heads).eval()
    out = net.branch_outputs(torch.randn(4, 3, 8, 8))
    g = net.gate(out.trunk)
    assert g.shape == (4, 3) and torch.allclose(g.sum(1), torch.ones(4))
    q, k = net.attention(out.features[:2])
    assert q.shape == k.shape == (4, 2, 8)  # width 64 // 8
    assert net.fusion(out.features).shape == (4, 5)
    plain = build_model("resnet32_mb", 5, 3, depth=8)  # heads only on request
    assert not any(hasattr(plain, n) for n in ("gate_fc", "query", "fusion_fc"))


def test_temporal_mean_copy_starts_equal_has_no_gradient_and_is_saved() -> None:
    net = build_model("resnet32_mb", 5, 3, depth=8, temporal_mean=True)
    assert net.mean_net.mean_net is None  # no copy of the copy
    for a, b in zip(net.branch_nets.parameters(), net.mean_net.branch_nets.parameters()):
        assert torch.equal(a, b) and not b.requires_grad
    assert any(k.startswith("mean_net.") for k in net.state_dict())
    assert not any(k.startswith("mean_net.") for k in build_model("resnet32_mb", 5, 3).state_dict())


@pytest.mark.parametrize(
    ("kwargs", "key"), [({"branches": 1}, "branches"), ({"branch_at": 4}, "branch_at")]
)
def test_bad_arguments_name_the_key(kwargs, key) -> None:
    with pytest.raises(ConfigError, match=key):
        build_model("resnet32_mb", 5, 3, **kwargs)


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("branches", "heads", "pad", "conv"),
    [
        # ONE's network (3 branches and the gate) and OKDDip's (3 peers and the group leader,
        # with the attention's projections) at 100 classes: "conv" must equal the parameter
        # counts of the ONE and OKDDip reference code's ResNet-32 models; "pad" is ours.
        (3, {"gate": True}, 1_186_085, 1_193_189),
        (4, {"attention": True}, 1_544_992, 1_554_272),
    ],
)
def test_parameter_counts_of_the_online_kd_networks(branches, heads, pad, conv) -> None:
    for shortcut, expected in (("pad", pad), ("conv", conv)):
        net = build_model("resnet32_mb", 100, 3, branches=branches, shortcut=shortcut, **heads)
        assert _n_params(net) == expected, shortcut


def test_conv_shortcut_projects_where_the_shape_changes_only() -> None:
    net = build_model("resnet32_mb", 5, 3, depth=8, branches=2, shortcut="conv")
    projected = [m for m in net.modules() if getattr(m, "project", None) is not None]
    # stage 2 opens in the trunk (once), stage 3 in every branch (twice)
    assert len(projected) == 3
    assert all(b.project[0].kernel_size == (1, 1) for b in projected)
    out = net.branch_outputs(torch.randn(2, 3, 8, 8))
    assert all(torch.isfinite(z).all() for z in out.logits)


def test_bad_shortcut_names_the_key() -> None:
    with pytest.raises(ConfigError, match="peers\\[\\].kwargs.shortcut"):
        build_model("resnet32_mb", 5, 3, shortcut="B")
    with pytest.raises(ConfigError, match="peers\\[\\].kwargs.shortcut"):
        build_model("resnet32", 5, 3, shortcut="B")
