"""Language-model metrics in bytes: how many bytes of text each token stands for.

Bits per byte (the total cross-entropy in bits over the number of UTF-8 bytes of the predicted
text) compares language models whose tokenizers differ; bits per token does not. For the
byte-level tokenizers (dmlkit's ``byte`` and ``bpe``, GPT-2's) a token's string holds one
character per byte, so its byte count is exact; for other tokenizers it is the UTF-8 length of
the token decoded alone (an approximation: WordPiece's ``##`` and SentencePiece's space marks
are what ``decode`` makes of them). Special tokens (padding, end of text) count 0 bytes: the
loss of predicting an end-of-text is charged to the text's bytes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import Tensor


@cache
def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    keep, chars, shifted = set(printable), {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def token_byte_lengths(tokenizer: Any) -> Tensor:
    """``[V]`` int64: the UTF-8 bytes of text each token id stands for (0 for special tokens).

    Args:
        tokenizer: a Hugging Face tokenizer (``len(tokenizer)`` ids).
    """
    n = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    alphabet = _byte_level_chars()
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = torch.zeros(n, dtype=torch.int64)
    for i, tok in enumerate(tokens):
        if i in special or tok is None:
            continue
        if all(c in alphabet for c in tok):
            out[i] = len(tok)
        else:
            out[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return out


def attach_token_bytes(data: Any) -> None:
    """Give a causal-LM data bundle's evaluation loaders ``token_bytes`` (``[V]``, see
    :func:`token_byte_lengths`), from which the evaluation reports bits per byte."""
    text = getattr(data, "text", None)
    if text is None or text.tokenizer is None or getattr(data, "task", None) != "causal-lm":
        return
    lengths = token_byte_lengths(text.tokenizer)
    for loader in (data.val, data.test):
        if loader is not None:
            loader.token_bytes = lengths
