"""Training schemes: one small class each, one contract.

``method.train_step(x, y) -> list[dict[str, Tensor]]``: one optimisation step of the whole
cohort on a batch, returning one dict of detached scalars per peer (``loss``, ``ce``,
``mimicry``). The losses are in :mod:`dmlkit.losses`; the *update order* is decided here:

* ``simultaneous``: one forward of every peer, every peer steps against those predictions.
* ``sequential`` (the paper's Algorithm 1): peer 1 steps, its prediction is recomputed, then
  peer 2 steps against peer 1's *updated* prediction, and so on. Only the peer that just
  changed is re-predicted: the others' weights, hence their predictions, are unchanged.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# the losses by the rank of the logits: per sample [B, C], per valid token [B, T, V]
from dmlkit.batches import (
    cross_entropy,
    dml_terms,
    kd_loss,
    mimicry_kl,
    mimicry_term,
    model_logits,
)
from dmlkit.cohort import Cohort
from dmlkit.config import Config, MethodConfig
from dmlkit.errors import ConfigError
from dmlkit.losses import rampup
from dmlkit.registry import Registry

METHODS: Registry = Registry("method", "method.name")

PeerLog = dict[str, Tensor]


class NonFiniteLoss(RuntimeError):
    """A peer's loss is NaN or infinite; raised *before* that peer's optimizer step."""

    def __init__(self, peer: str, values: dict[str, float]) -> None:
        super().__init__(f"peer {peer!r}: {values}")
        self.peer = peer
        self.values = values


def _cpu_has_native(precision: str) -> bool:
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
        if self.dtype is not None and device_type == "cpu" and not _cpu_has_native(precision):
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


class Method:
    """Base class: holds the cohort, the method's config, the step's precision and sync.

    Args:
        cohort: the peers (a whole cohort, or its distributed stand-in).
        cfg: the ``method`` config section.
        precision: autocast and loss scaling of a step (default fp32).
        sync: what a step shares with other processes (default: nothing, one process).
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False  # True: built with a trained teacher network
    # Constructor arguments the method needs in every peer's model (e.g. PCL's temporal mean);
    # the trainer adds them to the peers' kwargs before building the cohort.
    model_kwargs: ClassVar[dict[str, Any]] = {}
    # x -> {name: logits}: what the method evaluates besides the peers (None: nothing).
    eval_heads: Any = None
    # True: with ``method.member_views`` every member trains on its own augmentation of the
    # batch: train_step then gets ``x: [K, B, ...]``, view k for member k (see member_views()).
    supports_views: ClassVar[bool] = False

    def __init__(
        self,
        cohort: Cohort,
        cfg: MethodConfig,
        precision: Precision | None = None,
        sync: StepSync | None = None,
    ) -> None:
        self.cohort = cohort
        self.cfg = cfg
        self.precision = precision or Precision()
        self.epoch = 0.0  # fractional epoch of the next step, set by the trainer
        self.sync = sync or StepSync()

    @classmethod
    def update_order(cls, cfg: MethodConfig) -> str | None:
        """The update order this method follows with ``cfg``, None if it has no choice of one.

        The cohort is built for it (the sequential update cannot be stacked) and the summary
        reports it.
        """
        return None

    def deployed(self) -> str | None:
        """The name of the evaluated output this method deploys, if it defines one."""
        return None

    def member_views(self) -> int:
        """How many augmented views of each batch a step takes: one per member with
        ``method.member_views`` (K), else 0 (one ``[B, ...]`` batch for every member)."""
        return len(self.cohort.names) if self.cfg.member_views else 0

    def prepare_loader(self, loader: Any) -> None:
        """Ask the training loader for what train_step takes (one view per member, if set)."""
        views = self.member_views()
        if not views:
            return
        if not hasattr(loader, "set_views"):
            raise ConfigError(
                "method.member_views=true needs a dmlkit dataset's loader (it augments one view "
                "per member); set method.member_views=false for your own loader"
            )
        loader.set_views(views)

    def set_progress(self, epoch: float) -> None:
        """Tell the method where training stands (fractional epoch) before a step."""
        self.epoch = epoch

    @property
    def mimicry_weight(self) -> float:
        """The mimicry weight of the next step: ``cfg.mimicry_weight``, ramped up over
        ``cfg.mimicry_rampup`` epochs in the ``cfg.rampup_shape`` (:func:`losses.rampup`)."""
        scale = rampup(self.epoch, self.cfg.mimicry_rampup, self.cfg.rampup_shape)
        return self.cfg.mimicry_weight * scale

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        """One step for every peer on the batch ``x: [B, ...]``, ``y: [B]`` (-1 = unlabelled)."""
        raise NotImplementedError

    def _check_finite(self, losses: list[Tensor], first: int = 0) -> None:
        """Raise NonFiniteLoss naming the first peer whose loss is not finite (one host sync)."""
        values = self.sync.losses(torch.stack([loss.detach().float() for loss in losses]))
        if bool(torch.isfinite(values).all()):
            return
        k = int((~torch.isfinite(values)).nonzero()[0, 0])
        raise NonFiniteLoss(self.cohort.names[first + k], {"loss": float(values[k])})

    def _step_all(self, losses: list[Tensor]) -> None:
        """Step every peer on its own loss with a single backward pass.

        Valid because each loss reaches only its own peer's parameters (mimicry targets are
        detached), so the gradient of the sum is each peer's own gradient.
        """
        self._check_finite(losses)
        # None: a peer held by another process (dmlkit.distributed, cohort mode), stepped there.
        optimizers = [opt for opt in self.cohort.optimizers if opt is not None]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.precision.backward(torch.stack(losses).sum())
        self.sync.gradients(optimizers)
        for opt in optimizers:
            self.precision.step(opt)
        self.precision.update()


def _log(loss: Tensor, ce: Tensor, mimicry: Tensor) -> PeerLog:
    return {"loss": loss.detach(), "ce": ce.detach(), "mimicry": mimicry.detach()}


@METHODS.register("independent")
class Independent(Method):
    """Every peer trained alone on the labels (the paper's baseline)."""

    name = "independent"

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with self.precision.autocast():
            ce = [cross_entropy(z, y) for z in self.cohort(x)]
        self._step_all(ce)
        return [_log(c, c, torch.zeros_like(c)) for c in ce]


@METHODS.register("dml")
class DML(Method):
    """Deep Mutual Learning: CE + mimicry_weight * 1/(K-1) sum_l KL(p_l || p_k)."""

    name = "dml"
    mode = "dml"

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        if self.cfg.update == "sequential":
            return self._sequential(x, y)
        return self._simultaneous(x, y)

    @classmethod
    def update_order(cls, cfg: MethodConfig) -> str | None:
        return cfg.update

    def _simultaneous(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with self.precision.autocast():
            terms = dml_terms(self.cohort(x), y, mode=self.mode, temperature=self.cfg.temperature)
            w = self.mimicry_weight
            losses = [c + w * m for c, m in zip(terms.ce, terms.mimicry)]
        self._step_all(losses)
        return [_log(*t) for t in zip(losses, terms.ce, terms.mimicry)]

    def _sequential(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        cohort, k_peers, amp = self.cohort, len(self.cohort), self.precision
        with amp.autocast():
            logits = cohort(x)  # every peer's graph, built before any peer moves
        current = [z.detach() for z in logits]  # the predictions the next peer mimics
        logs = []
        for k in range(k_peers):
            others = current[:k] + current[k + 1 :]
            with amp.autocast():
                ce = cross_entropy(logits[k], y)
                mim = mimicry_term(
                    logits[k], others, y, mode=self.mode, temperature=self.cfg.temperature
                )
                loss = ce + self.mimicry_weight * mim
            self._check_finite([loss], first=k)
            opt = cohort.optimizers[k]
            if opt is not None:  # None: peer k lives in another process, which steps it
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                self.sync.gradients([opt])
                amp.step(opt)
            if k < k_peers - 1:  # the last peer's new prediction is not used in this step
                with amp.autocast():
                    current[k] = cohort.repredict(k, x)
            logs.append(_log(loss, ce, mim))
        amp.update()
        return logs


@METHODS.register("dml_e")
class DMLEnsemble(DML):
    """DML_e: each peer mimics the mean probability of the other peers (paper Sec. 3.3)."""

    name = "dml_e"
    mode = "dml_e"


@METHODS.register("kd")
class KnowledgeDistillation(Method):
    """Hinton distillation: a frozen teacher teaches every peer one way.

    Args:
        cohort: the students.
        cfg: ``temperature`` and ``alpha`` of :func:`dmlkit.losses.kd_loss`.
        teacher: the trained teacher network (kept in eval mode, never updated).
    """

    name = "kd"
    needs_teacher = True

    def __init__(
        self,
        cohort: Cohort,
        cfg: MethodConfig,
        teacher: nn.Module,
        precision: Precision | None = None,
        sync: StepSync | None = None,
    ) -> None:
        super().__init__(cohort, cfg, precision, sync)
        self.teacher = teacher.eval().requires_grad_(False)

    def train_step(self, x: Tensor, y: Tensor) -> list[PeerLog]:
        with torch.no_grad(), self.precision.autocast():
            self.teacher.eval()  # the trainer's cohort.train() must not reach the teacher
            teacher_logits = model_logits(self.teacher, x)
        with self.precision.autocast():
            logits = self.cohort(x)
            losses = [
                kd_loss(z, teacher_logits, y, self.cfg.temperature, self.cfg.alpha) for z in logits
            ]
        self._step_all(losses)
        t = self.cfg.temperature
        return [
            _log(loss, cross_entropy(z, y), mimicry_kl(z, teacher_logits, t))
            for z, loss in zip(logits, losses)
        ]


def update_order(cfg: MethodConfig) -> str | None:
    """The update order the configured method follows (``sequential`` | ``simultaneous``), or
    None for a method without one (independent, kd)."""
    return METHODS.get(cfg.name).update_order(cfg)


def model_kwargs(cfg: MethodConfig) -> dict[str, Any]:
    """The model arguments the configured method needs in every peer (see Method.model_kwargs)."""
    return dict(METHODS.get(cfg.name).model_kwargs)


def build_method(
    cfg: Config,
    cohort: Cohort,
    *,
    device: torch.device | str = "cpu",
    teacher: nn.Module | None = None,
    sync: StepSync | None = None,
) -> Method:
    """The configured method over ``cohort``.

    Args:
        teacher: kd's frozen teacher, loaded by the caller (see
            :func:`dmlkit.engine.checkpoint.load_teacher`); ignored by the other methods.
        sync: what each step shares with other processes (:mod:`dmlkit.distributed`).
    """
    cls = METHODS.get(cfg.method.name)
    if cfg.method.member_views and not cls.supports_views:
        raise ConfigError(
            f"method.member_views=true: method.name={cls.name} trains every member on the same "
            f"batch (only kdcl and pcl take one view per member); set method.member_views=false"
        )
    precision = Precision(cfg.train.precision, torch.device(device).type)
    if not cls.needs_teacher:
        return cls(cohort, cfg.method, precision, sync)
    if teacher is None:
        raise ValueError(f"method {cls.name} needs its teacher: build_method(..., teacher=...)")
    return cls(cohort, cfg.method, teacher, precision, sync)
