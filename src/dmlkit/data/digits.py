"""scikit-learn's bundled digits: 1,797 grey 8x8 images of 10 classes, no download.

There is no official test split: a stratified ``data.test_fraction`` of the images (chosen with
``data.split_seed``, the same for every run) is held out as the test split.
"""

from __future__ import annotations

import numpy as np
import torch

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle, in_memory_bundle, stratified_split
from dmlkit.data.registry import DATASETS


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images ``[1797, 1, 8, 8]`` float32 in [0, 1] and labels ``[1797]`` int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    return x, digits.target.astype(np.int64)


@DATASETS.register("digits")
def build_digits(cfg: DataConfig, *, seed: int) -> DataBundle:
    x, y = load_digits_arrays()
    trainval, test = stratified_split(y, cfg.test_fraction, cfg.split_seed)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    return in_memory_bundle(
        cfg,
        x_t[trainval],
        y_t[trainval],
        x_t[test],
        y_t[test],
        [str(i) for i in range(10)],
        seed=seed,
    )
