"""The CUDA paths of dmlkit, written once and run on every device there is.

Each test takes a ``device``: the CPU always (tiny sizes), CUDA when there is a GPU. The CUDA
cases are marked ``gpu`` and skip without one; ``benchmarks/gpu_suite.py`` runs them with
``pytest -m gpu``. Running the same bodies on the CPU here means they are known to work before a
GPU is ever lent, so a failure there is the GPU's, not the test's.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dmlkit.cli import main
from dmlkit.cohort import Cohort, PeerSpec, StackedCohort
from dmlkit.config import MethodConfig, OptimConfig, load_config
from dmlkit.engine.records import EpochFunction
from dmlkit.engine.trainer import Trainer
from dmlkit.methods import DML, Precision
from dmlkit.models import list_models

from helpers import QUIET

HAS_CUDA = torch.cuda.is_available()
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]
# seconds of CPU time (emulated low precision, compiling, end to end): on the CPU in the full
# run only, out of the fast loop (-m "not slow"); on a GPU always
DEVICES_SLOW_ON_CPU = [pytest.param("cpu", marks=pytest.mark.slow), DEVICES[1]]

# arch -> input channels, and per device (image size, constructor kwargs). On the GPU the real
# networks at their real input sizes; on the CPU, where bf16 is emulated and slow, cut-down
# versions of the same code on small images.
MODEL_INPUTS: dict[str, tuple[int, dict[str, tuple[tuple[int, int], dict]]]] = {
    "small_cnn": (1, {"cpu": ((8, 8), {"width": 4}), "cuda": ((28, 28), {})}),
    "mlp": (1, {"cpu": ((8, 8), {"hidden": [16]}), "cuda": ((28, 28), {})}),
    "resnet32": (3, {"cpu": ((8, 8), {"depth": 8}), "cuda": ((32, 32), {})}),
    "wrn28_10": (3, {"cpu": ((8, 8), {"depth": 10, "widen_factor": 1}), "cuda": ((32, 32), {})}),
    "mobilenet": (3, {"cpu": ((8, 8), {}), "cuda": ((32, 32), {})}),
    # not 32x16 on the CPU: there the last stage's stride-2 depthwise conv sees a 1-pixel-wide
    # map, and its bf16 backward gave a non-finite or non-fp32 gradient (blocks.4.0.conv_dw)
    # when run after the rest of the suite, never alone; CPU oneDNN state, not investigated
    "mobilenet_v1": (3, {"cpu": ((64, 32), {"width": 0.25}), "cuda": ((256, 128), {})}),
    "inception_v1": (3, {"cpu": ((8, 8), {}), "cuda": ((32, 32), {})}),
    "resnet32_mb": (3, {"cpu": ((8, 8), {"depth": 8}), "cuda": ((32, 32), {})}),
    "wrn_mb": (3, {"cpu": ((8, 8), {"depth": 10, "widen_factor": 1}), "cuda": ((32, 32), {})}),
}
HEAVY_ON_CPU = {"mobilenet", "mobilenet_v1", "inception_v1"}  # seconds each in emulated bf16


def _model_cases():
    for arch in sorted(MODEL_INPUTS):
        cpu_marks = [pytest.mark.slow] if arch in HEAVY_ON_CPU else []
        yield pytest.param(arch, "cpu", marks=cpu_marks, id=f"{arch}-cpu")
        yield pytest.param(arch, "cuda", marks=ON_GPU, id=f"{arch}-cuda")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """No TF32 on the GPU: two fp32 paths are then compared at fp32 precision.

    Saved and restored by hand: these flags are properties of torch's backend modules, which
    pytest's monkeypatch (9.2 and newer) restores with ``delattr`` and fails on.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32, cudnn.allow_tf32 = False, False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def _batches(n: int, shape: tuple[int, ...], classes: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, *shape, generator=g).to(device),
            torch.randint(0, classes, (16,), generator=g).to(device),
        )
        for _ in range(n)
    ]


def _assert_states_close(a: dict, b: dict, atol: float) -> None:
    """Weights, BatchNorm buffers and optimizer states of two cohorts agree within atol."""
    for sa, sb in zip(a["models"], b["models"], strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(
                sa[key].float().cpu(), sb[key].float().cpu(), atol=atol, rtol=0, msg=key
            )
    for oa, ob in zip(a["optimizers"], b["optimizers"], strict=True):
        assert oa["state"].keys() == ob["state"].keys()
        for i, per_param in oa["state"].items():
            for key, value in per_param.items():
                other = torch.as_tensor(ob["state"][i][key]).float().cpu()
                torch.testing.assert_close(
                    torch.as_tensor(value).float().cpu(), other, atol=atol, rtol=0
                )


# ------------------------------------------------------------------------------------------------
# every model: forward and backward in channels-last and bf16


def test_every_registered_model_has_inputs_here():
    """A new model must be added to MODEL_INPUTS, so that the GPU run covers it."""
    assert set(MODEL_INPUTS) == set(list_models())


@pytest.mark.parametrize(("arch", "device"), list(_model_cases()))
def test_model_forward_backward_channels_last_bf16(arch: str, device: str):
    cin, per_device = MODEL_INPUTS[arch]
    size, kwargs = per_device[device]
    spec = PeerSpec("p", arch, 10, cin, seed=1, image_size=size, kwargs=kwargs)
    ref = spec.build().to(device)  # fp32, NCHW: the reference
    model = spec.build().to(device).to(memory_format=torch.channels_last)
    convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    g = torch.Generator().manual_seed(0)
    n = 4 if device == "cpu" else 32
    x = torch.randn(n, cin, *size, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    # eval mode (no dropout, running statistics): bf16 logits follow the fp32 ones
    ref.eval(), model.eval()
    with torch.no_grad():
        want = ref(x)
        with torch.autocast(device, dtype=torch.bfloat16):
            got = model(x_cl)
    assert got.shape == (n, 10) and got.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: ~0.4 % per layer, tens of layers; a wrong layout or a
    # wrong kernel is off by the whole scale
    scale = float(want.abs().max())
    assert float((got.float() - want).abs().max()) <= 0.1 * scale + 1e-3

    # train mode: the backward reaches every parameter, in fp32, finite
    model.train()
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x_cl), y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad]
    assert all(grad is not None for _, grad in grads), [n for n, grad in grads if grad is None]
    bad = [n for n, grad in grads if grad.dtype != torch.float32 or not torch.isfinite(grad).all()]
    assert not bad, bad
    assert sum(float(grad.abs().sum()) for _, grad in grads) > 0
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


# ------------------------------------------------------------------------------------------------
# the stacked cohort equals the loop cohort


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_stacked_cohort_equals_loop_cohort(device: str, exact_fp32: None):
    """Three DML steps: the loop (channels-last, as `dml train` runs it) and the stacked
    cohort give the same losses, weights, BatchNorm statistics and optimizer states."""
    specs = [
        PeerSpec(f"p{i}", "resnet32", 5, 3, seed=10 + i, kwargs={"depth": 8}) for i in range(3)
    ]  # depth 8: every kind of layer of ResNet-32 (stem, both shortcut types, BN, pooling)
    optim = [OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)] * 3
    loop = Cohort(specs, optim, 10, device, channels_last=True)
    stacked = StackedCohort(specs, optim, 10, device)
    m_loop, m_stacked = DML(loop, MethodConfig()), DML(stacked, MethodConfig())
    for x, y in _batches(3, (3, 8, 8), 5, device):
        loop.set_lr(0.0), stacked.set_lr(0.0)
        for a, b in zip(m_loop.train_step(x, y), m_stacked.train_step(x, y), strict=True):
            torch.testing.assert_close(a["loss"], b["loss"], atol=1e-4, rtol=0)
    # grouped vs per-peer convolutions sum in another order: fp32 rounding, not a wrong peer
    _assert_states_close(loop.training_state(), stacked.training_state(), atol=5e-4)
    tracked = [v for k, v in stacked.training_state()["models"][2].items() if "num_batches" in k]
    assert tracked and all(int(v) == 3 for v in tracked)  # each peer's statistics, once a step


# ------------------------------------------------------------------------------------------------
# the device-resident data loader


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_device_resident_loader_matches_the_cpu_loader():
    """build_data(device=cuda) keeps every split on the GPU and yields, epoch after epoch, the
    batches the CPU loader yields (same order, crops, flips and normalisation)."""
    from dmlkit.data.core import build_data

    cfg = load_config(None, ["data.train_size=256", "data.batch_size=32"]).data
    cpu, gpu = build_data(cfg, seed=3), build_data(cfg, seed=3, device="cuda")
    for loader in (gpu.train, gpu.val, gpu.test):
        assert loader is not None and loader.x.device.type == "cuda"
    for epoch in (0, 1):
        cpu.train.set_epoch(epoch), gpu.train.set_epoch(epoch)
        pairs = list(zip(cpu.train, gpu.train, strict=True))
        assert len(pairs) == 256 // 32
        for (xa, ya), (xb, yb) in pairs:
            assert xb.device.type == "cuda" and yb.device.type == "cuda"
            assert torch.equal(ya, yb.cpu())
            torch.testing.assert_close(xa, xb.cpu(), atol=1e-6, rtol=0)
    for (xa, ya), (xb, yb) in zip(cpu.test, gpu.test, strict=True):
        assert torch.equal(ya, yb.cpu())
        torch.testing.assert_close(xa, xb.cpu(), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# fp16 loss scaling


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_fp16_loss_scaling_skips_overflowing_steps_then_trains(device: str):
    """A scale of 2^40 overflows the fp16 gradients: the step is skipped (weights untouched)
    and the scale backed off, step after step, until the gradients fit; then the peers train."""
    specs = [PeerSpec(f"p{i}", "small_cnn", 5, 3, seed=i, kwargs={"width": 4}) for i in range(2)]
    cohort = Cohort(specs, [OptimConfig(lr=0.05, momentum=0.9)] * 2, 10, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated fp16 on a CPU without native kernels
        precision = Precision("fp16", device)
    assert precision.scaler is not None and precision.scaler.is_enabled()
    # backing off by 2^-8 (not the default 1/2) reaches a scale that fits in a few steps
    precision.scaler = torch.amp.GradScaler(device, init_scale=2.0**40, backoff_factor=2.0**-8)
    method = DML(cohort, MethodConfig(), precision)
    x, y = _batches(1, (3, 8, 8), 5, device, seed=1)[0]  # one batch, learnt step after step

    before = [p.detach().clone() for p in cohort.parameters()]
    method.train_step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, cohort.parameters()))  # skipped
    assert precision.scaler.get_scale() == 2.0**32  # and backed off

    first_step, losses = None, []
    for i in range(1, 12):
        scale = precision.scaler.get_scale()
        weights = [p.detach().clone() for p in cohort.parameters()]
        logs = method.train_step(x, y)
        losses.append(sum(float(log["loss"]) for log in logs))
        moved = not all(torch.equal(a, b) for a, b in zip(weights, cohort.parameters()))
        if moved and first_step is None:
            first_step = (i, scale)
    assert first_step is not None, "no step was ever taken"
    assert first_step[1] < 2.0**32  # it took a smaller scale for the gradients to fit
    assert all(torch.isfinite(p).all() for p in cohort.parameters())
    assert all(p.dtype == torch.float32 for p in cohort.parameters())
    assert min(losses[-5:]) < losses[first_step[0] - 1]  # and the steps taken lower the loss


# ------------------------------------------------------------------------------------------------
# `dml train` for 2 epochs, interrupted after the first, resumes bitwise on the same device


def _train_args(out: Path, device: str, *extra: str) -> list[str]:
    overrides = [
        *QUIET,
        "data.train_size=256",
        "data.batch_size=32",
        "train.epochs=2",
        f"train.device={device}",
        *extra,
    ]
    return ["train", "--out", str(out), *[a for o in overrides for a in ("--set", o)]]


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_two_epoch_train_resumes_bitwise(device: str, tmp_path: Path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_train_args(full, device)) == 0

    args = _train_args(cut, device)
    cfg = load_config(None, [a for a in args[3:] if a != "--set"])
    trainer = Trainer(cfg, cut)
    # on CUDA `auto` picks the stacked cohort: its checkpoint round trip is under test too
    assert type(trainer.cohort) is (StackedCohort if device == "cuda" else Cohort)

    def stop_after_first(epoch: int, _records: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(callbacks=[EpochFunction(stop_after_first)])
    assert not (cut / "summary.json").exists()
    assert main(["train", "--resume", str(cut)]) == 0

    assert json.loads((cut / "env.json").read_text())["device"].startswith(device)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    b = torch.load(cut / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    for sa, sb in zip(a["cohort"]["models"], b["cohort"]["models"], strict=True):
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), [
            k for k in sa if not torch.equal(sa[k], sb[k])
        ][:3]

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]

    assert records(full) == records(cut)


# ------------------------------------------------------------------------------------------------
# torch.compile of a peer


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_compiled_peers_train_like_eager_ones(device: str, exact_fp32: None):
    """Two DML steps with compiled peers (forward and backward through the compiler) give the
    eager run's losses and weights; checkpoints keep the plain module's keys."""
    specs = [PeerSpec(f"p{i}", "small_cnn", 5, 3, seed=i, kwargs={"width": 8}) for i in range(2)]
    optim = [OptimConfig(lr=0.1, momentum=0.9)] * 2
    eager = Cohort(specs, optim, 10, device)
    compiled = Cohort(specs, optim, 10, device, compile=True)
    m_eager, m_compiled = DML(eager, MethodConfig()), DML(compiled, MethodConfig())
    for x, y in _batches(2, (3, 16, 16), 5, device):
        for a, b in zip(m_eager.train_step(x, y), m_compiled.train_step(x, y), strict=True):
            torch.testing.assert_close(a["loss"], b["loss"], atol=1e-4, rtol=1e-4)
    _assert_states_close(eager.training_state(), compiled.training_state(), atol=1e-4)
    assert not any("_orig_mod" in k for k in compiled.training_state()["models"][0])


# ------------------------------------------------------------------------------------------------
# the re-id evaluation on the GPU


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_reid_ranking_on_the_gpu_equals_the_cpu():
    from dmlkit.metrics.reid import pairwise_distance, rank_queries

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(31, 64, generator=g)
    g_pids = torch.randint(0, 31, (900,), generator=g)
    q_pids = torch.randint(1, 31, (120,), generator=g)
    gallery = centres[g_pids] + 2 * torch.randn(900, 64, generator=g)
    query = centres[q_pids] + 2 * torch.randn(120, 64, generator=g)
    g_cams = torch.randint(1, 7, (900,), generator=g)
    q_cams = torch.randint(1, 7, (120,), generator=g)
    results = []
    for device in ("cpu", "cuda"):
        dist = pairwise_distance(query.to(device), gallery.to(device), normalize=True)
        assert dist.device.type == device
        t = [t.to(device) for t in (q_pids, g_pids, q_cams, g_cams)]
        results.append(rank_queries(dist, *t, 20, chunk_size=32))
    cpu, gpu = results
    assert cpu.num_valid == gpu.num_valid > 100
    assert abs(cpu.mAP - gpu.mAP) < 1e-6
    assert abs(cpu.cmc - gpu.cmc).max() < 1e-6
