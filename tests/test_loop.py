"""dmlkit.step and DMLLoss: the DML step for users' own loops equals the Trainer's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dmlkit
from dmlkit.cohort import Cohort, PeerSpec
from dmlkit.config import MethodConfig, OptimConfig
from dmlkit.losses import DMLLoss, dml_losses
from dmlkit.methods import DML, DMLEnsemble, NonFiniteLoss


def _optim() -> OptimConfig:
    # momentum + weight decay: the optimizer state must follow the same path too
    return OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _cohort(k: int) -> Cohort:
    specs = [
        PeerSpec(name=f"p{i}", arch="small_cnn", num_classes=5, in_channels=3, seed=10 + i)
        for i in range(k)
    ]
    cohort = Cohort(specs, [_optim()] * k, total_epochs=1, channels_last=False)
    cohort.set_lr(0.0)
    return cohort.train()


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g))] * n


@pytest.mark.parametrize("cls", [DML, DMLEnsemble])
@pytest.mark.parametrize("update", ["sequential", "simultaneous"])
def test_step_equals_the_cohort_step(cls: type, update: str) -> None:
    cohort = _cohort(3)
    models = [copy.deepcopy(p) for p in cohort.peers]
    opts = [
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        for m in models
    ]
    method = cls(cohort, MethodConfig(name=cls.name, update=update, mimicry_weight=0.7))
    for x, y in _batches():
        ref = method.train_step(x, y)
        got = dmlkit.step(models, opts, x, y, update=update, mode=cls.mode, mimicry_weight=0.7)
        for r, g in zip(ref, got):
            assert torch.equal(r["loss"], g["loss"]) and torch.equal(r["mimicry"], g["mimicry"])
    for peer, model in zip(cohort.peers, models):
        # parameters and BatchNorm running statistics (re-prediction leaves them alone)
        for (name, a), b in zip(peer.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), name


def test_sequential_differs_from_simultaneous() -> None:
    # the test above would pass trivially if the two updates were the same computation
    x, y = _batches(1)[0]
    finals = []
    for update in ("sequential", "simultaneous"):
        models = [copy.deepcopy(p) for p in _cohort(2).peers]
        opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in models]
        dmlkit.step(models, opts, x, y, update=update)
        finals.append(models[1].classifier.weight.detach().clone())
    assert not torch.equal(*finals)


def test_extra_loss_hook_on_features() -> None:
    """A second output (features) reaches the hook; its gradient is added to CE + mimicry."""

    class WithFeatures(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.body = nn.Linear(4, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.body(x).relu()
            return self.head(f), f

    def hook(k: int, output: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return 0.3 * (k + 1) * output[1].pow(2).mean()

    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    models = [WithFeatures(1), WithFeatures(2)]
    expect = [copy.deepcopy(m) for m in models]
    opts = [torch.optim.SGD(m.parameters(), lr=0.2) for m in models]
    logs = dmlkit.step(models, opts, x, y, extra_loss=hook)
    # by hand: simultaneous step of CE + KL + hook with plain autograd
    outs = [m(x) for m in expect]
    losses = dml_losses([o[0] for o in outs], y)
    for k, (m, o) in enumerate(zip(expect, outs)):
        total = losses[k] + hook(k, o, y)
        grads = torch.autograd.grad(total, list(m.parameters()), retain_graph=True)
        with torch.no_grad():
            for p, g in zip(m.parameters(), grads):
                p -= 0.2 * g
        assert torch.allclose(logs[k]["extra"], hook(k, o, y).detach())
    for m, e in zip(models, expect):
        for p, q in zip(m.parameters(), e.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_step_refuses_a_nonfinite_loss_before_stepping() -> None:
    models = [nn.Linear(3, 2), nn.Linear(3, 2)]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    x = torch.full((4, 3), float("nan"))
    with pytest.raises(NonFiniteLoss):
        dmlkit.step(models, opts, x, torch.zeros(4, dtype=torch.long), update="sequential")
    for m, sd in zip(models, before):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in sd.items())


def test_step_argument_errors() -> None:
    m = nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="one optimizer per model"):
        dmlkit.step([m, m], [opt], x, y)
    with pytest.raises(ValueError, match="update must be one of"):
        dmlkit.step([m], [opt], x, y, update="alternate")


@pytest.mark.parametrize("mode", ["dml", "dml_e"])
def test_dmlloss_equals_dml_losses(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 4, generator=g, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, -1, 3, 2, -1])  # two unlabelled samples
    expect = dml_losses(logits, y, mode=mode, temperature=2.0, mimicry_weight=0.5)
    per_peer = DMLLoss(mode, 2.0, 0.5, reduction="none")(logits, y)
    assert torch.equal(per_peer, torch.stack(expect))
    total = DMLLoss(mode, temperature=2.0, mimicry_weight=0.5)(logits, y)
    assert torch.equal(total, torch.stack(expect).sum())
    # each peer's gradient from the sum is the gradient of its own loss alone
    grads = torch.autograd.grad(total, logits)
    for k, z in enumerate(logits):
        (own,) = torch.autograd.grad(expect[k], z, retain_graph=True)
        torch.testing.assert_close(grads[k], own)


def test_dmlloss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        DMLLoss("kl")
    with pytest.raises(TypeError, match="list of K logits"):
        DMLLoss()(torch.randn(2, 3), torch.tensor([0, 1]))
