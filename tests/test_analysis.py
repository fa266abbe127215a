"""The analysis measurements as functions: weight noise, entropy, agreement, curves."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmlkit.analysis import agreement, entropy, entropy_of_probs, noise_probe, perturb_
from dmlkit.analysis.curves import eval_curves, train_curves
from dmlkit.analysis.minima import training_loss
from dmlkit.losses import mimicry_term
from dmlkit.models import build_model


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", 10, 1, (8, 8), width=8)


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Fit the data (so that the weights sit near a minimum, where noise can only hurt)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_noise_zero_leaves_the_loss_unchanged_and_the_model_untouched():
    x, y = _data()
    model = _trained(_bn_net(), x, y)  # trained: BatchNorm has real running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = training_loss(model, x, y)
    for relative in (False, True):
        probe = noise_probe(model, x, y, [0.0, 0.05, 0.5], draws=3, relative=relative, seed=7)
        assert probe.base_loss == base
        assert probe.losses[0].tolist() == [base] * 3  # exactly: W + 0 * eps == W
        assert torch.all(probe.increase[0] == 0)
        assert torch.all(probe.losses[2] != base)
        # more noise, larger rise (averaged over draws)
        assert probe.increase[2].mean() > probe.increase[1].mean() > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers
    assert model.training  # mode restored


def test_noise_probe_uses_bn_running_statistics_and_fixed_draws():
    model, (x, y) = _bn_net(), _data()
    model.train()
    with torch.no_grad():
        model(x * 3 + 1)
    # eval mode: the loss of a batch does not depend on the other samples of the batch
    assert training_loss(model, x, y, batch_size=7) == pytest.approx(
        training_loss(model, x, y, batch_size=64), rel=1e-6
    )
    a = noise_probe(model, x, y, [0.1], draws=2, seed=3)
    b = noise_probe(model, x, y, [0.1], draws=2, seed=3)
    c = noise_probe(model, x, y, [0.1], draws=2, seed=4)
    assert torch.equal(a.losses, b.losses)
    assert not torch.equal(a.losses, c.losses)
    # unlabelled samples (-1) take no part in the loss
    y_semi = y.clone()
    y_semi[::2] = -1
    assert training_loss(model, x, y_semi) == pytest.approx(
        training_loss(model, x[1::2], y[1::2]), rel=1e-6
    )


def test_relative_noise_is_scaled_by_each_tensor_std():
    layer = nn.Linear(200, 300)
    with torch.no_grad():
        layer.weight.mul_(10)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    perturb_(layer, 0.1, relative=True, seed=0)
    dw, db = layer.weight.detach() - w, layer.bias.detach() - b
    assert dw.std().item() == pytest.approx(0.1 * w.std(unbiased=False).item(), rel=0.02)
    assert db.std().item() == pytest.approx(0.1 * b.std(unbiased=False).item(), rel=0.2)
    layer2 = nn.Linear(200, 300)
    w2 = layer2.weight.detach().clone()
    perturb_(layer2, 0.1, relative=False, seed=0)
    assert (layer2.weight.detach() - w2).std().item() == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("c", [2, 10, 100])
def test_entropy_of_uniform_is_log_c_and_of_one_hot_is_zero(c):
    assert entropy(torch.zeros(5, c)).tolist() == pytest.approx([math.log(c)] * 5, rel=1e-6)
    assert entropy_of_probs(torch.full((3, c), 1.0 / c)).tolist() == pytest.approx(
        [math.log(c)] * 3, rel=1e-6
    )
    one_hot = torch.nn.functional.one_hot(torch.arange(3) % c, c).float()
    assert entropy_of_probs(one_hot).tolist() == [0.0, 0.0, 0.0]
    confident = one_hot * 1e4  # logits: p is one-hot to float precision
    h = entropy(confident)
    assert torch.isfinite(h).all() and h.max() < 1e-6
    # in between: two equally likely classes -> log 2
    two = torch.full((1, c), -1e4)
    two[0, :2] = 0
    assert entropy(two).item() == pytest.approx(math.log(2), rel=1e-6)


def test_agreement_of_a_cohort_with_itself_is_one_and_its_kl_zero():
    z = torch.randn(50, 10)
    a = agreement([z, z.clone(), z.clone()])
    assert a["all_agree"] == 1.0 and a["pairwise_agree"] == 1.0
    assert a["pairwise_kl"] == pytest.approx(0.0, abs=1e-7)
    single = agreement([z])
    assert single["all_agree"] == 1.0 and single["pairwise_kl"] is None


def test_agreement_counts_disagreements_and_kl_is_the_mean_over_ordered_pairs():
    eye = torch.eye(3) * 5
    z1 = eye[[0, 1, 2, 0]]
    z2 = eye[[0, 1, 2, 1]]  # disagrees on the last sample
    z3 = eye[[0, 1, 0, 2]]  # disagrees with both on the last two
    a = agreement([z1, z2, z3])
    assert a["all_agree"] == pytest.approx(0.5)
    assert a["pairwise_agree"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    lp = [torch.log_softmax(z, 1) for z in (z1, z2)]
    kl12 = (lp[0].exp() * (lp[0] - lp[1])).sum(1).mean()
    kl21 = (lp[1].exp() * (lp[1] - lp[0])).sum(1).mean()
    assert agreement([z1, z2])["pairwise_kl"] == pytest.approx(float(kl12 + kl21) / 2, rel=1e-6)


def test_curves_read_the_log_keeping_the_last_record_of_a_repeated_epoch():
    records = [
        {"epoch": 1, "split": "train", "peer": "a", "ce": 2.0, "mimicry": 0.5, "loss": 2.5},
        {"epoch": 2, "split": "train", "peer": "a", "ce": 9.0, "mimicry": 0.0, "loss": 9.0},
        {"epoch": 2, "split": "train", "peer": "a", "ce": 1.0, "mimicry": 0.2, "loss": 1.2},
        {"epoch": 2, "split": "val", "peer": "a", "top1": 0.9, "ce": 0.3},
        {"epoch": 2, "split": "val", "peer": "ensemble", "top1": 0.95, "ce": 0.2},
        {"epoch": 2, "split": "test", "peer": "a", "top1": 0.8, "ce": 0.4},
    ]
    curves = train_curves(records)
    assert curves["a"]["epoch"] == [1, 2] and curves["a"]["ce"] == [2.0, 1.0]
    assert curves["a"]["mimicry"] == [0.5, 0.2]
    assert math.isnan(curves["a"]["lr"][0])  # an absent key reads NaN, not an error
    val = eval_curves(records)
    assert set(val) == {"a", "ensemble"} and val["a"]["top1"] == [0.9]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dml_e_and_dml_give_each_peer_the_same_gradient(temperature):
    """Why DML_e trains exactly like DML here (paper Eq. 10 vs Eq. 11, K = 3).

    d/dz_k of (1/(K-1)) sum_l KL(p_l || p_k) is p_k - mean_l p_l, and d/dz_k KL(p_avg || p_k) is
    p_k - p_avg: the same vector. The two losses differ only by a constant (the entropies of
    the targets), so the two methods differ only by floating-point rounding.
    """
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, requires_grad=True)
    others = [3 * torch.randn(16, 10, generator=g) for _ in range(2)]
    kw = {"temperature": temperature}
    loss_dml = mimicry_term(z, others, mode="dml", **kw)
    loss_e = mimicry_term(z, others, mode="dml_e", **kw)
    (g_dml,) = torch.autograd.grad(loss_dml, z)
    (g_e,) = torch.autograd.grad(loss_e, z)
    assert loss_dml.item() > loss_e.item() + 0.1  # the values differ (Jensen)...
    torch.testing.assert_close(g_dml, g_e, atol=1e-7, rtol=1e-5)  # ...the gradients do not


def test_dead_units_counts_relu_channels_that_never_fire():
    from dmlkit.analysis.units import dead_units

    x, _ = _data()
    model = _bn_net()
    assert dead_units(model, x) < 0.05  # a fresh network: (nearly) every unit fires somewhere
    bn2 = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][1]
    with torch.no_grad():
        bn2.bias.fill_(-100.0)  # the collapse: BatchNorm's shift turns every unit of layer 2 off
        bn2.bias[:4] = 100.0  # ...except 4 of its 16 channels
    # layer 1 has 8 channels (alive), layer 2 has 16 (12 dead)
    assert dead_units(model, x) == pytest.approx(12 / 24)
    assert model.training  # mode restored
    assert math.isnan(dead_units(nn.Linear(64, 10), x.flatten(1)))  # no ReLU at all


def test_report_sets_the_papers_cifar100_numbers_beside_ours():
    from pathlib import Path

    from dmlkit.analysis.report import RunInfo, SeedGroup, paper_section

    def run(method: str, seed: int, top1: tuple[float, float]) -> RunInfo:
        peers = [
            {"name": f"p{i}", "arch": a, "metrics": {"top1": t}}
            for i, (a, t) in enumerate(zip(("mobilenet", "resnet32"), top1))
        ]
        summary = {"peers": peers, "ensemble": {"metrics": {"top1": max(top1)}}}
        flat = {"data.name": "cifar100", "peers": "mobilenet, resnet32", "method.name": method}
        return RunInfo(Path(f"{method}/seed{seed}"), method, seed, method, flat, summary, {},
                       None, None, 0.0)  # fmt: skip

    groups = [
        SeedGroup("independent", [run("independent", 0, (0.70, 0.66))]),
        SeedGroup("dml", [run("dml", 0, (0.72, 0.68)), run("dml", 1, (0.74, 0.70))]),
    ]
    text = paper_section(groups)
    # MobileNet / ResNet-32: paper independent 73.65 / 68.99, DML 76.13 / 71.10
    assert "| dml | p0 | top-1 % | 76.13 | 73.00 ± 1.41 |" in text
    assert "| dml | p1 | top-1 % | 71.10 | 69.00 ± 1.41 |" in text
    assert "| independent | p0 | top-1 % | 73.65 | 70.00 |" in text
    digits = [SeedGroup("dml", [run("dml", 0, (0.9, 0.9))])]
    digits[0].runs[0].flat["data.name"] = "digits"
    assert paper_section(digits) is None


def test_collapse_hints_flag_dead_or_chance_level_peers_only():
    from dmlkit.analysis.analyze import collapse_hints

    def result(method: str, dead: float, ce: float) -> dict:
        return {
            "path": f"runs/{method}",
            "method": method,
            "num_classes": 10,
            "peers": ["a"],
            "dead_units": {"a": dead},
            "curves": {"a": {"ce": [2.5, ce]}},
        }

    assert collapse_hints([result("dml", 0.01, 0.05)]) == []
    (hint,) = collapse_hints([result("dml", 0.6, 0.05)])  # half of the units dead
    assert "runs/dml" in hint and "mimicry_rampup" in hint
    (hint,) = collapse_hints([result("independent", 0.0, 2.30)])  # stuck at log 10
    assert "lower optim.lr" in hint and "mimicry" not in hint
