"""The online-distillation losses against numbers worked by hand from the papers' equations.

Each expected value is written out with ``math`` (CE = logsumexp(z) - z_y, KL of two softmaxes
summed over classes), not with the functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.losses.online import (
    dml_mean_logits_losses,
    ema_decay,
    ema_update,
    gate_ensemble,
    kdcl_losses,
    kdcl_teacher,
    okddip_loss,
    one_loss,
    pcl_loss,
    peer_attention,
    sigmoid_rampup,
)


def _softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _ce(z: list[float], y: int) -> float:
    return math.log(sum(math.exp(v) for v in z)) - z[y]


def _kl(target: list[float], student: list[float], t: float) -> float:
    """T^2 KL(softmax(target/T) || softmax(student/T)) of one sample."""
    p, q = _softmax(target, t), _softmax(student, t)
    return t * t * sum(a * math.log(a / b) for a, b in zip(p, q))


def _t(*rows: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.float64, requires_grad=grad)


Y0 = torch.tensor([0])


def test_gate_ensemble_weights_the_branch_logits() -> None:
    out = gate_ensemble([_t([1.0, 0.0]), _t([0.0, 2.0])], _t([0.25, 0.75]))
    assert out.tolist() == [[0.25, 1.5]]


def test_one_loss_k2_by_hand() -> None:
    z1, z2, g = [1.0, 0.0], [0.0, 2.0], [0.25, 0.75]
    ze = [0.25, 1.5]
    ce = _ce(z1, 0) + _ce(z2, 0) + _ce(ze, 0)
    distill = _kl(ze, z1, 3.0) + _kl(ze, z2, 3.0)
    terms = one_loss([_t(z1), _t(z2)], _t(g), Y0, temperature=3.0)
    assert terms.ce.item() == pytest.approx(ce, rel=1e-12)
    assert terms.distill.item() == pytest.approx(distill, rel=1e-12)
    assert terms.total.item() == pytest.approx(ce + distill, rel=1e-12)


def test_one_teacher_is_detached_in_the_distillation_term() -> None:
    """The gate learns from the ensemble's CE only: the KL terms send it no gradient."""
    z = [_t([1.0, 0.0], grad=True), _t([0.0, 2.0], grad=True)]
    gate = _t([0.25, 0.75], grad=True)
    one_loss(z, gate, Y0).distill.backward()
    assert gate.grad is None or torch.count_nonzero(gate.grad) == 0
    assert torch.count_nonzero(z[0].grad) > 0  # the students do learn from it


def test_kdcl_minlogit_teacher_k3() -> None:
    z = [_t([2.0, 1.0, 0.0]), _t([0.0, 3.0, 1.0]), _t([1.0, 1.0, 1.0])]
    # shifted by the true-class logit: [0,-1,-2], [0,3,1], [0,0,0]; element-wise min:
    assert kdcl_teacher(z, Y0, "minlogit").tolist() == [[0.0, -1.0, -2.0]]


def test_kdcl_naive_teacher_is_the_lowest_ce_peer_per_sample() -> None:
    z = [_t([2.0, 1.0, 0.0], [0.0, 0.0, 5.0]), _t([0.0, 3.0, 1.0], [0.0, 4.0, 0.0])]
    y = torch.tensor([0, 1])  # sample 0: peer 0 is right; sample 1: peer 1 is right
    assert kdcl_teacher(z, y, "naive").tolist() == [[2.0, 1.0, 0.0], [0.0, 4.0, 0.0]]


def test_kdcl_unlabelled_sample_gets_the_mean_logits() -> None:
    z = [_t([2.0, 0.0]), _t([0.0, 4.0])]
    assert kdcl_teacher(z, torch.tensor([-1]), "minlogit").tolist() == [[1.0, 2.0]]


def test_kdcl_losses_k2_by_hand_and_isolated() -> None:
    a = _t([2.0, 1.0, 0.0], grad=True)
    b = _t([0.0, 3.0, 1.0], grad=True)
    # a shifted by its true-class logit 2 is [0,-1,-2]; b shifted by 0 is [0,3,1]; min:
    teacher = [0.0, -1.0, -2.0]
    losses = kdcl_losses([a, b], Y0, temperature=2.0, weight=0.5)
    for z, terms in zip(([2.0, 1.0, 0.0], [0.0, 3.0, 1.0]), losses):
        expected = _ce(z, 0) + 0.5 * _kl(teacher, z, 2.0)
        assert terms.total.item() == pytest.approx(expected, rel=1e-12)
    losses[0].total.backward()  # peer 0's loss must not reach peer 1
    assert b.grad is None and torch.count_nonzero(a.grad) > 0


def test_peer_attention_softmax_of_query_key_products() -> None:
    eye = torch.eye(2, dtype=torch.float64).unsqueeze(0)  # q_i = k_i = e_i: energy = identity
    a = peer_attention(eye, eye)
    e = math.e
    hi, lo = e / (e + 1), 1 / (e + 1)
    assert a[0].flatten().tolist() == pytest.approx([hi, lo, lo, hi])


def test_okddip_loss_m2_by_hand_and_attention_learns() -> None:
    z1, z2, zl = [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]
    att = [[0.75, 0.25], [0.5, 0.5]]
    t1 = [0.75 * a + 0.25 * b for a, b in zip(z1, z2)]
    t2 = [0.5 * a + 0.5 * b for a, b in zip(z1, z2)]
    mean = [0.5, 0.5]
    ce = _ce(z1, 0) + _ce(z2, 0) + _ce(zl, 0)
    distill = _kl(t1, z1, 3.0) + _kl(t2, z2, 3.0) + _kl(mean, zl, 3.0)
    attention = torch.tensor([att], dtype=torch.float64, requires_grad=True)
    terms = okddip_loss([_t(z1), _t(z2)], _t(zl), attention, Y0, temperature=3.0, weight=2.0)
    assert terms.ce.item() == pytest.approx(ce, rel=1e-12)
    assert terms.distill.item() == pytest.approx(distill, rel=1e-12)
    assert terms.total.item() == pytest.approx(ce + 2.0 * distill, rel=1e-12)
    terms.total.backward()
    assert torch.count_nonzero(attention.grad) > 0  # the authors' code: targets not detached


def test_pcl_loss_k2_by_hand_and_ema_gets_no_gradient() -> None:
    z1, z2, ze, m1, m2 = [1.0, 0.0], [0.0, 1.0], [0.6, 0.2], [2.0, 0.0], [0.0, 0.5]
    ce = _ce(z1, 1) + _ce(z2, 1) + _ce(ze, 1)
    pe = _kl(ze, z1, 3.0) + _kl(ze, z2, 3.0)
    pm = _kl(m2, z1, 3.0) + _kl(m1, z2, 3.0)  # each peer learns from the OTHER's mean
    mean = [_t(m1, grad=True), _t(m2, grad=True)]
    ens = _t(ze, grad=True)
    peers = [_t(z1, grad=True), _t(z2, grad=True)]
    terms = pcl_loss(peers, ens, mean, torch.tensor([1]), weight=0.5)
    assert terms.ce.item() == pytest.approx(ce, rel=1e-12)
    assert terms.distill.item() == pytest.approx(pe + pm, rel=1e-12)
    assert terms.total.item() == pytest.approx(ce + 0.5 * (pe + pm), rel=1e-12)
    terms.distill.backward()
    assert all(m.grad is None for m in mean) and ens.grad is None
    assert torch.count_nonzero(peers[0].grad) > 0


def test_pcl_peer_mean_term_k3_averages_the_other_two() -> None:
    zs = [[1.0, 0.0], [0.0, 1.0], [0.3, 0.3]]
    ms = [[1.0, 1.0], [2.0, 0.0], [0.0, 2.0]]
    pm = sum(sum(_kl(ms[j], zs[i], 1.0) for j in range(3) if j != i) / 2 for i in range(3))
    ens = [0.0, 0.0]
    pe = sum(_kl(ens, z, 1.0) for z in zs)
    terms = pcl_loss([_t(z) for z in zs], _t(ens), [_t(m) for m in ms], Y0, temperature=1.0)
    assert terms.distill.item() == pytest.approx(pe + pm, rel=1e-12)


def test_ema_update_and_warmup() -> None:
    mean = [torch.tensor([1.0]), torch.tensor(3)]
    ema_update(mean, [torch.tensor([3.0]), torch.tensor(7)], decay=0.9)
    assert mean[0].item() == pytest.approx(1.2) and mean[1].item() == 7
    assert ema_decay(0, 0.999) == 0.0  # the first update copies the network
    assert ema_decay(9, 0.999) == pytest.approx(0.9)
    assert ema_decay(10**6, 0.999) == 0.999


def test_sigmoid_rampup() -> None:
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(20, 10) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def test_dml_mean_logits_k3_by_hand() -> None:
    """Peer 1 ([0, 0]) against the mean of the others' logits ([0, 2] and [0, 0] -> [0, 1]):
    target t = (1/(1+e), e/(1+e)), p1 uniform, so KL(t || p1) = ln 2 - H(t) with
    H(t) = ln(1 + e) - e/(1 + e). At T = 2 the logits are halved and the KL times 4. The
    mean of the others' probabilities (DML_e) would be ((0.1192 + 0.5)/2, ...) instead."""
    z = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])]
    y = torch.tensor([1])
    for t in (1.0, 2.0):
        terms = dml_mean_logits_losses(z, y, temperature=t, weight=0.5)
        a = math.exp(1.0 / t)
        kl = t**2 * (math.log(2) - math.log(1 + a) + (1.0 / t) * a / (1 + a))
        assert terms[0].distill.item() == pytest.approx(kl, abs=1e-6)
        ce = math.log(2)  # z1 = [0, 0], label 1
        assert terms[0].ce.item() == pytest.approx(ce, abs=1e-6)
        assert terms[0].total.item() == pytest.approx(ce + 0.5 * kl, abs=1e-6)
        # peer 3 is peer 1's twin: same target, same value
        assert terms[2].distill.item() == pytest.approx(kl, abs=1e-6)
    # peer 2 ([0, 2]) against the mean of [0, 0] and [0, 0]: uniform target, T = 1
    p = _softmax([0.0, 2.0])
    kl2 = sum(0.5 * math.log(0.5 / q) for q in p)
    terms = dml_mean_logits_losses(z, y, temperature=1.0)
    assert terms[1].distill.item() == pytest.approx(kl2, abs=1e-6)


def test_dml_mean_logits_targets_are_detached_and_k2_is_dml() -> None:
    torch.manual_seed(0)
    z = [torch.randn(4, 5, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3])
    terms = dml_mean_logits_losses(z, y, temperature=3.0)
    terms[0].total.backward()
    assert z[0].grad is not None and z[1].grad is None and z[2].grad is None
    # two peers: the mean of one peer's logits is that peer: DML's term at the same T
    from dmlkit.losses import mimicry_kl

    two = dml_mean_logits_losses(z[:2], y, temperature=3.0)
    torch.testing.assert_close(two[0].distill, mimicry_kl(z[0], z[1], 3.0))
    with pytest.raises(ValueError, match="two peers"):
        dml_mean_logits_losses(z[:1], y)
