"""Deep Mutual Learning as a LightningModule: ``DMLModule(models, method="dml")``.

For people whose training already runs on Lightning's ``Trainer`` (its loggers, callbacks,
precision and devices). The peers are trained with manual optimization, one optimizer per peer,
by the same step as the rest of dmlkit (:func:`dmlkit.methods.update.step_peers` over
:func:`dmlkit.losses.dml_loss`) in either update order: ``simultaneous`` (one forward, every
peer steps against it) or ``sequential`` (the paper's Algorithm 1: peer k steps against the
others' predictions as updated earlier in the same step).

Everything is logged through ``self.log`` under the tags the dmlkit loggers use
(``train/ce/PEER``, ``train/mimicry/PEER``, ``train/loss/PEER``, ``train/lr/PEER``,
``train/grad_norm/PEER``; ``val/top1/PEER``, ``val/top1/ensemble``, ``val/ce/...``,
``val/all_agree``, ``val/pairwise_kl``), so any Lightning logger records them. Epoch values
are averaged over every process (``sync_dist``), so that under DDP the validation figures are
those of the whole validation set, not of rank 0's shard::

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

from dmlkit.config import default_peer_name
from dmlkit.losses.dml import dml_loss, ensemble_log_probs
from dmlkit.methods.update import repredict_module, step_peers
from dmlkit.metrics.agreement import agreement
from dmlkit.optim import grad_norm

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
        names: the peers' names in the logs (default as ``dml train`` and ``dmlkit.fit`` name
            them: ``peer0_<class>``, ``peer1_<class>``, ..., the class name in lower case).
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
        if names is None:
            names = [default_peer_name(i, type(m).__name__.lower()) for i, m in enumerate(models)]
        names = list(names)
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

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        logits = self(x)
        # independent: every peer alone on the labels (no others to mimic, mimicry 0)
        mode = "dml" if self.method == "independent" else self.method

        def peer_loss(k: int, others: list[Tensor]) -> dict[str, Tensor]:
            return dml_loss(
                logits[k],
                others if self.mimics else [],
                y,
                mode=mode,
                temperature=self.temperature,
                mimicry_weight=self.mimicry_weight,
            )._asdict()

        logs = step_peers(
            logits,
            peer_loss,
            optimizers,
            update=self.update,
            repredict=lambda k: repredict_module(self.peers[k], x),
            names=self.names,
            backward=self.manual_backward,  # Lightning's precision plugin scales the loss
        )
        for k, name in enumerate(self.names):
            values = {
                **logs[k],
                "lr": torch.tensor(float(optimizers[k].param_groups[0]["lr"])),
                # as left by peer k's step (zero_grad comes at the next one)
                "grad_norm": grad_norm(self.peers[k].parameters()),
            }
            for key, v in values.items():
                self.log(f"train/{key}/{name}", v, on_step=True, on_epoch=True, sync_dist=True)

    @property
    def mimics(self) -> bool:
        """Whether the peers learn from each other (False for the independent baseline)."""
        return self.method != "independent"

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
        ens = ensemble_log_probs(logits)  # log of the mean probability
        n = len(y)
        # sync_dist: under DDP each process validates a shard; the logged value is their mean
        opts: dict[str, Any] = dict(on_epoch=True, batch_size=n, sync_dist=True)
        for name, lp in zip([*self.names, "ensemble"], [*log_probs, ens]):
            self.log(f"val/top1/{name}", (lp.argmax(dim=1) == y).float().mean(), **opts)
            self.log(f"val/ce/{name}", F.nll_loss(lp, y), **opts)
        agree = agreement(logits)
        for key in ("all_agree", "pairwise_kl"):
            if agree[key] is not None:
                self.log(f"val/{key}", torch.as_tensor(agree[key]).float(), **opts)
