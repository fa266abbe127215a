"""Hostile and unlucky inputs (issue 18): image folders, config files and values, the other
commands' inputs, interrupts and full disks. Each: one line naming the problem, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from dmlkit.config import DataConfig
from dmlkit.data.imagefolder import build_imagefolder
from dmlkit.errors import UserError


def _image_folder(root: Path, classes: dict[str, int]) -> Path:
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(root / cls / f"{i}.png")
    return root


def _imagefolder_cfg(root: Path) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=8, val_fraction=0)


# -- image folders -------------------------------------------------------------------------


def test_imagefolder_skips_hidden_entries(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": 4, "b": 4, ".ipynb_checkpoints": 2})
    (root / "a" / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / "a" / ".hidden" / "x.png")
    Image.new("RGB", (8, 8)).save(root / "b" / ".x.png")
    bundle = build_imagefolder(_imagefolder_cfg(root), seed=0)
    assert bundle.num_classes == 2  # not the notebook's checkpoint folder
    total = len(bundle.train.x) + len(bundle.test.x)
    assert total == 8


def test_imagefolder_refuses_an_empty_class(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    (root / "empty").mkdir()
    with pytest.raises(UserError, match=r"the class folder .*empty holds no images"):
        build_imagefolder(_imagefolder_cfg(root), seed=0)


def test_imagefolder_unreadable_class_folder_is_an_error(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    real = os.scandir

    def scandir(path="."):  # as for a folder without read permission (the tests run as root)
        if Path(path) == root / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match=r"cannot read '.*/b' \(Permission denied\)"):
        build_imagefolder(_imagefolder_cfg(root), seed=0)
