"""``dmlkit.integrations.lightning.DMLModule`` under Lightning's own Trainer, on the CPU.

The reference is dmlkit's own step (:class:`dmlkit.methods.DML` on a :class:`Cohort`): the
same peers, the same batches, the same optimizer settings must give the same weights, the same
logged losses and the same validation accuracy.
"""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch

pytest.importorskip("lightning")

import lightning as L  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dmlkit.cohort import Cohort, PeerSpec  # noqa: E402
from dmlkit.config import MethodConfig, OptimConfig  # noqa: E402
from dmlkit.engine.evaluation import evaluate  # noqa: E402
from dmlkit.integrations.lightning import DMLModule  # noqa: E402
from dmlkit.methods import DML  # noqa: E402

STEPS, BATCH = 5, 16
OPTIM = OptimConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="constant")


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * BATCH, 1, 8, 8, generator=g)
    return TensorDataset(x, (x.flatten(1)[:, :10].argmax(1)))  # a learnable 10-class target


def _cohort() -> Cohort:
    # small_cnn has BatchNorm: the sequential update must leave its running stats as dmlkit does
    specs = [PeerSpec(f"net{i}", "small_cnn", 10, 1, seed=10 + i) for i in range(2)]
    cohort = Cohort(specs, [OPTIM, OPTIM], total_epochs=1.0)
    cohort.set_lr(0.0)
    return cohort


def _sgd(params):  # noqa: ANN001, ANN202
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


@pytest.mark.slow  # Lightning's Trainer: ~10 s to start on 2 cores
@pytest.mark.parametrize("update", ["simultaneous", "sequential"])
def test_dml_module_matches_dmlkits_own_steps(update: str, tmp_path) -> None:
    data = _data()
    cohort = _cohort()
    module = DMLModule(
        [copy.deepcopy(p) for p in cohort.peers],
        method="dml",
        update=update,
        optimizer=_sgd,
        names=cohort.names,
    )
    method = DML(cohort, MethodConfig(name="dml", update=update))
    logs = [method.train_step(x, y) for x, y in DataLoader(data, batch_size=BATCH)]

    logging.getLogger("lightning").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and log cadence
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=L.pytorch.loggers.CSVLogger(tmp_path),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=1,
            deterministic=True,
        )
        trainer.fit(module, DataLoader(data, batch_size=BATCH))
        metrics = dict(trainer.callback_metrics)  # validate() replaces them
        val = trainer.validate(module, DataLoader(data, batch_size=BATCH), verbose=False)[0]

    for ours, theirs in zip(cohort.peers, module.peers):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    for k, name in enumerate(cohort.names):
        for key in ("loss", "ce", "mimicry"):
            mean = sum(float(step[k][key]) for step in logs) / STEPS
            assert float(metrics[f"train/{key}/{name}_epoch"]) == pytest.approx(mean, rel=1e-4)
        assert float(metrics[f"train/lr/{name}_epoch"]) == pytest.approx(0.05)
        assert float(metrics[f"train/grad_norm/{name}_epoch"]) > 0
    assert logs[0][0]["mimicry"] > 0  # a real mutual term was compared
    ref = evaluate(cohort, DataLoader(data, batch_size=BATCH))
    for name in [*cohort.names, "ensemble"]:
        assert val[f"val/top1/{name}"] == pytest.approx(ref[name]["top1"], abs=1e-6)
        assert val[f"val/ce/{name}"] == pytest.approx(ref[name]["ce"], rel=1e-4)
    assert 0.0 <= val["val/all_agree"] <= 1.0 and val["val/pairwise_kl"] > 0
    # Per-peer metrics went through Lightning's logger (its CSV file).
    header = next((tmp_path / "lightning_logs").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "train/ce/net0_step" in header and "val/top1/ensemble" in header


def test_dml_module_rejects_unknown_settings() -> None:
    nets = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    with pytest.raises(ValueError, match="method='kd'; choose from dml, dml_e, independent"):
        DMLModule(nets, method="kd")
    with pytest.raises(ValueError, match="update='random'"):
        DMLModule(nets, update="random")
    with pytest.raises(ValueError, match="one distinct name per model"):
        DMLModule(nets, names=["a", "a"])


# DMLModule under Lightning's DDP on 2 CPU processes (gloo): the script is run as a program,
# as Lightning's "ddp" strategy re-launches it for rank 1.
DDP_SCRIPT = """
import json
import sys
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def build():
    from dmlkit.integrations.lightning import DMLModule

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)) for _ in range(2)]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    data = TensorDataset(x, x[:, :4].argmax(1))
    return DMLModule(nets), DataLoader(data, batch_size=16)


def trainer(devices):
    import lightning as L

    return L.Trainer(
        max_epochs=1, accelerator="cpu", devices=devices,
        strategy="ddp" if devices > 1 else "auto", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    module, data = build()
    t = trainer(2)
    val = t.validate(module, data, verbose=False)[0]
    t.fit(module, data)  # and it trains under DDP
    if t.global_rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({k: float(v) for k, v in val.items()}, f)
"""


@pytest.mark.slow  # two processes, Lightning's start-up in each: about a minute on 2 cores
def test_ddp_reports_the_whole_validation_set_as_one_process_does(tmp_path) -> None:
    import json
    import os
    import runpy
    import socket
    import subprocess
    import sys

    script = tmp_path / "ddp_val.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    out = tmp_path / "ddp.json"
    done = subprocess.run(
        [sys.executable, str(script), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ddp = json.loads(out.read_text())

    program = runpy.run_path(str(script), run_name="ddp_val")
    module, data = program["build"]()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = program["trainer"](1).validate(module, data, verbose=False)[0]
    assert set(ddp) == set(one) and "val/top1/ensemble" in one
    for key, value in one.items():
        # each process validates half of the 64 samples; the reported value is their mean
        assert ddp[key] == pytest.approx(float(value), rel=1e-5, abs=1e-6), key


def test_training_step_logs_no_graph_attached_values(tmp_path) -> None:
    """Lightning's "Converting a tensor with requires_grad=True to a scalar" warning came from
    logging the losses with their graph; with warnings as errors, a step runs clean."""
    nets = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    module = DMLModule(nets, update="sequential")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    data = DataLoader(TensorDataset(x, x[:, :3].argmax(1)), batch_size=8)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own advice (workers, log cadence)
        warnings.filterwarnings("error", message=".*requires_grad.*")
        warnings.filterwarnings("error", category=UserWarning, module="torch")
        trainer.fit(module, data)
    assert all(not v.requires_grad for v in trainer.callback_metrics.values())
    assert "train/loss/peer0_linear_epoch" in trainer.callback_metrics  # the CLI's names


def test_default_peer_names_are_the_clis() -> None:
    module = DMLModule([torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)])
    assert module.names == ["peer0_linear", "peer1_linear"]
