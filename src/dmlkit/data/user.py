"""Users' own data in the Trainer: any map-style ``Dataset``, or a ``DataLoader`` as given.

A ``Dataset`` is batched by dmlkit: the order of epoch e and every sample's random numbers are
pure functions of (seed, e) (:class:`~dmlkit.data.stream.EpochBatches`; the sample's transform
runs with the torch, ``random`` and numpy generators seeded for that sample), so a resumed run
sees the batches an uninterrupted one would, even mid-epoch and whatever the workers. A
``DataLoader`` is used as it is: its own sampler, workers and collation (resume is then as
deterministic as that loader).

Every batch is checked on the host before it moves: ``x`` a floating-point tensor ``[B, ...]``,
``y`` integer class indices ``[B]`` in ``[-1, num_classes)`` (``-1``: unlabelled); anything else
is a UserError naming the split, the batch and the fix.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle
from dmlkit.data.registry import DATASETS
from dmlkit.data.stream import EpochBatches
from dmlkit.errors import UserError
from dmlkit.losses.batches import LABEL_KEYS, move_batch, split_batch


class SeededDataset(Dataset):
    """A user's Dataset whose item ``(index, seed)`` is drawn with every generator seeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int | None]) -> Any:
        index, seed = item
        if seed is None:
            return _not_none(self.dataset[index], index)
        in_worker = torch.utils.data.get_worker_info() is not None
        gen = torch.default_generator
        saved = None if in_worker else (gen.get_state(), random.getstate(), np.random.get_state())
        try:
            gen.manual_seed(seed)  # ~10 us; torch.manual_seed also seeds CUDA (~500 us)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            return _not_none(self.dataset[index], index)
        finally:
            if saved is not None:  # the main process: the trainer's generators put back
                gen.set_state(saved[0])
                random.setstate(saved[1])
                np.random.set_state(saved[2])


def _not_none(sample: Any, index: int) -> Any:
    """A sample, or one line naming the index of a ``None`` one (collate would fail cryptically)."""
    if sample is None:
        raise UserError(
            f"the dataset's item {index} is None; __getitem__ must return an (input, label) pair "
            f"(filter bad samples out of the dataset instead)"
        )
    return sample


def is_dict_batch(batch: Any) -> bool:
    """A Hugging Face style batch: a dict (or BatchEncoding) with ``labels``."""
    return isinstance(batch, Mapping) and any(k in batch for k in LABEL_KEYS)


def _pair(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and {"x", "y"} <= set(batch):
        return batch["x"], batch["y"]
    raise UserError(
        f"a batch is a {type(batch).__name__}; the dataset must yield (input, label) pairs"
    )


class UserLoader:
    """Batches of a user's Dataset or DataLoader with the interface of TensorLoader.

    Args:
        data: a map-style Dataset (batched here) or a DataLoader (used as given).
        split: ``"train"``, ``"val"`` or ``"test"`` (named in errors).
        batch_size: for a Dataset.
        train: shuffle and drop the last partial batch (a Dataset only).
        seed: the run seed (order and per-sample seeds of a Dataset).
        num_workers: DataLoader workers for a Dataset.
    """

    def __init__(
        self,
        data: Dataset | DataLoader,
        split: str,
        *,
        batch_size: int = 64,
        train: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        self.split = split
        self.num_classes: int | None = None  # set by the trainer once known
        self.device = torch.device("cpu")
        self.epoch, self.start = 0, 0
        self.batches: EpochBatches | None = None
        if isinstance(data, DataLoader):
            self.loader = data
            return
        if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
            raise UserError(
                f"{split}: expected a map-style torch Dataset (with __len__ and __getitem__) or "
                f"a DataLoader, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise UserError(f"{split}: the dataset is empty")
        self.batches = EpochBatches(len(data), batch_size, train=train, seed=seed)
        self.loader = DataLoader(
            SeededDataset(data),
            batch_sampler=self.batches,
            num_workers=num_workers,
            persistent_workers=num_workers > 0 and train,
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        if self.batches is not None:
            self.batches.set_epoch(epoch, start)
        else:
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # a DistributedSampler and the like
                sampler.set_epoch(epoch)

    def shard(self, rank: int, world: int) -> UserLoader:
        if self.batches is None:
            raise UserError(
                f"{self.split}: distributed.mode=data needs a Dataset (dmlkit shards its "
                f"batches), not a DataLoader"
            )
        self.batches.shard(rank, world)
        return self

    @property
    def sharded(self) -> bool:
        return self.batches is not None and self.batches.world > 1

    def __len__(self) -> int:
        return len(self.loader)

    def to(self, device: torch.device | str) -> UserLoader:
        self.device = torch.device(device)
        return self

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        skip = self.start if self.batches is None else 0  # EpochBatches starts there itself
        for i, batch in enumerate(self.loader):
            if i < skip:
                continue
            if is_dict_batch(batch):  # Hugging Face models: split by the trainer, which knows
                yield move_batch(dict(batch), self.device, non_blocking=True)  # causal LMs
                continue
            x, y = _pair(batch)
            check_batch(x, y, self.split, i, self.num_classes)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def check_batch(x: Any, y: Any, split: str, index: int, num_classes: int | None) -> None:
    """One-line UserErrors for inputs and labels a classifier cannot train on."""
    where = f"{split} batch {index}"
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise UserError(
            f"{where}: inputs must be a floating-point tensor [B, ...], got {got}; convert "
            f"images with transforms.ToTensor() or v2.ToDtype(torch.float32, scale=True)"
        )
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise UserError(
            f"{where}: labels must be integer class indices [B], got {got}; return "
            f"(input, int label) pairs"
        )
    if len(y) != len(x):
        raise UserError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if len(y) and num_classes is not None:
        low, high = int(y.min()), int(y.max())
        if low < -1 or high >= num_classes:
            bad = low if low < -1 else high
            raise UserError(
                f"{where}: label {bad} is outside 0..{num_classes - 1} (the models have "
                f"{num_classes} outputs; -1 marks an unlabelled sample)"
            )


def user_bundle(
    train: Dataset | DataLoader,
    val: Dataset | DataLoader | None,
    test: Dataset | DataLoader | None,
    *,
    num_classes: int,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    num_workers: int = 0,
) -> DataBundle:
    """A DataBundle over a user's data; ``image_size`` / ``in_channels`` from the first batch."""
    train_loader = UserLoader(
        train, "train", batch_size=batch_size, train=True, seed=seed, num_workers=num_workers
    )

    def evaluation(data: Dataset | DataLoader | None, split: str) -> UserLoader | None:
        if data is None:
            return None
        return UserLoader(data, split, batch_size=eval_batch_size, num_workers=num_workers)

    loaders = [train_loader, evaluation(val, "val"), evaluation(test, "test")]
    for loader in loaders:
        if loader is not None:
            loader.num_classes = num_classes
    x, _ = split_batch(next(iter(train_loader)))
    if isinstance(x, Mapping):  # text: no channels, no image size
        x = torch.zeros(1, 0)
    return DataBundle(
        train=train_loader,  # type: ignore[arg-type]
        val=loaders[1],  # type: ignore[arg-type]
        test=loaders[2],  # type: ignore[arg-type]
        num_classes=num_classes,
        in_channels=x.shape[1] if x.dim() == 4 else 1,
        image_size=tuple(x.shape[2:4]) if x.dim() == 4 else (0, 0),
        class_names=[str(c) for c in range(num_classes)],
    )


#: ``data.name`` of a run whose data was given in Python (dmlkit.fit).
PYTHON_DATA = "python"


@DATASETS.register(PYTHON_DATA)
def build_python_data(cfg: DataConfig, *, seed: int) -> DataBundle:
    raise UserError(
        "data.name=python: this run's data was given in Python to dmlkit.fit and cannot be "
        "rebuilt from its config; pass the data again (dmlkit.fit(..., resume=True))"
    )
