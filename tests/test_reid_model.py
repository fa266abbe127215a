"""mobilenet_v1: the ImageNet layout, the features/logits contract, and pretrained weights."""

from __future__ import annotations

import pytest
import torch

from dmlkit.cohort import PeerSpec
from dmlkit.errors import UserError
from dmlkit.losses import mimicry_term
from dmlkit.models import build_model
from dmlkit.models.mobilenet_v1 import WEIGHTS_ENV, MobileNetV1

BACKBONE_PARAMS = 3_206_976  # MobileNet v1 1.0 without its classifier (timm: 4,231,976 - 1,025,000)


def backbone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """An 'ImageNet' state dict in timm's layout (random values, 1000 classes, BN stats set)."""
    torch.manual_seed(0)
    model = MobileNetV1(1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("weights") / "mobilenetv1_100.pth"
    torch.save(model.state_dict(), path)
    return path


def test_imagenet_layout_and_feature_contract():
    model = build_model("mobilenet_v1", 751, 3)
    n_backbone = sum(p.numel() for n, p in model.named_parameters() if "classifier" not in n)
    assert n_backbone == BACKBONE_PARAMS
    assert model.classifier.in_features == model.feature_dim == 1024
    model.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert feats.shape == (2, 1024) and logits.shape == (2, 751)
    torch.testing.assert_close(logits, model.classifier(feats))  # eval: no dropout


def test_dropout_before_the_classifier_in_train_mode():
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", 10, 3, width=0.25, dropout=0.5).train()
    x = torch.randn(4, 3, 32, 16)
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # two dropout masks
    with pytest.raises(UserError, match="dropout"):
        build_model("mobilenet_v1", 10, 3, dropout=1.5)


def test_pretrained_backbone_loaded_heads_independent(weights_file):
    source = torch.load(weights_file, weights_only=True)
    specs = [
        PeerSpec(f"p{i}", "mobilenet_v1", 751, 3, seed=i, kwargs={"pretrained": str(weights_file)})
        for i in range(2)
    ]
    a, b = (s.build() for s in specs)
    for model in (a, b):
        for key, value in backbone(model).items():
            assert torch.equal(value, source[key]), key
    assert a.classifier.weight.shape == (751, 1024)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)  # own seeds


def test_same_pretrained_peers_have_nonzero_mimicry_gradient_at_step_one(weights_file):
    """The torchreid-DML bug: peers deep-copied from one another -> zero mimicry. Not here."""
    kwargs = {"pretrained": str(weights_file)}
    peers = [
        PeerSpec(f"p{i}", "mobilenet_v1", 20, 3, seed=i, kwargs=kwargs).build() for i in (0, 1)
    ]
    x = torch.randn(4, 3, 32, 16)
    logits = [p.train()(x) for p in peers]
    for k, peer in enumerate(peers):
        peer.zero_grad()
        mim = mimicry_term(logits[k], [logits[1 - k]])
        assert mim.item() > 0
        mim.backward(retain_graph=True)
        stem = peer.conv_stem.weight.grad
        assert stem is not None and stem.abs().sum() > 0  # reaches the shared backbone
        assert peer.classifier.weight.grad.abs().sum() > 0


def test_positional_loading_of_another_layout(weights_file, tmp_path):
    source = torch.load(weights_file, weights_only=True)
    renamed = {f"module.layer{i:03d}": v for i, v in enumerate(source.values())}
    path = tmp_path / "renamed.pt"
    torch.save({"state_dict": renamed}, path)
    model = build_model("mobilenet_v1", 5, 3, pretrained=str(path))
    for key, value in backbone(model).items():
        assert torch.equal(value, source[key]), key


def test_wrong_or_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no such file"):
        build_model("mobilenet_v1", 5, 3, pretrained=str(tmp_path / "none.pth"))
    small = tmp_path / "small.pth"
    torch.save(MobileNetV1(10, width=0.5).state_dict(), small)
    with pytest.raises(UserError, match=r"not MobileNet v1 .*should be \(32, 3, 3, 3\)"):
        build_model("mobilenet_v1", 5, 3, pretrained=str(small))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable weights file"):
        build_model("mobilenet_v1", 5, 3, pretrained=str(junk))
    with pytest.raises(UserError, match="in_channels=3"):
        build_model("mobilenet_v1", 5, 1, pretrained=str(small))
    # 'imagenet' with no environment variable and an empty cache: says how to get weights
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError) as info:
        build_model("mobilenet_v1", 5, 3, pretrained="imagenet")
    msg = str(info.value)
    assert WEIGHTS_ENV in msg and "timm.create_model('mobilenetv1_100', pretrained=True)" in msg
    assert "\n" not in msg


def test_imagenet_from_environment_variable(weights_file, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_file))
    model = build_model("mobilenet_v1", 5, 3, pretrained="imagenet")
    assert torch.equal(model.conv_stem.weight, torch.load(weights_file)["conv_stem.weight"])


def test_imagenet_from_timm_cache(weights_file, tmp_path, monkeypatch):
    safetensors = pytest.importorskip("safetensors.torch")
    snapshot = tmp_path / "hub" / "models--timm--mobilenetv1_100.ra4_e3600_r224_in1k"
    (snapshot / "snapshots" / "abc123").mkdir(parents=True)
    state = torch.load(weights_file, weights_only=True)
    safetensors.save_file(state, str(snapshot / "snapshots" / "abc123" / "model.safetensors"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = build_model("mobilenet_v1", 5, 3, pretrained="imagenet")
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])


def test_timm_weights_give_timm_features(tmp_path):
    """Loaded into mobilenet_v1, a timm mobilenetv1_100 state dict computes timm's features."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), path)
    ours = build_model("mobilenet_v1", 751, 3, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        torch.testing.assert_close(ours.features(x), expected, atol=1e-5, rtol=1e-5)
