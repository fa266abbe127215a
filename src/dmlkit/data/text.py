"""Token sequences in memory and their dict batches; what a text run records about its data.

A text dataset is held as one padded id tensor ``[N, L]`` plus the lengths ``[N]``; a batch is
a dict, as Hugging Face models take it::

    {"input_ids": LongTensor [B, T], "attention_mask": LongTensor [B, T],
     "labels": LongTensor [B] (classification) or [B, T] (causal LM, -100 at padding)}

``T`` is the longest sequence of the batch (``padding="longest"``) or ``max_length``
(``"max_length"``); padding is on the right. An LM's labels are its input ids (the shift to
the next token is the loss's business, as in Hugging Face's causal-LM models).

The order of epoch e is ``torch.randperm`` from ``epoch_generator(seed, e)``, as for the image
loaders: the batches are a pure function of the seed, so a resumed run (mid-epoch too) sees the
batches an uninterrupted one would.

A text run's tokenizer and data fingerprint are written to the run folder
(:func:`save_text_state`: ``RUN/tokenizer/`` and ``RUN/text-data.json``) and read back by
``build_data(..., run_dir=RUN)`` on resume, eval and predict, which refuses data that differs
(:func:`check_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmlkit.data.core import DataBundle, epoch_generator
from dmlkit.errors import ConfigError, UserError

#: label of a position that no loss looks at (Hugging Face's convention)
IGNORE = -100
CLASSIFICATION, CAUSAL_LM = "classification", "causal-lm"
#: the file beside RUN/tokenizer/ that records what the data was
STATE_FILE = "text-data.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class TextInfo:
    """What a text dataset tells the models and the run folder.

    Attributes:
        task: ``"classification"`` (labels ``[B]``) or ``"causal-lm"`` (labels ``[B, T]``).
        tokenizer: the tokenizer (a Hugging Face one; :mod:`dmlkit.data.tokenize`).
        tokenizer_kind: ``byte``, ``bpe`` or ``folder``.
        vocab_size: ``len(tokenizer)``: the embedding rows a model needs (an LM's outputs).
        pad_id: the id padding is written with (masked out).
        max_length: tokens per sequence at most.
        fingerprint: sha256 of the source files' names and contents (stdlib data: and the
            Python version); a resumed or evaluated run refuses other data.
        source: facts about the data for the record (files, Python version, packages...).
    """

    task: str
    tokenizer: Any
    tokenizer_kind: str
    vocab_size: int
    pad_id: int
    max_length: int
    fingerprint: str
    source: dict[str, Any] = field(default_factory=dict)


# -- sequences and batches ----------------------------------------------------------------------


def pack(sequences: Sequence[Sequence[int]], pad: int, max_length: int) -> tuple[Tensor, Tensor]:
    """Token lists -> ``(ids [N, L] int64 padded with pad, lengths [N] int64)``.

    Sequences longer than ``max_length`` are cut to it (truncation); ``L`` is the longest
    kept length. An empty sequence is refused by the callers (a model needs one token).
    """
    lengths = torch.tensor([min(len(s), max_length) for s in sequences], dtype=torch.int64)
    width = int(lengths.max()) if len(sequences) else 1
    ids = torch.full((len(sequences), max(width, 1)), pad, dtype=torch.int64)
    for i, s in enumerate(sequences):
        n = int(lengths[i])
        if n:
            ids[i, :n] = torch.as_tensor(list(s[:n]), dtype=torch.int64)
    return ids, lengths


def collate(
    ids: Tensor,
    lengths: Tensor,
    labels: Tensor | None,
    *,
    padding: str = "longest",
    max_length: int | None = None,
    pad_id: int = 0,
) -> dict[str, Tensor]:
    """The dict batch of ``ids [B, L]``, ``lengths [B]`` and ``labels``.

    Args:
        ids: ``[B, L]`` int64, padded on the right.
        lengths: ``[B]`` valid tokens per row (>= 1).
        labels: ``[B]`` classes (classification), ``[B, L]`` token labels (``-100`` ignored),
            or ``None``: a causal LM, whose labels are its ids.
        padding: ``"longest"``: ``T`` = the batch's longest row; ``"max_length"``: ``T`` =
            ``max_length`` (rows padded with the pad id, which ``ids`` already holds beyond
            each row's length).
        max_length: ``T`` for ``padding="max_length"``.
        pad_id: the id of positions beyond ``L`` (``padding="max_length"``).

    Returns:
        ``input_ids [B, T]``, ``attention_mask [B, T]`` (1 = a token), ``labels [B]`` or
        ``[B, T]`` with ``-100`` wherever the mask is 0.
    """
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        width = max_length
    else:
        width = int(lengths.max()) if len(lengths) else 1
    if ids.shape[1] >= width:
        input_ids = ids[:, :width]
    else:  # a fixed length beyond the stored width
        input_ids = torch.cat([ids, ids.new_full((ids.shape[0], width - ids.shape[1]), pad_id)], 1)
    positions = torch.arange(width, device=ids.device)
    mask = positions[None, :] < lengths[:, None]  # [B, T]
    batch = {"input_ids": input_ids, "attention_mask": mask.long()}
    if labels is None:
        batch["labels"] = input_ids.masked_fill(~mask, IGNORE)
    elif labels.dim() == 1:
        batch["labels"] = labels
    else:
        token = labels[:, :width] if labels.shape[1] >= width else _widen(labels, width)
        batch["labels"] = token.masked_fill(~mask, IGNORE)
    return batch


def _widen(labels: Tensor, width: int) -> Tensor:
    extra = labels.new_full((labels.shape[0], width - labels.shape[1]), IGNORE)
    return torch.cat([labels, extra], dim=1)


class TextLoader:
    """Dict batches of token sequences held in memory (the text ``TensorLoader``).

    Same interface as :class:`~dmlkit.data.core.TensorLoader`: ``set_epoch(epoch, start)``,
    ``len``, ``to(device)``, iteration, plus ``shard(rank, world)`` for the data-parallel
    mode (each process yields its share of every global batch: ``B // world`` rows).

    Args:
        ids: ``[N, L]`` int64, padded on the right with ``pad_id``.
        lengths: ``[N]`` int64, each in ``1..L``.
        labels: ``[N]`` classes (``-1``: unlabelled), ``[N, L]`` token labels, or ``None``
            (a causal LM: the ids).
        batch_size: rows per batch.
        pad_id: the padding id (``padding="max_length"`` beyond ``L``).
        padding: ``"longest"`` or ``"max_length"``.
        max_length: ``T`` of ``padding="max_length"``.
        train: shuffle (from ``(seed, epoch)``) and drop the last partial batch.
        seed: the run seed.
    """

    def __init__(
        self,
        ids: Tensor,
        lengths: Tensor,
        labels: Tensor | None,
        batch_size: int,
        *,
        pad_id: int,
        padding: str = "longest",
        max_length: int | None = None,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        if len(lengths) and int(lengths.min()) < 1:
            raise ValueError("every sequence needs at least one token")
        self.ids, self.lengths, self.labels = ids, lengths, labels
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.padding = padding
        self.max_length = max_length if max_length is not None else ids.shape[1]
        self.train = train
        self.seed = seed
        self.epoch, self.start = 0, 0
        self.rank, self.world = 0, 1
        # where each row came from ("FILE" or "FILE:LINE"), set by the dataset builders: the
        # construction indices that the split tests read
        self.origins: list[str] | None = None
        self.drop_last = train and len(lengths) >= batch_size
        if padding == "max_length" and self.ids.shape[1] < self.max_length:
            # stored at the fixed width once, so that every batch is a plain slice
            extra = ids.new_full((ids.shape[0], self.max_length - ids.shape[1]), pad_id)
            self.ids = torch.cat([ids, extra], dim=1)
            if labels is not None and labels.dim() == 2:
                self.labels = _widen(labels, self.max_length)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw next; ``start``: the first batch (a run resumed mid-epoch)."""
        self.epoch, self.start = epoch, start

    def set_views(self, views: int) -> None:
        """Refused: text batches have no augmentation to draw per member."""
        if views:
            raise ConfigError(
                "method.member_views=true draws one image augmentation per member; text data "
                "has none: set method.member_views=false"
            )

    def shard(self, rank: int, world: int) -> TextLoader:
        """Yield only this process's share of every batch (distributed data mode)."""
        self.rank, self.world = rank, world
        return self

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def to(self, device: torch.device | str) -> TextLoader:
        self.ids, self.lengths = self.ids.to(device), self.lengths.to(device)
        if self.labels is not None:
            self.labels = self.labels.to(device)
        return self

    def order(self) -> Tensor:
        """``[N]``: the rows in this epoch's order (the identity when not training)."""
        n = len(self.lengths)
        if not self.train:
            return torch.arange(n)
        return torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self.order().to(self.ids.device)
        b = self.batch_size
        for i in range(self.start, len(self)):
            idx = order[i * b : (i + 1) * b]
            if self.world > 1:
                share = len(idx) // self.world
                idx = idx[self.rank * share : (self.rank + 1) * share]
            yield collate(
                self.ids[idx],
                self.lengths[idx],
                None if self.labels is None else self.labels[idx],
                padding=self.padding,
                max_length=self.max_length,
                pad_id=self.pad_id,
            )


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    special_tokens: bool = True,
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length`` by the tokenizer (``None``: whole).

    ``special_tokens``: the tokenizer's own (a BERT folder's [CLS] ... [SEP], kept when a
    text is cut, as Hugging Face's truncation does); the byte and BPE tokenizers add none.
    """
    if not texts:
        return []
    cut = {"truncation": True, "max_length": max_length} if max_length is not None else {}
    out = tokenizer(list(texts), add_special_tokens=special_tokens, verbose=False, **cut)
    return [list(ids) for ids in out["input_ids"]]


def texts_batch(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    kind: str = "byte",
    pad: int | None = None,
) -> dict[str, Tensor]:
    """New texts as one batch, encoded as a run's data was (``dml predict``, a pipeline).

    Args:
        tokenizer: the run's (``RUN/tokenizer/``, :func:`run_tokenizer`).
        texts: N strings (an empty one gives a row of one pad token, masked out).
        max_length: the run's ``data.text.max_length`` (longer texts are cut).
        kind: the run's tokenizer kind (``text-data.json``): a ``folder`` tokenizer adds its
            special tokens, as the training data had them.
        pad: the pad id (default: the tokenizer's, :func:`dmlkit.data.tokenize.pad_id`).

    Returns:
        ``input_ids [N, T]`` and ``attention_mask [N, T]`` (no labels).
    """
    from dmlkit.data.tokenize import pad_id

    pad = pad_id(tokenizer) if pad is None else pad
    seqs = encode(tokenizer, texts, special_tokens=kind == "folder", max_length=max_length)
    ids, lengths = pack(seqs, pad, max_length)
    batch = collate(ids, lengths, torch.zeros(len(seqs), dtype=torch.int64), pad_id=pad)
    del batch["labels"]
    return batch


def blocks(documents: Sequence[Sequence[int]], eos: int | None, length: int) -> list[list[int]]:
    """A causal LM's sequences: the documents joined (``eos`` after each), cut every ``length``.

    The last block may be shorter (padded and masked in its batch); none is empty.
    """
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        if eos is not None:
            stream.append(eos)
    return [stream[i : i + length] for i in range(0, len(stream), length)]


def text_loaders(
    cfg: Any,
    info: TextInfo,
    train: tuple[Tensor, Tensor, Tensor | None],
    val: tuple[Tensor, Tensor, Tensor | None] | None,
    test: tuple[Tensor, Tensor, Tensor | None],
    *,
    seed: int,
) -> tuple[TextLoader, TextLoader | None, TextLoader]:
    """The three loaders of packed ``(ids, lengths, labels)`` splits, from ``cfg`` (DataConfig)."""
    t = cfg.text

    def loader(split: tuple[Tensor, Tensor, Tensor | None], size: int, is_train: bool) -> Any:
        ids, lengths, labels = split
        return TextLoader(
            ids,
            lengths,
            labels,
            size,
            pad_id=info.pad_id,
            padding=t.padding,
            max_length=t.max_length,
            train=is_train,
            seed=seed,
        )

    return (
        loader(train, cfg.batch_size, True),
        loader(val, cfg.eval_batch_size, False) if val is not None and len(val[1]) else None,
        loader(test, cfg.eval_batch_size, False),
    )


def text_bundle(
    loaders: tuple[TextLoader, TextLoader | None, TextLoader],
    info: TextInfo,
    class_names: list[str],
) -> DataBundle:
    """A DataBundle of text loaders: ``num_classes`` = classes, or the vocabulary of an LM."""
    train, val, test = loaders
    lm = info.task == CAUSAL_LM
    return DataBundle(
        train=train,  # type: ignore[arg-type]
        val=val,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=info.vocab_size if lm else len(class_names),
        in_channels=0,  # no image: the text facts are in `text`
        image_size=(0, 0),
        class_names=[] if lm else class_names,
        task=info.task,
        text=info,
    )


# -- fingerprints and the run folder ------------------------------------------------------------


def python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


class Fingerprint:
    """sha256 over (name, content) pairs, fed in a fixed order by the dataset builders."""

    def __init__(self, *parts: str) -> None:
        self._h = hashlib.sha256()
        for part in parts:
            self.add(part, b"")

    def add(self, name: str, content: bytes) -> None:
        # lengths first: ("ab", "c") and ("a", "bc") never hash alike
        encoded = name.encode("utf-8", "surrogateescape")
        self._h.update(len(encoded).to_bytes(8, "little") + encoded)
        self._h.update(len(content).to_bytes(8, "little") + content)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def save_text_state(info: TextInfo, run_dir: str | Path) -> None:
    """Write the run's ``tokenizer/`` and ``text-data.json`` (once, when the run is created).

    Both written atomically (temporary name, then rename).
    """
    from dmlkit.data.tokenize import save_tokenizer

    run = Path(run_dir)
    save_tokenizer(info.tokenizer, run / TOKENIZER_DIR)
    state = {
        "task": info.task,
        "tokenizer": info.tokenizer_kind,
        "vocab_size": info.vocab_size,
        "pad_id": info.pad_id,
        "max_length": info.max_length,
        "fingerprint": info.fingerprint,
        "source": info.source,
    }
    tmp = run / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, run / STATE_FILE)


def load_text_state(run_dir: str | Path) -> dict[str, Any] | None:
    """``text-data.json`` of a run (``None`` when the run has none: not a text run)."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); the run folder is damaged") from None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
        raise UserError(f"{path}: not a dmlkit text-data record; the run folder is damaged")
    return state


def check_fingerprint(recorded: dict[str, Any], info: TextInfo, run_dir: str | Path) -> None:
    """One-line UserError when the data built now is not the data the run was trained on."""
    if recorded["fingerprint"] == info.fingerprint:
        return
    was = recorded.get("source", {}).get("python")
    was = re.sub(r"[^0-9A-Za-z.+]", "?", str(was))[:20] if was else None  # read from a file
    now = info.source.get("python")
    why = (
        f"Python {was} then, {now} now: the standard library's files differ; use Python {was}"
        if was and now and was != now
        else "the data files changed since; restore them or start a new run"
    )
    then = re.sub(r"[^0-9a-f]", "?", recorded["fingerprint"][:12])  # from a file: shown safe
    raise UserError(
        f"{run_dir}: the text data differs from the data this run was trained on (fingerprint "
        f"{then}... then, {info.fingerprint[:12]}... now; {why})"
    )


def run_tokenizer(run_dir: str | Path | None) -> tuple[Any, dict[str, Any]] | None:
    """The tokenizer and record a run saved, or ``None`` (no run, or not a text run)."""
    if run_dir is None:
        return None
    state = load_text_state(run_dir)
    if state is None:
        return None
    from dmlkit.data.tokenize import load_own_tokenizer, load_tokenizer

    folder = Path(run_dir) / TOKENIZER_DIR
    if state.get("tokenizer") in ("byte", "bpe"):  # ours: read as data, no class looked up
        return load_own_tokenizer(folder), state
    return load_tokenizer(folder, key=str(folder)), state


def make_info(
    cfg: Any,
    task: str,
    tokenizer: Any,
    fingerprint: str,
    source: dict[str, Any],
) -> TextInfo:
    from dmlkit.data.tokenize import pad_id, tokenizer_kind

    return TextInfo(
        task=task,
        tokenizer=tokenizer,
        tokenizer_kind=tokenizer_kind(cfg.text.tokenizer),
        vocab_size=len(tokenizer),
        pad_id=pad_id(tokenizer),
        max_length=cfg.text.max_length,
        fingerprint=fingerprint,
        source=source,
    )


def the_tokenizer(
    cfg: Any, train_texts: Sequence[str], saved: tuple[Any, dict[str, Any]] | None
) -> Any:
    """The run's saved tokenizer (resume, eval), else a new one (bpe: trained on train only)."""
    if saved is not None:
        return saved[0]
    from dmlkit.data.tokenize import build_tokenizer

    return build_tokenizer(cfg.text.tokenizer, list(train_texts), cfg.text.vocab_size)


def subsample(n: int, keep: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of ``keep`` of ``n`` items (all of them if None)."""
    if keep is None or keep >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=keep, replace=False))
