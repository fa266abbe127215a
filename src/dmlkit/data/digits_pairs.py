"""``digits-pairs``: two bundled digits side by side, up to 100 classes "00"-"99", no download.

A many-class task of real handwritten images that trains in seconds on a CPU, where classes
share structure (``"37"`` and ``"38"`` have the same left digit), the setting in which a peer's
secondary probabilities carry information (the paper's "dark knowledge" argument).

The construction is fixed by the config and documented in docs/digits-pairs.md:

1. **Split the 1,797 source digits first**, stratified by digit, with ``data.split_seed``:
   ``data.test_fraction`` of each digit's images are *test sources*; of the rest,
   ``data.val_fraction`` are *validation sources* and the others *training sources*. A source
   image belongs to exactly one of the three sets.
2. **Classes**: the 100 ordered pairs (left digit, right digit), named ``"ab"``; with
   ``data.pairs_classes`` < 100, a fixed random subset of them (seed ``split_seed``).
3. **Compose within each side**: a composite of class ``"ab"`` puts a source image of digit
   ``a`` (left) beside one of digit ``b`` (right), both from the same side: an ``[1, 8, 16]``
   image. Training has ``data.pairs_per_class`` composites per class, validation and test
   ``data.pairs_eval_per_class`` each. Each slot draws its digit's source images in rounds of a
   random permutation, so every source image of a side is used about equally often.
4. **Label noise** (training only): ``round(data.label_noise * N)`` training composites, chosen
   at random, get a uniformly random *other* class. Validation and test labels stay clean.

Every random draw uses a generator seeded from ``data.split_seed`` (plus a fixed offset per
step), never the run seed: every run of an experiment sees the same composites.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from dmlkit.config import DataConfig
from dmlkit.data.core import (
    BatchTransform,
    DataBundle,
    TensorLoader,
    in_memory_bundle,
    stratified_split,
    stratified_subset,
)
from dmlkit.data.digits import load_digits_arrays
from dmlkit.data.registry import DATASETS

# Offsets added to data.split_seed for the independent random steps of the construction.
_VAL_SEED, _CLASS_SEED, _TRAIN_SEED, _EVAL_SEED, _NOISE_SEED = 1, 2, 3, 4, 5
ALL_CLASSES = [(a, b) for a in range(10) for b in range(10)]


@dataclass
class PairSplit:
    """One side of the construction.

    Attributes:
        x: ``[N, 1, 8, 16]`` float32 composites in [0, 1].
        y: ``[N]`` int64 labels 0..C-1 as trained on (training: after label noise).
        clean: ``[N]`` int64 labels of what the image shows (before label noise).
        sources: ``[N, 2]`` int64 indices into the 1,797 source digits (left, right image).
    """

    x: np.ndarray
    y: np.ndarray
    clean: np.ndarray
    sources: np.ndarray


@dataclass
class DigitsPairs:
    """The three splits and the class names (``"ab"``: left digit a, right digit b)."""

    train: PairSplit
    val: PairSplit
    test: PairSplit
    class_names: list[str]


def source_split(y: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the training, validation and test source digits (disjoint, stratified)."""
    trainval, test = stratified_split(y, cfg.test_fraction, cfg.split_seed)
    if cfg.val_fraction > 0:
        keep, carved = stratified_split(y[trainval], cfg.val_fraction, cfg.split_seed + _VAL_SEED)
        return trainval[keep], trainval[carved], test
    return trainval, np.array([], dtype=np.int64), test


def pair_classes(n: int, split_seed: int) -> list[tuple[int, int]]:
    """The ``n`` classes used: all 100 pairs, or a fixed random subset in "00".."99" order."""
    if n >= len(ALL_CLASSES):
        return list(ALL_CLASSES)
    rng = np.random.default_rng(split_seed + _CLASS_SEED)
    chosen = np.sort(rng.choice(len(ALL_CLASSES), size=n, replace=False))
    return [ALL_CLASSES[i] for i in chosen]


def _draw(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items of ``pool`` in rounds of a random permutation (each used about equally)."""
    rounds = -(-n // len(pool))
    return np.concatenate([pool[:0]] + [rng.permutation(pool) for _ in range(rounds)])[:n]


def compose(
    images: np.ndarray,
    digits: np.ndarray,
    sources: np.ndarray,
    classes: list[tuple[int, int]],
    per_class: int,
    rng: np.random.Generator,
) -> PairSplit:
    """``per_class`` composites of every class from the source digits ``sources`` only.

    Args:
        images: ``[1797, 1, 8, 8]`` source images; digits: ``[1797]`` their digit.
        sources: indices of the source images this side may use.
        classes: (left digit, right digit) of each class; the label is its position.
        per_class: composites per class.
        rng: generator of the draws.
    """
    by_digit = {d: sources[digits[sources] == d] for d in range(10)}
    n_left = {d: per_class * sum(a == d for a, _ in classes) for d in range(10)}
    n_right = {d: per_class * sum(b == d for _, b in classes) for d in range(10)}
    left = {d: _draw(by_digit[d], n_left[d], rng) for d in range(10)}
    right = {d: _draw(by_digit[d], n_right[d], rng) for d in range(10)}
    used = {d: [0, 0] for d in range(10)}  # composites drawn so far per digit (left, right)
    pairs, labels = [], []
    for label, (a, b) in enumerate(classes):
        la, rb = used[a][0], used[b][1]
        pairs.append(np.stack([left[a][la : la + per_class], right[b][rb : rb + per_class]], 1))
        used[a][0], used[b][1] = la + per_class, rb + per_class
        labels.append(np.full(per_class, label, dtype=np.int64))
    src = np.concatenate(pairs).astype(np.int64)
    x = np.concatenate([images[src[:, 0]], images[src[:, 1]]], axis=3)  # side by side
    y = np.concatenate(labels)
    return PairSplit(x=x, y=y.copy(), clean=y, sources=src)


def flip_labels(y: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy of ``y`` where exactly ``round(fraction * len(y))`` labels become another class."""
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    n = int(round(fraction * len(y)))
    idx = rng.choice(len(y), size=n, replace=False)
    # an offset in 1..C-1 modulo C: uniformly one of the other classes, never the true one
    noisy[idx] = (y[idx] + rng.integers(1, num_classes, size=n)) % num_classes
    return noisy


def make_pairs(cfg: DataConfig) -> DigitsPairs:
    """The whole construction (steps 1-4 of the module docstring), as numpy arrays."""
    images, digits = load_digits_arrays()
    train_src, val_src, test_src = source_split(digits, cfg)
    classes = pair_classes(cfg.pairs_classes, cfg.split_seed)
    seed = cfg.split_seed
    train = compose(
        images, digits, train_src, classes, cfg.pairs_per_class,
        np.random.default_rng(seed + _TRAIN_SEED),
    )  # fmt: skip
    eval_rng = np.random.default_rng(seed + _EVAL_SEED)
    n_eval = cfg.pairs_eval_per_class
    test = compose(images, digits, test_src, classes, n_eval, eval_rng)
    if len(val_src):
        val = compose(images, digits, val_src, classes, n_eval, eval_rng)
    else:
        empty = np.zeros((0,), dtype=np.int64)
        val = PairSplit(np.zeros((0, 1, 8, 16), np.float32), empty, empty, empty.reshape(0, 2))
    if cfg.label_noise > 0:
        train.y = flip_labels(train.y, cfg.label_noise, len(classes), seed + _NOISE_SEED)
    names = [f"{a}{b}" for a, b in classes]
    return DigitsPairs(train=train, val=val, test=test, class_names=names)


@DATASETS.register("digits-pairs")
def build_digits_pairs(cfg: DataConfig, *, seed: int) -> DataBundle:
    pairs = make_pairs(cfg)
    tr, va, te = pairs.train, pairs.val, pairs.test
    # The validation composites come from their own source digits (above), so the shared
    # carve-out of in_memory_bundle is switched off; fraction / train_size still apply.
    bundle = in_memory_bundle(
        dataclasses.replace(cfg, val_fraction=0.0),
        torch.from_numpy(tr.x),
        torch.from_numpy(tr.y),
        torch.from_numpy(te.x),
        torch.from_numpy(te.y),
        pairs.class_names,
        seed=seed,
    )
    if len(va.y):
        keep = stratified_subset(np.arange(len(va.y)), va.y, cfg.fraction, cfg.split_seed + 4)
        plain = BatchTransform(bundle.train.transform.mean, bundle.train.transform.std)
        bundle.val = TensorLoader(
            torch.from_numpy(va.x[keep]), torch.from_numpy(va.y[keep]), cfg.eval_batch_size, plain
        )
    return bundle
