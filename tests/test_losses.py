"""Tests of :mod:`dmlkit.losses` against values computed by hand in plain Python ``math``.

The reference implementations below (``_softmax``, ``_kl``, ``_ce``, ...) use only ``math``
on lists of floats, so they share no code with the torch implementation under test.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlkit.losses import (
    UNLABELLED,
    cross_entropy,
    dml_losses,
    dml_terms,
    kd_loss,
    mimicry_kl,
    mimicry_term,
)

# --------------------------------------------------------------------------------------------
# plain-Python reference

# Three peers, B = 2 samples, C = 3 classes. All rows different, no ties.
LOGITS = [
    [[1.0, 2.0, 0.5], [0.3, -1.2, 2.2]],
    [[-0.5, 0.7, 1.9], [2.4, 0.1, -0.8]],
    [[0.9, -0.3, 0.2], [-1.1, 1.6, 0.4]],
]
TARGETS = [1, 0]


def _softmax(row: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    s = sum(exps)
    return [e / s for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _ce(rows: list[list[float]], targets: list[int]) -> float:
    """Cross-entropy at T = 1 averaged over the labelled samples (target -1 = unlabelled)."""
    terms = [-math.log(_softmax(r)[y]) for r, y in zip(rows, targets) if y != -1]
    return sum(terms) / len(terms) if terms else 0.0


def _mimicry_kl(self_rows, target_rows, t: float) -> float:
    """T^2 * batch mean of KL(p_target^T || p_self^T), summed over classes."""
    kls = [_kl(_softmax(tr, t), _softmax(sr, t)) for sr, tr in zip(self_rows, target_rows)]
    return t**2 * sum(kls) / len(kls)


def _mimicry_ensemble(self_rows, others, t: float) -> float:
    """T^2 * batch mean of KL(p_avg^T || p_self^T), p_avg the mean of the others' probs."""
    kls = []
    for b, sr in enumerate(self_rows):
        probs = [_softmax(o[b], t) for o in others]
        p_avg = [sum(p[c] for p in probs) / len(probs) for c in range(len(sr))]
        kls.append(_kl(p_avg, _softmax(sr, t)))
    return t**2 * sum(kls) / len(kls)


def _expected_dml(logits, targets, mode: str, t: float, w: float) -> list[float]:
    out = []
    for k, z in enumerate(logits):
        others = [o for j, o in enumerate(logits) if j != k]
        if mode == "dml":
            mim = sum(_mimicry_kl(z, o, t) for o in others) / len(others)
        else:
            mim = _mimicry_ensemble(z, others, t)
        out.append(_ce(z, targets) + w * mim)
    return out


def _t(rows, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=requires_grad)


def _close(a: torch.Tensor | float, b: float, tol: float = 1e-10) -> bool:
    if isinstance(a, torch.Tensor):
        a = a.detach().item()
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


# --------------------------------------------------------------------------------------------
# 1. mimicry_kl


def test_reference_helpers_sanity():
    # KL of a distribution with itself is 0; softmax sums to 1; a pinned number so that a
    # mistake in the reference helpers cannot cancel a mistake in the code.
    p = _softmax(LOGITS[0][0])
    assert math.isclose(sum(p), 1.0)
    assert _kl(p, p) == pytest.approx(0.0, abs=1e-15)
    # KL(softmax([0,0]) || softmax([0, ln 3])) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    q = _softmax([0.0, math.log(3.0)])
    assert q == pytest.approx([0.25, 0.75])
    assert _kl([0.5, 0.5], q) == pytest.approx(0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0))


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_mimicry_kl_matches_hand_computation(t):
    z, target = LOGITS[0], LOGITS[1]
    got = mimicry_kl(_t(z), _t(target), temperature=t)
    assert got.dim() == 0
    assert _close(got, _mimicry_kl(z, target, t))


def test_mimicry_kl_pinned_value():
    # Two one-sample batches whose KL is easy to write down exactly:
    # target = softmax([0, 0]) = [1/2, 1/2], self = softmax([0, ln 3]) = [1/4, 3/4].
    got = mimicry_kl(_t([[0.0, math.log(3.0)]]), _t([[0.0, 0.0]]), temperature=1.0)
    assert _close(got, 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0))
    # At T = 2 the logits are halved, and the value is multiplied by 4.
    got2 = mimicry_kl(_t([[0.0, 2 * math.log(3.0)]]), _t([[0.0, 0.0]]), temperature=2.0)
    assert _close(got2, 4 * (0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)))


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_mimicry_kl_direction_is_target_first(t):
    z, target = LOGITS[0], LOGITS[1]
    forward = _mimicry_kl(z, target, t)  # KL(p_target || p_self)
    reverse = _mimicry_kl(target, z, t)  # KL(p_self || p_target)
    assert abs(forward - reverse) > 1e-3  # the numbers tell the two directions apart
    got = float(mimicry_kl(_t(z), _t(target), temperature=t))
    assert _close(got, forward)
    assert not math.isclose(got, reverse, rel_tol=1e-4)


def test_mimicry_kl_is_batchmean_not_mean_over_classes():
    z, target = _t(LOGITS[0]), _t(LOGITS[1])
    got = mimicry_kl(z, target, temperature=1.0)
    log_q = F.log_softmax(z, dim=1)
    p = F.softmax(target, dim=1)
    batchmean = F.kl_div(log_q, p, reduction="batchmean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on reduction="mean"
        elementwise_mean = F.kl_div(log_q, p, reduction="mean")
    assert torch.allclose(got, batchmean)
    assert not torch.allclose(got, elementwise_mean)
    assert torch.allclose(got, elementwise_mean * z.shape[1])  # C = 3 times larger


def test_mimicry_kl_target_is_detached():
    z = _t(LOGITS[0], requires_grad=True)
    target = _t(LOGITS[1], requires_grad=True)
    mimicry_kl(z, target, temperature=4.0).backward()
    assert target.grad is None or torch.count_nonzero(target.grad) == 0
    assert z.grad is not None and z.grad.abs().sum() > 1e-6


def test_mimicry_kl_gradient_magnitude_is_kept_by_t_squared():
    # The gradient w.r.t. the logits is T * (p_self^T - p_target^T) / B: compare exactly.
    t = 4.0
    z = _t(LOGITS[0], requires_grad=True)
    mimicry_kl(z, _t(LOGITS[1]), temperature=t).backward()
    b = len(LOGITS[0])
    expected = [
        [t * (ps - pt) / b for ps, pt in zip(_softmax(sr, t), _softmax(tr, t))]
        for sr, tr in zip(LOGITS[0], LOGITS[1])
    ]
    assert torch.allclose(z.grad, _t(expected), atol=1e-12)


# --------------------------------------------------------------------------------------------
# 2. dml_losses against the hand computation


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("mode", ["dml", "dml_e"])
@pytest.mark.parametrize("t", [1.0, 4.0])
@pytest.mark.parametrize("w", [1.0, 0.3])
def test_dml_losses_match_hand_computation(k, mode, t, w):
    logits = LOGITS[:k]
    got = dml_losses(
        [_t(z) for z in logits],
        torch.tensor(TARGETS),
        mode=mode,
        temperature=t,
        mimicry_weight=w,
    )
    expected = _expected_dml(logits, TARGETS, mode, t, w)
    assert len(got) == k
    for g, e in zip(got, expected):
        assert g.dim() == 0
        assert _close(g, e)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dml_e_uses_mean_probability_not_mean_logits(t):
    logits = LOGITS[:3]
    got = dml_losses([_t(z) for z in logits], torch.tensor(TARGETS), mode="dml_e", temperature=t)
    # What a mean-of-logits ensemble would give, and what plain DML gives: both different.
    wrong = []
    for k, z in enumerate(logits):
        others = [o for j, o in enumerate(logits) if j != k]
        mean_logits = [
            [sum(o[b][c] for o in others) / len(others) for c in range(3)] for b in range(2)
        ]
        wrong.append(_ce(z, TARGETS) + _mimicry_kl(z, mean_logits, t))
    dml = _expected_dml(logits, TARGETS, "dml", t, 1.0)
    for g, wr, d in zip(got, wrong, dml):
        assert abs(float(g) - wr) > 1e-4
        assert abs(float(g) - d) > 1e-4


def test_dml_terms_split_ce_and_mimicry():
    logits = [_t(z) for z in LOGITS]
    terms = dml_terms(logits, torch.tensor(TARGETS), mode="dml", temperature=4.0)
    for k, z in enumerate(LOGITS):
        assert _close(terms.ce[k], _ce(z, TARGETS))
        others = [o for j, o in enumerate(LOGITS) if j != k]
        assert _close(terms.mimicry[k], sum(_mimicry_kl(z, o, 4.0) for o in others) / 2)


def test_ce_is_at_temperature_one():
    # Only the mimicry term sees T: with a single peer (no mimicry), T has no effect.
    z = _t(LOGITS[0])
    y = torch.tensor(TARGETS)
    a = dml_losses([z], y, temperature=1.0)[0]
    b = dml_losses([z], y, temperature=4.0)[0]
    assert torch.equal(a, b)
    assert _close(a, _ce(LOGITS[0], TARGETS))


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_k2_dml_equals_dml_e(t):
    logits = [_t(z) for z in LOGITS[:2]]
    y = torch.tensor(TARGETS)
    a = dml_losses(logits, y, mode="dml", temperature=t, mimicry_weight=0.7)
    b = dml_losses(logits, y, mode="dml_e", temperature=t, mimicry_weight=0.7)
    for x1, x2 in zip(a, b):
        assert torch.allclose(x1, x2, rtol=1e-12, atol=1e-12)


def test_mimicry_weight_zero_gives_plain_ce():
    logits = [_t(z) for z in LOGITS]
    got = dml_losses(logits, torch.tensor(TARGETS), mimicry_weight=0.0)
    for g, z in zip(got, LOGITS):
        assert _close(g, _ce(z, TARGETS))


# --------------------------------------------------------------------------------------------
# 3. K = 1


@pytest.mark.parametrize("mode", ["dml", "dml_e"])
def test_single_peer_is_plain_cross_entropy(mode):
    torch.manual_seed(0)
    z = torch.randn(5, 4)
    y = torch.tensor([0, 3, 1, 1, 2])
    (got,) = dml_losses([z], y, mode=mode, temperature=4.0, mimicry_weight=2.0)
    assert torch.equal(got, F.cross_entropy(z, y))
    assert float(mimicry_term(z, [], mode=mode)) == 0.0


# --------------------------------------------------------------------------------------------
# 4. gradient isolation between peers


def _linear_peers(k: int) -> tuple[list[nn.Linear], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    peers = []
    for i in range(k):
        lin = nn.Linear(4, 3)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(3, 4, generator=g))
            lin.bias.copy_(torch.randn(3, generator=g) * (i + 1))
        peers.append(lin)
    x = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    return peers, x, y


@pytest.mark.parametrize("mode", ["dml", "dml_e"])
@pytest.mark.parametrize("k", [2, 3])
def test_peer_loss_reaches_only_its_own_peer(mode, k):
    peers, x, y = _linear_peers(k)
    losses = dml_losses([p(x) for p in peers], y, mode=mode, temperature=2.0)
    losses[0].backward()
    for prm in peers[0].parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 1e-6
    for peer in peers[1:]:
        for prm in peer.parameters():
            assert prm.grad is None or torch.count_nonzero(prm.grad) == 0


@pytest.mark.parametrize("mode", ["dml", "dml_e"])
def test_sum_of_losses_gives_each_peer_its_own_gradient(mode):
    k = 3
    peers, x, y = _linear_peers(k)

    # gradient of each peer's own loss, one backward per loss
    separate = []
    for i in range(k):
        for p in peers:
            p.zero_grad(set_to_none=True)
        losses = dml_losses([p(x) for p in peers], y, mode=mode, temperature=2.0)
        losses[i].backward()
        separate.append([prm.grad.clone() for prm in peers[i].parameters()])

    for p in peers:
        p.zero_grad(set_to_none=True)
    losses = dml_losses([p(x) for p in peers], y, mode=mode, temperature=2.0)
    torch.stack(losses).sum().backward()
    for i in range(k):
        for got, exp in zip(peers[i].parameters(), separate[i]):
            assert torch.allclose(got.grad, exp, atol=1e-7, rtol=1e-6)

    # and the mimicry term does contribute to the gradient (otherwise the above is trivial)
    for p in peers:
        p.zero_grad(set_to_none=True)
    ce_only = dml_losses([p(x) for p in peers], y, mode=mode, mimicry_weight=0.0)
    ce_only[0].backward()
    assert not torch.allclose(peers[0].weight.grad, separate[0][0], atol=1e-5)


# --------------------------------------------------------------------------------------------
# 5. semi-supervised: targets -1


def test_cross_entropy_averages_over_labelled_only():
    torch.manual_seed(1)
    z = torch.randn(6, 4)
    y = torch.tensor([2, UNLABELLED, 0, UNLABELLED, 3, 1])
    mask = y != UNLABELLED
    got = cross_entropy(z, y)
    assert torch.allclose(got, F.cross_entropy(z[mask], y[mask]))
    # not the mean over the whole batch with the unlabelled ones counted as 0
    assert not torch.allclose(got, F.cross_entropy(z[mask], y[mask], reduction="sum") / 6)


def test_cross_entropy_hand_computed_with_unlabelled():
    y = [1, -1]
    got = cross_entropy(_t(LOGITS[0]), torch.tensor(y))
    assert _close(got, -math.log(_softmax(LOGITS[0][0])[1]))


def test_all_unlabelled_batch():
    z = _t(LOGITS[0], requires_grad=True)
    peer = _t(LOGITS[1], requires_grad=True)
    y = torch.tensor([UNLABELLED, UNLABELLED])
    ce = cross_entropy(z, y)
    assert ce.item() == 0.0
    assert ce.requires_grad  # still attached to the graph
    losses = dml_losses([z, peer], y, temperature=2.0)
    for loss in losses:
        assert torch.isfinite(loss)
    assert _close(losses[0], _mimicry_kl(LOGITS[0], LOGITS[1], 2.0))
    losses[0].backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_unlabelled_samples_still_drive_mimicry():
    y = torch.tensor([1, UNLABELLED])
    a = [_t(LOGITS[0]), _t(LOGITS[1])]
    changed = [row[:] for row in LOGITS[1]]
    changed[1] = [5.0, -3.0, 0.0]  # only the unlabelled sample of peer 1 changes
    b = [_t(LOGITS[0]), _t(changed)]
    ta = dml_terms(a, y)
    tb = dml_terms(b, y)
    # peer 0's CE is unchanged, its mimicry term (and total loss) is not
    assert torch.equal(ta.ce[0], tb.ce[0])
    assert abs(float(ta.mimicry[0]) - float(tb.mimicry[0])) > 1e-3
    assert abs(float(dml_losses(a, y)[0]) - float(dml_losses(b, y)[0])) > 1e-3
    # peer 1's CE is unchanged too: the changed sample is unlabelled
    assert torch.equal(ta.ce[1], tb.ce[1])
    # and the value is the hand computation over the whole batch
    assert _close(tb.mimicry[0], _mimicry_kl(LOGITS[0], changed, 1.0))
    assert _close(tb.ce[0], _ce(LOGITS[0], [1, -1]))


# --------------------------------------------------------------------------------------------
# 6. kd_loss


@pytest.mark.parametrize("t,alpha", [(4.0, 0.9), (1.0, 0.5), (2.0, 0.0), (3.0, 1.0)])
def test_kd_loss_matches_hand_computation(t, alpha):
    student, teacher = LOGITS[0], LOGITS[2]
    got = kd_loss(_t(student), _t(teacher), torch.tensor(TARGETS), temperature=t, alpha=alpha)
    soft = _mimicry_kl(student, teacher, t)  # includes T^2
    expected = alpha * soft + (1 - alpha) * _ce(student, TARGETS)
    assert _close(got, expected)


def test_kd_loss_teacher_gets_no_gradient():
    s = _t(LOGITS[0], requires_grad=True)
    tch = _t(LOGITS[1], requires_grad=True)
    kd_loss(s, tch, torch.tensor(TARGETS), temperature=4.0, alpha=0.9).backward()
    assert tch.grad is None or torch.count_nonzero(tch.grad) == 0
    assert s.grad is not None and s.grad.abs().sum() > 1e-6


# --------------------------------------------------------------------------------------------
# 7. invalid mode


def test_invalid_mode_raises():
    logits = [_t(z) for z in LOGITS[:2]]
    y = torch.tensor(TARGETS)
    with pytest.raises(ValueError, match="mode"):
        dml_losses(logits, y, mode="kl")
    with pytest.raises(ValueError, match="mode"):
        mimicry_term(logits[0], logits[1:], mode="DML")


def test_no_peers_raises():
    with pytest.raises(ValueError):
        dml_losses([], torch.tensor(TARGETS))
