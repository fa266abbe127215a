"""Users' own images: ``ROOT/train/<class>/*.png|jpg`` and ``ROOT/test/<class>/...``.

When ``ROOT`` holds the class folders directly (no train/ and test/), a stratified
``data.test_fraction`` is held out as the test split. Images are decoded once into a uint8
tensor and batched like any in-memory dataset (``data.loader: memory``), or read lazily
through a DataLoader (``data.loader: stream``, :mod:`dmlkit.data.stream`); ``auto`` picks by
the decoded size. Hidden files and folders (``.DS_Store``, ``._x.png``) are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle, in_memory_bundle, stratified_split
from dmlkit.data.images import decode_rgb, image_size
from dmlkit.data.registry import DATASETS
from dmlkit.errors import ConfigError, UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>, or ROOT/<class>/<image>"


def _unreadable(exc: OSError) -> UserError:
    return UserError(
        f"data.root: cannot read {exc.filename!r} ({exc.strerror or exc}); fix its permissions "
        f"or move it out of data.root"
    )


def _scan(
    folder: Path, root: Path, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Image files under ``folder/<class>/`` (recursively), hidden entries skipped.

    Returns:
        ``(paths [N] bytes relative to root, labels [N] int64, class names)``, sorted. One numpy
        byte array, not N Python objects: a million-file folder costs ~100 MB, not ~1 GB.
    """
    try:
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _hidden(e.name))
    except OSError as exc:  # never an unreadable folder taken for an empty one
        raise _unreadable(exc) from None
    classes = classes if classes is not None else found
    if not classes:
        raise UserError(f"data.root: no class folders in {folder} (expected layout: {LAYOUT})")
    paths: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            continue
        found_here = [os.path.relpath(f, root) for f in _image_entries(sub)]
        found_here.sort(key=lambda p: p.split(os.sep))  # the order of sorted(Path.rglob())
        if not found_here and name in found:
            raise UserError(
                f"data.root: the class folder {sub} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                f"; add images or remove the folder"
            )
        paths += [p.encode() for p in found_here]
        labels += [label] * len(found_here)
    if not paths:
        raise UserError(f"data.root: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64), classes


def _image_entries(folder: Path) -> list[str]:
    """Paths of the image files under ``folder`` (recursively, symlinked folders not followed).

    Hidden entries (``._x.png`` resource forks, ``.DS_Store``, ``.ipynb_checkpoints/``) are
    never images. Only regular files (or links to them) are: a FIFO named ``x.png`` would
    block the first read forever, a device or socket is not an image either.
    """
    found: list[str] = []
    stack = [str(folder)]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as entries:
                for e in entries:
                    if _hidden(e.name):
                        continue
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file():
                        found.append(e.path)
        except OSError as exc:  # never an unreadable folder taken for an empty one
            raise _unreadable(exc) from None
    return found


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _decode(files: list[Path], size: int | None, split: str) -> Tensor:
    """Decode to a uint8 tensor ``[N, 3, H, W]`` (resized to ``size`` x ``size`` if given)."""
    if not files:
        raise UserError(
            f"data.root: the {split} split has no images; give every class at least 2 images, "
            f"or use the ROOT/train + ROOT/test layout"
        )
    images = []
    shape = None
    for path in files:
        arr = decode_rgb(path, None if size is None else (size, size))
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise UserError(
                f"{path}: image size {arr.shape[:2]} differs from {shape[:2]}; "
                f"set data.image_size to resize every image to one size"
            )
        images.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(images)


@DATASETS.register("imagefolder")
def build_imagefolder(cfg: DataConfig, *, seed: int) -> DataBundle:
    if not cfg.root:
        raise UserError(f"data.root: imagefolder needs the folder of your images ({LAYOUT})")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root: {root} is not a folder (expected layout: {LAYOUT})")
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise UserError(f"data.root: {root}/train exists but {root}/test does not ({LAYOUT})")
        tr_paths, tr_labels, classes = _scan(root / "train", root)
        te_paths, te_labels, _ = _scan(root / "test", root, classes)
    else:
        paths, labels, classes = _scan(root, root)
        keep, held = stratified_split(labels, cfg.test_fraction, cfg.split_seed)
        tr_paths, tr_labels = paths[keep], labels[keep]
        te_paths, te_labels = paths[held], labels[held]
    if len(te_paths) == 0:
        raise UserError(
            "data.root: the test split has no images; give every class at least 2 images, "
            "or use the ROOT/train + ROOT/test layout"
        )
    size = _input_size(cfg, root / tr_paths[0].decode())
    if _loader_kind(cfg, len(tr_paths) + len(te_paths), size) == "stream":
        from dmlkit.data.stream import stream_bundle

        train, test = (tr_paths, tr_labels), (te_paths, te_labels)
        return stream_bundle(cfg, root, train, test, classes, size, seed=seed)
    x_train = _decode([root / p.decode() for p in tr_paths], cfg.image_size, "train")
    x_test = _decode([root / p.decode() for p in te_paths], cfg.image_size, "test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise UserError(
            f"data.root: test images {tuple(x_test.shape[2:])} differ in size from training "
            f"images {tuple(x_train.shape[2:])}; set data.image_size"
        )
    return in_memory_bundle(
        cfg,
        x_train,
        torch.from_numpy(tr_labels),
        x_test,
        torch.from_numpy(te_labels),
        classes,
        seed=seed,
    )


def _input_size(cfg: DataConfig, first: Path) -> tuple[int, int]:
    """(H, W) of the network input: data.image_size, else the first training image's size."""
    if cfg.image_size is not None:
        return (cfg.image_size, cfg.image_size)
    return image_size(first)


def _loader_kind(cfg: DataConfig, n: int, size: tuple[int, int]) -> str:
    """``data.loader``; ``auto``: memory while the decoded uint8 images fit memory_limit_mb.

    The memory path peaks at several times the decoded size while it builds its tensors
    (benchmarks/results/stream-*.md measures the factor), then trains fastest: no decoding
    per epoch. Above the limit, the stream path keeps memory flat whatever the set size.
    """
    if cfg.random_resized_crop is not None:  # an augmentation only the stream path has
        if cfg.loader == "memory":
            raise ConfigError(
                "data.random_resized_crop needs data.loader=stream (or auto); the memory path "
                "augments by data.crop_padding and data.hflip"
            )
        return "stream"
    if cfg.loader != "auto":
        return cfg.loader
    decoded_mb = n * 3 * size[0] * size[1] / 2**20
    return "memory" if decoded_mb <= cfg.memory_limit_mb else "stream"
