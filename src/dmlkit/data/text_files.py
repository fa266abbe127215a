"""Users' own text: ``text`` (classification) and ``text-lm`` (causal language model).

``data.name: text`` reads, from ``data.root`` (``data.text.format``, ``auto`` by default):

- ``folder``: ``ROOT/train/<class>/*.txt`` and ``ROOT/test/<class>/*.txt``, or
  ``ROOT/<class>/*.txt`` (a stratified ``data.test_fraction`` held out as the test split); one
  example per file.
- ``jsonl``: one JSON object per line with a text field and a label field
  (``data.text.text_field`` / ``label_field``); ``csv``: a header row naming those columns.
  ``data.root`` is one such file (test held out as above), or a folder with
  ``train.jsonl`` and ``test.jsonl`` (``.csv``).

``data.name: text-lm`` reads plain UTF-8 text: ``data.root`` a file, a folder of ``.txt``
files (searched recursively), or ``ROOT/train/`` + ``ROOT/test/``; documents are joined with
the end-of-text token and cut into blocks of ``data.text.max_length`` tokens. Splits are by
file when there are 3 files or more (the test and validation files never train), else by
contiguous ranges of blocks.

Only regular files are read (a FIFO or device is refused by name); hidden entries are skipped.
Every mistake is one line naming the file (and line) and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlkit.config import DataConfig
from dmlkit.data.core import DataBundle, select_training, stratified_split, stratified_subset
from dmlkit.data.registry import DATASETS
from dmlkit.data.text import (
    CAUSAL_LM,
    CLASSIFICATION,
    Fingerprint,
    blocks,
    check_fingerprint,
    encode,
    make_info,
    pack,
    run_tokenizer,
    subsample,
    text_bundle,
    text_loaders,
    the_tokenizer,
)
from dmlkit.errors import ConfigError, UserError, shown

TEXT_EXTENSIONS = (".txt",)
TABLE_EXTENSIONS = {".jsonl": "jsonl", ".csv": "csv"}
FOLDER_LAYOUT = "ROOT/train/<class>/*.txt and ROOT/test/<class>/*.txt, or ROOT/<class>/*.txt"


# -- reading files ------------------------------------------------------------------------------


def read_text(path: Path, fingerprint: Fingerprint | None = None, name: str | None = None) -> str:
    """The UTF-8 text of a regular file (a leading BOM dropped), added to ``fingerprint``.

    Raises:
        UserError: not a regular file, unreadable, or not UTF-8 (the file and byte named).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"data.root: cannot read {path} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the run forever, a device worse
        raise UserError(
            f"data.root: {path} is not a regular file; remove it (only regular files are read)"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"data.root: cannot read {path} ({exc.strerror or exc}); fix its permissions or "
            f"move it out of data.root"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            f"convert it to UTF-8 (e.g. iconv -t utf-8) or remove it"
        ) from None
    if fingerprint is not None:
        fingerprint.add(name or str(path), raw)
    return text


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _files_under(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files with one of ``extensions`` under ``folder``, recursively, hidden entries skipped."""

    def fail(exc: OSError) -> None:
        raise UserError(f"data.root: cannot read {exc.filename} ({exc.strerror or exc})")

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found += [
            Path(dirpath) / f
            for f in filenames
            if not _hidden(f) and f.lower().endswith(extensions)
        ]
    return sorted(found, key=lambda p: p.parts)


@dataclass
class Examples:
    """Texts and their raw labels, with where each came from (for errors and split tests)."""

    texts: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "FILE" or "FILE:LINE"

    def extend(self, other: Examples) -> None:
        self.texts += other.texts
        self.labels += other.labels
        self.where += other.where


def _check_text(text: Any, where: str, key: str) -> str:
    if not isinstance(text, str):
        raise UserError(
            f"{where}: the {key} field is a {type(text).__name__}, not a string; fix the "
            f"line or set data.text.text_field"
        )
    if not text.strip():
        raise UserError(f"{where}: the text is empty; remove the example or fill it")
    return text


def _check_label(label: Any, where: str, key: str) -> Any:
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise UserError(
            f"{where}: the label field {key!r} is {shown(label)}; labels are class names "
            f"(strings) or integers"
        )
    if isinstance(label, str) and not label.strip():
        raise UserError(f"{where}: the label field {key!r} is empty; give every example a class")
    return label


def read_jsonl(path: Path, cfg: DataConfig, fp: Fingerprint, root: Path) -> Examples:
    """One example per non-blank line: ``{text_field: str, label_field: str | int, ...}``."""
    t = cfg.text
    out = Examples()
    text = read_text(path, fp, _rel(path, root))
    # split on "\n" only: str.splitlines would also cut at U+2028, which JSON allows in strings
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: not valid JSON ({exc}); one object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: a JSON {type(obj).__name__}, expected an object")
        for key, setting in ((t.text_field, "text_field"), (t.label_field, "label_field")):
            if key not in obj:
                raise UserError(
                    f"{where}: no field {key!r} (fields: {', '.join(map(str, obj))[:120]}); "
                    f"add it or set data.text.{setting}"
                )
        out.texts.append(_check_text(obj[t.text_field], where, t.text_field))
        out.labels.append(_check_label(obj[t.label_field], where, t.label_field))
        out.where.append(where)
    if not out.texts:
        raise UserError(f"{path}: no examples (an empty file); add examples or remove it")
    return out


def read_csv(path: Path, cfg: DataConfig, fp: Fingerprint, root: Path) -> Examples:
    """A header row naming the text and label columns, then one example per row."""
    t = cfg.text
    out = Examples()
    text = read_text(path, fp, _rel(path, root))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    for key, setting in ((t.text_field, "text_field"), (t.label_field, "label_field")):
        if key not in columns:
            raise UserError(
                f"{path}:1: no column {key!r} in the header (columns: "
                f"{', '.join(columns)[:120] or 'none'}); add it or set data.text.{setting}"
            )
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if all(v in (None, "") for k, v in row.items() if k is not None):
                continue  # a blank line
            for key in (t.text_field, t.label_field):
                if row.get(key) is None:
                    raise UserError(f"{where}: the row has no {key!r} value (too few columns)")
            out.texts.append(_check_text(row[t.text_field], where, t.text_field))
            out.labels.append(_check_label(row[t.label_field], where, t.label_field))
            out.where.append(where)
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    if not out.texts:
        raise UserError(f"{path}: no examples (only a header); add rows or remove it")
    return out


def read_class_folders(
    folder: Path, root: Path, fp: Fingerprint, classes: list[str] | None = None
) -> tuple[Examples, list[str]]:
    """``folder/<class>/**/*.txt``: one example per file, labelled by its class folder."""
    try:
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _hidden(e.name))
    except OSError as exc:
        raise UserError(f"data.root: cannot read {folder} ({exc.strerror or exc})") from None
    if not found:
        raise UserError(
            f"data.root: no class folders in {folder} (expected {FOLDER_LAYOUT}, or a .jsonl / "
            f".csv file)"
        )
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise UserError(
                f"data.root: {folder}/{extra[0]} is a class the training split does not have; "
                f"add it to train/ or remove it"
            )
    names = classes if classes is not None else found
    out = Examples()
    for name in found:
        files = _files_under(folder / name, TEXT_EXTENSIONS)
        if not files:
            raise UserError(
                f"data.root: the class folder {folder / name} holds no .txt files; add text "
                f"files or remove the folder"
            )
        for path in files:
            text = read_text(path, fp, _rel(path, root))
            out.texts.append(_check_text(text, str(path), "file"))
            out.labels.append(name)
            out.where.append(str(path))
    return out, names


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _table_format(path: Path, cfg: DataConfig) -> str:
    fmt = cfg.text.format
    if fmt in ("jsonl", "csv"):
        return fmt
    by_ext = TABLE_EXTENSIONS.get(path.suffix.lower())
    if by_ext is None:
        raise UserError(
            f"data.root: {path} is neither .jsonl nor .csv; set data.text.format=jsonl or csv, "
            f"or give a folder ({FOLDER_LAYOUT})"
        )
    return by_ext


def _read_table(path: Path, cfg: DataConfig, fp: Fingerprint, root: Path) -> Examples:
    reader = read_jsonl if _table_format(path, cfg) == "jsonl" else read_csv
    return reader(path, cfg, fp, root)


def _class_names(labels: list[Any]) -> list[str]:
    """Sorted class names: numerically when every label is an integer, else as strings."""
    values = set(labels)
    if all(isinstance(v, int) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted({str(v) for v in values})


def _label_ids(ex: Examples, names: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(ex.labels), dtype=np.int64)
    for i, label in enumerate(ex.labels):
        key = str(label)
        if key not in index:
            raise UserError(
                f"{ex.where[i]}: the class {shown(key)} does not occur in the training data; "
                f"add training examples of it or remove this one"
            )
        out[i] = index[key]
    return out


def read_classification(cfg: DataConfig, root: Path) -> tuple[Examples, Examples, list[str], str]:
    """(train + val examples, test examples, class names, fingerprint) of ``data.name=text``."""
    fp = Fingerprint("text")
    fmt = cfg.text.format
    if root.is_file() or (root.exists() and not root.is_dir()):
        everything = _read_table(root, cfg, fp, root.parent)
        return _held_out(everything, cfg) + (fp.hexdigest(),)  # type: ignore[return-value]
    if not root.is_dir():
        raise UserError(
            f"data.root: {root} does not exist; give a folder ({FOLDER_LAYOUT}) or a .jsonl / "
            f".csv file"
        )
    tables = {
        split: [root / f"{split}{e}" for e in TABLE_EXTENSIONS if (root / f"{split}{e}").exists()]
        for split in ("train", "test")
    }
    if fmt in ("jsonl", "csv") or (fmt == "auto" and tables["train"]):
        if fmt in ("jsonl", "csv"):
            tables = {s: [root / f"{s}.{fmt}"] for s in ("train", "test")}
        for split in ("train", "test"):
            if not tables[split] or not tables[split][0].exists():
                raise UserError(
                    f"data.root: {root} has no {split}.jsonl or {split}.csv; give both "
                    f"train and test files, or one file (test held out by data.test_fraction)"
                )
        train = _read_table(tables["train"][0], cfg, fp, root)
        test = _read_table(tables["test"][0], cfg, fp, root)
        names = _class_names(train.labels)
        return train, test, names, fp.hexdigest()
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise UserError(
                f"data.root: {root}/train exists but {root}/test does not ({FOLDER_LAYOUT})"
            )
        train, names = read_class_folders(root / "train", root, fp)
        test, _ = read_class_folders(root / "test", root, fp, names)
        return train, test, names, fp.hexdigest()
    everything, names = read_class_folders(root, root, fp)
    train, test, _ = _held_out(everything, cfg, names)
    return train, test, names, fp.hexdigest()


def _held_out(
    ex: Examples, cfg: DataConfig, names: list[str] | None = None
) -> tuple[Examples, Examples, list[str]]:
    """A stratified ``data.test_fraction`` of the examples as the test split."""
    names = names or _class_names(ex.labels)
    labels = _label_ids(ex, names)
    keep, held = stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    if len(held) == 0:
        raise UserError(
            "data.root: the test split is empty; give every class at least 2 examples, or "
            "separate train and test files"
        )
    return _take(ex, keep), _take(ex, held), names


def _take(ex: Examples, idx: np.ndarray) -> Examples:
    return Examples(
        [ex.texts[i] for i in idx], [ex.labels[i] for i in idx], [ex.where[i] for i in idx]
    )


# -- the datasets -------------------------------------------------------------------------------


def _root(cfg: DataConfig, what: str) -> Path:
    if not cfg.root:
        raise UserError(f"data.root: {cfg.name} needs {what}")
    return Path(cfg.root).expanduser()


def classification_bundle(
    cfg: DataConfig,
    trainval: Examples,
    test: Examples,
    names: list[str],
    fingerprint: str,
    source: dict[str, Any],
    *,
    seed: int,
    run_dir: str | Path | None,
    val: Examples | None = None,
) -> DataBundle:
    """Tokenize, carve val from train (stratified), pack and wrap in loaders.

    The tokenizer (bpe) sees the training examples only: val is carved before it is built.
    ``val``: a validation split made by the caller (the stdlib task's, by file): then
    ``trainval`` is the training split and nothing is carved from it.
    """
    if val is not None:  # train, then val appended: one index space for both
        n_train = len(trainval.texts)
        merged = Examples()
        merged.extend(trainval)
        merged.extend(val)
        trainval = merged
        y_trainval = _label_ids(trainval, names)
        train_idx, _, unlabelled = select_training(
            dataclasses.replace(cfg, val_fraction=0.0), y_trainval[:n_train]
        )
        val_idx = np.arange(n_train, len(trainval.texts))
        if cfg.fraction < 1:
            val_idx = stratified_subset(val_idx, y_trainval, cfg.fraction, cfg.split_seed + 4)
    else:
        y_trainval = _label_ids(trainval, names)
        train_idx, val_idx, unlabelled = select_training(cfg, y_trainval)
    y_test = _label_ids(test, names)
    test_idx = np.arange(len(y_test))
    if cfg.fraction < 1:
        test_idx = stratified_subset(test_idx, y_test, cfg.fraction, cfg.split_seed + 5)
    saved = run_tokenizer(run_dir)
    train_texts = [trainval.texts[i] for i in train_idx]
    tokenizer = the_tokenizer(cfg, train_texts, saved)
    info = make_info(cfg, CLASSIFICATION, tokenizer, fingerprint, source)
    if saved is not None:
        check_fingerprint(saved[1], info, run_dir)  # type: ignore[arg-type]
    special = info.tokenizer_kind == "folder"  # a BERT folder's [CLS] ... [SEP]

    def split(ex: Examples, idx: np.ndarray, y: np.ndarray, unl: np.ndarray | None = None) -> Any:
        texts = [ex.texts[i] for i in idx]
        seqs = encode(tokenizer, texts, special_tokens=special, max_length=info.max_length)
        for j, s in enumerate(seqs):
            if not s:
                raise UserError(f"{ex.where[idx[j]]}: the text gives no tokens; remove it")
        ids, lengths = pack(seqs, info.pad_id, info.max_length)
        labels = torch.from_numpy(y[idx].copy())
        if unl is not None and len(unl):
            labels[torch.from_numpy(unl)] = -1  # semi-supervised: unlabelled samples
        return ids, lengths, labels

    loaders = text_loaders(
        cfg,
        info,
        split(trainval, train_idx, y_trainval, unlabelled),
        split(trainval, val_idx, y_trainval) if len(val_idx) else None,
        split(test, test_idx, y_test),
        seed=seed,
    )
    origins = (
        [trainval.where[i] for i in train_idx],
        [trainval.where[i] for i in val_idx],
        [test.where[i] for i in test_idx],
    )
    for loader, where in zip(loaders, origins):
        if loader is not None:
            loader.origins = where
    return text_bundle(loaders, info, names)


@DATASETS.register("text")
def build_text(cfg: DataConfig, *, seed: int, run_dir: str | Path | None = None) -> DataBundle:
    root = _root(cfg, f"your text: a folder ({FOLDER_LAYOUT}) or a .jsonl / .csv file")
    trainval, test, names, fingerprint = read_classification(cfg, root)
    if len(names) < 2:
        raise UserError(
            f"data.root: {root} holds one class ({shown(names[0])}); a classifier needs 2 or more"
        )
    source = {"root": str(root), "examples": len(trainval.texts) + len(test.texts)}
    return classification_bundle(
        cfg, trainval, test, names, fingerprint, source, seed=seed, run_dir=run_dir
    )


build_text.reads_run_dir = True  # type: ignore[attr-defined]


def assign_by_size(sizes: list[int], names: list[str], test: float, val: float) -> np.ndarray:
    """Split files into train (0) / val (1) / test (2) with shares of the total size.

    Deterministic (no seed: by size, then name): the smallest file goes to val (when
    ``val > 0``), the next to test (when ``test > 0``), then every other file, largest first,
    to the split furthest below its share. Needs ``1 + (val > 0) + (test > 0)`` files.
    """
    n = len(sizes)
    out = np.zeros(n, dtype=np.int64)
    order = sorted(range(n), key=lambda i: (sizes[i], names[i]))
    shares = np.array([1 - test - val, val, test], dtype=np.float64)
    total = float(sum(sizes)) or 1.0
    have = np.zeros(3)
    reserved = ([1] if val > 0 else []) + ([2] if test > 0 else [])
    for split, i in zip(reserved, order):
        out[i] = split
        have[split] += sizes[i]
    for i in reversed(order[len(reserved) :]):
        deficit = shares * total - have
        split = int(np.argmax(deficit))
        out[i] = split
        have[split] += sizes[i]
    return out


def lm_bundle(
    cfg: DataConfig,
    docs: list[str],
    names: list[str],
    split_of: np.ndarray | None,
    fingerprint: str,
    source: dict[str, Any],
    *,
    seed: int,
    run_dir: str | Path | None,
    caps: tuple[int, int, int] | None = None,
) -> DataBundle:
    """Documents -> blocks of ``max_length`` tokens, split by document or by block ranges.

    Args:
        docs: the documents' texts.
        names: each document's name (its file).
        split_of: ``[D]`` 0 train / 1 val / 2 test per document; ``None``: one stream cut by
            block ranges (test the last ``test_fraction`` of the blocks, val the last
            ``val_fraction`` of the rest).
        caps: at most this many train / val / test blocks (a seeded sample), or ``None``.
    """
    if cfg.labelled_fraction < 1:
        raise ConfigError(
            "data.labelled_fraction: a language model's labels are its text; set it to 1"
        )
    by_doc = split_of is not None
    if split_of is not None:
        train_docs = [d for d, s in zip(docs, split_of) if s == 0]
    else:
        # cut by block ranges: the training blocks are not known before tokenizing, so a bpe
        # is trained on the leading share of the characters that the training blocks cover
        joined = "".join(docs)
        cut = int(len(joined) * (1 - cfg.test_fraction) * (1 - cfg.val_fraction))
        train_docs = [joined[:cut]]
    saved = run_tokenizer(run_dir)
    tokenizer = the_tokenizer(cfg, train_docs, saved)
    info = make_info(cfg, CAUSAL_LM, tokenizer, fingerprint, source)
    if saved is not None:
        check_fingerprint(saved[1], info, run_dir)  # type: ignore[arg-type]
    eos = tokenizer.eos_token_id
    length = info.max_length
    special = info.tokenizer_kind == "folder"
    encoded = encode(tokenizer, docs, special_tokens=special)
    parts: list[list[list[int]]] = [[], [], []]
    origins: list[list[str]] = [[], [], []]
    if by_doc:
        for s in range(3):
            members = [i for i in range(len(docs)) if split_of[i] == s]  # type: ignore[index]
            for i in members:  # blocks per document: a block never spans two splits' files
                got = blocks([encoded[i]], eos, length)
                parts[s] += got
                origins[s] += [names[i]] * len(got)
    else:
        everything = blocks(encoded, eos, length)
        n = len(everything)
        n_test = max(1, int(round(cfg.test_fraction * n)))
        n_val = int(round(cfg.val_fraction * (n - n_test)))
        if n - n_test - n_val < 1:
            raise UserError(
                f"data.root: the text makes {n} blocks of {length} tokens, too few to split; "
                f"add text or lower data.text.max_length"
            )
        parts = [
            everything[: n - n_test - n_val],
            everything[n - n_test - n_val : n - n_test],
            everything[n - n_test :],
        ]
        origins = [["+".join(names)] * len(p) for p in parts]
    if not parts[0] or not parts[2]:
        raise UserError("data.root: the training or test split has no text; add text files")
    if caps is not None:  # a seeded sample of every file's blocks, not the first files'
        for s in range(3):
            idx = subsample(len(parts[s]), caps[s], cfg.split_seed + 7 + s)
            parts[s] = [parts[s][i] for i in idx]
            origins[s] = [origins[s][i] for i in idx]
    keep = subsample(len(parts[0]), cfg.train_size, cfg.split_seed + 1)
    if cfg.train_size is not None and cfg.train_size > len(parts[0]):
        raise ConfigError(
            f"data.train_size={cfg.train_size} exceeds the {len(parts[0])} training blocks; "
            f"lower it or set it to null"
        )
    parts[0] = [parts[0][i] for i in keep]
    origins[0] = [origins[0][i] for i in keep]
    if cfg.fraction < 1:
        for s in range(3):
            idx = subsample(
                len(parts[s]), max(1, round(cfg.fraction * len(parts[s]))), cfg.split_seed + 3 + s
            )
            parts[s] = [parts[s][i] for i in idx]
            origins[s] = [origins[s][i] for i in idx]

    def packed(seqs: list[list[int]]) -> Any:
        ids, lengths = pack(seqs, info.pad_id, length)
        return ids, lengths, None

    loaders = text_loaders(
        cfg,
        info,
        packed(parts[0]),
        packed(parts[1]) if parts[1] else None,
        packed(parts[2]),
        seed=seed,
    )
    for loader, where in zip(loaders, origins):
        if loader is not None:
            loader.origins = where
    return text_bundle(loaders, info, [])


@DATASETS.register("text-lm")
def build_text_lm(cfg: DataConfig, *, seed: int, run_dir: str | Path | None = None) -> DataBundle:
    root = _root(cfg, "your plain text: a .txt file or a folder of .txt files")
    fp = Fingerprint("text-lm")
    if root.is_file() or (root.exists() and not root.is_dir()):
        paths, base = [root], root.parent
        split_of = None
    elif root.is_dir():
        base = root
        if (root / "train").is_dir():
            if not (root / "test").is_dir():
                raise UserError(f"data.root: {root}/train exists but {root}/test does not")
            train = _files_under(root / "train", TEXT_EXTENSIONS)
            test = _files_under(root / "test", TEXT_EXTENSIONS)
            for split, files in (("train", train), ("test", test)):
                if not files:
                    raise UserError(
                        f"data.root: no .txt files under {root / split}; save your text as "
                        f"UTF-8 .txt files"
                    )
            paths = train + test
            split_of = np.array([0] * len(train) + [2] * len(test))
            if len(train) >= 2 and cfg.val_fraction > 0:
                sizes = [p.stat().st_size for p in train]
                names = [_rel(p, root) for p in train]
                split_of[: len(train)] = assign_by_size(sizes, names, 0.0, cfg.val_fraction)
        else:
            paths = _files_under(root, TEXT_EXTENSIONS)
            if not paths:
                raise UserError(
                    f"data.root: no .txt files under {root}; save your text as UTF-8 .txt "
                    f"files, or give one file"
                )
            split_of = None
            if len(paths) >= 3:
                sizes = [p.stat().st_size for p in paths]
                names = [_rel(p, root) for p in paths]
                val = cfg.val_fraction * (1 - cfg.test_fraction)
                split_of = assign_by_size(sizes, names, cfg.test_fraction, val)
    else:
        raise UserError(f"data.root: {root} does not exist; give a .txt file or a folder of them")
    docs = []
    for path in paths:
        text = read_text(path, fp, _rel(path, base))
        if not text.strip():
            raise UserError(f"{path}: the file holds no text; remove it")
        docs.append(text)
    names = [_rel(p, base) for p in paths]
    source = {"root": str(root), "files": len(paths)}
    return lm_bundle(cfg, docs, names, split_of, fp.hexdigest(), source, seed=seed, run_dir=run_dir)


build_text_lm.reads_run_dir = True  # type: ignore[attr-defined]
