"""The streaming image folder: same batches as the memory path, resumable mid-epoch, bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmlkit.cli import main
from dmlkit.config import DataConfig
from dmlkit.data import build_data
from dmlkit.data.core import TensorLoader, channel_stats
from dmlkit.data.stream import StreamLoader, sample_stats
from dmlkit.errors import UserError

from helpers import QUIET

MEAN_STD = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


def write_folder(root: Path, classes: int = 3, per_class: int = 10, size: int = 12) -> Path:
    """A ROOT/train + ROOT/test image folder of random RGB PNGs with a class signal."""
    rng = np.random.default_rng(1)
    for split, n in (("train", per_class), ("test", 3)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                img[: size // 2, :, c % 3] = 250
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def _cfg(root: Path, loader: str, **kw) -> DataConfig:
    base = dict(
        name="imagefolder",
        root=str(root),
        loader=loader,
        batch_size=4,
        eval_batch_size=5,
        val_fraction=0.2,
        crop_padding=0,
        hflip=False,
        num_workers=0,
    )
    return DataConfig(**{**base, **kw})


def _epoch(loader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch, start)
    return list(loader)


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) and len(a) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_gives_the_memory_batches_without_augmentation(tmp_path: Path, workers) -> None:
    root = write_folder(tmp_path / "img")
    mem = build_data(_cfg(root, "memory", **MEAN_STD), seed=5)
    stream = build_data(_cfg(root, "stream", num_workers=workers, **MEAN_STD), seed=5)
    assert isinstance(mem.train, TensorLoader) and isinstance(stream.train, StreamLoader)
    assert (stream.num_classes, stream.in_channels, stream.image_size) == (3, 3, (12, 12))
    for epoch in (0, 1):
        _same(_epoch(mem.train, epoch), _epoch(stream.train, epoch))
    _same(list(mem.val), list(stream.val))
    _same(list(mem.test), list(stream.test))


def test_stream_resumes_mid_epoch_with_augmentation(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "img", per_class=12)
    aug = dict(random_resized_crop=[0.3, 1.0], hflip=True, image_size=10, val_fraction=0.0)
    full = build_data(_cfg(root, "stream", num_workers=2, **aug), seed=3).train
    whole = _epoch(full, 1)
    assert len(whole) == 9  # 36 images, batch 4
    # a fresh process resuming at batch 4 of epoch 1, with another number of workers
    resumed = build_data(_cfg(root, "stream", num_workers=0, **aug), seed=3).train
    _same(whole[4:], _epoch(resumed, 1, start=4))
    # the augmentation is really random: another epoch, other crops of the same images
    other = _epoch(full, 2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(whole, other))


def test_memory_path_resumes_mid_epoch(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "img")
    cfg = _cfg(root, "memory", crop_padding=2, hflip=True)
    loader = build_data(cfg, seed=1).train
    whole = _epoch(loader, 3)
    _same(whole[2:], _epoch(loader, 3, start=2))


def test_shards_are_the_one_process_batch(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "img")
    cfg = _cfg(root, "stream", hflip=True, crop_padding=1, **MEAN_STD)
    one = _epoch(build_data(cfg, seed=2).train, 0)
    shards = [_epoch(build_data(cfg, seed=2).train.shard(r, 2), 0) for r in range(2)]
    assert len(shards[0][0][1]) == 2
    merged = [
        (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(shards[0], shards[1])
    ]
    _same(one, merged)


def test_hidden_entries_are_skipped(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "img")
    (root / "train" / "class0" / "._000.png").write_bytes(b"\x00\x05resource fork")
    (root / "train" / "class0" / ".DS_Store").write_bytes(b"junk")
    hidden = root / "train" / "class1" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "x.png").write_bytes(b"not an image")
    (root / "train" / ".hidden_class").mkdir()
    for loader in ("memory", "stream"):
        data = build_data(_cfg(root, loader, val_fraction=0.0), seed=0)
        assert data.num_classes == 3
        assert sum(len(y) for _, y in _epoch(data.train, 0)) == 28  # 30 images, batches of 4


def test_unreadable_image_stop_or_skip(tmp_path: Path, caplog) -> None:
    root = write_folder(tmp_path / "img")
    bad = root / "train" / "class2" / "004.png"
    bad.write_bytes(b"this is not a png")
    cfg = _cfg(root, "stream", val_fraction=0.0, **MEAN_STD)
    with pytest.raises(UserError, match=r"class2/004\.png: cannot decode the image.*on_bad_image"):
        _epoch(build_data(cfg, seed=0).train, 0)
    cfg.on_bad_image = "skip"
    with caplog.at_level(logging.WARNING, logger="dmlkit"):
        batches = _epoch(build_data(cfg, seed=0).train, 0)
    assert sum(len(y) for _, y in batches) == 27  # 28 drawn (7 full batches), 1 skipped
    assert "004.png" in caplog.text


def test_bad_image_from_the_cli_is_one_line(tmp_path: Path, capsys) -> None:
    root = write_folder(tmp_path / "img")
    (root / "train" / "class1" / "002.png").write_bytes(b"garbage")
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--set", "data.name=imagefolder"]
    for o in (
        f"data.root={root}",
        "data.loader=stream",
        "data.num_workers=0",
        "train.epochs=1",
        "data.batch_size=4",
        *QUIET,
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.25,0.25,0.25]",
    ):
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class1/002.png" in err[0] and "data.on_bad_image=skip" in err[0]


def test_images_of_different_sizes_need_image_size(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "img")
    Image.new("RGB", (20, 9)).save(root / "train" / "class0" / "001.png")
    cfg = _cfg(root, "stream", val_fraction=0.0, **MEAN_STD)
    with pytest.raises(UserError, match="set data.image_size"):
        _epoch(build_data(cfg, seed=0).train, 0)
    cfg.image_size = 8
    assert build_data(cfg, seed=0).image_size == (8, 8)
    assert next(iter(build_data(cfg, seed=0).train))[0].shape == (4, 3, 8, 8)


def test_auto_picks_by_decoded_size(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "img")
    # 39 images of 3 x 12 x 12 bytes = 16.5 KiB decoded
    assert isinstance(build_data(_cfg(root, "auto", memory_limit_mb=1), seed=0).train, TensorLoader)
    small = _cfg(root, "auto", memory_limit_mb=0.01)
    assert isinstance(build_data(small, seed=0).train, StreamLoader)


def test_sample_stats_equal_the_memory_stats(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "img")
    mem = build_data(_cfg(root, "memory", val_fraction=0.0), seed=0).train
    stream = build_data(_cfg(root, "stream", val_fraction=0.0), seed=0).train
    mean, std = channel_stats(mem.x)
    got_mean, got_std = sample_stats(stream.dataset, 0, seed=0)  # < 2048 images: all of them
    torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_std, std, rtol=0, atol=1e-6)
    torch.testing.assert_close(stream.normalise.mean, mean, rtol=0, atol=1e-6)
