"""A synthetic image folder (``ROOT/train/<class>/*.png``, ``ROOT/test/...``) for tests,
benchmarks and the README's examples.

Each class has its own colour pattern (a bright band in one channel at a class-specific row)
over random noise, so a small network learns it in a few steps; the noise keeps the PNGs from
compressing to nothing, so reading them costs what reading small photos costs.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def _write_class(args: tuple[str, int, int, int, int]) -> int:
    folder, label, count, size, seed = args
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        img = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
        row = (label * 7) % size
        img[row : row + max(size // 4, 1), :, label % 3] = 255
        Image.fromarray(img).save(os.path.join(folder, f"{i:06d}.png"), compress_level=1)
    return count


def write_image_folder(
    root: str | Path,
    train_per_class: int = 20,
    test_per_class: int = 5,
    classes: int = 4,
    size: int = 32,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write a synthetic image folder (PNG, RGB, ``size`` x ``size``) and return ``root``.

    Args:
        root: the folder to create (existing class folders are overwritten file by file).
        train_per_class, test_per_class: images per class in ROOT/train and ROOT/test.
        classes: number of classes (folders ``class000``, ``class001``, ...).
        size: image side in pixels.
        seed: the images are a pure function of the arguments.
        workers: processes writing in parallel (a 200,000-image folder: use them all).
    """
    root = Path(root)
    jobs = []
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = str(root / split / f"class{c:03d}")
            jobs.append((folder, c, count, size, seed * 1_000_003 + c * 2 + (split == "test")))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_class, jobs, chunksize=4))
    else:
        for job in jobs:
            _write_class(job)
    return root
