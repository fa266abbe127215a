"""Market-1501 (Zheng et al., *Scalable Person Re-identification: A Benchmark*, ICCV 2015).

``data.name: market1501``, ``data.root``: the extracted ``Market-1501-v15.09.15/`` folder, or
the folder that holds it. Layout::

    bounding_box_train/   12,936 images of the 751 training identities
    bounding_box_test/    the gallery: 15,913 images after removing junk (identity -1),
                          750 test identities + distractors (identity 0)
    query/                3,368 query images of the 750 test identities
    gt_bbox/              (optional) hand-drawn crops, for the multiple-query setting

File names ``PPPP_cCsS_FFFFFF_BB.jpg`` give the identity P and the camera C (sequence S, frame F,
box B). Junk images (identity -1) are dropped everywhere; distractors (identity 0) stay in the
gallery as negatives (and are dropped from the training folder, where they have no class). The
training identities are relabelled 0..N-1 for the N-way classifier of Deep Mutual Learning's re-id
experiments (Zhang et al. CVPR 2018, Sec. 4.1, N = 751). Image files whose name does not match
the pattern are reported (count and one example) and not used; other files (``Thumbs.db``) are
ignored.

Splits: ``train`` (the training folder minus the validation carve), ``val`` (a stratified
``data.val_fraction`` of every training identity's images, scored by classification accuracy,
so that model selection never touches the test identities), and ``test`` (query vs gallery,
scored by mAP and CMC). ``data.fraction`` keeps a stratified share of the training images (at
least one per identity, so N stays 751) and a random share of the test identities with all their
query and gallery images.

Memory: the crops are decoded once into a uint8 tensor at their stored 128x64 size (all splits
~0.8 GB; the per-batch resize to ``image_height x image_width`` happens on the device).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle
from dmlkit.data.registry import DATASETS
from dmlkit.data.reid import (
    RetrievalSplit,
    decode_images,
    eval_loader,
    reid_bundle,
    reid_input_size,
    select_test_identities,
    select_training,
)
from dmlkit.errors import UserError
from dmlkit.losses.dml import UNLABELLED

FOLDER = "Market-1501-v15.09.15"
TRAIN, GALLERY, QUERY, GT_BBOX = "bounding_box_train", "bounding_box_test", "query", "gt_bbox"
LAYOUT = f"ROOT/{{{TRAIN},{GALLERY},{QUERY}}}/ or ROOT/{FOLDER}/{{...}}"
# The published counts (Zheng et al. 2015), after removing the junk images.
PUBLISHED = {
    "training identities": 751,
    "training images": 12_936,
    "query images": 3_368,
    "gallery images": 15_913,
}
NAME_PATTERN = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
JUNK, DISTRACTOR = -1, 0


def parse_market_name(name: str) -> tuple[int, int] | None:
    """``"0002_c1s1_000451_03.jpg"`` -> ``(2, 1)`` (identity, camera); None if no match."""
    m = NAME_PATTERN.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class MarketSplit:
    """The parsed images of one folder (junk removed)."""

    paths: list[Path] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    camids: list[int] = field(default_factory=list)
    junk: int = 0  # identity -1 images dropped
    unmatched: list[str] = field(default_factory=list)  # image files with another name

    def __len__(self) -> int:
        return len(self.paths)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.pids, dtype=np.int64), np.asarray(self.camids, dtype=np.int64)


def find_market_root(root: str | Path | None) -> Path:
    """The folder that holds ``bounding_box_train``, ``bounding_box_test`` and ``query``."""
    if not root:
        raise UserError(
            f"data.root: market1501 needs the Market-1501 folder ({LAYOUT}); "
            f"give it with --set data.root=PATH or --data-root PATH"
        )
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"data.root: {base} is not a folder (expected layout: {LAYOUT})")
    for candidate in (base, base / FOLDER):
        if all((candidate / s).is_dir() for s in (TRAIN, GALLERY, QUERY)):
            return candidate
    where = base / FOLDER if (base / FOLDER).is_dir() else base
    missing = [s for s in (TRAIN, GALLERY, QUERY) if not (where / s).is_dir()]
    raise UserError(
        f"data.root: {where} is not a Market-1501 folder: missing {', '.join(missing)}/ "
        f"(expected layout: {LAYOUT})"
    )


def scan_split(folder: Path) -> MarketSplit:
    """Parse the image names of one folder, sorted by name; junk (-1) is dropped."""
    split = MarketSplit()
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue  # Thumbs.db and the like
        parsed = parse_market_name(path.name)
        if parsed is None:
            split.unmatched.append(path.name)
            continue
        pid, cam = parsed
        if pid == JUNK:
            split.junk += 1
            continue
        split.paths.append(path)
        split.pids.append(pid)
        split.camids.append(cam)
    if split.unmatched:
        warnings.warn(
            f"{folder}: {len(split.unmatched)} image file(s) do not match the Market-1501 name "
            f"pattern PPPP_cCsS_FFFFFF_BB.jpg (e.g. {split.unmatched[0]!r}); they are not used",
            stacklevel=3,
        )
    return split


@dataclass
class MarketIndex:
    """Every image of a Market-1501 folder, parsed (nothing decoded yet)."""

    root: Path
    train: MarketSplit
    query: MarketSplit
    gallery: MarketSplit
    extra_query: MarketSplit | None = None  # gt_bbox crops of the query (identity, camera) pairs

    def counts(self) -> dict[str, int]:
        return {
            "training identities": len(set(self.train.pids)),
            "training images": len(self.train),
            "query images": len(self.query),
            "gallery images": len(self.gallery),
        }


def index_market(root: str | Path | None, *, multi_query: bool = False) -> MarketIndex:
    """Parse a Market-1501 folder; warn when its counts differ from the published ones.

    Args:
        root: the dataset folder or its parent.
        multi_query: also parse ``gt_bbox/`` (the multiple-query images).
    """
    base = find_market_root(root)
    train = scan_split(base / TRAIN)
    dropped = sum(p == DISTRACTOR for p in train.pids)
    if dropped:  # distractors have no class to learn
        keep = [i for i, p in enumerate(train.pids) if p != DISTRACTOR]
        train = MarketSplit(
            [train.paths[i] for i in keep],
            [train.pids[i] for i in keep],
            [train.camids[i] for i in keep],
            train.junk,
            train.unmatched,
        )
    index = MarketIndex(base, train, scan_split(base / QUERY), scan_split(base / GALLERY))
    for name, split in (("training", index.train), ("query", index.query)):
        if not len(split):
            raise UserError(
                f"data.root: no usable {name} images in {base} (expected files named like "
                f"0002_c1s1_000451_03.jpg; layout: {LAYOUT})"
            )
    if not len(index.gallery):
        raise UserError(f"data.root: no usable gallery images in {base / GALLERY}")
    counts = index.counts()
    differ = [
        f"{v:,} {k} (published {PUBLISHED[k]:,})" for k, v in counts.items() if v != PUBLISHED[k]
    ]
    if differ:
        warnings.warn(
            f"{base}: the Market-1501 counts differ from the published ones: "
            f"{'; '.join(differ)}; a partial or modified copy gives results not comparable "
            f"with the paper's",
            stacklevel=2,
        )
    if multi_query:
        index.extra_query = _extra_queries(base, index.query)
    return index


def _extra_queries(base: Path, query: MarketSplit) -> MarketSplit:
    """The ``gt_bbox`` crops of the query identities under the query cameras (not the query
    images themselves)."""
    folder = base / GT_BBOX
    if not folder.is_dir():
        warnings.warn(
            f"data.multi_query: {folder} not found; the multiple-query setting averages the "
            f"query images alone (one per identity and camera in Market-1501: the same as "
            f"single query)",
            stacklevel=3,
        )
        return MarketSplit()
    pairs = set(zip(query.pids, query.camids))
    names = {p.name for p in query.paths}
    everything = scan_split(folder)
    extra = MarketSplit()
    for path, pid, cam in zip(everything.paths, everything.pids, everything.camids):
        if (pid, cam) in pairs and path.name not in names:
            extra.paths.append(path)
            extra.pids.append(pid)
            extra.camids.append(cam)
    return extra


@DATASETS.register("market1501")
def build_market1501(cfg: DataConfig, *, seed: int) -> DataBundle:
    """The Market-1501 bundle: 751-way training, query/gallery retrieval test."""
    size = reid_input_size(cfg)
    index = index_market(cfg.root, multi_query=cfg.multi_query)
    train_pids, _ = index.train.arrays()
    identities, labels = np.unique(train_pids, return_inverse=True)
    train_idx, val_idx, unlabelled = select_training(cfg, labels)
    q_pids, q_cams = index.query.arrays()
    g_pids, g_cams = index.gallery.arrays()
    q_idx, g_idx = select_test_identities(q_pids, g_pids, cfg.fraction, cfg.split_seed + 5)
    if len(q_idx) == 0:
        raise UserError(
            f"data.fraction={cfg.fraction} keeps no query image; raise data.fraction (or --scale)"
        )
    extra = index.extra_query
    e_idx = np.array([], dtype=np.int64)
    if extra is not None and len(extra):
        e_pids, _ = extra.arrays()
        e_idx = np.flatnonzero(np.isin(e_pids, q_pids[q_idx]))

    # One decode for every image used, so that all splits share one stored size.
    paths = (
        [index.train.paths[i] for i in np.concatenate([train_idx, val_idx])]
        + [index.query.paths[i] for i in q_idx]
        + [index.gallery.paths[i] for i in g_idx]
        + ([extra.paths[i] for i in e_idx] if extra is not None else [])
    )
    images = decode_images(paths, size)
    cuts = np.cumsum([len(train_idx), len(val_idx), len(q_idx), len(g_idx)])
    x_train, x_val, x_query, x_gallery, x_extra = torch.tensor_split(images, cuts.tolist())

    y_train = torch.from_numpy(labels[train_idx])
    if len(unlabelled):
        y_train[torch.from_numpy(unlabelled)] = UNLABELLED
    y_val = torch.from_numpy(labels[val_idx])
    test = RetrievalSplit(
        query=eval_loader(cfg, x_query, torch.from_numpy(q_pids[q_idx]), size),
        gallery=eval_loader(cfg, x_gallery, torch.from_numpy(g_pids[g_idx]), size),
        query_cams=torch.from_numpy(q_cams[q_idx]),
        gallery_cams=torch.from_numpy(g_cams[g_idx]),
        distance=cfg.reid_distance,
        normalize=cfg.reid_normalize,
        multi_query=cfg.multi_query,
    )
    if cfg.multi_query and extra is not None and len(e_idx):
        e_pids, e_cams = extra.arrays()
        test.extra_query = eval_loader(cfg, x_extra, torch.from_numpy(e_pids[e_idx]), size)
        test.extra_query_cams = torch.from_numpy(e_cams[e_idx])
    return reid_bundle(
        cfg,
        seed=seed,
        size=size,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        class_names=[f"{p:04d}" for p in identities.tolist()],
        test=test,
    )
