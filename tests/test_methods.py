"""Tests of the training schemes in :mod:`dmlkit.methods` on a real :class:`Cohort`.

Every expected update is computed here by hand with plain torch: an explicit MLP forward,
hand-written cross-entropy / KL, ``torch.autograd.grad`` and ``w - lr * grad`` (plain SGD, no
momentum, no weight decay). Nothing from :mod:`dmlkit.losses` is used for the expectations.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dmlkit.cohort import Cohort, PeerSpec
from dmlkit.config import MethodConfig, OptimConfig
from dmlkit.methods import DML, DMLEnsemble, Independent

LR = 0.5
ATOL = 1e-6
MLP_KWARGS = {"image_size": (2, 2), "hidden": [5]}


def _optim() -> OptimConfig:
    return OptimConfig(
        name="sgd", lr=LR, momentum=0.0, nesterov=False, weight_decay=0.0, schedule="constant"
    )


def _mlp_specs(seeds: list[int]) -> list[PeerSpec]:
    return [
        PeerSpec(
            name=f"p{i}",
            arch="mlp",
            num_classes=3,
            in_channels=1,
            seed=s,
            kwargs=dict(MLP_KWARGS),
        )
        for i, s in enumerate(seeds)
    ]


def _cohort(specs: list[PeerSpec]) -> Cohort:
    cohort = Cohort(specs, [_optim() for _ in specs], total_epochs=1, device="cpu")
    cohort.set_lr(0.0)
    assert cohort.lrs() == [LR] * len(specs)
    return cohort


def _batch(b: int = 6, shape: tuple[int, ...] = (1, 2, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, *shape, generator=g)
    y = torch.arange(b) % 3
    return x, y


# --------------------------------------------------------------------------------------------
# hand computation


def _params(peer: torch.nn.Module) -> list[torch.Tensor]:
    """[W1, b1, W2, b2] of an MLP with one hidden layer, detached copies."""
    ps = [p.detach().clone() for p in peer.parameters()]
    assert [tuple(p.shape) for p in ps] == [(5, 4), (5,), (3, 5), (3,)]
    return ps


def _forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = params
    h = torch.clamp(x.flatten(1) @ w1.T + b1, min=0.0)
    return h @ w2.T + b2


def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    return z - z.exp().sum(dim=1, keepdim=True).log()


def _ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -_log_softmax(z)[torch.arange(len(y)), y].mean()


def _kl(target: torch.Tensor, z: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * mean_b sum_c p_t (log p_t - log p_z) at temperature t."""
    log_pt = _log_softmax(target / t)
    return (log_pt.exp() * (log_pt - _log_softmax(z / t))).sum(dim=1).mean() * t * t


def _kl_ensemble(others: list[torch.Tensor], z: torch.Tensor, t: float) -> torch.Tensor:
    p_avg = torch.stack([_log_softmax(o / t).exp() for o in others]).mean(dim=0)
    return (p_avg * (p_avg.log() - _log_softmax(z / t))).sum(dim=1).mean() * t * t


def _mimicry(z: torch.Tensor, others: list[torch.Tensor], mode: str, t: float) -> torch.Tensor:
    if mode == "dml":
        return sum(_kl(o, z, t) for o in others) / len(others)
    return _kl_ensemble(others, z, t)


def _sgd(params, loss_fn):
    """One plain SGD step: returns (new params, loss value)."""
    leaves = [p.clone().requires_grad_(True) for p in params]
    loss = loss_fn(leaves)
    grads = torch.autograd.grad(loss, leaves)
    return [p - LR * g for p, g in zip(params, grads)], loss.detach()


def _expected_step(init, x, y, *, update, mode="dml", t=1.0, w=1.0):
    """Expected new params and (loss, ce, mimicry) of every peer after one cohort step."""
    k_peers = len(init)
    current = [_forward(p, x) for p in init]  # the predictions the peers mimic
    new, logs = [], []
    for k in range(k_peers):
        others = [current[j] for j in range(k_peers) if j != k]

        def loss_fn(ps, others=others):
            z = _forward(ps, x)
            return _ce(z, y) + w * _mimicry(z, others, mode, t)

        z0 = _forward(init[k], x)
        ce, mim = _ce(z0, y), _mimicry(z0, others, mode, t)
        params, loss = _sgd(init[k], loss_fn)
        new.append(params)
        logs.append((loss, ce, mim))
        if update == "sequential":
            current[k] = _forward(params, x)  # the next peers see peer k's updated prediction
    return new, logs


def _assert_params(peer: torch.nn.Module, expected: list[torch.Tensor]) -> None:
    for p, e in zip(peer.parameters(), expected):
        assert torch.allclose(p.detach(), e, atol=ATOL), (p - e).abs().max()


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((u - v).abs().max()) for u, v in zip(a, b))


def test_hand_forward_matches_the_mlp():
    cohort = _cohort(_mlp_specs([1, 2]))
    x, _ = _batch()
    for peer in cohort.peers:
        assert torch.allclose(peer(x), _forward(_params(peer), x), atol=1e-6)


# --------------------------------------------------------------------------------------------
# 1. sequential vs simultaneous


@pytest.mark.parametrize("t,w", [(1.0, 1.0), (2.0, 0.5)])
def test_k2_sequential_vs_simultaneous_step_by_step(t, w):
    specs = _mlp_specs([1, 2])
    x, y = _batch()
    after = {}
    init = None
    for update in ("simultaneous", "sequential"):
        cohort = _cohort(specs)
        start = [_params(p) for p in cohort.peers]
        if init is None:
            init = start
        for a, b in zip(init, start):  # both runs start from identical weights
            assert all(torch.equal(u, v) for u, v in zip(a, b))
        method = DML(
            cohort, MethodConfig(name="dml", update=update, temperature=t, mimicry_weight=w)
        )
        logs = method.train_step(x, y)

        expected, exp_logs = _expected_step(init, x, y, update=update, t=t, w=w)
        for peer, e in zip(cohort.peers, expected):
            _assert_params(peer, e)
        for log, (loss, ce, mim) in zip(logs, exp_logs):
            assert torch.allclose(log["loss"], loss, atol=ATOL)
            assert torch.allclose(log["ce"], ce, atol=ATOL)
            assert torch.allclose(log["mimicry"], mim, atol=ATOL)
        after[update] = [_params(p) for p in cohort.peers]

    # peer 0 mimics peer 1's pre-step prediction in both modes: same update
    assert _max_diff(after["simultaneous"][0], after["sequential"][0]) == 0.0
    # peer 1 mimics peer 0's pre-step (simultaneous) or post-step (sequential) prediction
    assert _max_diff(after["simultaneous"][1], after["sequential"][1]) > 1e-4
    # and both moved
    assert _max_diff(after["sequential"][1], init[1]) > 1e-3


def test_k2_simultaneous_explicit():
    """The same check written out without the generic reference, for K = 2."""
    specs = _mlp_specs([3, 4])
    x, y = _batch()
    cohort = _cohort(specs)
    p0, p1 = (_params(p) for p in cohort.peers)
    z0, z1 = _forward(p0, x), _forward(p1, x)
    exp0, _ = _sgd(p0, lambda ps: _ce(_forward(ps, x), y) + _kl(z1, _forward(ps, x), 1.0))
    exp1_sim, _ = _sgd(p1, lambda ps: _ce(_forward(ps, x), y) + _kl(z0, _forward(ps, x), 1.0))
    z0_new = _forward(exp0, x)
    exp1_seq, _ = _sgd(p1, lambda ps: _ce(_forward(ps, x), y) + _kl(z0_new, _forward(ps, x), 1.0))

    DML(cohort, MethodConfig(name="dml", update="simultaneous")).train_step(x, y)
    _assert_params(cohort.peers[0], exp0)
    _assert_params(cohort.peers[1], exp1_sim)

    cohort = _cohort(specs)
    DML(cohort, MethodConfig(name="dml", update="sequential")).train_step(x, y)
    _assert_params(cohort.peers[0], exp0)
    _assert_params(cohort.peers[1], exp1_seq)
    assert _max_diff(exp1_sim, exp1_seq) > 1e-4


@pytest.mark.parametrize("mode,cls", [("dml", DML), ("dml_e", DMLEnsemble)])
def test_k3_sequential_sees_updated_peers(mode, cls):
    specs = _mlp_specs([1, 2, 3])
    x, y = _batch()
    cohort = _cohort(specs)
    init = [_params(p) for p in cohort.peers]
    logs = cls(cohort, MethodConfig(name=mode, update="sequential", temperature=2.0)).train_step(
        x, y
    )
    expected, exp_logs = _expected_step(init, x, y, update="sequential", mode=mode, t=2.0)
    for peer, e in zip(cohort.peers, expected):
        _assert_params(peer, e)
    for log, (loss, _, mim) in zip(logs, exp_logs):
        assert torch.allclose(log["loss"], loss, atol=ATOL)
        assert torch.allclose(log["mimicry"], mim, atol=ATOL)

    # peer 2 must have seen *both* peers 0 and 1 updated: the alternatives differ
    z = [_forward(p, x) for p in init]
    z_new = [_forward(p, x) for p in expected]

    def peer2_with(others):
        new, _ = _sgd(
            init[2],
            lambda ps: _ce(_forward(ps, x), y) + _mimicry(_forward(ps, x), others, mode, 2.0),
        )
        return new

    assert _max_diff(peer2_with([z_new[0], z_new[1]]), expected[2]) < ATOL
    for wrong in ([z[0], z[1]], [z_new[0], z[1]], [z[0], z_new[1]]):
        assert _max_diff(peer2_with(wrong), expected[2]) > 1e-5
        assert _max_diff(_params(cohort.peers[2]), peer2_with(wrong)) > 1e-5
    # peer 1 saw peer 0 updated but peer 2 not yet updated
    assert _max_diff(_params(cohort.peers[1]), expected[1]) < ATOL


# --------------------------------------------------------------------------------------------
# 2. BatchNorm running statistics under sequential re-prediction


def _bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in module.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def test_sequential_repredict_updates_bn_stats_once():
    specs = [
        PeerSpec(
            name=f"c{i}",
            arch="small_cnn",
            num_classes=3,
            in_channels=1,
            seed=s,
            kwargs={"width": 4},
        )
        for i, s in enumerate([11, 12])
    ]
    x, y = _batch(b=5, shape=(1, 8, 8))
    cohort = _cohort(specs)
    logs = DML(cohort, MethodConfig(name="dml", update="sequential")).train_step(x, y)

    for spec, peer in zip(specs, cohort.peers):
        ref = spec.build().train()
        ref(x)  # one train-mode forward from the same initial weights
        want = _bn_state(ref)
        got = _bn_state(peer)
        assert len(want) == 6  # two BN layers
        assert got.keys() == want.keys()
        for key in want:
            assert torch.allclose(got[key].float(), want[key].float(), atol=1e-7), key
        assert all(int(v) == 1 for k, v in got.items() if k.endswith("num_batches_tracked"))

        # the check can fail: a second forward would have moved the stats again
        ref(x)
        assert not all(torch.allclose(v.float(), _bn_state(ref)[k].float()) for k, v in got.items())

    # peer 1 mimicked peer 0's re-prediction made in train mode (batch statistics) with the
    # updated weights
    new0 = specs[0].build().train()
    new0.load_state_dict(cohort.peers[0].state_dict())
    old1 = specs[1].build().train()
    with torch.no_grad():
        expected = _kl(new0(x), old1(x), 1.0)
    assert torch.allclose(logs[1]["mimicry"], expected, atol=ATOL)


# --------------------------------------------------------------------------------------------
# 3. Independent


def test_independent_is_plain_ce_sgd_per_peer():
    specs = _mlp_specs([1, 2, 3])
    x, y = _batch()
    cohort = _cohort(specs)
    init = [_params(p) for p in cohort.peers]
    logs = Independent(cohort, MethodConfig(name="independent")).train_step(x, y)
    for peer, p, log in zip(cohort.peers, init, logs):
        expected, loss = _sgd(p, lambda ps: _ce(_forward(ps, x), y))
        _assert_params(peer, expected)
        assert _max_diff(expected, p) > 1e-3
        assert torch.allclose(log["ce"], loss, atol=ATOL)
        assert torch.allclose(log["loss"], loss, atol=ATOL)
        assert float(log["mimicry"]) == 0.0


# --------------------------------------------------------------------------------------------
# 4. logs


@pytest.mark.parametrize(
    "cls,name,update",
    [
        (Independent, "independent", "simultaneous"),
        (DML, "dml", "simultaneous"),
        (DML, "dml", "sequential"),
        (DMLEnsemble, "dml_e", "simultaneous"),
        (DMLEnsemble, "dml_e", "sequential"),
    ],
)
def test_logs_contract(cls, name, update):
    w = 0.7
    cohort = _cohort(_mlp_specs([1, 2, 3]))
    x, y = _batch()
    cfg = MethodConfig(name=name, update=update, temperature=2.0, mimicry_weight=w)
    logs = cls(cohort, cfg).train_step(x, y)
    assert isinstance(logs, list) and len(logs) == 3
    for log in logs:
        assert set(log) == {"loss", "ce", "mimicry"}
        for v in log.values():
            assert isinstance(v, torch.Tensor)
            assert v.dim() == 0
            assert not v.requires_grad and v.grad_fn is None
            assert torch.isfinite(v)
        assert torch.allclose(log["loss"], log["ce"] + w * log["mimicry"], atol=ATOL)
        if cls is Independent:
            assert float(log["mimicry"]) == 0.0
        else:
            assert float(log["mimicry"]) > 1e-4


# --------------------------------------------------------------------------------------------
# 5. DMLEnsemble


@pytest.mark.parametrize("update", ["simultaneous", "sequential"])
def test_dml_ensemble_k3_mimics_mean_probability(update):
    specs = _mlp_specs([1, 2, 3])
    x, y = _batch()
    cohort = _cohort(specs)
    init = [_params(p) for p in cohort.peers]
    cfg = MethodConfig(name="dml_e", update=update, temperature=1.0, mimicry_weight=1.0)
    logs = DMLEnsemble(cohort, cfg).train_step(x, y)
    expected, exp_logs = _expected_step(init, x, y, update=update, mode="dml_e")
    for peer, e in zip(cohort.peers, expected):
        _assert_params(peer, e)

    z = [_forward(p, x) for p in init]
    # peer 0 is the first to step in both modes: it sees every other peer's initial output
    want0 = _kl_ensemble([z[1], z[2]], z[0], 1.0)
    mean_of_kls = (_kl(z[1], z[0], 1.0) + _kl(z[2], z[0], 1.0)) / 2
    assert torch.allclose(logs[0]["mimicry"], want0, atol=ATOL)
    assert abs(float(want0) - float(mean_of_kls)) > 1e-4  # not what plain DML computes
    for log, (_, _, mim) in zip(logs, exp_logs):
        assert torch.allclose(log["mimicry"], mim, atol=ATOL)


# --------------------------------------------------------------------------------------------
# 6. identical-peer warning


def test_cohort_warns_on_identical_peers():
    with pytest.warns(UserWarning, match="IDENTICAL"):
        Cohort(_mlp_specs([5, 5]), [_optim(), _optim()], total_epochs=1, device="cpu")


def test_cohort_does_not_warn_on_different_seeds():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort = Cohort(
            _mlp_specs([5, 6, 7]), [_optim() for _ in range(3)], total_epochs=1, device="cpu"
        )
    w0 = next(cohort.peers[0].parameters())
    w1 = next(cohort.peers[1].parameters())
    assert not torch.equal(w0, w1)


def test_cohort_does_not_warn_on_same_seed_different_shapes():
    specs = _mlp_specs([5, 5])
    specs[1].kwargs = {"image_size": (2, 2), "hidden": [6]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Cohort(specs, [_optim(), _optim()], total_epochs=1, device="cpu")
