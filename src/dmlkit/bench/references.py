"""The two reference loops ``dml bench`` compares dmlkit with: the textbook DML step as most
reimplementations write it, and the external ``pytorch-dml`` package's trainer."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from dmlkit.bench.cases import Case, case_data, case_models, case_sgd, sync_device, time_steps


def textbook_steps(case: Case) -> list[float]:
    from torch.utils.data import DataLoader, TensorDataset

    models = case_models(case)
    opts = [case_sgd(m.parameters()) for m in models]
    x, y = case_data(case, case.warmup + case.steps)
    mean = torch.tensor([0.507, 0.487, 0.441]).view(1, 3, 1, 1)
    std = torch.tensor([0.267, 0.256, 0.276]).view(1, 3, 1, 1)
    loader = iter(DataLoader(TensorDataset(x, y), batch_size=case.batch, shuffle=True))

    def step(_: int) -> None:
        xb, yb = next(loader)
        xb = ((xb.float() / 255 - mean) / std).to(case.device)
        yb = yb.to(case.device)
        outs = [m(xb) for m in models]
        for k, (opt, out) in enumerate(zip(opts, outs)):
            loss = F.cross_entropy(out, yb)
            for j, other in enumerate(outs):
                if j != k:
                    loss = loss + F.kl_div(
                        F.log_softmax(out, 1), F.softmax(other.detach(), 1), reduction="batchmean"
                    ) / max(case.k - 1, 1)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return time_steps(step, case)


def pytorch_dml_steps(case: Case) -> list[float]:
    from pydml import DMLTrainer  # the external package: pip install pytorch-dml
    from pydml.trainers.dml import DMLConfig
    from torch.utils.data import DataLoader, TensorDataset

    models = case_models(case)
    trainer = DMLTrainer(
        models,
        config=DMLConfig(temperature=1.0),
        device=case.device,
        optimizers=[case_sgd(m.parameters()) for m in models],
    )
    x, y = case_data(case, case.warmup + case.steps)
    loader = DataLoader(TensorDataset(x.float() / 255, y), batch_size=case.batch)
    stamps: list[float] = []

    class Timed:
        """The loader, stamping the clock as each batch is asked for: the time between two
        requests is one whole step of the trainer, its per-batch overheads included."""

        def __len__(self) -> int:
            return len(loader)

        def __iter__(self) -> Any:
            for batch in loader:
                sync_device(case.device)
                stamps.append(time.perf_counter())
                yield batch
            sync_device(case.device)
            stamps.append(time.perf_counter())

    # one epoch over all the batches, as the trainer is meant to be used (its per-epoch
    # set-up is then paid once, not once per timed step)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # its tqdm bar
        trainer.train_epoch(Timed(), 0)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return steps[case.warmup :]
