"""CIFAR-100 from the published ``cifar-100-python`` pickles (the layout torchvision uses).

``data.root`` is the folder that holds ``cifar-100-python/{train,test,meta}`` (or that folder
itself). The 100 *fine* labels are the classes; 50,000 training and 10,000 test images of
32x32x3, kept in memory as uint8 ``[N, 3, 32, 32]`` (150 MB for the training split) and
batched, augmented and normalised by :class:`dmlkit.data.core.TensorLoader`. The paper's
augmentation (random crop from the image reflection-padded by 4 px, horizontal flip) is
``data.crop_padding: 4`` and ``data.hflip: true`` in the recipes (configs/paper/).

Safety: the files are Python pickles, and unpickling can run arbitrary code. They are read
with :class:`RestrictedUnpickler`, which resolves only the handful of numpy globals an
ndarray needs, so a tampered file fails instead of executing anything. Their MD5s are checked
against the published ones: a mismatch is a warning, or an error with ``data.strict: true``
(``--strict-data``).
"""

from __future__ import annotations

import hashlib
import pickle
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle, in_memory_bundle
from dmlkit.data.registry import DATASETS
from dmlkit.errors import UserError, first_line

FOLDER = "cifar-100-python"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# The published checksums of the unpacked files (the same ones torchvision checks).
FILE_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
LAYOUT = f"ROOT/{FOLDER}/{{train,test,meta}}"
HOW_TO_GET = (
    f"get it with --download (or data.download: true), or download {URL} and unpack it in ROOT"
)
IMAGE_SHAPE = (3, 32, 32)


class DataIntegrityWarning(UserWarning):
    """A dataset file differs from the published one (its MD5 does not match)."""


# ------------------------------------------------------------------------------------------------
# restricted unpickling


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR file never needs (a global, an object array)."""


NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's _reconstruct, wherever it lives


def _plain_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for the unpickler, refusing object dtypes (they would unpickle
    arbitrary Python objects from the array's payload)."""
    dtype = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec, align, copy)
    if dtype.hasobject:
        raise RefusedPickle(f"object dtype {dtype} is not allowed")
    return dtype


def _plain_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise RefusedPickle("only numpy.ndarray may be reconstructed")
    return NUMPY_RECONSTRUCT(cls, shape, dtype_code)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only knows the globals of a CIFAR pickle.

    A CIFAR pickle holds dicts, lists, byte strings and ints (no globals needed) and one numpy
    array, rebuilt from ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in numpy 2),
    ``numpy.ndarray`` and ``numpy.dtype``. Every other global (``os.system``,
    ``builtins.eval``, ...) raises :class:`RefusedPickle` (an ``UnpicklingError``) before
    anything is called.
    """

    ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _plain_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _plain_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(
                f"global '{module}.{name}' is not allowed in a CIFAR file"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("persistent ids are not allowed in a CIFAR file")


def load_pickle(path: Path) -> dict[str, Any]:
    """Read one CIFAR pickle with :class:`RestrictedUnpickler`; keys become ``str``.

    The published files were written by Python 2: their strings are byte strings, read here as
    ``bytes`` (``encoding="bytes"``), which is also what numpy's array payload needs.

    Raises:
        UserError: the file is missing, unreadable, not a pickle, refused, or not a dict.
    """
    if not path.is_file():
        raise UserError(f"data.root: {path} not found (expected layout {LAYOUT}); {HOW_TO_GET}")
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except RefusedPickle as exc:
        raise UserError(
            f"{path}: refused to load ({exc}); this is not a genuine CIFAR-100 file, replace "
            f"it ({HOW_TO_GET})"
        ) from None
    except (
        pickle.UnpicklingError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as exc:
        raise UserError(
            f"{path}: unreadable ({type(exc).__name__}: {exc}); replace it ({HOW_TO_GET})"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"{path}: expected a pickled dict, got {type(obj).__name__}; replace it ({HOW_TO_GET})"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


# ------------------------------------------------------------------------------------------------
# integrity and download


# (path, size, mtime) -> MD5: a grid of runs reads the same 180 MB many times in one process.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}
# (path, MD5) already warned about in this process: one warning per file, not one per run.
_WARNED: set[tuple[str, str]] = set()


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """The file's MD5 (hex), cached while its size and modification time stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def verify_files(folder: Path, *, strict: bool) -> list[str]:
    """Compare the MD5 of every file with the published one.

    Returns:
        The names of the files that differ (each also reported by a
        :class:`DataIntegrityWarning`).

    Raises:
        UserError: a file is missing, or differs while ``strict``.
    """
    differ = []
    for name, expected in FILE_MD5.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"data.root: {path} not found (expected layout {LAYOUT}); {HOW_TO_GET}")
        try:
            actual = md5sum(path)
        except OSError as exc:
            raise UserError(f"{path}: unreadable ({exc.strerror}); check its permissions") from None
        if actual == expected:
            continue
        message = (
            f"{path}: MD5 {actual} differs from the published {expected}; the file is not the "
            f"official CIFAR-100 release"
        )
        if strict:
            raise UserError(f"{message} (data.strict is set); replace it ({HOW_TO_GET})")
        if (str(path.resolve()), actual) not in _WARNED:
            _WARNED.add((str(path.resolve()), actual))
            warnings.warn(
                f"{message}; results may not be comparable (--strict-data makes this an error)",
                DataIntegrityWarning,
                stacklevel=2,
            )
        differ.append(name)
    return differ


def _torchvision_download(url: str, root: Path, filename: str, md5: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, str(root), filename=filename, md5=md5)


# The function that fetches and unpacks the archive (replaced in tests: no network there).
DOWNLOADER: Callable[[str, Path, str, str], None] = _torchvision_download


def _remove_created(created: list[Path], archive: Path | None) -> None:
    """After a failed download: remove the folders and the partial archive it created.

    A failed ``--download`` leaves the disk as it found it; a folder that existed before, or
    that now holds anything else, is kept.
    """
    if archive is not None:
        archive.unlink(missing_ok=True)
    for folder in created:
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            return


def download(root: Path, timeout: float = 60.0) -> Path:
    """Fetch and unpack the CIFAR-100 archive into ``root`` with torchvision's downloader.

    Returns:
        ``root / "cifar-100-python"``.

    Raises:
        UserError: one line, when the network, the server or the archive fails.
    """
    created = [p for p in (root, *root.parents) if not p.exists()]  # the deepest first
    new_archive = None if (root / ARCHIVE).exists() else root / ARCHIVE
    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # a blocked network must fail, not hang
    try:
        DOWNLOADER(URL, root, ARCHIVE, ARCHIVE_MD5)
    except Exception as exc:  # urllib, OSError, RuntimeError (bad MD5), tarfile errors
        reason = first_line(exc)
        _remove_created(created, new_archive)
        raise UserError(
            f"data.download: could not download {URL} into {root} ({reason}); download it where "
            f"the network allows, unpack it into {root} and run without --download"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    folder = root / FOLDER
    if not (folder / "train").is_file():
        raise UserError(
            f"data.download: the archive did not unpack to {folder}/train; remove {root / ARCHIVE} "
            f"and try again"
        )
    return folder


def locate(root: str | Path | None, *, allow_download: bool = False) -> Path:
    """The ``cifar-100-python`` folder under ``root`` (or ``root`` itself if it is that folder).

    Raises:
        UserError: ``root`` is unset, or holds no CIFAR-100 files (and download is off).
    """
    if root is None:
        raise UserError(
            f"data.root: cifar100 needs the folder that holds {FOLDER}/ (give --data-root PATH "
            f"or --set data.root=PATH); {HOW_TO_GET}"
        )
    root = Path(root).expanduser()
    for folder in (root / FOLDER, root):
        if all((folder / name).is_file() for name in FILE_MD5):
            return folder
    if allow_download:
        return download(root)
    folder = root / FOLDER
    missing = [str(folder / n) for n in FILE_MD5 if not (folder / n).is_file()]
    raise UserError(
        f"data.root: {', '.join(missing)} not found (expected layout {LAYOUT}); {HOW_TO_GET}"
    )


# ------------------------------------------------------------------------------------------------
# parsing


def load_split(path: Path, num_classes: int) -> tuple[Tensor, Tensor]:
    """Images and fine labels of one split file.

    Returns:
        ``x: [N, 3, 32, 32]`` uint8 (``data`` rows are 3072 bytes in CHW order: the 1024 red
        pixels row by row, then green, then blue) and ``y: [N]`` int64 fine labels.
    """
    d = load_pickle(path)
    for key in ("data", "fine_labels"):
        if key not in d:
            raise UserError(
                f"{path}: no '{key}' entry (found {sorted(d)}); not a CIFAR-100 split file, "
                f"replace it ({HOW_TO_GET})"
            )
    data, labels = d["data"], d["fine_labels"]
    n_pixels = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise UserError(f"{path}: 'data' must be a uint8 array [N, {n_pixels}]; replace it")
    if data.shape[1] != n_pixels:
        raise UserError(
            f"{path}: 'data' rows hold {data.shape[1]} values, expected {n_pixels} (3x32x32)"
        )
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (data.shape[0],):
        raise UserError(
            f"{path}: {len(y)} fine labels for {data.shape[0]} images; the file is damaged"
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(
            f"{path}: fine labels must be in 0..{num_classes - 1} (meta names {num_classes} "
            f"classes), found {y.min()}..{y.max()}; the files do not belong together"
        )
    x = np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE)
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def load_class_names(path: Path) -> list[str]:
    """The fine label names from the ``meta`` file."""
    meta = load_pickle(path)
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: no 'fine_label_names' list; not a CIFAR-100 meta file")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar100(
    root: str | Path | None, *, strict: bool = False, allow_download: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """Read and check the three files.

    Returns:
        ``(x_train [50000, 3, 32, 32] uint8, y_train [50000], x_test [10000, 3, 32, 32],
        y_test [10000], class names)``.
    """
    folder = locate(root, allow_download=allow_download)
    verify_files(folder, strict=strict)
    names = load_class_names(folder / "meta")
    x_train, y_train = load_split(folder / "train", len(names))
    x_test, y_test = load_split(folder / "test", len(names))
    return x_train, y_train, x_test, y_test, names


@DATASETS.register("cifar100")
def build_cifar100(cfg: DataConfig, *, seed: int) -> DataBundle:
    """CIFAR-100 (fine labels): train (minus ``data.val_fraction`` for val) / test."""
    x_train, y_train, x_test, y_test, names = load_cifar100(
        cfg.root, strict=cfg.strict, allow_download=cfg.download
    )
    return in_memory_bundle(cfg, x_train, y_train, x_test, y_test, names, seed=seed)
