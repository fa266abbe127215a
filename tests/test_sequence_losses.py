"""Token-level mimicry (dmlkit.losses.sequence): hand-worked values, equality with the image
losses, padding that contributes nothing, and one [B, T, V] tensor kept per peer."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit import losses
from dmlkit.losses import batches as batches
from dmlkit.losses import sequence as sl

LN3 = math.log(3.0)


def _two_peers() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B=1, T=3, V=2. Position 0: p1 = (1/2, 1/2), p2 = (3/4, 1/4), label 0. Position 1:
    padding with extreme logits (label -100). Position 2: both uniform, label 1."""
    z1 = torch.tensor([[[0.0, 0.0], [100.0, -100.0], [0.0, 0.0]]])
    z2 = torch.tensor([[[LN3, 0.0], [-100.0, 100.0], [0.0, 0.0]]])
    y = torch.tensor([[0, -100, 1]])
    return z1, z2, y


def test_hand_worked_values_dml():
    z1, z2, y = _two_peers()
    terms = sl.token_dml_terms([z1, z2], y)
    # CE: peer 1 ln2 at both valid positions; peer 2 -ln(3/4) and ln2
    assert terms.ce[0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert terms.ce[1].item() == pytest.approx((-math.log(0.75) + math.log(2)) / 2, abs=1e-6)
    # KL(p2 || p1) = 3/4 ln(3/2) + 1/4 ln(1/2); KL(p1 || p2) = 1/2 ln(2/3) + 1/2 ln 2; the
    # uniform position adds 0; averaged over the 2 valid positions.
    kl21 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    kl12 = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    assert terms.mimicry[0].item() == pytest.approx(kl21 / 2, abs=1e-6)
    assert terms.mimicry[1].item() == pytest.approx(kl12 / 2, abs=1e-6)
    total = sl.token_dml_losses([z1, z2], y, mimicry_weight=0.5)
    assert total[0].item() == pytest.approx(math.log(2) + 0.25 * kl21, abs=1e-6)


def test_hand_worked_values_dml_e_and_kd():
    z1, z2, y = _two_peers()
    z3 = torch.zeros_like(z1)  # uniform everywhere
    # peer 3 against the mean of p1 and p2 at position 0: (5/8, 3/8); position 2: uniform
    m = sl.token_mimicry_term(z3, [z1, z2], y, mode="dml_e")
    expect = 0.625 * math.log(0.625 / 0.5) + 0.375 * math.log(0.375 / 0.5)
    assert m.item() == pytest.approx(expect / 2, abs=1e-6)
    # kd with alpha 0.5, T = 1: half the KL(p2 || p1) plus half peer 1's CE
    kd = sl.token_kd_loss(z1, z2, y, temperature=1.0, alpha=0.5)
    kl21 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd.item() == pytest.approx(0.5 * kl21 / 2 + 0.5 * math.log(2), abs=1e-6)


def test_attention_mask_removes_positions():
    z1, z2, y = _two_peers()
    y_all = torch.tensor([[0, 0, 1]])  # the padding now labelled, but masked out
    mask = torch.tensor([[1, 0, 1]])
    a = sl.token_dml_terms([z1, z2], y)
    b = sl.token_dml_terms([z1, z2], y_all, mask)
    for x, w in zip(a.ce + a.mimicry, b.ce + b.mimicry):
        assert torch.equal(x, w)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("mode", ["dml", "dml_e"])
def test_equal_to_image_losses_when_every_position_is_valid(mode, temperature):
    g = torch.Generator().manual_seed(0)
    k, b, t, v = 3, 4, 5, 7
    logits = [torch.randn(b, t, v, generator=g) * 2 for _ in range(k)]
    y = torch.randint(0, v, (b, t), generator=g)
    tok = sl.token_dml_terms(logits, y, mode=mode, temperature=temperature)
    img = losses.dml_terms(
        [z.reshape(b * t, v) for z in logits], y.reshape(-1), mode=mode, temperature=temperature
    )
    for a, w in zip(tok.ce + tok.mimicry, img.ce + img.mimicry):
        assert a.item() == pytest.approx(w.item(), rel=1e-5, abs=1e-6)
    # sequence length 1 is the image case itself
    one = sl.token_dml_terms([z[:, :1] for z in logits], y[:, :1], mode=mode)
    ref = losses.dml_terms([z[:, 0] for z in logits], y[:, 0], mode=mode)
    for a, w in zip(one.ce + one.mimicry, ref.ce + ref.mimicry):
        assert a.item() == pytest.approx(w.item(), rel=1e-5, abs=1e-6)
    kd = sl.token_kd_loss(logits[0], logits[1], y, temperature=temperature, alpha=0.7)
    kd_img = losses.kd_loss(
        logits[0].reshape(-1, v), logits[1].reshape(-1, v), y.reshape(-1), temperature, 0.7
    )
    assert kd.item() == pytest.approx(kd_img.item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["dml", "dml_e"])
def test_gradients_equal_the_image_losses_and_padding_gets_none(mode):
    g = torch.Generator().manual_seed(1)
    b, t, v = 3, 6, 5
    base = [torch.randn(b, t, v, generator=g) for _ in range(3)]
    y = torch.randint(0, v, (b, t), generator=g)
    y[0, 4:] = -100
    y[2, :2] = -100
    valid = y != -100
    tok = [z.clone().requires_grad_() for z in base]
    total = sum(sl.token_dml_losses(tok, y, mode=mode, temperature=2.0))
    total.backward()
    # the image losses on the valid rows only: the same gradient there
    img = [z[valid].clone().requires_grad_() for z in base]
    sum(losses.dml_losses(img, y[valid], mode=mode, temperature=2.0)).backward()
    for a, w in zip(tok, img):
        assert torch.allclose(a.grad[valid], w.grad, atol=1e-6)
        assert torch.count_nonzero(a.grad[~valid]) == 0  # padding: exactly zero
    # each peer's loss reaches only its own logits (targets detached)
    fresh = [z.clone().requires_grad_() for z in base]
    sl.token_dml_losses(fresh, y, mode=mode)[0].backward()
    assert fresh[1].grad is None and fresh[2].grad is None


def test_no_valid_position_gives_zero_in_the_graph():
    z = torch.randn(2, 3, 4, requires_grad=True)
    y = torch.full((2, 3), -100)
    terms = sl.token_dml_terms([z, z.detach() + 1], y)
    assert terms.ce[0].item() == 0.0 and terms.mimicry[0].item() == 0.0
    (terms.ce[0] + terms.mimicry[0]).backward()
    assert torch.count_nonzero(z.grad) == 0


def test_shift_labels_and_split_batch_align_a_causal_lm():
    ids = torch.tensor([[5, 6, 7, 0], [0, 8, 9, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right and left padding
    shifted = sl.shift_labels(ids, mask)
    assert shifted.tolist() == [[6, 7, -100, -100], [-100, 9, 4, -100]]
    inputs, y = batches.split_batch(
        {"input_ids": ids, "attention_mask": mask, "labels": ids}, causal=True
    )
    assert set(inputs) == {"input_ids", "attention_mask"} and torch.equal(y, shifted)
    # not causal (token classification): aligned as given, the mask folded in
    _, y2 = batches.split_batch({"input_ids": ids, "attention_mask": mask, "labels": ids})
    assert y2.tolist() == [[5, 6, 7, -100], [-100, 8, 9, 4]]
    # one label per sequence: HF's -100 is dmlkit's unlabelled -1
    _, y3 = batches.split_batch({"input_ids": ids, "labels": torch.tensor([3, -100])})
    assert y3.tolist() == [3, -1]


def test_dmlloss_takes_model_outputs_and_sequence_logits():
    g = torch.Generator().manual_seed(2)
    z = [torch.randn(2, 4, 6, generator=g) for _ in range(2)]
    y = torch.randint(0, 6, (2, 4), generator=g)
    y[1, 3] = -100
    expect = sum(sl.token_dml_losses(z, y, temperature=2.0))
    got = losses.DMLLoss(temperature=2.0)([{"logits": z[0]}, {"logits": z[1]}], y)
    assert got.item() == pytest.approx(expect.item(), rel=1e-6)


def _saved_bvt_storages(fn, shape):
    """Storages of [B, T, V]-sized tensors that autograd keeps for the backward pass."""
    numel = math.prod(shape)
    kept: dict[int, int] = {}

    def pack(t):
        if t.numel() == numel:
            kept[t.untyped_storage().data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, kept


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("mode", ["dml", "dml_e"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_one_saved_bvt_tensor_per_peer(k, mode, temperature):
    b, t, v = 2, 8, 64
    logits = [torch.randn(b, t, v, requires_grad=True) for _ in range(k)]
    y = torch.randint(0, v, (b, t))

    def run():
        return sum(sl.token_dml_losses(logits, y, mode=mode, temperature=temperature))

    loss, kept = _saved_bvt_storages(run, (b, t, v))
    inputs = {z.untyped_storage().data_ptr() for z in logits}
    extra = set(kept) - inputs
    assert len(extra) <= k, f"{len(extra)} extra [B, T, V] tensors kept for {k} peers"
    loss.backward()  # and the backward works on what was kept
    assert all(z.grad is not None and torch.isfinite(z.grad).all() for z in logits)
