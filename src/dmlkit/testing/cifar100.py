"""Small datasets written in the exact on-disk formats of the real ones, for tests and demos.

:func:`write_cifar100` writes ``cifar-100-python/{train,test,meta}`` as the published files
are: Python 2 pickles (protocol 2) whose strings are *byte* strings (``SHORT_BINSTRING`` /
``BINSTRING`` opcodes, read back as ``bytes`` keys ``b"data"``, ``b"fine_labels"``, ...) and
whose ``data`` entry is a numpy uint8 array rebuilt through
``numpy.core.multiarray._reconstruct``. The real loader (:mod:`dmlkit.data.cifar100`) and its
restricted unpickler are exercised exactly as with the real files; only the MD5s differ.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit.data.cifar100 import FOLDER, NUMPY_RECONSTRUCT

# Images of the same class share a colour and a stripe pattern (orientation and frequency), so
# a network can learn the classes through random crops and flips; noise keeps it from trivial.
_NOISE_STD = 18.0


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 the way Python 2's cPickle wrote it: every string as a byte string.

    Python 3 pickles ``bytes`` at protocol 2 through ``_codecs.encode(...)``, a global the
    published files never contain (and the restricted unpickler refuses); Python 2 wrote its
    ``str`` with the ``(SHORT_)BINSTRING`` opcodes, which is what this pickler emits for both
    ``bytes`` and (ASCII) ``str``. numpy's ``_reconstruct`` is named by its Python 2-era
    module, ``numpy.core.multiarray``.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _write_binstring(self, data: bytes, original: Any) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(original)

    def save_py2_bytes(self, obj: bytes) -> None:
        self._write_binstring(obj, obj)

    def save_py2_str(self, obj: str) -> None:
        self._write_binstring(obj.encode("ascii"), obj)

    dispatch[bytes] = save_py2_bytes
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is NUMPY_RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_py2_pickle(obj: Any, path: Path) -> None:
    """Write ``obj`` as Python 2's ``cPickle.dump(obj, f, 2)`` would have."""
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


class _ClassLook:
    """The look of every class: a colour, and stripes of a given angle and frequency."""

    def __init__(self, num_classes: int, rng: np.random.Generator) -> None:
        self.palette = rng.uniform(50, 205, size=(num_classes, 3))
        self.angles = rng.uniform(0, np.pi, size=num_classes)
        self.freqs = rng.uniform(0.25, 1.0, size=num_classes)

    def render(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``[N, 3072]`` uint8 rows (CHW order): class colour + class stripes (random phase)
        + Gaussian noise."""
        yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
        images = np.empty((len(labels), 3, 32, 32), dtype=np.float64)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            phase = rng.uniform(0, 2 * np.pi, size=(len(idx), 1, 1))
            proj = np.cos(self.angles[c]) * xx + np.sin(self.angles[c]) * yy
            stripes = 45.0 * np.sin(self.freqs[c] * proj[None] + phase)  # [n, 32, 32]
            images[idx] = self.palette[c][None, :, None, None] + stripes[:, None]
        images += rng.normal(0.0, _NOISE_STD, size=images.shape)
        return np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    return labels


def write_cifar100(
    root: str | Path,
    n_train: int = 500,
    n_test: int = 100,
    num_classes: int = 100,
    seed: int = 0,
) -> Path:
    """Write a small CIFAR-100-format dataset under ``root/cifar-100-python/``.

    Args:
        root: folder to write into (``data.root`` of a run).
        n_train: training images (classes balanced, in shuffled order).
        n_test: test images.
        num_classes: fine classes (100 in the real data); 20 coarse classes as in the real
            data when ``num_classes`` is 100, else one coarse class per 5 fine ones.
        seed: seed of the content.

    Returns:
        The ``cifar-100-python`` folder.
    """
    if num_classes < 1 or n_train < 1 or n_test < 1:
        raise ValueError("write_cifar100 needs num_classes, n_train and n_test >= 1")
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    n_coarse = -(-num_classes // 5)
    look = _ClassLook(num_classes, rng)  # shared by both splits
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _balanced_labels(n, num_classes, rng)
        data = look.render(labels, rng)
        prefix = "training" if split == "train" else "testing"
        entry = {
            b"filenames": [f"fixture_{split}_{i:06d}.png".encode("ascii") for i in range(n)],
            b"batch_label": f"{prefix} batch 1 of 1".encode("ascii"),
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": data,
        }
        dump_py2_pickle(entry, folder / split)
    meta = {
        b"fine_label_names": [f"class_{c:03d}".encode("ascii") for c in range(num_classes)],
        b"coarse_label_names": [f"superclass_{c:02d}".encode("ascii") for c in range(n_coarse)],
    }
    dump_py2_pickle(meta, folder / "meta")
    return folder
