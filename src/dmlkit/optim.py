"""Optimizers by name and learning-rate schedules as functions of the fractional epoch.

``optim.name``: ``sgd`` (momentum, Nesterov, weight decay: the paper's setting), ``adam``
(betas, weight decay) or the name of any ``torch.optim`` optimizer (``AdamW``, ``RMSprop``,
``NAdam``...), built with ``lr``, ``weight_decay`` and ``betas`` where its signature takes them,
plus ``optim.kwargs`` (e.g. ``{momentum: 0.9, alpha: 0.9}`` for RMSprop).

Schedules (``optim.schedule``) are stateless functions of the fractional epoch, set before
every step, so the iteration counter is all a resumed run needs:

* ``constant``, ``step``, ``multistep``, ``cosine`` (half a cosine to 0 over the run);
* ``onecycle``: Smith's one-cycle as ``torch.optim.lr_scheduler.OneCycleLR`` shapes it (the
  learning rate only): a cosine rise from ``lr / div_factor`` to ``lr`` over the first
  ``pct_start`` of the run, then a cosine fall to ``lr / (div_factor * final_div_factor)``;
* ``warmup_epochs > 0`` (any schedule but onecycle, which has its own): a linear rise from
  ``warmup_factor * lr`` to the schedule's value over the first epochs; ``cosine`` then spans
  the rest of the run (warm-up + cosine).
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.config import OptimConfig
from dmlkit.errors import ConfigError

# The base class and the helpers that live in torch.optim beside the optimizers.
_NOT_OPTIMIZERS = {"Optimizer", "lr_scheduler", "swa_utils"}


# Optimizers that a training step of a cohort cannot drive: refused by name, before any work.
_UNSUPPORTED = {
    "lbfgs": "LBFGS needs a closure that re-evaluates the loss (step(closure)), which a DML "
    "step does not give; choose another optimizer, e.g. optim.name=adam",
    "sparseadam": "SparseAdam takes sparse gradients only (nn.Embedding(sparse=True)); choose "
    "another optimizer, e.g. optim.name=adam",
}


def optimizer_names() -> list[str]:
    """Every optimizer class ``torch.optim`` exports that a cohort can use."""
    return sorted(
        n
        for n in dir(torch.optim)
        if n not in _NOT_OPTIMIZERS
        and n.lower() not in _UNSUPPORTED
        and isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
    )


def optimizer_class(name: str, key: str = "optim.name") -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class called ``name``, in any case (``sgd``, ``AdamW``, ``adamw``)."""
    names = optimizer_names()
    by_lower = {n.lower(): n for n in names}
    if name.lower() in _UNSUPPORTED:  # listed as torch.optim's, but no cohort can use it
        raise ConfigError(f"{key}: {_UNSUPPORTED[name.lower()]}")
    if name.lower() in by_lower:  # AdamW, adamw: one optimizer
        return getattr(torch.optim, by_lower[name.lower()])
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    close = [by_lower[c] for c in close]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"{key}: {name!r} is not a torch.optim optimizer{hint}; valid: {', '.join(names)}"
    )


#: Optimizers whose update is element by element (state and step per element), so that K
#: peers' tensors stacked into one act as K separate optimizers (the stacked cohort).
ELEMENTWISE = {"sgd", "adam", "adamw", "adamax", "nadam", "radam", "rmsprop", "adagrad"}


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``params``, with ``initial_lr`` recorded for the schedule."""
    params = list(params)
    cls = optimizer_class(cfg.name)
    if cls is torch.optim.SGD:
        kwargs = dict(
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    else:
        taken = inspect.signature(cls).parameters
        kwargs = {"weight_decay": cfg.weight_decay, "betas": tuple(cfg.betas)}
        kwargs = {k: v for k, v in kwargs.items() if k in taken}
    kwargs.update(cfg.kwargs)
    try:
        opt = cls(params, lr=cfg.lr, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"optim.kwargs for {cls.__name__}: {str(exc).splitlines()[0][:160]}; see "
            f"torch.optim.{cls.__name__} for its arguments"
        ) from None
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
    return opt


class LRSchedule:
    """Learning-rate factor as a function of the fractional epoch (see the module docstring).

    Args:
        cfg: the peer's optimizer settings.
        total_epochs: length of the run (fractional), for cosine and onecycle.
    """

    def __init__(self, cfg: OptimConfig, total_epochs: float) -> None:
        self.cfg = cfg
        self.total_epochs = max(total_epochs, 1e-12)

    def factor(self, epoch: float) -> float:
        c = self.cfg
        if c.schedule == "onecycle":
            return self._onecycle(min(epoch / self.total_epochs, 1.0))
        warm = c.warmup_epochs
        if warm > 0 and epoch < warm:
            return c.warmup_factor + (1.0 - c.warmup_factor) * epoch / warm
        if c.schedule == "constant":
            return 1.0
        if c.schedule == "step":
            return c.gamma ** math.floor(epoch / c.step_size + 1e-9)
        if c.schedule == "multistep":
            return c.gamma ** sum(epoch >= m - 1e-9 for m in c.milestones)
        # cosine, over what follows the warm-up
        span = max(self.total_epochs - warm, 1e-12)
        return 0.5 * (1.0 + math.cos(math.pi * min((epoch - warm) / span, 1.0)))

    def _onecycle(self, f: float) -> float:
        c = self.cfg
        start = 1.0 / c.div_factor
        end = start / c.final_div_factor
        if f < c.pct_start:
            return start + (1.0 - start) * (1.0 - math.cos(math.pi * f / c.pct_start)) / 2
        rest = (f - c.pct_start) / max(1.0 - c.pct_start, 1e-12)
        return end + (1.0 - end) * (1.0 + math.cos(math.pi * rest)) / 2

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.factor(epoch)


class ConstantSchedule:
    """A user's optimizer without a scheduler: its learning rate is left as the user set it."""

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> None:
        pass


class TorchSchedule:
    """A user's ``torch.optim.lr_scheduler`` object, stepped to follow the trainer's progress.

    Before each training step at fractional epoch ``e``, the scheduler is stepped until it has
    been stepped ``floor(e)`` times (``every="epoch"``, as in most training loops) or once per
    finished step (``every="step"``: OneCycleLR, warm-up schedules counted in steps). Its state
    is checkpointed, so a resumed run continues the same curve.

    Args:
        scheduler: the scheduler, built over the peer's optimizer.
        steps_per_epoch: training steps per epoch.
        every: ``"epoch"`` or ``"step"``.
    """

    def __init__(self, scheduler: Any, steps_per_epoch: int, every: str = "epoch") -> None:
        if every not in ("epoch", "step"):
            raise ValueError(f"schedule_every must be 'epoch' or 'step', got {every!r}")
        self.scheduler = scheduler
        self.steps_per_epoch = steps_per_epoch
        self.every = every

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> None:
        if self.every == "step":
            target = round(epoch * self.steps_per_epoch)
        else:
            target = math.floor(epoch + 1e-9)
        with warnings.catch_warnings():
            # torch warns when an optimizer created in this process (a resumed run) has not
            # stepped yet; the scheduler's count is restored from the checkpoint, so its order
            # relative to the optimizer's steps is the uninterrupted run's
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            while self.scheduler.last_epoch < target:
                self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def grad_norm(params: Iterable[nn.Parameter]) -> Tensor:
    """The L2 norm (float32 scalar) of all the gradients of ``params``; 0 when none has one."""
    params = list(params)
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else "cpu")
    return torch.nn.utils.get_total_norm(grads).float()
