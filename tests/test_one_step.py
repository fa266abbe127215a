"""One step of K peers, three entry points: the Trainer's DML method, ``dmlkit.step`` and
Lightning's ``DMLModule`` run :func:`dmlkit.methods.update.step_peers` over
:func:`dmlkit.losses.dml_loss`, so the same peers, batches and optimizers give the same weights
(BatchNorm running statistics included) in both update orders."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dmlkit
from dmlkit.cohort import Cohort, PeerSpec
from dmlkit.config import MethodConfig, OptimConfig
from dmlkit.losses import dml_loss, dml_losses
from dmlkit.methods import DML
from dmlkit.methods.update import NonFiniteLoss, step_peers

STEPS, BATCH = 3, 8
SGD = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 3, 8, 8, generator=g)
    return TensorDataset(x, torch.randint(0, 5, (STEPS * BATCH,), generator=g))


def _trainer_method(update: str) -> tuple[Cohort, DML]:
    # small_cnn has BatchNorm: re-prediction must leave the running statistics alone everywhere
    specs = [PeerSpec(f"p{i}", "small_cnn", 5, 3, seed=20 + i) for i in range(3)]
    optim = OptimConfig(name="sgd", schedule="constant", **SGD)
    cohort = Cohort(specs, [optim] * 3, total_epochs=1, channels_last=False)
    cohort.set_lr(0.0)
    cohort.train()
    return cohort, DML(cohort, MethodConfig(name="dml", update=update, mimicry_weight=0.7))


def _assert_same_weights(a: list[torch.nn.Module], b: list[torch.nn.Module]) -> None:
    for peer_a, peer_b in zip(a, b):
        sa, sb = peer_a.state_dict(), peer_b.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("update", ["simultaneous", "sequential"])
def test_trainer_method_and_dmlkit_step_give_identical_weights(update: str) -> None:
    cohort, method = _trainer_method(update)
    models = [copy.deepcopy(p) for p in cohort.peers]
    opts = [torch.optim.SGD(m.parameters(), **SGD) for m in models]
    start = [copy.deepcopy(p) for p in cohort.peers]
    for x, y in DataLoader(_data(), batch_size=BATCH):
        ref = method.train_step(x, y)
        got = dmlkit.step(models, opts, x, y, update=update, mimicry_weight=0.7)
        for r, g in zip(ref, got):
            assert all(torch.equal(r[key], g[key]) for key in ("loss", "ce", "mimicry"))
    _assert_same_weights(list(cohort.peers), models)
    moved = any(
        not torch.equal(a, b) for a, b in zip(start[0].parameters(), cohort.peers[0].parameters())
    )
    assert moved  # three real steps were compared, not three no-ops


@pytest.mark.slow  # Lightning's Trainer: seconds to start on 2 cores
@pytest.mark.parametrize("update", ["simultaneous", "sequential"])
def test_the_three_entry_points_give_identical_weights(update: str, tmp_path) -> None:
    L = pytest.importorskip("lightning")
    from dmlkit.integrations.lightning import DMLModule

    cohort, method = _trainer_method(update)
    models = [copy.deepcopy(p) for p in cohort.peers]
    opts = [torch.optim.SGD(m.parameters(), **SGD) for m in models]
    module = DMLModule(
        [copy.deepcopy(p) for p in cohort.peers],
        update=update,
        mimicry_weight=0.7,
        optimizer=lambda params: torch.optim.SGD(params, **SGD),
    )
    for x, y in DataLoader(_data(), batch_size=BATCH):
        method.train_step(x, y)
        dmlkit.step(models, opts, x, y, update=update, mimicry_weight=0.7)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and log cadence
        L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(module, DataLoader(_data(), batch_size=BATCH))
    _assert_same_weights(list(cohort.peers), models)
    _assert_same_weights(list(cohort.peers), list(module.peers))


def test_the_step_minimises_dml_loss_and_detaches_the_targets() -> None:
    """``dml_loss`` is the loss every peer minimises: a plain-autograd step on it by hand
    (targets detached, one SGD step per peer) equals step_peers' simultaneous update."""
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3) for _ in range(3)]
    hand = copy.deepcopy(nets)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, -1])
    logits = [n(x) for n in nets]
    opts = [torch.optim.SGD(n.parameters(), lr=0.3) for n in nets]
    step_peers(
        logits,
        lambda k, others: dml_loss(logits[k], others, y, mimicry_weight=0.5)._asdict(),
        opts,
        names=["a", "b", "c"],
    )
    totals = dml_losses([n(x) for n in hand], y, mimicry_weight=0.5)
    for net, total in zip(hand, totals):
        grads = torch.autograd.grad(total, list(net.parameters()), retain_graph=True)
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads):
                p -= 0.3 * g
    for a, b in zip(nets, hand):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_the_sequential_step_needs_repredict_and_names_the_nonfinite_peer() -> None:
    nets = [torch.nn.Linear(2, 2) for _ in range(2)]
    logits = [n(torch.ones(3, 2)) for n in nets]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1) for n in nets]

    def loss(k: int, others: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        value = logits[k].sum()
        return {"loss": value * float("nan") if k == 1 else value}

    with pytest.raises(ValueError, match="repredict"):
        step_peers(logits, loss, opts, update="sequential", names=["a", "b"])
    with pytest.raises(ValueError, match="update must be one of"):
        step_peers(logits, loss, opts, update="random", names=["a", "b"])
    before = copy.deepcopy(nets[1].state_dict())
    with pytest.raises(NonFiniteLoss, match="'b'"):
        step_peers(
            logits,
            loss,
            opts,
            update="sequential",
            repredict=lambda k: nets[k](torch.ones(3, 2)),
            names=["a", "b"],
        )
    assert all(torch.equal(v, nets[1].state_dict()[k]) for k, v in before.items())
