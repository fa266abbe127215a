"""A run's Hugging Face peers as ``save_pretrained`` folders: ``RUN/peers/NAME``.

``AutoModelFor...from_pretrained(RUN/peers/NAME)`` and ``transformers.pipeline(model=...)`` load
them as they load any model folder: the weights (safetensors), the config (with the data's class
names as ``id2label`` for a classifier) and, when the run has one, the tokenizer the data side
trained or named (``RUN/tokenizer/``), copied into every peer's folder.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

#: The folder of a run that holds one ``save_pretrained`` folder per Hugging Face peer.
PEERS_DIR = "peers"
#: The run's tokenizer folder (written by the text datasets), copied next to each peer.
TOKENIZER_DIR = "tokenizer"


def is_pretrained_model(module: Any) -> bool:
    """Whether a module is a ``transformers`` model (has ``save_pretrained`` and a config)."""
    return callable(getattr(module, "save_pretrained", None)) and hasattr(module, "config")


def save_pretrained_peers(
    peers: Sequence[nn.Module],
    names: Sequence[str],
    run_dir: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    tokenizer_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> list[Path]:
    """Write every ``transformers`` peer to ``run_dir/peers/NAME`` (others are skipped).

    Each folder is written under a temporary name and renamed, replacing an older one of the
    same run (a resumed run's final peers).

    Args:
        peers: the trained modules, in the cohort's order.
        names: their names.
        run_dir: the run folder.
        class_names: the data's classes, written as ``id2label`` of a sequence classifier.
        tokenizer_dir: a tokenizer folder to copy into every peer's folder (default: the run's
            ``tokenizer/`` if it exists).
        tokenizer: a tokenizer object to save into every peer's folder instead.

    Returns:
        The folders written.
    """
    run_dir = Path(run_dir)
    tok = Path(tokenizer_dir) if tokenizer_dir else run_dir / TOKENIZER_DIR
    written = []
    for name, peer in zip(names, peers):
        peer = getattr(peer, "module", peer)
        if not is_pretrained_model(peer):
            continue
        config = peer.config
        labels = getattr(config, "num_labels", None)
        if class_names and labels == len(class_names) and not _is_causal(config):
            config.id2label = {i: str(c) for i, c in enumerate(class_names)}
            config.label2id = {str(c): i for i, c in enumerate(class_names)}
        target = run_dir / PEERS_DIR / folder_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
        try:
            peer.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            elif tok.is_dir():
                for f in tok.iterdir():
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        written.append(target)
    return written


def folder_name(peer: str) -> str:
    """The folder of a peer under ``RUN/peers/``: its name, with anything but letters, digits,
    ``.``, ``_`` and ``-`` as ``_`` (``peer0_hf-config:gpt2`` -> ``peer0_hf-config_gpt2``)."""
    return re.sub(r"[^\w.-]", "_", peer)


def _is_causal(config: Any) -> bool:
    names = getattr(config, "architectures", None) or []
    return any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names)
