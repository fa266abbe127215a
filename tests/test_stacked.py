"""The stacked (vmap) cohort matches the loop cohort; precision and compile stay correct."""

from __future__ import annotations

import pytest
import torch

from dmlkit.cohort import Cohort, PeerSpec, StackedCohort, build_cohort
from dmlkit.config import MethodConfig, OptimConfig, load_config
from dmlkit.engine.trainer import Trainer
from dmlkit.errors import ConfigError
from dmlkit.methods import DML, Independent, Precision

from helpers import QUIET

K = 3


def _specs(arch: str = "small_cnn", **kwargs) -> list[PeerSpec]:
    return [
        PeerSpec(f"p{i}", arch, 5, 1, seed=10 + i, image_size=(8, 8), kwargs={"width": 4, **kwargs})
        for i in range(K)
    ]


def _pair(optim: OptimConfig) -> tuple[Cohort, StackedCohort]:
    specs = _specs()
    return Cohort(specs, [optim] * K, 10), StackedCohort(specs, [optim] * K, 10)


def _batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g))
        for _ in range(n)
    ]


def _assert_states_close(a: dict, b: dict, atol: float) -> None:
    for sa, sb in zip(a["models"], b["models"]):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.allclose(sa[key].float(), sb[key].float(), atol=atol), key
    for oa, ob in zip(a["optimizers"], b["optimizers"]):
        assert oa["state"].keys() == ob["state"].keys()
        for i in oa["state"]:
            for key, va in oa["state"][i].items():
                assert torch.allclose(
                    torch.as_tensor(va).float(),
                    torch.as_tensor(ob["state"][i][key]).float(),
                    atol=atol,
                )


def test_forward_matches_the_loop():
    loop, stacked = _pair(OptimConfig())
    x = torch.randn(8, 1, 8, 8)
    for a, b in zip(loop(x), stacked(x)):
        assert torch.allclose(a, b, atol=1e-5)
    loop.eval(), stacked.eval()
    for a, b in zip(loop(x), stacked(x)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "optim",
    [
        OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        OptimConfig(name="adam", lr=1e-3, weight_decay=1e-4),
    ],
    ids=["sgd-nesterov", "adam"],
)
@pytest.mark.parametrize("method_cls", [DML, Independent])
def test_training_steps_match_the_loop(optim, method_cls):
    """Weights, BatchNorm statistics and optimizer state after 5 steps agree."""
    loop, stacked = _pair(optim)
    cfg = MethodConfig(name="dml", update="simultaneous")
    m_loop, m_stacked = method_cls(loop, cfg), method_cls(stacked, cfg)
    for x, y in _batches(5):
        loop.set_lr(0.0), stacked.set_lr(0.0)
        logs_a, logs_b = m_loop.train_step(x, y), m_stacked.train_step(x, y)
        for la, lb in zip(logs_a, logs_b):
            assert torch.allclose(la["loss"], lb["loss"], atol=1e-5)
    _assert_states_close(loop.training_state(), stacked.training_state(), atol=1e-4)
    bn = stacked.training_state()["models"][1]["features.1.num_batches_tracked"]
    assert int(bn) == 5  # running statistics updated once per step, per peer


def test_checkpoints_are_interchangeable():
    loop, stacked = _pair(OptimConfig())
    m = DML(loop, MethodConfig())
    for x, y in _batches(3):
        m.train_step(x, y)
    fresh_stacked = StackedCohort(_specs(), [OptimConfig()] * K, 10)
    fresh_stacked.load_training_state(loop.training_state())
    _assert_states_close(loop.training_state(), fresh_stacked.training_state(), atol=0)
    # and back: continue both for one step, same result
    fresh_loop = Cohort(_specs(), [OptimConfig()] * K, 10)
    fresh_loop.load_training_state(fresh_stacked.training_state())
    x, y = _batches(1, seed=5)[0]
    DML(fresh_loop, MethodConfig()).train_step(x, y)
    DML(fresh_stacked, MethodConfig()).train_step(x, y)
    _assert_states_close(fresh_loop.training_state(), fresh_stacked.training_state(), atol=1e-5)


def test_auto_and_explicit_choice():
    specs, optim = _specs(), [OptimConfig()] * K
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert isinstance(build_cohort("auto", specs, optim, 1, cpu), Cohort)
    assert isinstance(build_cohort("stacked", specs, optim, 1, cpu), StackedCohort)
    with pytest.raises(ConfigError, match="sequential"):
        build_cohort("stacked", specs, optim, 1, cpu, update="sequential")
    mixed = [*specs[:2], PeerSpec("p2", "mlp", 5, 1, seed=1, image_size=(8, 8))]
    with pytest.raises(ConfigError, match="differ in architecture"):
        build_cohort("stacked", mixed, optim, 1, cpu)
    with pytest.raises(ConfigError, match="optimizer"):
        build_cohort("stacked", specs, [OptimConfig(), OptimConfig(lr=0.2), OptimConfig()], 1, cpu)
    from dmlkit.cohort import stacking_problem

    # auto would stack on CUDA (decided without touching a GPU)
    assert stacking_problem(specs, optim) is None and cuda.type == "cuda"


def test_trainer_with_stacked_cohort_matches_loop(tmp_path):
    base = [
        *QUIET,
        "data.train_size=256",
        "train.epochs=2",
        "peers.0.kwargs.width=8",
        "peers.1.kwargs.width=8",
    ]
    runs = {}
    for impl in ("loop", "stacked"):
        cfg = load_config(None, [*base, f"train.cohort_impl={impl}"])
        trainer = Trainer(cfg, tmp_path / impl)
        assert type(trainer.cohort).__name__ == ("Cohort" if impl == "loop" else "StackedCohort")
        runs[impl] = (trainer.fit(), trainer.cohort.training_state())
    _assert_states_close(runs["loop"][1], runs["stacked"][1], atol=1e-3)
    for a, b in zip(runs["loop"][0]["peers"], runs["stacked"][0]["peers"]):
        assert abs(a["metrics"]["top1"] - b["metrics"]["top1"]) <= 0.01


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_tracks_fp32(precision):
    """A few dozen steps in bf16/fp16 autocast stay close to fp32 and keep fp32 weights."""
    torch.manual_seed(0)
    results = {}
    for p in ("fp32", precision):
        loop = Cohort(_specs(), [OptimConfig(lr=0.05)] * K, 10)
        method = DML(loop, MethodConfig(), Precision(p, "cpu"))
        losses = [
            float(torch.stack([log["loss"] for log in method.train_step(x, y)]).mean())
            for x, y in _batches(30)
        ]
        results[p] = losses
        assert all(
            t.dtype == torch.float32
            for t in loop.peers[0].state_dict().values()
            if t.is_floating_point()
        )
    fp32, low = results["fp32"], results[precision]
    assert all(torch.isfinite(torch.tensor(low)))
    assert low[-1] < low[0]  # it trains
    assert abs(sum(low[-5:]) / 5 - sum(fp32[-5:]) / 5) < 0.1 * sum(fp32[-5:]) / 5


def test_fp16_uses_loss_scaling():
    assert Precision("fp16", "cpu").scaler is not None
    assert Precision("bf16", "cpu").scaler is None and Precision("fp32", "cpu").scaler is None


@pytest.mark.slow
def test_compile_matches_eager():
    specs = [
        PeerSpec(f"p{i}", "mlp", 4, 1, seed=i, image_size=(4, 4), kwargs={"hidden": [8]})
        for i in range(2)
    ]
    x = torch.randn(6, 1, 4, 4)
    eager = Cohort(specs, [OptimConfig()] * 2, 1)
    for cohort in (
        Cohort(specs, [OptimConfig()] * 2, 1, compile=True),
        StackedCohort(specs, [OptimConfig()] * 2, 1, compile=True),
    ):
        for a, b in zip(eager(x), cohort(x)):
            assert torch.allclose(a, b, atol=1e-5)
        assert "._orig_mod" not in "".join(cohort.training_state()["models"][0])


@pytest.mark.parametrize("arch", ["small_cnn", "resnet32"])
def test_channels_last_trains_like_nchw(arch):
    """The layout is a speed choice only: logits, losses and every state after 3 DML steps agree,
    and the channels-last cohort really holds channels-last weights and feeds them so."""
    kwargs = {"width": 4} if arch == "small_cnn" else {"depth": 8}
    specs = [
        PeerSpec(f"p{i}", arch, 5, 3, seed=10 + i, image_size=(8, 8), kwargs=kwargs)
        for i in range(2)
    ]
    optim = [OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)] * 2
    nchw = Cohort(specs, optim, 10, channels_last=False)
    cl = Cohort(specs, optim, 10, channels_last=True)
    conv_w = next(p for p in cl.peers[0].parameters() if p.dim() == 4)
    assert conv_w.is_contiguous(memory_format=torch.channels_last) and not conv_w.is_contiguous()
    seen = []
    cl.peers[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    m_a, m_b = DML(nchw, MethodConfig()), DML(cl, MethodConfig())
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)
        for la, lb in zip(m_a.train_step(x, y), m_b.train_step(x, y)):
            assert torch.allclose(la["loss"], lb["loss"], atol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    _assert_states_close(nchw.training_state(), cl.training_state(), atol=1e-4)


def test_channels_last_is_a_resumable_layout_choice(tmp_path):
    from dmlkit.engine.persistence import RESUMABLE_CHANGES

    assert "train.channels_last" in RESUMABLE_CHANGES
    assert load_config(None).train.channels_last is True  # the measured-faster default


def test_emulated_low_precision_on_the_cpu_warns(monkeypatch):
    import warnings

    import dmlkit.methods.update as update

    monkeypatch.setattr(update, "cpu_has_native", lambda precision: False)
    with pytest.warns(UserWarning, match=r"train.precision=bf16 .* use train.precision=fp32"):
        Precision("bf16", "cpu")
    monkeypatch.setattr(update, "cpu_has_native", lambda precision: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Precision("bf16", "cpu"), Precision("fp32", "cpu"), Precision("fp32", "cuda")
