"""The configuration schema: one dataclass per section of a run's config.

The defaults are the bundled-digits cohort that ``dml reproduce digits`` trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dmlkit.config.convert import build_dataclass


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule of a peer (``optim`` applies to every peer)."""

    # sgd | adam | any torch.optim optimizer by name (AdamW, RMSprop, ...; see dmlkit.optim)
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam only
    # The schedule is a function of the (fractional) epoch, applied at every iteration.
    schedule: Literal["constant", "step", "multistep", "cosine", "onecycle"] = "cosine"
    step_size: float = 60.0  # step: multiply by gamma every step_size epochs
    milestones: list[float] = field(default_factory=list)  # multistep: epochs
    gamma: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)  # more arguments of the optimizer
    # linear warm-up from warmup_factor * lr over the first epochs (cosine: then over the rest)
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.01
    # onecycle: the rise takes pct_start of the run, from lr / div_factor to lr, then falls to
    # lr / (div_factor * final_div_factor) (torch.optim.lr_scheduler.OneCycleLR's defaults)
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4


@dataclass
class PeerConfig:
    """One member of the cohort. In YAML a bare string is shorthand for ``{arch: NAME}``."""

    SHORTHAND: ClassVar[str] = "arch"  # the key a bare string stands for

    arch: str = "small_cnn"
    name: str | None = None  # default: peer{index}_{arch}
    seed: int | None = None  # initialisation seed; default derived from the run seed and index
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model constructor
    optim: dict[str, Any] = field(default_factory=dict)  # overrides of the top-level optim


@dataclass
class MethodConfig:
    """The training scheme: ``independent``, ``dml``, ``dml_e`` or ``kd``."""

    name: str = "dml"
    # sequential = the paper's Algorithm 1 (each peer steps against the others' current
    # predictions); simultaneous = every peer steps against the same forward pass.
    update: Literal["sequential", "simultaneous"] = "simultaneous"
    temperature: float = 1.0  # paper: 1 (kd: softmax temperature of the soft targets)
    mimicry_weight: float = 1.0  # paper: 1
    # Epochs over which the mimicry weight rises linearly from 0 to mimicry_weight (0 = the
    # paper's constant weight from the first step).
    mimicry_rampup: float = 0.0
    # How it rises: linearly, or as the sigmoid exp(-5 (1 - t)^2) of OKDDip's and PCL's code.
    rampup_shape: Literal["linear", "sigmoid"] = "linear"
    teacher: str | None = None  # kd: a run directory or checkpoint file of an earlier run
    teacher_peer: int = 0  # kd: which peer of the teacher checkpoint
    alpha: float = 0.9  # kd: weight of the soft-target term
    ensemble: Literal["minlogit", "naive"] = "minlogit"  # kdcl: how the teacher is built
    ema_decay: float = 0.999  # pcl: decay of the temporal mean (mean-teacher warm-up first)
    # pcl: how the temporal mean gives its targets. train = as the public PCL
    # reimplementation: run in train mode (batch statistics; its BatchNorm running statistics
    # are its own, from those forward passes), parameters averaged only. eval = run in eval
    # mode on running statistics that are themselves averaged with the parameters.
    mean_teacher: Literal["train", "eval"] = "train"
    # kdcl, pcl: every member trains on its own random augmentation of the batch (the loader
    # draws one view per member from the epoch's generator)
    member_views: bool = False


@dataclass
class TextDataConfig:
    """``data.text``: the text datasets' keys (docs/text-data.md), all in this one group."""

    # "text": classification from a folder of .txt files per class, or JSONL / CSV files;
    # which of the three (auto: a folder of class folders, else by the file extension)
    format: Literal["auto", "folder", "jsonl", "csv"] = "auto"
    text_field: str = "text"  # jsonl / csv: the field holding the text
    label_field: str = "label"  # jsonl / csv: the field holding the class
    # byte (256 byte ids + specials), bpe (trained on the training split, saved in the run),
    # or the path of a local Hugging Face tokenizer folder
    tokenizer: str = "byte"
    vocab_size: int = 1024  # bpe: the vocabulary size, specials included
    max_length: int = 128  # tokens per sequence (truncation); the block length of an LM
    padding: Literal["longest", "max_length"] = "longest"  # to the batch's longest, or fixed
    # stdlib-modules / stdlib-lm: the standard library packages (null: the first
    # stdlib_classes of a fixed list that this Python ships), lines per snippet, snippets per
    # class in training (val and test in proportion), training blocks of the LM
    stdlib_packages: list[str] | None = None
    stdlib_classes: int = 12
    snippet_lines: int = 4
    snippets_per_class: int = 200
    lm_blocks: int = 2000


@dataclass
class DataConfig:
    """Dataset, splits and batching."""

    name: str = "digits"
    root: str | None = None  # data folder (not used by the bundled digits)
    val_fraction: float = 0.1  # carved from the training split; never the test split
    test_fraction: float = 0.25  # only for data without an official test split (digits)
    labelled_fraction: float = 1.0  # < 1: semi-supervised DML
    train_size: int | None = None  # use only this many training images (after the val carve)
    fraction: float = 1.0  # keep a stratified fraction of every split (smoke runs: --scale)
    split_seed: int = 0  # fixed so that every run of an experiment sees the same splits
    batch_size: int = 64
    eval_batch_size: int = 512
    crop_padding: int = 1  # random crop from the image padded by this many pixels
    hflip: bool = False  # random horizontal flip
    image_size: int | None = None  # imagefolder: resize to a square of this size
    # Re-id (market1501): network input height x width (default 256 x 128; the DML authors'
    # code used 224 x 224). Both or neither; if neither, a square image_size is used if set.
    image_height: int | None = None
    image_width: int | None = None
    # Re-id test protocol: distance between features, L2-normalised features, and whether to
    # also report the multiple-query setting (Market-1501: query + gt_bbox crops averaged).
    reid_distance: Literal["euclidean", "sqeuclidean", "cosine"] = "euclidean"
    reid_normalize: bool = True
    multi_query: bool = False
    # Files whose MD5 differs from the published one: a warning (false) or an error (true).
    strict: bool = False
    download: bool = False  # fetch a missing dataset into data.root (cifar100)
    # digits-pairs (two digits side by side, dmlkit.data.digits_pairs): composites per class in
    # training and in each of val and test, number of classes (<= 100), and the share of
    # training labels replaced by another class (val and test stay clean)
    pairs_per_class: int = 20
    pairs_eval_per_class: int = 20
    pairs_classes: int = 100
    label_noise: float = 0.0
    # imagefolder: decode every image into memory once (memory), read files lazily through a
    # DataLoader (stream), or memory up to memory_limit_mb of decoded pixels, stream above (auto)
    loader: Literal["auto", "memory", "stream"] = "auto"
    # auto's threshold: the memory path peaks at ~0.34 GiB + 9.6 x the decoded size
    # (benchmarks/results/stream-cpu.md), ~2 GiB here; CIFAR-100's 176 MiB stays in memory
    memory_limit_mb: float = 192.0
    num_workers: int | None = None  # stream: DataLoader worker processes (null: up to 8 CPUs)
    # stream: RandomResizedCrop to image_size with this [min, max] area scale (e.g. [0.08, 1]),
    # instead of crop_padding's padded random crop
    random_resized_crop: list[float] | None = None
    # stream: normalisation statistics (0..1 scale, one per channel); null: computed from a
    # seeded sample of up to 2048 training images (all of them in smaller sets)
    mean: list[float] | None = None
    std: list[float] | None = None
    on_bad_image: Literal["stop", "skip"] = "stop"  # stream: an unreadable image file
    # Network input channels: null (as the images are) or 3, which repeats a gray image's one
    # channel three times (digits for a torchvision: model, whose first convolution takes RGB)
    channels: int | None = None
    text: TextDataConfig = field(default_factory=TextDataConfig)  # text datasets' keys


@dataclass
class TrainConfig:
    """The trainer: length, evaluation and checkpoint cadence, device."""

    epochs: int = 30
    iterations: int | None = None  # if set, stop after this many steps instead
    eval_every: int = 10  # epochs between validation evaluations (the last epoch always)
    # Also evaluate the TEST split every this many epochs (0: never; the last epoch's is the
    # final test): "test_epoch" records in metrics.jsonl, for reporting the best-epoch figure
    # some papers report. Never used to select or stop anything.
    test_every: int = 0
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always)
    keep_checkpoints: int = 1  # older epoch checkpoints kept besides the newest
    # steps between checkpoints inside an epoch (0: at epoch ends only); for long epochs (a
    # large image folder): a resumed run goes on from the step, bitwise as uninterrupted
    checkpoint_every_steps: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    progress: bool = True
    # CPU threads of torch's intra-op pool. auto: OMP_NUM_THREADS if set, else the CPUs this
    # process may use minus the load already on them (at least 1): a busy shared machine gets
    # few threads instead of many threads fighting over its cores.
    threads: Literal["auto"] | int = "auto"
    # loop: one module per peer; stacked: one batched (vmap) model for identical peers;
    # auto: stacked on CUDA when the cohort allows it.
    cohort_impl: Literal["auto", "loop", "stacked"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 adds loss scaling
    compile: bool = False  # torch.compile the peers' forward
    # channels-last conv weights and inputs (loop cohort): faster on CUDA and, measured, on the
    # CPU too (benchmarks/results/throughput-cpu.md); off for bitwise comparison with NCHW runs
    channels_last: bool = True
    # A NaN/inf loss: stop the run (keeping the last good checkpoint) or skip that step (with
    # the sequential update, peers that already stepped in it keep their step).
    nonfinite: Literal["stop", "skip"] = "stop"
    # Where the records go (docs/logging.md): jsonl (always written), csv, tensorboard, and the
    # optional wandb / mlflow extras.
    loggers: list[str] = field(default_factory=lambda: ["jsonl", "csv"])
    log_every: int = 50  # steps between "step" records (0: epoch records only)
    # Callbacks by import path "pkg.module:Name", or {target: "pkg.module:Name", **kwargs}.
    callbacks: list[Any] = field(default_factory=list)


@dataclass
class DistributedConfig:
    """torch.distributed under ``torchrun`` (see :mod:`dmlkit.distributed`).

    ``cohort``: the K peers are spread over the processes (K / world each), every process sees
    the whole batch and the peers' logits are exchanged. ``data``: every process holds the whole
    cohort and a shard of each batch; gradients are averaged. ``none``: one process.
    """

    mode: Literal["none", "cohort", "data"] = "none"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on the CPU
    # Longest wait for another process in any exchange (and at start-up); a rank that died or
    # hung makes the others stop with an error after this. Must exceed the longest time one
    # rank works alone (rank 0 writing a checkpoint).
    timeout_s: float = 300.0


def _default_peers() -> list[PeerConfig]:
    return [PeerConfig(), PeerConfig()]


@dataclass
class Config:
    """A whole run."""

    seed: int = 0  # data order and (unless a peer sets its own) peer initialisation
    method: MethodConfig = field(default_factory=MethodConfig)
    peers: list[PeerConfig] = field(default_factory=_default_peers)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def peer_optim(self, index: int) -> OptimConfig:
        """The optimizer settings of peer ``index``: ``optim`` updated by the peer's overrides."""
        merged = {**dataclasses.asdict(self.optim), **self.peers[index].optim}
        return build_dataclass(OptimConfig, merged, f"peers.{index}.optim")

    def peer_name(self, index: int) -> str:
        peer = self.peers[index]
        return peer.name or default_peer_name(index, peer.arch)

    def peer_seed(self, index: int) -> int:
        """Initialisation seed of a peer: its own, else one derived from the run seed."""
        peer = self.peers[index]
        return peer.seed if peer.seed is not None else self.seed * 1000 + 17 * index + 1


def default_peer_name(index: int, kind: str) -> str:
    """The name of an unnamed peer: ``peer<index>_<kind>`` (0-based; ``kind`` is its arch, or
    its module's class name in lower case). ``dml train``, ``dmlkit.fit`` and ``DMLModule``
    name peers alike."""
    return f"peer{index}_{kind}"
