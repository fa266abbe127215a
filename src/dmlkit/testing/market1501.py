"""A small synthetic dataset in the Market-1501 on-disk format, for tests and smoke runs.

Every identity is a figure with its own clothing: an upper-body colour with stripes of its own
period, a lower-body colour, on a camera-dependent background, seen by several cameras (each
with its own brightness and tint), shifted by a few pixels and with pixel noise. A network can
learn the training identities in a few hundred steps, and features that separate colours and
stripes also retrieve the unseen test identities, so mAP well above chance is reachable.

Usage::

    from dmlkit.testing import write_market_fixture
    fixture = write_market_fixture("/tmp/market", train_ids=8, test_ids=6)
    # dml train --set data.name=market1501 --set data.root=/tmp/market ...
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dmlkit.data.market1501 import FOLDER, GALLERY, GT_BBOX, QUERY, TRAIN


@dataclass
class MarketFixture:
    """Where the fixture is and what it holds (counts after junk removal)."""

    path: Path  # the folder holding bounding_box_train/, bounding_box_test/, query/
    train_ids: list[int]
    test_ids: list[int]
    train_images: int
    query_images: int
    gallery_images: int  # including distractors, excluding junk
    distractors: int
    junk: int


def _identity_look(rng: np.random.Generator, index: int, total: int) -> dict[str, np.ndarray]:
    """Clothing of one identity: well-separated hues for the upper and lower body."""
    hue_up = (index / total + rng.uniform(-0.2, 0.2) / total) % 1.0
    hue_low = (hue_up + 0.5 + rng.uniform(-0.25, 0.25)) % 1.0
    up = np.array(colorsys.hsv_to_rgb(hue_up, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))
    low = np.array(colorsys.hsv_to_rgb(hue_low, rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.9)))
    return {
        "up": up * 255,
        "low": low * 255,
        "period": np.array(2 + index % 4),  # stripe period in rows
        "stripe": np.array(rng.uniform(0.3, 0.7)),  # stripe darkness
    }


def _render(
    look: dict[str, np.ndarray],
    cam: dict[str, np.ndarray],
    size: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """One image ``[H, W, 3]`` uint8 of a figure seen by a camera."""
    h, w = size
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = cam["background"]
    dy, dx = rng.integers(-max(h // 16, 1), max(h // 16, 1) + 1, size=2)
    top, mid, bottom = h // 8 + dy, h // 2 + dy, (7 * h) // 8 + dy
    left, right = w // 4 + dx, (3 * w) // 4 + dx
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    inside = (cols >= left) & (cols < right)
    upper = inside & (rows >= top) & (rows < mid)
    lower = inside & (rows >= mid) & (rows < bottom)
    stripes = ((rows - top) // int(look["period"])) % 2 == 1
    img[upper] = look["up"]
    img[upper & stripes] = look["up"] * (1 - float(look["stripe"]))
    img[lower] = look["low"]
    head = (rows >= max(top - h // 8, 0)) & (rows < top) & (cols >= left + w // 8)
    img[head & (cols < right - w // 8)] = (224, 172, 140)
    img = img * cam["gain"] + rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_market_fixture(
    root: str | Path,
    *,
    train_ids: int = 8,
    test_ids: int = 6,
    cameras: int = 4,
    train_per_camera: int = 4,
    gallery_per_camera: int = 3,
    distractors: int = 6,
    junk: int = 3,
    size: tuple[int, int] = (32, 16),
    nested: bool = True,
    gt_bbox: bool = False,
    bad_names: int = 0,
    seed: int = 0,
) -> MarketFixture:
    """Write a Market-format folder of synthetic identities.

    Args:
        root: where to write; the dataset goes to ``root/Market-1501-v15.09.15`` if ``nested``.
        train_ids, test_ids: disjoint identities of the training and test folders.
        cameras: cameras per identity (each identity sees a random ``cameras`` of 6, >= 2).
        train_per_camera: training images per identity and camera.
        gallery_per_camera: gallery images per test identity and camera (one more image per
            camera goes to ``query/``).
        distractors: identity-0 images in the gallery.
        junk: identity -1 images in the gallery (dropped by the loader).
        size: (H, W) of every image (Market-1501's crops are 128x64).
        gt_bbox: also write ``gt_bbox/`` (two more crops per query identity and camera, and the
            query images themselves), for the multiple-query setting.
        bad_names: image files with names outside the pattern in the training folder (plus a
            ``Thumbs.db``), to exercise the loader's report.
        seed: everything drawn from it.

    Returns:
        A :class:`MarketFixture`.
    """
    # Long by its docstring (every knob a test turns) and one pass writing Market's folders in
    # order while counting the images the returned fixture reports.
    if not 2 <= cameras <= 6:
        raise ValueError(f"cameras must be in 2..6, got {cameras}")
    rng = np.random.default_rng(seed)
    base = Path(root) / FOLDER if nested else Path(root)
    folders = {name: base / name for name in (TRAIN, GALLERY, QUERY)}
    if gt_bbox:
        folders[GT_BBOX] = base / GT_BBOX
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    pids = rng.choice(np.arange(1, 1502), size=train_ids + test_ids, replace=False)
    train_pids, test_pids = sorted(pids[:train_ids].tolist()), sorted(pids[train_ids:].tolist())
    looks = {
        pid: _identity_look(rng, i, len(pids))
        for i, pid in enumerate(rng.permutation(pids).tolist())
    }
    cams = {
        c: {
            "background": rng.uniform(60, 200, size=3),
            "gain": rng.uniform(0.75, 1.2) * rng.uniform(0.9, 1.1, size=3),
        }
        for c in range(1, 7)
    }
    frame = iter(range(1, 10**6))

    def save(folder: Path, pid: int, cam: int, look_pid: int | None = None) -> str:
        name = f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam}s1_{next(frame):06d}_00.jpg"
        if look_pid is None:  # junk and distractors: a random look
            look = _identity_look(rng, int(rng.integers(0, 1000)), 1000)
        else:
            look = looks[look_pid]
        Image.fromarray(_render(look, cams[cam], size, rng)).save(folder / name, quality=95)
        return name

    n_train = n_query = n_gallery = 0
    for pid in train_pids:
        for cam in sorted(rng.choice(np.arange(1, 7), size=cameras, replace=False).tolist()):
            for _ in range(train_per_camera):
                save(folders[TRAIN], pid, cam, pid)
                n_train += 1
    for pid in test_pids:
        for cam in sorted(rng.choice(np.arange(1, 7), size=cameras, replace=False).tolist()):
            query_name = save(folders[QUERY], pid, cam, pid)
            n_query += 1
            for _ in range(gallery_per_camera):
                save(folders[GALLERY], pid, cam, pid)
                n_gallery += 1
            if gt_bbox:
                copy = (folders[QUERY] / query_name).read_bytes()
                (folders[GT_BBOX] / query_name).write_bytes(copy)
                for _ in range(2):
                    save(folders[GT_BBOX], pid, cam, pid)
    for _ in range(distractors):
        save(folders[GALLERY], 0, int(rng.integers(1, 7)))
    for _ in range(junk):
        save(folders[GALLERY], -1, int(rng.integers(1, 7)))
    for i in range(bad_names):
        Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(
            folders[TRAIN] / f"not_market_{i}.jpg"
        )
    if bad_names:
        (folders[TRAIN] / "Thumbs.db").write_bytes(b"\0" * 16)
    return MarketFixture(
        path=base,
        train_ids=train_pids,
        test_ids=test_pids,
        train_images=n_train,
        query_images=n_query,
        gallery_images=n_gallery + distractors,
        distractors=distractors,
        junk=junk,
    )
