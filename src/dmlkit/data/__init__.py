"""Datasets by name. A dataset builder turns a DataConfig into a :class:`DataBundle`.

Every builder gives three splits: ``train``, ``val`` (carved from the training data, for model
selection and monitoring) and ``test`` (reported once, at the end). Training labels of
unlabelled samples (semi-supervised DML) are ``-1``.
"""

from __future__ import annotations

# Importing the modules registers the datasets.
from dmlkit.data import (  # noqa: E402,F401,I001
    cifar100,  # noqa: E402,F401,I001
    digits,
    digits_pairs,
    imagefolder,
    user,
)
from dmlkit.data.core import DataBundle, TensorLoader, build_data, random_crop_flip
from dmlkit.data.registry import DATASETS

__all__ = ["DATASETS", "DataBundle", "TensorLoader", "build_data", "random_crop_flip"]
from dmlkit.data import market1501  # noqa: E402,F401,I001
from dmlkit.data import text_files  # noqa: E402,F401,I001
from dmlkit.data import stdlib_text  # noqa: E402,F401,I001
