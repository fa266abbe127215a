"""Users' own images: ``ROOT/train/<class>/*.png|jpg`` and ``ROOT/test/<class>/...``.

When ``ROOT`` holds the class folders directly (no train/ and test/), a stratified
``data.test_fraction`` is held out as the test split. Images are decoded once into a uint8
tensor (fine up to a few GB) and then batched like any in-memory dataset: no DataLoader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle, in_memory_bundle, stratified_split
from dmlkit.data.images import decode_rgb
from dmlkit.data.registry import DATASETS
from dmlkit.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>, or ROOT/<class>/<image>"


def _scan(
    folder: Path, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = classes if classes is not None else found
    if not classes:
        raise UserError(f"data.root: no class folders in {folder} (expected layout: {LAYOUT})")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            continue
        for path in sorted(sub.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                files.append(path)
                labels.append(label)
    if not files:
        raise UserError(f"data.root: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return files, labels, classes


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
        tr_files, tr_labels, classes = _scan(root / "train")
        te_files, te_labels, _ = _scan(root / "test", classes)
    else:
        files, labels, classes = _scan(root)
        keep, held = stratified_split(np.array(labels), cfg.test_fraction, cfg.split_seed)
        tr_files, tr_labels = [files[i] for i in keep], [labels[i] for i in keep]
        te_files, te_labels = [files[i] for i in held], [labels[i] for i in held]
    x_train = _decode(tr_files, cfg.image_size, "train")
    x_test = _decode(te_files, cfg.image_size, "test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise UserError(
            f"data.root: test images {tuple(x_test.shape[2:])} differ in size from training "
            f"images {tuple(x_train.shape[2:])}; set data.image_size"
        )
    return in_memory_bundle(
        cfg, x_train, torch.tensor(tr_labels), x_test, torch.tensor(te_labels), classes, seed=seed
    )
