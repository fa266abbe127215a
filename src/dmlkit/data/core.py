"""Splits, batch augmentation and loaders shared by every dataset.

Augmentation runs on whole batches (on the training device when the data lives there), with a
generator seeded from (seed, epoch): the batches of epoch e are a pure function of the seed, so
a resumed run sees exactly the batches an uninterrupted one would, and two methods trained with
the same seed see the same data order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.config import DataConfig
from dmlkit.errors import ConfigError
from dmlkit.losses.dml import UNLABELLED

if TYPE_CHECKING:
    from pathlib import Path

    from dmlkit.data.reid import RetrievalSplit
    from dmlkit.data.text import TextInfo


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that orders and augments the batches of one epoch."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop of each image from its reflection-padded copy, and random horizontal flip.

    One gather for the whole batch, so it runs on whatever device ``x`` is on; the random
    numbers come from the CPU ``generator`` (same values on every device).

    Args:
        x: ``[B, C, H, W]``.
        padding: pixels of reflection padding on each side (0: no crop).
        flip: flip each image left-right with probability 1/2.
        generator: CPU generator.

    Returns:
        ``[B, C, H, W]``, same dtype.
    """
    b, c, h, w = x.shape
    if padding == 0 and not flip:
        return x
    dev = x.device
    if padding:
        mode = "reflect" if padding < min(h, w) else "replicate"
        xp = F.pad(x.float() if x.dtype == torch.uint8 else x, (padding,) * 4, mode=mode).to(
            x.dtype
        )
    else:
        xp = x
    off_y = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = off_y[:, None] + torch.arange(h)[None]  # [B, H]
    cols = off_x[:, None] + torch.arange(w)[None]  # [B, W]
    if flip:
        flipped = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    rows, cols = rows.to(dev), cols.to(dev)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass
class BatchTransform:
    """uint8 or float batch -> augmented, normalised float batch.

    Attributes:
        mean, std: per-channel statistics ``[C]`` of the (scaled) training images.
        crop_padding, hflip: training augmentation (see :func:`random_crop_flip`).
    """

    mean: Tensor
    std: Tensor
    crop_padding: int = 0
    hflip: bool = False

    def __call__(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if generator is not None:
            x = random_crop_flip(x, self.crop_padding, self.hflip, generator)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        mean = self.mean.to(x.device)[None, :, None, None]
        std = self.std.to(x.device)[None, :, None, None]
        return (x - mean) / std


class TensorLoader:
    """Mini-batches from tensors held in memory, no DataLoader and no workers.

    Args:
        x: ``[N, C, H, W]`` uint8 (0..255) or float images, on any device.
        y: ``[N]`` int64 labels (``-1`` = unlabelled).
        batch_size: samples per batch.
        transform: normalisation (+ augmentation when ``train``).
        train: shuffle, augment and drop the last partial batch.
        seed: seed of the per-epoch order and augmentation.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        transform: BatchTransform,
        *,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.transform = transform
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.views = 0  # > 0: x is [views, B, ...], one augmentation per view (set_views)
        # Dropping a short last batch keeps BatchNorm away from batches of one sample.
        self.drop_last = train and len(y) >= batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw next; ``start``: the first batch (a run resumed mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def set_views(self, views: int) -> None:
        """Yield ``views`` augmentations of every training batch, stacked ``[views, B, ...]``.

        They are drawn one after the other from the epoch's generator, so the views of epoch e
        are a pure function of (seed, e), like the batches (a resumed run sees the same views);
        the data order is the one-view order. ``0``: one ``[B, ...]`` batch, as before.
        """
        if views and not self.train:
            raise ValueError("views are for the training loader (augmentation) only")
        self.views = views

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def to(self, device: torch.device) -> TensorLoader:
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.y)
        gen = epoch_generator(self.seed, self.epoch) if self.train else None
        order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
        order = order.to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            raw = self.x[idx]
            if self.views:
                x = torch.stack([self.transform(raw, gen) for _ in range(self.views)])
            else:
                x = self.transform(raw, gen)
            if i >= self.start:  # earlier batches: augmented only so that `gen` advances
                yield x, self.y[idx]


@dataclass
class DataBundle:
    """The three splits of a dataset and what a model needs to know about it."""

    train: TensorLoader
    val: TensorLoader | None
    test: TensorLoader | RetrievalSplit  # RetrievalSplit (query + gallery) when task == "reid"
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    class_names: list[str]
    # "classification": test is scored by top-k accuracy; "reid": test is a retrieval split
    # (dmlkit.data.reid), scored by mAP and CMC on the features of the last pooling layer.
    # Text (dmlkit.data.text): "classification" or "causal-lm", dict batches, facts in `text`.
    task: str = "classification"
    text: TextInfo | None = None  # a text dataset's tokenizer, vocabulary, fingerprint


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, carved): ``fraction`` of every class goes to ``carved``.

    Args:
        y: ``[N]`` labels.
        fraction: share of each class carved out (rounded, at least 1 per class if > 0).
        seed: fixed split seed.
    """
    rng = np.random.default_rng(seed)
    kept, carved = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n = int(round(fraction * len(idx)))
        if fraction > 0:
            n = min(max(n, 1), len(idx) - 1) if len(idx) > 1 else 0
        carved.append(idx[:n])
        kept.append(idx[n:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


def select_training(
    cfg: DataConfig, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the training and validation images, and the unlabelled training positions.

    Validation (``data.val_fraction``) is a stratified share of every training identity's
    images, for classification accuracy: the test identities are never looked at during
    training. Then ``data.train_size``, ``data.fraction`` (at least one image per identity)
    and ``data.labelled_fraction`` apply. Shared by every dataset.

    Args:
        cfg: the data config.
        labels: ``[N]`` training labels 0..C-1.

    Returns:
        ``(train_idx, val_idx, unlabelled)``: indices into ``labels``; ``unlabelled`` indexes
        positions within ``train_idx``.
    """
    if cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.split_seed)
    else:
        train_idx, val_idx = np.arange(len(labels)), np.array([], dtype=np.int64)
    if cfg.train_size is not None:
        if cfg.train_size > len(train_idx):
            raise ConfigError(
                f"data.train_size={cfg.train_size} exceeds the {len(train_idx)} training images "
                f"left after the validation carve; lower it or set it to null"
            )
        rng = np.random.default_rng(cfg.split_seed + 1)
        train_idx = np.sort(rng.choice(train_idx, size=cfg.train_size, replace=False))
    if cfg.fraction < 1:
        train_idx = stratified_subset(train_idx, labels, cfg.fraction, cfg.split_seed + 3)
        val_idx = stratified_subset(val_idx, labels, cfg.fraction, cfg.split_seed + 4)
    unlabelled = np.array([], dtype=np.int64)
    if cfg.labelled_fraction < 1:
        _, unlabelled = stratified_split(
            labels[train_idx], 1 - cfg.labelled_fraction, cfg.split_seed + 2
        )
    return train_idx, val_idx, unlabelled


def stratified_subset(
    idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A stratified ``fraction`` of ``idx`` (by ``labels[idx]``), at least 1 per label."""
    if len(idx) == 0:
        return idx
    rng = np.random.default_rng(seed)
    kept = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        n = min(max(int(round(fraction * len(members))), 1), len(members))
        kept.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(kept))


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std ``[C]`` of ``[N, C, H, W]`` images, scaled like the batches."""
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean, std


def user_stats(cfg: DataConfig, channels: int) -> tuple[Tensor, Tensor]:
    """data.mean and data.std as ``[C]`` tensors, checked against the images' channels."""
    if len(cfg.mean) != channels:
        raise ConfigError(
            f"data.mean and data.std: {len(cfg.mean)} values for {channels}-channel images; "
            f"give one value per channel"
        )
    return torch.tensor(cfg.mean, dtype=torch.float32), torch.tensor(cfg.std, dtype=torch.float32)


def check_channels(cfg: DataConfig, channels: int) -> None:
    """Refuse a ``data.channels`` that cannot be made from ``channels``-channel images."""
    if cfg.channels not in (None, channels) and not (cfg.channels == 3 and channels == 1):
        raise ConfigError(
            f"data.channels={cfg.channels}: the {cfg.name} images have {channels} channels; only "
            f"a gray channel can be repeated (data.channels: 3 for 1-channel images): remove "
            f"data.channels"
        )


def match_channels(cfg: DataConfig, x: Tensor) -> Tensor:
    """``[N, C, H, W]`` images with ``data.channels`` channels: a gray ``C = 1`` repeated to 3.

    The repeat is a copy (3x the memory of a gray set): the in-memory sets are small, and the
    batches' channels-last and in-place steps need real, contiguous storage.
    """
    check_channels(cfg, x.shape[1])
    if cfg.channels is None or cfg.channels == x.shape[1]:
        return x
    return x.repeat(1, cfg.channels, 1, 1)


def in_memory_bundle(
    cfg: DataConfig,
    x_trainval: Tensor,
    y_trainval: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    class_names: list[str],
    *,
    seed: int,
) -> DataBundle:
    """Carve val from train, subsample, mark unlabelled samples, and wrap everything in loaders.

    Args:
        cfg: the data config (fractions, batch sizes, augmentation).
        x_trainval, y_trainval: ``[N, C, H, W]`` and ``[N]``: the training split as published.
        x_test, y_test: the test split.
        class_names: C names.
        seed: the run seed (data order); the splits use ``cfg.split_seed``.
    """
    train_idx, val_idx, unlabelled = select_training(cfg, y_trainval.numpy())
    x_trainval, x_test = match_channels(cfg, x_trainval), match_channels(cfg, x_test)
    if cfg.fraction < 1:
        all_test = np.arange(len(y_test))
        test_idx = stratified_subset(all_test, y_test.numpy(), cfg.fraction, cfg.split_seed + 5)
        x_test, y_test = x_test[test_idx], y_test[test_idx]
    x_train, y_train = x_trainval[train_idx], y_trainval[train_idx].clone()
    y_train[torch.from_numpy(unlabelled)] = UNLABELLED
    if cfg.mean is not None and cfg.std is not None:  # the user's normalisation
        mean, std = user_stats(cfg, x_train.shape[1])
    else:
        mean, std = channel_stats(x_train)
    aug = BatchTransform(mean, std, cfg.crop_padding, cfg.hflip)
    plain = BatchTransform(mean, std)
    train = TensorLoader(x_train, y_train, cfg.batch_size, aug, train=True, seed=seed)
    val = (
        TensorLoader(x_trainval[val_idx], y_trainval[val_idx], cfg.eval_batch_size, plain)
        if len(val_idx)
        else None
    )
    test = TensorLoader(x_test, y_test, cfg.eval_batch_size, plain)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        in_channels=x_train.shape[1],
        image_size=(x_train.shape[2], x_train.shape[3]),
        class_names=class_names,
    )


def build_data(
    cfg: DataConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    run_dir: str | Path | None = None,
) -> DataBundle:
    """Build the named dataset's splits and move in-memory data to ``device``.

    ``run_dir``: an existing run (resume, eval, predict). A text dataset then re-loads the
    run's tokenizer instead of building one, and refuses data whose fingerprint differs from
    the run's (:mod:`dmlkit.data.text`); other datasets ignore it.
    """
    from dmlkit.data.registry import DATASETS

    builder = DATASETS.get(cfg.name)
    if run_dir is not None and getattr(builder, "reads_run_dir", False):
        bundle: DataBundle = builder(cfg, seed=seed, run_dir=run_dir)
    else:
        bundle = builder(cfg, seed=seed)
    device = torch.device(device)
    for loader in (bundle.train, bundle.val, bundle.test):
        if loader is not None:
            loader.to(device)
    return bundle
