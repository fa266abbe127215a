"""Streaming image folders: files read lazily through a DataLoader, memory flat in the set size.

``data.loader: stream`` (or ``auto`` above ``data.memory_limit_mb``) for ``data.name:
imagefolder``. Worker processes read and decode each image, augment it with torchvision
``transforms.v2`` (random-resized-crop or padded random crop, horizontal flip) and return uint8
batches; normalisation runs on the batch in the main process, on the training device, with the
memory path's :class:`~dmlkit.data.core.BatchTransform` (uint8 crosses the host-device link:
4x fewer bytes than float).

Determinism: the order of epoch e and the augmentation of every sample are pure functions of
(seed, e): :class:`EpochBatches` draws the permutation from the memory path's generator (same
order, hence the same batches as the memory path when augmentation is off) and one seed per
position, with which a worker seeds the transform of that sample. A run resumed at batch b of
an epoch sees exactly the batches the uninterrupted run saw, whatever the number of workers.

Memory: the file list is one numpy byte array (no Python object per file: forked workers do not
copy it page by page as they touch reference counts), and only ``num_workers x prefetch`` batches
are decoded at a time. Measured: benchmarks/results/stream-*.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from dmlkit.config import DataConfig
from dmlkit.data.core import (
    BatchTransform,
    DataBundle,
    check_channels,
    epoch_generator,
    select_training,
    stratified_subset,
    user_stats,
)
from dmlkit.data.images import decode_rgb
from dmlkit.errors import ConfigError, UserError
from dmlkit.losses.dml import UNLABELLED

log = logging.getLogger("dmlkit")

#: Images sampled (seeded) for the normalisation statistics when data.mean/std are not given.
STATS_IMAGES = 2048


def read_rgb(path: str) -> Tensor:
    """The image at ``path`` as uint8 ``[3, H, W]`` (grey and palette images converted), by
    the decoder every image dataset uses (:func:`dmlkit.data.images.decode_rgb`, PIL)."""
    return torch.from_numpy(decode_rgb(Path(path))).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Map-style dataset over image files; item ``(index, seed or None)``.

    Returns ``(image uint8 [3, H, W], label, None)``, or ``(None, label, (path, reason))``
    for a file that cannot be read or has the wrong size (the loader decides what to do).

    Args:
        root: folder the paths are relative to.
        paths: ``[N]`` byte strings (numpy ``S`` dtype), relative paths.
        labels: ``[N]`` int64 (``-1`` = unlabelled).
        transform: uint8 tensor -> uint8 tensor (torchvision v2); seeded per sample.
        shape: the ``(3, H, W)`` every transformed image must have.
    """

    def __init__(
        self,
        root: str | Path,
        paths: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[Tensor], Tensor],
        shape: tuple[int, int, int],
    ) -> None:
        self.root = str(root)
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.shape = shape

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.paths[index].decode())

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[Any, int, Any]:
        index, seed = item
        label = int(self.labels[index])
        path = self.path(index)
        try:
            image = read_rgb(path)
        except UserError as exc:  # "PATH: cannot decode the image (why); remove or replace..."
            reason = str(exc).removeprefix(f"{path}: ").split("; remove or replace")[0]
            return None, label, (path, reason)
        image = self.transform(image) if seed is None else _seeded(self.transform, image, seed)
        if tuple(image.shape) != self.shape:
            return None, label, (path, f"size {tuple(image.shape[1:])} != {self.shape[1:]}")
        return image, label, None


def _seeded(transform: Callable[[Tensor], Tensor], image: Tensor, seed: int) -> Tensor:
    """``transform(image)`` with the CPU generator (which v2 transforms draw from) seeded.

    ``torch.default_generator.manual_seed`` costs ~10 us, ``torch.manual_seed`` ~500 us (it
    also seeds every CUDA device) and ``fork_rng`` as much again: per image, that was half the
    loader's time. A worker process owns its generator; in the main process (no workers) the
    trainer's generator state is put back afterwards.
    """
    gen = torch.default_generator
    if torch.utils.data.get_worker_info() is not None:
        gen.manual_seed(seed)
        return transform(image)
    saved = gen.get_state()
    try:
        gen.manual_seed(seed)
        return transform(image)
    finally:
        gen.set_state(saved)


def collate(samples: list[tuple[Any, int, Any]]) -> tuple[Tensor | None, Tensor, list]:
    """Stack the readable samples; pass the unreadable ones' (path, reason) on."""
    good = [s for s in samples if s[0] is not None]
    bad = [(*s[2], s[1]) for s in samples if s[0] is None]  # (path, reason, label)
    x = torch.stack([s[0] for s in good]) if good else None
    y = torch.tensor([s[1] for s in good], dtype=torch.int64)
    return x, y, bad


class EpochBatches(Sampler[list[tuple[int, int | None]]]):
    """Batches of ``(index, sample seed)``: order and augmentation seeds from (seed, epoch).

    Training: the memory path's permutation (:func:`epoch_generator`), one seed per position,
    the last partial batch dropped. Evaluation: in order, no seeds, nothing dropped.
    ``set_epoch(e, start=b)`` starts at batch b (a resumed run); ``shard(rank, world)`` keeps
    each process's contiguous share of every global batch (``distributed.mode=data``): the
    union of the shards is the one-process batch, as :meth:`DistContext.shard` would give,
    but each process reads only its own images.
    """

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int = 0) -> None:
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.drop_last = train and n >= batch_size
        self.epoch, self.start = 0, 0
        self.rank, self.world = 0, 1

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def shard(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n, b = self.n, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        if self.train:
            gen = epoch_generator(self.seed, self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
            seeds = torch.randint(0, 2**62, (self.n,), generator=gen).tolist()
        else:
            order, seeds = list(range(self.n)), [None] * self.n
        b = self.batch_size
        for i in range(self.start, len(self)):
            batch = list(zip(order[i * b : (i + 1) * b], seeds[i * b : (i + 1) * b]))
            if self.world > 1:
                share = len(batch) // self.world
                batch = batch[self.rank * share : (self.rank + 1) * share]
            yield batch


class StreamLoader:
    """Normalised ``(x [B, 3, H, W] float, y [B])`` batches from image files, on ``device``.

    Same interface as :class:`~dmlkit.data.core.TensorLoader` (``set_epoch``, ``len``,
    ``to``, iteration). ``on_bad_image``: ``"stop"`` raises a UserError naming the file,
    ``"skip"`` leaves it out of its batch with a warning. A wrong image size always stops.
    """

    def __init__(
        self,
        dataset: ImageFiles,
        batches: EpochBatches,
        normalise: BatchTransform,
        *,
        num_workers: int,
        on_bad_image: str = "stop",
    ) -> None:
        self.dataset, self.batches, self.normalise = dataset, batches, normalise
        self.num_workers = num_workers
        self.on_bad_image = on_bad_image
        self.device = torch.device("cpu")
        self._loader: DataLoader | None = None
        #: the files skipped so far (data.on_bad_image=skip), path -> label: summary.json counts
        #: them, and a class whose every image was skipped stops the run
        self.skipped: dict[str, int] = {}
        self.class_names: list[str] | None = None  # for the message naming a lost class

    @property
    def sharded(self) -> bool:
        return self.batches.world > 1

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def set_views(self, views: int) -> None:
        """Refused: the workers augment one view per sample (see TensorLoader.set_views)."""
        if views:
            raise ConfigError(
                "method.member_views=true needs the in-memory loader (the streaming one draws "
                "one augmentation per image); set data.loader=memory or method.member_views=false"
            )

    def shard(self, rank: int, world: int) -> StreamLoader:
        self.batches.shard(rank, world)
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def to(self, device: torch.device | str) -> StreamLoader:
        self.device = torch.device(device)
        self._loader = None  # pin_memory follows the device
        return self

    def _check_class(self, label: int) -> None:
        """Stop when every image of class ``label`` has been skipped: training on without it
        would report accuracy over the classes left, as if nothing had happened."""
        if label < 0:  # unlabelled (semi-supervised): belongs to no class
            return
        total = int((np.asarray(self.dataset.labels) == label).sum())
        lost = sum(1 for kept in self.skipped.values() if kept == label)
        if lost >= total:
            name = self.class_names[label] if self.class_names else f"number {label}"
            raise UserError(
                f"data.root: every image of class {name!r} ({total}) could not be read and was "
                f"skipped (data.on_bad_image=skip): the class is gone; restore its images "
                f"(was the folder moved or deleted?) and resume"
            )

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            workers = self.num_workers
            self._loader = DataLoader(
                self.dataset,
                batch_sampler=self.batches,
                num_workers=workers,
                collate_fn=collate,
                pin_memory=self.device.type == "cuda",
                # training reuses its workers every epoch; evaluation runs now and then
                persistent_workers=workers > 0 and self.batches.train,
                prefetch_factor=4 if workers > 0 else None,
            )
        return self._loader

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y, bad in self._dataloader():
            for path, reason, label in bad:
                if self.on_bad_image == "stop" or reason.startswith("size"):
                    fix = (
                        "set data.image_size to resize every image to one size"
                        if reason.startswith("size")
                        else "remove or replace the file, or set data.on_bad_image=skip"
                    )
                    raise UserError(f"{path}: {reason}; {fix}")
                if path not in self.skipped:
                    self.skipped[path] = label
                    log.warning("skipping %s: %s (data.on_bad_image=skip)", path, reason)
                    self._check_class(label)
            if x is None:
                continue
            x = x.to(self.device, non_blocking=True)
            yield self.normalise(x, None), y.to(self.device, non_blocking=True)


def train_transform(cfg: DataConfig, size: tuple[int, int]) -> v2.Transform:
    """uint8 -> uint8 training augmentation (torchvision v2), output ``size``."""
    steps: list[v2.Transform] = []
    if cfg.random_resized_crop is not None:
        scale = tuple(cfg.random_resized_crop)
        steps.append(v2.RandomResizedCrop(size, scale=scale, antialias=True))
    else:
        if cfg.image_size is not None:
            steps.append(v2.Resize(size, antialias=True))
        if cfg.crop_padding:
            steps.append(v2.RandomCrop(size, padding=cfg.crop_padding, padding_mode="reflect"))
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps) if steps else v2.Identity()


def eval_transform(cfg: DataConfig, size: tuple[int, int]) -> v2.Transform:
    """uint8 -> uint8 for validation and test: resized to ``size`` if data.image_size is set."""
    return v2.Resize(size, antialias=True) if cfg.image_size is not None else v2.Identity()


def sample_stats(dataset: ImageFiles, num_workers: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (0..1 scale) of a seeded sample of up to STATS_IMAGES images.

    Accumulated in float64 batch by batch: the memory never holds more than one batch.
    """
    n = len(dataset)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, STATS_IMAGES), replace=False))
    batches = [[(int(i), None) for i in pick[j : j + 256]] for j in range(0, len(pick), 256)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x, _, bad in loader:
        for path, reason, _label in bad:
            raise UserError(f"{path}: {reason}; remove or replace the file")
        xf = x.double() / 255.0
        total += xf.sum(dim=(0, 2, 3))
        squares += xf.pow(2).sum(dim=(0, 2, 3))
        count += xf.numel() // 3
    mean = total / count
    var = (squares - count * mean.pow(2)) / max(count - 1, 1)
    return mean.float(), var.clamp_min(1e-12).sqrt().float().clamp_min(1e-6)


def stream_bundle(
    cfg: DataConfig,
    root: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    size: tuple[int, int],
    *,
    seed: int,
) -> DataBundle:
    """The streaming splits of an image folder (val carved from train like the memory path).

    Args:
        cfg: the data config.
        root: the folder the paths are relative to.
        train, test: ``(paths [N] bytes, labels [N] int64)`` of each split.
        classes: C class names.
        size: ``(H, W)`` of the network input.
        seed: the run seed (data order and augmentation).
    """
    (tr_paths, tr_labels), (te_paths, te_labels) = train, test
    check_channels(cfg, 3)  # files are decoded as RGB
    train_idx, val_idx, unlabelled = select_training(cfg, tr_labels)
    if cfg.fraction < 1:
        keep = stratified_subset(
            np.arange(len(te_labels)), te_labels, cfg.fraction, cfg.split_seed + 5
        )
        te_paths, te_labels = te_paths[keep], te_labels[keep]
    y_train = tr_labels[train_idx].copy()
    y_train[unlabelled] = UNLABELLED
    workers = cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)
    shape = (3, *size)
    plain = eval_transform(cfg, size)

    def files(paths: np.ndarray, labels: np.ndarray, transform: v2.Transform) -> ImageFiles:
        return ImageFiles(root, paths, labels, transform, shape)

    train_files = files(tr_paths[train_idx], y_train, train_transform(cfg, size))
    if cfg.mean is not None and cfg.std is not None:
        mean, std = user_stats(cfg, 3)
    else:
        mean, std = sample_stats(
            files(tr_paths[train_idx], y_train, plain), workers, cfg.split_seed
        )
    norm = BatchTransform(mean, std)

    def loader(ds: ImageFiles, batch: int, is_train: bool) -> StreamLoader:
        batches = EpochBatches(len(ds), batch, train=is_train, seed=seed)
        out = StreamLoader(ds, batches, norm, num_workers=workers, on_bad_image=cfg.on_bad_image)
        out.class_names = list(classes)
        return out

    val = None
    if len(val_idx):
        val_files = files(tr_paths[val_idx], tr_labels[val_idx], plain)
        val = loader(val_files, cfg.eval_batch_size, False)
    return DataBundle(
        train=loader(train_files, cfg.batch_size, True),
        val=val,
        test=loader(files(te_paths, te_labels, plain), cfg.eval_batch_size, False),
        num_classes=len(classes),
        in_channels=3,
        image_size=size,
        class_names=classes,
    )
