"""Hugging Face ``datasets.Dataset`` objects as they are, for ``dmlkit.fit``.

A dataset with an ``input_ids`` column (and optionally ``attention_mask``, right-padded), or a
text column plus a tokenizer, becomes a :class:`~dmlkit.data.text.TextLoader` of dict batches:

- a ``labels`` column (or ``label_field``, ``"label"`` by default) of integers: classification,
  ``num_classes`` from its ``ClassLabel`` feature when it has one, else the largest label + 1;
- a ``labels`` column of lists: token labels (``-100`` ignored), padded and cut like the ids;
- no label column: a causal LM, labelled by its own ids.

Nothing here imports ``datasets``: any object with ``column_names`` and column access
(``ds["input_ids"]``) works, a ``datasets.Dataset`` among them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dmlkit.data.core import DataBundle
from dmlkit.data.text import (
    CAUSAL_LM,
    CLASSIFICATION,
    IGNORE,
    TextInfo,
    TextLoader,
    encode,
    pack,
    text_bundle,
)
from dmlkit.errors import UserError, shown


def is_hf_dataset(obj: Any) -> bool:
    """A ``datasets.Dataset`` (or anything with its column interface), not a torch Dataset."""
    return hasattr(obj, "column_names") and hasattr(obj, "features") and hasattr(obj, "__len__")


def _column(ds: Any, name: str) -> list[Any]:
    return list(ds[name])


def _sequences(
    ds: Any, split: str, tokenizer: Any | None, text_field: str, max_length: int | None
) -> list[list[int]]:
    columns = list(ds.column_names)
    if "input_ids" in columns:
        seqs = [list(map(int, s)) for s in _column(ds, "input_ids")]
        if "attention_mask" in columns:
            masks = _column(ds, "attention_mask")
            for i, (s, m) in enumerate(zip(seqs, masks)):
                n = int(sum(m))
                if list(m[:n]) != [1] * n or any(m[n:]):
                    raise UserError(
                        f"{split}: row {i}'s attention_mask is not 1s then 0s; pad on the right "
                        f"(tokenizer.padding_side='right') or drop the padding"
                    )
                seqs[i] = s[:n]
        return seqs
    if text_field in columns:
        if tokenizer is None:
            raise UserError(
                f"{split}: the dataset holds text ({text_field!r}), not input_ids; pass a "
                f"tokenizer (e.g. AutoTokenizer.from_pretrained(folder)) or map one over it"
            )
        texts = _column(ds, text_field)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise UserError(f"{split}: row {i}'s {text_field!r} is {shown(t)}, not text")
        return encode(tokenizer, texts, special_tokens=True, max_length=max_length)
    raise UserError(
        f"{split}: the dataset has neither input_ids nor a {text_field!r} column (columns: "
        f"{', '.join(map(str, columns))[:120]}); tokenize it or name its text column"
    )


def _labels(ds: Any, label_field: str) -> tuple[str | None, list[Any] | None]:
    columns = list(ds.column_names)
    for name in ("labels", label_field):
        if name in columns:
            return name, _column(ds, name)
    return None, None


def hf_loader(
    ds: Any,
    split: str,
    *,
    tokenizer: Any | None = None,
    text_field: str = "text",
    label_field: str = "label",
    max_length: int | None = None,
    padding: str = "longest",
    batch_size: int = 32,
    train: bool = False,
    seed: int = 0,
) -> tuple[TextLoader, str]:
    """A TextLoader over a Hugging Face dataset, and its task (classification or causal-lm).

    Args:
        ds: a ``datasets.Dataset`` (see the module docstring for its columns).
        split: ``"train"``, ``"val"`` or ``"test"`` (named in errors).
        tokenizer: for a text column; its pad id pads the batches.
        text_field, label_field: the column names of text and label.
        max_length: truncation (``None``: the longest row).
        padding: ``"longest"`` or ``"max_length"`` (needs ``max_length``).
        batch_size: rows per batch.
        train: shuffle from ``(seed, epoch)`` and drop the last partial batch.
        seed: the run seed.
    """
    if len(ds) == 0:
        raise UserError(f"{split}: the dataset is empty")
    if padding == "max_length" and max_length is None:
        raise UserError(f"{split}: padding='max_length' needs max_length")
    seqs = _sequences(ds, split, tokenizer, text_field, max_length)
    for i, s in enumerate(seqs):
        if not s:
            raise UserError(f"{split}: row {i} has no tokens; drop empty rows")
    limit = max_length or max(len(s) for s in seqs)
    pad = 0
    if tokenizer is not None:
        from dmlkit.data.tokenize import pad_id

        pad = pad_id(tokenizer)
    ids, lengths = pack(seqs, pad, limit)
    name, values = _labels(ds, label_field)
    labels: Tensor | None
    if values is None:
        task, labels = CAUSAL_LM, None
    elif values and isinstance(values[0], (list, tuple)):
        task = CAUSAL_LM
        labels = torch.full(ids.shape, IGNORE, dtype=torch.int64)
        for i, row in enumerate(values):
            row = list(row)[: ids.shape[1]]
            labels[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    else:
        bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int)), None)
        if bad is not None:
            raise UserError(
                f"{split}: the {name!r} column holds {shown(bad)}; labels are class indices "
                f"(cast the column, e.g. ds.class_encode_column({name!r}))"
            )
        task, labels = CLASSIFICATION, torch.tensor(values, dtype=torch.int64)
    loader = TextLoader(
        ids,
        lengths,
        labels,
        batch_size,
        pad_id=pad,
        padding=padding,
        max_length=max_length,
        train=train,
        seed=seed,
    )
    return loader, task


def is_split_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "train" in obj  # a DatasetDict is a dict


def _splits_of(splits: Any) -> tuple[Any, Any, Any]:
    """``(train, validation, test)`` of a ``DatasetDict`` (the last two may be None)."""
    names = list(splits.keys())
    val = next((splits[k] for k in ("validation", "val", "valid", "dev") if k in names), None)
    return splits["train"], val, splits["test"] if "test" in names else None


def _fingerprint(loaders: Sequence[TextLoader | None]) -> str:
    h = hashlib.sha256(b"hf-datasets")
    for loader in loaders:
        if loader is None:
            continue
        for t in (loader.ids, loader.lengths, loader.labels):
            if t is not None:
                h.update(t.numpy().tobytes())
    return h.hexdigest()


def hf_text_bundle(
    train: Any,
    val: Any | None = None,
    test: Any | None = None,
    *,
    tokenizer: Any | None = None,
    text_field: str = "text",
    label_field: str = "label",
    max_length: int | None = None,
    padding: str = "longest",
    batch_size: int = 32,
    eval_batch_size: int = 128,
    seed: int = 0,
    num_classes: int | None = None,
) -> DataBundle:
    """A DataBundle over Hugging Face datasets (``dmlkit.fit(train=ds, ...)``).

    Every split has the same task (classification or causal LM). ``num_classes``: given,
    else the label column's ``ClassLabel`` size, else the largest training label + 1; an LM's
    is the vocabulary (``len(tokenizer)``, else the largest id + 1). ``val`` and ``test``
    may be None (``dmlkit.fit`` passes ``val`` as the test split when no test is given). A
    ``DatasetDict`` as ``train`` (and no ``val`` / ``test``) gives its ``train``,
    ``validation`` (or ``val``) and ``test`` splits.
    """
    if val is None and test is None and is_split_dict(train):
        train, val, test = _splits_of(train)
    common = {
        "tokenizer": tokenizer,
        "text_field": text_field,
        "label_field": label_field,
        "max_length": max_length,
        "padding": padding,
        "seed": seed,
    }
    tr, task = hf_loader(train, "train", batch_size=batch_size, train=True, **common)
    others: list[TextLoader | None] = []
    for split, ds in (("val", val), ("test", test)):
        if ds is None:
            others.append(None)
            continue
        loader, other = hf_loader(ds, split, batch_size=eval_batch_size, **common)
        if other != task:
            raise UserError(
                f"{split}: a {other} dataset beside a {task} training set; give every split "
                f"the same label column"
            )
        others.append(loader)
    largest = max(int(t.ids.max()) for t in [tr, *others] if t is not None)
    vocab = len(tokenizer) if tokenizer is not None else largest + 1
    class_names: list[str] = []
    if task == CLASSIFICATION:
        name, _ = _labels(train, label_field)
        feature = getattr(train, "features", {}).get(name) if name else None
        names = getattr(feature, "names", None)
        if num_classes is None:
            num_classes = len(names) if names else int(tr.labels.max()) + 1  # type: ignore[union-attr]
        class_names = list(names) if names else [str(c) for c in range(num_classes)]
        for split, loader in (("train", tr), ("val", others[0]), ("test", others[1])):
            if loader is not None and int(loader.labels.max()) >= num_classes:  # type: ignore[union-attr]
                raise UserError(
                    f"{split}: label {int(loader.labels.max())} is outside "  # type: ignore[union-attr]
                    f"0..{num_classes - 1}; pass num_classes or fix the labels"
                )
    info = TextInfo(
        task=task,
        tokenizer=tokenizer,
        tokenizer_kind="given" if tokenizer is not None else "none",
        vocab_size=vocab,
        pad_id=tr.pad_id,
        max_length=tr.max_length,
        fingerprint=_fingerprint([tr, *others]),
        source={"from": "datasets"},
    )
    return text_bundle((tr, others[0], others[1]), info, class_names)  # type: ignore[arg-type]
