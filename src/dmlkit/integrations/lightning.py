"""Deep Mutual Learning as a LightningModule: ``DMLModule(models, method="dml")``.

For people whose training already runs on Lightning's ``Trainer`` (its loggers, callbacks,
precision and devices). The peers are trained with manual optimization, one optimizer per peer,
with the same losses as the rest of dmlkit (:mod:`dmlkit.losses`) and the same two update
orders (:mod:`dmlkit.methods`): ``simultaneous`` (one forward, every peer steps against it)
and ``sequential`` (the paper's Algorithm 1: peer k steps against the others' predictions as
updated earlier in the same step).

Everything is logged through ``self.log`` under the tags the dmlkit loggers use
(``train/ce/PEER``, ``train/mimicry/PEER``, ``train/loss/PEER``, ``train/lr/PEER``,
``train/grad_norm/PEER``; ``val/top1/PEER``, ``val/top1/ensemble``, ``val/ce/...``,
``val/all_agree``, ``val/pairwise_kl``), so any Lightning logger records them::

    import lightning as L
    from dmlkit.integrations.lightning import DMLModule

    module = DMLModule([net_a, net_b], method="dml", update="sequential")
    L.Trainer(max_epochs=10).fit(module, train_loader, val_loader)

Needs ``pip install 'dmlkit[lightning]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import lightning as L
except ModuleNotFoundError as exc:  # an optional extra
    raise ModuleNotFoundError(
        "dmlkit.integrations.lightning needs Lightning: pip install 'dmlkit[lightning]'",
        name=exc.name,
    ) from None

from dmlkit.cohort import preserved_buffers
from dmlkit.losses import DML_MODES, cross_entropy, mimicry_term
from dmlkit.metrics.agreement import agreement

METHODS = ("dml", "dml_e", "independent")
UPDATES = ("simultaneous", "sequential")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    # The paper's CIFAR setting: SGD with Nesterov momentum 0.9, LR 0.1.
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


class DMLModule(L.LightningModule):
    """A cohort of peers trained by mutual learning under Lightning's ``Trainer``.

    Args:
        models: the K peers (any ``nn.Module`` mapping ``x [B, ...]`` to logits ``[B, C]``).
        method: ``"dml"`` (CE + mean KL to each other peer), ``"dml_e"`` (CE + KL to the
            others' mean probability) or ``"independent"`` (CE only, the baseline).
        update: ``"simultaneous"`` or ``"sequential"`` (paper Algorithm 1).
        temperature: softmax temperature of the mimicry term (paper: 1).
        mimicry_weight: weight of the mimicry term (paper: 1).
        optimizer: ``params -> torch.optim.Optimizer``, called once per peer; default SGD
            (LR 0.1, Nesterov momentum 0.9, weight decay 5e-4).
        scheduler: optional ``optimizer -> LR scheduler``, stepped once per epoch.
        names: the peers' names in the logs (default ``peer1``, ``peer2``, ...).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        method: str = "dml",
        *,
        update: str = "simultaneous",
        temperature: float = 1.0,
        mimicry_weight: float = 1.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method={method!r}; choose from {', '.join(METHODS)}")
        if update not in UPDATES:
            raise ValueError(f"update={update!r}; choose from {', '.join(UPDATES)}")
        if len(models) < 1:
            raise ValueError("DMLModule needs at least one model")
        names = list(names) if names is not None else [f"peer{i + 1}" for i in range(len(models))]
        if len(names) != len(models) or len(set(names)) != len(names):
            raise ValueError(f"names={names}: give one distinct name per model")
        # Lightning's manual optimization: we call backward and step ourselves (K optimizers).
        self.automatic_optimization = False
        self.peers = nn.ModuleList(models)
        self.names = names
        self.method, self.update = method, update
        self.temperature, self.mimicry_weight = temperature, mimicry_weight
        self._optimizer = optimizer or _default_optimizer
        self._scheduler = scheduler
        self.save_hyperparameters(
            {
                "method": method,
                "update": update,
                "temperature": temperature,
                "mimicry_weight": mimicry_weight,
                "peers": names,
            }  # fmt: skip
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, ...]`` -> K logits ``[B, C]``."""
        return [peer(x) for peer in self.peers]

    def configure_optimizers(self) -> Any:
        optimizers = [self._optimizer(peer.parameters()) for peer in self.peers]
        if self._scheduler is None:
            return optimizers
        return optimizers, [self._scheduler(opt) for opt in optimizers]

    def _terms(self, k: int, logits: Tensor, others: list[Tensor], y: Tensor) -> tuple[Tensor, ...]:
        """Peer k's (loss, ce, mimicry) against the others' (detached) logits."""
        ce = cross_entropy(logits, y)
        if self.method == "independent" or not others:
            mim = torch.zeros_like(ce)
        else:
            mode = self.method if self.method in DML_MODES else "dml"
            mim = mimicry_term(logits, others, mode=mode, temperature=self.temperature)
        return ce + self.mimicry_weight * mim, ce, mim

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        logits = self(x)
        current = [z.detach() for z in logits]  # the predictions the peers mimic
        logs: list[tuple[Tensor, ...]] = []
        if self.update == "simultaneous":
            for k, z in enumerate(logits):
                logs.append(self._terms(k, z, current[:k] + current[k + 1 :], y))
            for opt in optimizers:
                opt.zero_grad()
            # Each loss reaches only its own peer (the targets are detached): one backward.
            self.manual_backward(torch.stack([t[0] for t in logs]).sum())
            norms = [_grad_norm(p) for p in self.peers]
            for opt in optimizers:
                opt.step()
        else:
            norms = []
            for k, z in enumerate(logits):
                terms = self._terms(k, z, current[:k] + current[k + 1 :], y)
                optimizers[k].zero_grad()
                self.manual_backward(terms[0])
                norms.append(_grad_norm(self.peers[k]))
                optimizers[k].step()
                if k < len(logits) - 1:  # peer k's new prediction, for the peers after it
                    with torch.no_grad(), preserved_buffers(self.peers[k]):
                        current[k] = self.peers[k](x)
                logs.append(terms)
        for k, name in enumerate(self.names):
            loss, ce, mim = logs[k]
            lr = optimizers[k].param_groups[0]["lr"]
            values = {"loss": loss, "ce": ce, "mimicry": mim, "lr": lr, "grad_norm": norms[k]}
            for key, v in values.items():
                self.log(f"train/{key}/{name}", float(v), on_step=True, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
            sched.step()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = [z.float() for z in self(x)]
        log_probs = [F.log_softmax(z, dim=1) for z in logits]
        ens = torch.logsumexp(torch.stack(log_probs), dim=0) - torch.log(
            torch.tensor(float(len(log_probs)), device=x.device)
        )  # log of the mean probability: the ensemble's prediction
        n = len(y)
        for name, lp in zip([*self.names, "ensemble"], [*log_probs, ens]):
            top1 = (lp.argmax(dim=1) == y).float().mean()
            self.log(f"val/top1/{name}", top1, on_epoch=True, batch_size=n)
            self.log(f"val/ce/{name}", F.nll_loss(lp, y), on_epoch=True, batch_size=n)
        agree = agreement(logits)
        for key in ("all_agree", "pairwise_kl"):
            if agree[key] is not None:
                self.log(f"val/{key}", float(agree[key]), on_epoch=True, batch_size=n)


def _grad_norm(module: nn.Module) -> Tensor:
    """The L2 norm of all of a module's gradients (0 when none)."""
    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.cat(grads))
