"""What every person re-identification dataset shares: the retrieval test split, the re-id batch
transform, image decoding and the assembly of a re-id :class:`~dmlkit.data.core.DataBundle`.

Re-id in Deep Mutual Learning (Zhang et al., CVPR 2018, Sec. 4.1): the peers are trained as
N-way identity classifiers on the training identities; at test time the features of the last
pooling layer of every query image are matched against the gallery images of *other*
identities (the test identities never appear in training), scored by CMC and mAP
(:mod:`dmlkit.metrics.reid`).

Images are decoded once into a uint8 tensor at their stored size (Market-1501's crops are all
128x64: ~0.8 GB for the whole dataset) and resized to the network's input size batch by batch,
on the training device. Inputs are scaled to [-1, 1] (mean 0.5, std 0.5 per channel): the input
convention of the MobileNet v1 ImageNet weights (TF-slim's and timm's ``mobilenetv1_100``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.config import DataConfig
from dmlkit.data.core import (
    DataBundle,
    TensorLoader,
    random_crop_flip,
    select_training,
)
from dmlkit.data.images import decode_rgb, image_size
from dmlkit.errors import ConfigError

REID_MEAN = (0.5, 0.5, 0.5)
REID_STD = (0.5, 0.5, 0.5)
DEFAULT_SIZE = (256, 128)  # (height, width): the usual re-id input size


def reid_input_size(cfg: DataConfig) -> tuple[int, int]:
    """The network input (H, W): ``image_height`` x ``image_width``, else a square
    ``image_size``, else 256x128. (The DML authors' code used 224x224.)"""
    h, w = cfg.image_height, cfg.image_width
    if (h is None) != (w is None):
        raise ConfigError(
            "data.image_height and data.image_width: set both (e.g. 256 and 128) or neither"
        )
    if h is not None and w is not None:
        return (h, w)
    if cfg.image_size is not None:
        return (cfg.image_size, cfg.image_size)
    return DEFAULT_SIZE


@dataclass
class ReidTransform:
    """uint8 batch -> float batch at the input size, augmented when training, scaled to [-1, 1].

    Attributes:
        size: (H, W) of the network input.
        crop_padding: random crop from the reflection-padded resized image (0: none).
        hflip: random horizontal flip (the usual re-id augmentation).
    """

    size: tuple[int, int]
    crop_padding: int = 0
    hflip: bool = False

    def __call__(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """x: ``[B, 3, h, w]`` uint8 -> ``[B, 3, H, W]`` float32."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[-2:]) != tuple(self.size):
            shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = F.interpolate(
                x, size=self.size, mode="bilinear", align_corners=False, antialias=shrink
            )
        if generator is not None:
            x = random_crop_flip(x, self.crop_padding, self.hflip, generator)
        mean = torch.tensor(REID_MEAN, device=x.device)[None, :, None, None]
        std = torch.tensor(REID_STD, device=x.device)[None, :, None, None]
        return (x - mean) / std


@dataclass
class RetrievalSplit:
    """A re-id test split: query and gallery images with their identities and cameras.

    Attributes:
        query: loader of the query images; its labels ``y`` are the person identities.
        gallery: loader of the gallery images (identity 0 = distractor).
        query_cams, gallery_cams: ``[Nq]``, ``[Ng]`` camera ids.
        distance: ``euclidean`` | ``sqeuclidean`` | ``cosine``.
        normalize: L2-normalise features before the distance (and before concatenating the
            peers' features for the ensemble).
        multi_query: also report the *multiple query* setting: the features of the query
            images (and of ``extra_query``) are averaged per (identity, camera).
        extra_query: more images of the query identities under the query cameras (Market-1501's
            hand-drawn ``gt_bbox`` crops), used by the multiple-query setting only; labels
            ``y`` are identities.
        extra_query_cams: ``[Ne]`` cameras of the extra images.
    """

    query: TensorLoader
    gallery: TensorLoader
    query_cams: Tensor
    gallery_cams: Tensor
    distance: str = "euclidean"
    normalize: bool = True
    multi_query: bool = False
    extra_query: TensorLoader | None = None
    extra_query_cams: Tensor | None = None

    task: ClassVar[str] = "reid"

    def to(self, device: torch.device | str) -> RetrievalSplit:
        self.query.to(torch.device(device))
        self.gallery.to(torch.device(device))
        if self.extra_query is not None:
            self.extra_query.to(torch.device(device))
        return self

    def __len__(self) -> int:
        return len(self.query.y) + len(self.gallery.y)


# --------------------------------------------------------------------------------------------
# decoding


def _stored_size(paths: Sequence[Path], target: tuple[int, int]) -> tuple[int, int] | None:
    """(H, W) all images share when it is no larger than ``target``, else None (resize)."""
    sizes = set()
    for path in paths:
        sizes.add(image_size(path))
        if len(sizes) > 1:
            return None
    if not sizes:
        return None
    (h, w) = sizes.pop()
    return (h, w) if h * w <= target[0] * target[1] else None


def decode_images(paths: Sequence[Path], target: tuple[int, int]) -> Tensor:
    """Decode RGB images into one uint8 tensor ``[N, 3, H, W]``.

    Images are kept at their stored size when every one has the same size, no larger than
    ``target`` (the batches are resized on the device); otherwise each is resized to ``target``
    here. Decoding runs in threads (PIL releases the GIL while decoding).

    Args:
        paths: image files.
        target: (H, W) network input size.
    """
    if not paths:
        return torch.zeros(0, 3, *target, dtype=torch.uint8)
    out_size = _stored_size(paths, target) or target

    out = torch.empty(len(paths), 3, *out_size, dtype=torch.uint8)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, arr in enumerate(pool.map(lambda p: decode_rgb(p, out_size), paths, chunksize=64)):
            out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


# --------------------------------------------------------------------------------------------
# index selection (before decoding: only the images used are decoded)


def select_test_identities(
    q_pids: np.ndarray, g_pids: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery indices kept by ``data.fraction``: a random share of the test
    identities with *all* their images (so queries keep their true matches), and the same
    share of the distractors (identity 0)."""
    if fraction >= 1:
        return np.arange(len(q_pids)), np.arange(len(g_pids))
    rng = np.random.default_rng(seed)
    ids = np.array(sorted((set(q_pids.tolist()) | set(g_pids.tolist())) - {0}))
    n = min(max(int(round(fraction * len(ids))), 1), len(ids))
    chosen = rng.choice(ids, size=n, replace=False) if len(ids) else ids
    q_keep = np.flatnonzero(np.isin(q_pids, chosen))
    g_keep = np.flatnonzero(np.isin(g_pids, chosen))
    distractors = np.flatnonzero(g_pids == 0)
    n_d = int(round(fraction * len(distractors)))
    d_keep = rng.choice(distractors, size=n_d, replace=False) if n_d else distractors[:0]
    return q_keep, np.sort(np.concatenate([g_keep, d_keep]))


# --------------------------------------------------------------------------------------------
# the bundle


def reid_bundle(
    cfg: DataConfig,
    *,
    seed: int,
    size: tuple[int, int],
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    class_names: list[str],
    test: RetrievalSplit,
) -> DataBundle:
    """Wrap decoded re-id tensors into loaders; ``y_train`` may hold ``-1`` (unlabelled)."""
    train_tf = ReidTransform(size, cfg.crop_padding, cfg.hflip)
    plain = ReidTransform(size)
    train = TensorLoader(x_train, y_train, cfg.batch_size, train_tf, train=True, seed=seed)
    val = TensorLoader(x_val, y_val, cfg.eval_batch_size, plain) if len(y_val) else None
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        in_channels=3,
        image_size=size,
        class_names=class_names,
        task="reid",
    )


def eval_loader(cfg: DataConfig, x: Tensor, y: Tensor, size: tuple[int, int]) -> TensorLoader:
    """An evaluation loader (no shuffling, no augmentation) over re-id images."""
    return TensorLoader(x, y, cfg.eval_batch_size, ReidTransform(size))


__all__ = [
    "DEFAULT_SIZE",
    "REID_MEAN",
    "REID_STD",
    "ReidTransform",
    "RetrievalSplit",
    "decode_images",
    "eval_loader",
    "reid_bundle",
    "reid_input_size",
    "select_test_identities",
    "select_training",
]
