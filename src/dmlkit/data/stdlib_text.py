"""A real text task with no download: the Python standard library's own source files.

Every Python install ships its standard library as ``.py`` files
(``sysconfig.get_paths()["stdlib"]``). From the files of N top-level packages (``asyncio``,
``email``, ``unittest``, ``xml``, ... ; ``data.text.stdlib_packages``, or the first
``data.text.stdlib_classes`` of :data:`DEFAULT_PACKAGES` that this Python has, test folders
left out):

- ``stdlib-modules``: classification, "which package does this snippet come from": snippets are
  windows of ``data.text.snippet_lines`` consecutive source lines (code, comments and
  docstrings as they are), at most ``data.text.snippets_per_class`` per class in training (a
  seeded sample; val and test in proportion to their shares).
- ``stdlib-lm``: a causal language model over the same files (bytes by default), in blocks of
  ``data.text.max_length`` tokens, at most ``data.text.lm_blocks`` in training.

Train, val and test are disjoint by source file: each package's files are assigned to the
splits by size (:func:`~dmlkit.data.text_files.assign_by_size`; test ``data.test_fraction``
of its lines, val ``data.val_fraction`` of the rest), so no file lends a line to two splits.
Built identically wherever the files are identical: the fingerprint (sha256 of the selected
files' names and contents, and the Python version) is recorded with the run, and a resumed or
evaluated run refuses another one (:func:`dmlkit.data.text.check_fingerprint`).
"""

from __future__ import annotations

import math
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle
from dmlkit.data.registry import DATASETS
from dmlkit.data.text import Fingerprint, python_version
from dmlkit.data.text_files import (
    Examples,
    assign_by_size,
    classification_bundle,
    lm_bundle,
    read_text,
)
from dmlkit.errors import ConfigError, UserError

#: in this order, the packages a default task takes (those this Python has, with enough files);
#: all of them exist from Python 3.10 on (distributions may leave tkinter / idlelib out)
DEFAULT_PACKAGES = (
    "asyncio",
    "email",
    "unittest",
    "xml",
    "http",
    "json",
    "logging",
    "multiprocessing",
    "importlib",
    "urllib",
    "concurrent",
    "ctypes",
    "wsgiref",
    "xmlrpc",
    "tkinter",
    "idlelib",
    "curses",
    "dbm",
    "zoneinfo",
)
#: folders of tests and caches inside packages: not the package's own code
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})
MIN_FILES = 3  # one file at least for each of train, val and test
MIN_SNIPPET_CHARS = 20  # windows of blank lines and lone brackets are no evidence


def stdlib_root() -> Path:
    """The folder of this Python's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def package_files(root: Path, name: str) -> list[Path] | None:
    """The ``.py`` files of package ``name`` (sorted, tests left out), or None if no package."""
    folder = root / name
    if not (folder / "__init__.py").is_file():
        return None
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and d[:1] != ".")
        found += [Path(dirpath) / f for f in filenames if f.endswith(".py") and f[:1] != "."]
    return sorted(found, key=lambda p: p.parts)


def select_packages(cfg: DataConfig, root: Path) -> list[tuple[str, list[Path]]]:
    """``(package, files)`` for each class, in class order."""
    t = cfg.text
    if t.stdlib_packages is not None:
        chosen = []
        for name in t.stdlib_packages:
            files = package_files(root, name)
            if files is None or len(files) < MIN_FILES:
                got = "is not a package here" if files is None else f"has {len(files)} files"
                raise ConfigError(
                    f"data.text.stdlib_packages: {name!r} {got} in {root}; choose packages with "
                    f"{MIN_FILES} .py files or more (e.g. {', '.join(DEFAULT_PACKAGES[:4])})"
                )
            chosen.append((name, files))
        if len({n for n, _ in chosen}) != len(chosen):
            raise ConfigError("data.text.stdlib_packages: a package is named twice")
        return chosen
    chosen = []
    for name in DEFAULT_PACKAGES:
        files = package_files(root, name)
        if files is not None and len(files) >= MIN_FILES:
            chosen.append((name, files))
        if len(chosen) == t.stdlib_classes:
            return chosen
    raise ConfigError(
        f"data.text.stdlib_classes={t.stdlib_classes}: this Python's standard library ({root}) "
        f"has {len(chosen)} of the packages it draws from; lower it to {len(chosen)} or less"
    )


@dataclass
class Corpus:
    """The selected files: names relative to the stdlib, texts, class and split of each."""

    root: Path
    packages: list[str]
    names: list[str]
    texts: list[str]
    label: np.ndarray  # [F] package index of each file
    split: np.ndarray  # [F] 0 train / 1 val / 2 test
    fingerprint: str

    def source(self) -> dict[str, object]:
        return {
            "python": python_version(),
            "stdlib": str(self.root),
            "packages": self.packages,
            "files": {
                split: [n for n, s in zip(self.names, self.split) if s == i]
                for i, split in enumerate(("train", "val", "test"))
            },
        }


def build_corpus(cfg: DataConfig) -> Corpus:
    """Read the packages' files, assign each to a split, fingerprint them (and the Python)."""
    root = stdlib_root()
    if not root.is_dir():
        raise UserError(
            f"{cfg.name}: this Python has no standard library sources at {root}; use a Python "
            f"with its .py files installed"
        )
    packages = select_packages(cfg, root)
    fp = Fingerprint("stdlib", python_version())
    names, texts, labels, splits = [], [], [], []
    val_share = cfg.val_fraction * (1 - cfg.test_fraction)
    for label, (_, files) in enumerate(packages):
        rel = [p.relative_to(root).as_posix() for p in files]
        body = [read_text(p, fp, r) for p, r in zip(files, rel)]
        sizes = [t.count("\n") + 1 for t in body]
        splits += assign_by_size(sizes, rel, cfg.test_fraction, val_share).tolist()
        names += rel
        texts += body
        labels += [label] * len(files)
    return Corpus(
        root=root,
        packages=[p for p, _ in packages],
        names=names,
        texts=texts,
        label=np.array(labels, dtype=np.int64),
        split=np.array(splits, dtype=np.int64),
        fingerprint=fp.hexdigest(),
    )


def snippets(text: str, lines: int) -> list[tuple[int, str]]:
    """``(first line number, snippet)``: consecutive windows of ``lines`` lines of a file."""
    rows = text.splitlines()
    out = []
    for start in range(0, len(rows), lines):
        piece = "\n".join(rows[start : start + lines])
        if len(piece.strip()) >= MIN_SNIPPET_CHARS:
            out.append((start + 1, piece))
    return out


def split_caps(cfg: DataConfig, train_cap: int) -> tuple[int, int, int]:
    """Caps of the three splits: ``train_cap``, and val / test in proportion to their shares."""
    test = cfg.test_fraction
    val = cfg.val_fraction * (1 - test)
    train = 1 - test - val
    return train_cap, math.ceil(train_cap * val / train), math.ceil(train_cap * test / train)


def snippet_splits(cfg: DataConfig, corpus: Corpus) -> tuple[Examples, Examples, Examples]:
    """The snippets of every split, each class capped (a seeded sample, in file order)."""
    t = cfg.text
    caps = split_caps(cfg, t.snippets_per_class)
    out = (Examples(), Examples(), Examples())
    for label, package in enumerate(corpus.packages):
        for s in range(3):
            found = Examples()
            for f in np.flatnonzero((corpus.label == label) & (corpus.split == s)):
                for line, piece in snippets(corpus.texts[f], t.snippet_lines):
                    found.texts.append(piece)
                    found.labels.append(package)
                    found.where.append(f"{corpus.names[f]}:{line}")
            if not found.texts:
                raise UserError(
                    f"stdlib-modules: the package {package!r} has no snippets in one split; "
                    f"choose another package (data.text.stdlib_packages)"
                )
            if len(found.texts) > caps[s]:
                rng = np.random.default_rng([cfg.split_seed, label, s])
                keep = np.sort(rng.choice(len(found.texts), size=caps[s], replace=False))
                found = Examples(
                    [found.texts[i] for i in keep],
                    [found.labels[i] for i in keep],
                    [found.where[i] for i in keep],
                )
            out[s].extend(found)
    return out


@DATASETS.register("stdlib-modules")
def build_stdlib_modules(
    cfg: DataConfig, *, seed: int, run_dir: str | Path | None = None
) -> DataBundle:
    corpus = build_corpus(cfg)
    train, val, test = snippet_splits(cfg, corpus)
    return classification_bundle(
        cfg,
        train,
        test,
        list(corpus.packages),
        corpus.fingerprint,
        corpus.source(),
        seed=seed,
        run_dir=run_dir,
        val=val,
    )


@DATASETS.register("stdlib-lm")
def build_stdlib_lm(cfg: DataConfig, *, seed: int, run_dir: str | Path | None = None) -> DataBundle:
    corpus = build_corpus(cfg)
    return lm_bundle(
        cfg,
        corpus.texts,
        corpus.names,
        corpus.split,
        corpus.fingerprint,
        corpus.source(),
        seed=seed,
        run_dir=run_dir,
        caps=split_caps(cfg, cfg.text.lm_blocks),
    )


build_stdlib_modules.reads_run_dir = True  # type: ignore[attr-defined]
build_stdlib_lm.reads_run_dir = True  # type: ignore[attr-defined]
