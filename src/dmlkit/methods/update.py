"""One step of K peers, written once: the *update order* of mutual learning.

What each peer minimises is in :mod:`dmlkit.losses` (:func:`~dmlkit.losses.dml_loss`: CE +
weighted mimicry). *When* each peer steps is here, in :func:`step_peers`, and every way of
training a cohort goes through it: the Trainer's methods (:mod:`dmlkit.methods`),
:func:`dmlkit.step` for users' loops and Lightning's ``DMLModule``. The two orders:

* ``simultaneous``: one forward of every peer; every peer steps against those predictions.
  Each peer's loss reaches only its own parameters (the mimicry targets are detached), so one
  backward of the summed losses gives every peer its own gradient (:func:`step_all`).
* ``sequential`` (the paper's Algorithm 1): peer 1 steps, its prediction is recomputed, then
  peer 2 steps against peer 1's *updated* prediction, and so on. Only the peer that just moved
  is re-predicted: the others' weights, hence their predictions, did not change.

A step knows nothing of batches or models: the caller runs the forward pass and hands over the
K predictions (logits, detached here to serve as targets), a ``peer_loss(k, others)`` function
and, for the sequential order, a ``repredict(k)`` function. Mixed precision (autocast, fp16 loss
scaling) is a :class:`Precision`; what a step shares with other processes is a
:class:`StepSync`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.cohort import preserved_buffers
from dmlkit.losses.sequence import logits_of

UPDATES = ("simultaneous", "sequential")

#: One peer's detached scalars after a step: ``loss`` (and e.g. ``ce``, ``mimicry``).
PeerLog = dict[str, Tensor]

#: ``peer_loss(k, others) -> {"loss": scalar with its graph, other terms...}``: peer k's loss
#: against ``others``, the K-1 other peers' current predictions (detached logits, in order).
PeerLossFn = Callable[[int, list[Tensor]], dict[str, Tensor]]


class NonFiniteLoss(RuntimeError):
    """A peer's loss is NaN or infinite; raised *before* that peer's optimizer step."""

    def __init__(self, peer: str, values: dict[str, float]) -> None:
        super().__init__(f"peer {peer!r}: {values}")
        self.peer = peer
        self.values = values


def cpu_has_native(precision: str) -> bool:
    """Whether oneDNN has native bf16 / fp16 kernels on this CPU (AVX512-BF16, AMX, ...)."""
    try:
        if precision == "bf16":
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a private op: absent in some builds
        return True  # no evidence either way: say nothing


class Precision:
    """Mixed precision of a training step: autocast around forward + loss, loss scaling for fp16.

    Args:
        precision: ``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"``.
        device_type: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, precision: str = "fp32", device_type: str = "cpu") -> None:
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.device_type = device_type
        if self.dtype is not None and device_type == "cpu" and not cpu_has_native(precision):
            warnings.warn(
                f"train.precision={precision} on a CPU without native {precision} instructions "
                f"is emulated and slow (a bf16 ResNet-32 step ran 17x slower than fp32 on an "
                f"AVX2 CPU, benchmarks/results/throughput-cpu.md); use train.precision=fp32 here",
                stacklevel=2,
            )
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        else:
            optimizer.step()

    def update(self) -> None:
        """Once per training step, after every optimizer stepped."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to scale and skip steps as an uninterrupted one: fp16's loss
        scale and growth tracker (empty for fp32 and bf16)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; an empty state (fp32, bf16, older checkpoints): no-op."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class StepSync:
    """What a training step shares with other processes; in one process, nothing.

    :mod:`dmlkit.distributed` gives the method another one at build in data-parallel runs,
    where every process computes the losses of its shard of the batch: the loss values are
    averaged (so that every process takes the same stop/skip decision on a non-finite loss) and
    so are the gradients, after the backward pass and before any optimizer step (fp16 loss
    scaling then sees the same gradients everywhere).
    """

    def losses(self, values: Tensor) -> Tensor:
        """values: ``[n]`` detached loss values -> the values every process agrees on."""
        return values

    def gradients(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Make the gradients of these optimizers' parameters those of the global batch."""


def check_finite(
    losses: Sequence[Tensor], names: Sequence[str], sync: StepSync | None = None, first: int = 0
) -> None:
    """Raise :class:`NonFiniteLoss` naming the first peer whose loss is NaN or infinite.

    Args:
        losses: scalars of peers ``first, first + 1, ...``.
        names: every peer's name (``names[first + i]`` names ``losses[i]``).
        sync: makes every process see the same values (one host sync for all the losses).
    """
    values = torch.stack([loss.detach().float() for loss in losses])
    if sync is not None:
        values = sync.losses(values)
    if bool(torch.isfinite(values).all()):
        return
    k = int((~torch.isfinite(values)).nonzero()[0, 0])
    raise NonFiniteLoss(names[first + k], {"loss": float(values[k])})


def step_all(
    losses: Sequence[Tensor],
    optimizers: Sequence[torch.optim.Optimizer | None],
    *,
    names: Sequence[str],
    precision: Precision | None = None,
    sync: StepSync | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> None:
    """Step every peer on its own loss with a single backward pass (the simultaneous update).

    Valid because each loss reaches only its own peer's parameters (mimicry targets are
    detached), so the gradient of the sum is each peer's own gradient.

    Args:
        losses: one scalar per peer (or per loss of a method that has fewer, e.g. one total).
        optimizers: the optimizers to step; ``None`` for a peer held by another process
            (:mod:`dmlkit.distributed`, cohort mode), which steps it there.
        names: the peers' names, for :class:`NonFiniteLoss`.
        backward: ``loss -> None`` instead of ``precision.backward`` (e.g. Lightning's
            ``manual_backward``, which scales the loss itself).
    """
    precision = precision or Precision()
    sync = sync or StepSync()
    check_finite(losses, names, sync)
    mine = [opt for opt in optimizers if opt is not None]
    for opt in mine:
        opt.zero_grad(set_to_none=True)
    (backward or precision.backward)(torch.stack(list(losses)).sum())
    sync.gradients(mine)
    for opt in mine:
        precision.step(opt)
    precision.update()


def step_peers(
    predictions: Sequence[Tensor],
    peer_loss: PeerLossFn,
    optimizers: Sequence[torch.optim.Optimizer | None],
    *,
    update: str = "simultaneous",
    repredict: Callable[[int], Tensor] | None = None,
    names: Sequence[str],
    precision: Precision | None = None,
    sync: StepSync | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> list[PeerLog]:
    """One step of K peers that learn from each other's predictions, in either update order.

    Args:
        predictions: K logits (e.g. ``[B, C]``), every peer's graph built before any peer
            moves; detached here to serve as the other peers' targets.
        peer_loss: ``(k, others) -> {"loss": ..., ...}``, peer k's loss against the other
            peers' current (detached) predictions; computed under ``precision.autocast()``.
        optimizers: optimizer k steps peer k (``None``: peer k is stepped by another process).
        update: ``"simultaneous"`` or ``"sequential"`` (see the module docstring).
        repredict: ``k -> logits``, peer k's prediction after its step (sequential only; train
            mode, no gradient, BatchNorm running statistics untouched).
        names: the peers' names, for :class:`NonFiniteLoss`.
        precision, sync, backward: see :func:`step_all`.

    Returns:
        One dict of detached scalars per peer, what ``peer_loss`` returned.

    Raises:
        NonFiniteLoss: a peer's loss is NaN/inf, raised before that peer steps.
    """
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    precision = precision or Precision()
    sync = sync or StepSync()
    current = [z.detach() for z in predictions]  # the predictions the other peers mimic
    k_peers = len(current)

    def loss_of(k: int) -> dict[str, Tensor]:
        with precision.autocast():
            return peer_loss(k, current[:k] + current[k + 1 :])

    if update == "simultaneous":
        terms = [loss_of(k) for k in range(k_peers)]
        step_all(
            [t["loss"] for t in terms],
            optimizers,
            names=names,
            precision=precision,
            sync=sync,
            backward=backward,
        )
        return [detached(t) for t in terms]
    if repredict is None:
        raise ValueError("the sequential update needs repredict(k), peer k's new prediction")
    logs = []
    for k in range(k_peers):
        terms = loss_of(k)  # against the predictions of the peers updated before k
        check_finite([terms["loss"]], names, sync, first=k)
        opt = optimizers[k]
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            (backward or precision.backward)(terms["loss"])
            sync.gradients([opt])
            precision.step(opt)
        if k < k_peers - 1:  # the last peer's new prediction is not used in this step
            with precision.autocast():
                current[k] = repredict(k).detach()
        logs.append(detached(terms))
    precision.update()
    return logs


def detached(terms: dict[str, Tensor]) -> PeerLog:
    """The same dict with every tensor detached (what a step returns and logs)."""
    return {key: value.detach() for key, value in terms.items()}


def repredict_module(model: nn.Module, *inputs: Any, **kwargs: Any) -> Tensor:
    """``model``'s logits on a batch it has already seen in this step: in the mode it is in
    (train), without gradient, without changing its BatchNorm running statistics (updated once
    per batch, as in independent training)."""
    with torch.no_grad(), preserved_buffers(model):
        return logits_of(model(*inputs, **kwargs))
