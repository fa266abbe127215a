"""Tokenizers of the text datasets: bytes, a BPE trained on the training split, or a local folder.

Every tokenizer is a Hugging Face ``PreTrainedTokenizerFast`` (or whatever ``AutoTokenizer``
loads from the user's folder), so a run's ``RUN/tokenizer/`` folder is read back by
``AutoTokenizer.from_pretrained`` (and by a ``transformers.pipeline``) like any other:

- ``byte``: ids 0..255 are the UTF-8 bytes themselves, then ``<pad>`` = 256 and ``<eos>`` = 257
  (vocabulary 258). Built as a byte-level BPE with no merges: each byte is one token.
- ``bpe``: a byte-level BPE trained with ``tokenizers`` on the training split's texts only (never
  validation or test), ``data.text.vocab_size`` tokens, the same two specials first.
- a folder path: ``AutoTokenizer.from_pretrained(path, local_files_only=True)``; nothing is
  downloaded and no code from the folder is run.

``transformers`` and ``tokenizers`` are the optional extra ``pip install 'dmlkit[transformers]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dmlkit.errors import UserError, first_line

PAD, EOS = "<pad>", "<eos>"
#: the byte tokenizer's vocabulary: 256 bytes, then <pad> and <eos>
BYTE_VOCAB = 258


def _need_transformers() -> Any:
    try:
        import tokenizers
        import transformers  # noqa: F401
    except ImportError:
        raise UserError(
            "text data needs the transformers extra: pip install 'dmlkit[transformers]'"
        ) from None
    return tokenizers


def byte_chars() -> list[str]:
    """The printable character standing for each byte value 0..255 in byte-level BPE.

    Byte-level BPE (GPT-2's scheme, which ``tokenizers.pre_tokenizers.ByteLevel`` follows) maps
    every byte to one visible Unicode character: the printable Latin-1 bytes to themselves, the
    others (controls, space, ...) to the characters from U+0100 on, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    keep = set(printable)
    chars, shifted = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def _wrap(tok: Any, max_length: int | None = None) -> Any:
    from transformers import PreTrainedTokenizerFast

    # model_max_length: a length that is never exceeded silently (huge: an LM corpus is encoded
    # whole, then cut into blocks, without transformers' too-long warning)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        model_max_length=max_length or 10**9,
    )


def byte_tokenizer() -> Any:
    """The byte tokenizer: UTF-8 bytes as ids 0..255, ``<pad>`` 256, ``<eos>`` 257."""
    tokenizers = _need_transformers()
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(byte_chars())}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # no regex split and no prefix space: the ids are exactly the text's bytes
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, EOS])
    return _wrap(tok)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (the training split only).

    Args:
        texts: the training texts.
        vocab_size: tokens in all: ``<pad>`` (0), ``<eos>`` (1), the 256 bytes, then merges.
    """
    tokenizers = _need_transformers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok)


def load_tokenizer(path: str | Path, key: str = "data.text.tokenizer") -> Any:
    """A tokenizer from a local folder (a run's ``tokenizer/`` or a Hugging Face one).

    ``local_files_only``: never a download; ``trust_remote_code`` stays off.
    """
    _need_transformers()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"{key}: {str(path)!r} is not a folder; give byte, bpe or the path of a local "
            f"tokenizer folder (nothing is downloaded)"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError...
        raise UserError(
            f"{key}: cannot load a tokenizer from {folder} ({first_line(exc)}); give a folder "
            f"saved by save_pretrained (tokenizer.json or the vocabulary files)"
        ) from None


def load_own_tokenizer(folder: str | Path) -> Any:
    """A byte or BPE tokenizer that dmlkit saved (``RUN/tokenizer/``), from its tokenizer.json.

    Read as data: the file's vocabulary and merges only; no class named by the folder's
    ``tokenizer_config.json`` is looked up (the run folder's trust rule, DESIGN.md).
    """
    tokenizers = _need_transformers()
    path = Path(folder) / "tokenizer.json"
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # a missing, cut or edited file: tokenizers raises its own types
        raise UserError(
            f"{path}: not a readable tokenizer ({first_line(exc)}); the run folder is damaged"
        ) from None
    return _wrap(tok)


def build_tokenizer(spec: str, train_texts: list[str], vocab_size: int) -> Any:
    """``data.text.tokenizer``: ``byte``, ``bpe`` (trained on ``train_texts``) or a folder."""
    if spec == "byte":
        return byte_tokenizer()
    if spec == "bpe":
        return train_bpe(train_texts, vocab_size)
    return load_tokenizer(spec)


def tokenizer_kind(spec: str) -> str:
    """``byte``, ``bpe`` or ``folder`` (a user's tokenizer folder)."""
    return spec if spec in ("byte", "bpe") else "folder"


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the pad token, else the end-of-text token, else 0.

    Padding is masked out (attention mask 0, labels -100), so any id works; a real token keeps
    embedding lookups in range for tokenizers without a pad token (GPT-2's).
    """
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Write ``tokenizer`` to ``folder`` (``save_pretrained``), complete or not at all.

    Written to a temporary sibling and renamed: a crash leaves no half-written tokenizer.
    An existing ``folder`` is replaced only if it holds a tokenizer dmlkit wrote before.
    """
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        if folder.exists():
            if not (folder / "tokenizer_config.json").is_file():
                raise UserError(
                    f"{folder} exists and is not a tokenizer folder; move it away, dmlkit "
                    f"writes the run's tokenizer there"
                )
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
