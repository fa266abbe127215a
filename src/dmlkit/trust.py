"""A run folder or checkpoint is data, never code (docs/errors.md, "Trust").

Reading a run (``dml eval``, ``predict``, ``analyze``, ``export``, ``report``, ``watch``, a kd
teacher, ``--resume``) builds only what dmlkit itself knows how to build: the registered
architectures and ``timm:`` / ``torchvision:`` model names, whose kwargs must be plain values
that name no file. An import path (``package.module:function``) found in a run's files, as a
peer's ``arch`` or a ``train.callbacks`` entry, would import and call code chosen by whoever
wrote the files: it is refused in one line unless the user opts in (``--trust-code``;
``trust_code=True`` in Python), as Hugging Face's ``trust_remote_code``. A config file the user
passes (``-c``) is the user's own code by intent and is never refused.

:func:`printable` is the other half: a name read from a file (a peer's name, a class, a metric
key) is printed with its control characters escaped, so a crafted file cannot drive the
terminal.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from dmlkit.errors import UserError

#: Where an arch names code that dmlkit ships or that the libraries it builds from register.
# hf: / hf-config: build Hugging Face models from local files or a config with random weights,
# never with remote code unless the value below is set, which is refused from a file
TRUSTED_PREFIXES = ("timm", "torchvision", "hf", "hf-config")
#: ``instance:Class``: a module given to dmlkit.fit; never rebuilt from a file (named only).
_INSTANCE = "instance"
#: The opt-in, as the message names it.
OPT_IN = "--trust-code (Python: trust_code=True)"

# kwargs that make timm / torchvision read or fetch a file, or take a nested config that can
# (timm's pretrained_cfg_overlay={"file": ...}); a file a stranger chose is never read.
# Word by word, so that drop_path_rate (a plain number) passes and checkpoint_path does not.
_FILE_KWARGS = re.compile(
    r"(^|_)(file|files|dir|url|cfg|overlay|checkpoint|cache|weights|hub|download|backbone)(_|$)"
    r"|(^|_)path$",
    re.IGNORECASE,
)
_PLAIN = (bool, int, float, str, type(None))


class UntrustedCodeError(UserError):
    """A run's files name code to import; refused without the user's opt-in."""


def is_import_path(arch: str) -> bool:
    """Whether ``arch`` names a ``package.module:function`` (not a registered, timm,
    torchvision or dmlkit.fit instance name)."""
    kind, sep, _ = arch.partition(":")
    return bool(sep) and kind not in (*TRUSTED_PREFIXES, _INSTANCE)


def check_peer(arch: Any, kwargs: Any, source: str, trust_code: bool) -> None:
    """Refuse a peer read from ``source`` (a run or checkpoint) that would run foreign code.

    Args:
        arch: the peer's ``arch`` as the file says.
        kwargs: the peer's ``kwargs`` as the file says.
        source: the file or folder, for the message.
        trust_code: the user's opt-in; with it, nothing is refused here.

    Raises:
        UntrustedCodeError: an import-path arch, or a ``timm:`` / ``torchvision:`` kwarg that
            names a file or is not a plain value.
    """
    if trust_code:
        return
    arch_text = str(arch)
    if not isinstance(arch, str) or is_import_path(arch):
        raise UntrustedCodeError(
            f"{source}: a peer's arch is the import path {printable(arch_text)[:80]!r}; reading "
            f"a run never imports code its files name: if you trust where this run came from, "
            f"add {OPT_IN}"
        )
    if arch.partition(":")[0] not in TRUSTED_PREFIXES:
        return  # a registered name: its constructor is dmlkit's own (sizes checked later)
    for key, value in (kwargs or {}).items() if isinstance(kwargs, dict) else [("kwargs", None)]:
        if key == "pretrained":
            continue  # dropped by every reader: the checkpoint holds the weights
        plain = isinstance(value, _PLAIN) or (
            isinstance(value, list | tuple) and all(isinstance(v, _PLAIN) for v in value)
        )
        remote = key == "trust_remote_code" and bool(value)  # runs the model folder's code
        if not isinstance(key, str) or _FILE_KWARGS.search(key) or not plain or remote:
            raise UntrustedCodeError(
                f"{source}: peer {printable(arch_text)[:60]!r} has kwargs "
                f"{printable(str(key))[:40]!r}, which names a file or an object for "
                f"{arch_text.partition(':')[0]} to load; reading a run passes only plain "
                f"model arguments: if you trust where this run came from, add {OPT_IN}"
            )


def check_callbacks(entries: Iterable[Any], source: str, trust_code: bool) -> None:
    """Refuse ``train.callbacks`` entries read from ``source`` (import paths, by nature)."""
    entries = list(entries or [])
    if trust_code or not entries:
        return
    first = entries[0]
    target = first.get("target") if isinstance(first, dict) else first
    raise UntrustedCodeError(
        f"{source}: train.callbacks names {printable(str(target))[:80]!r}, code the run's "
        f"files ask to import; reading a run never imports it: if you trust where this run "
        f"came from, add {OPT_IN} (or remove it with --set train.callbacks=[])"
    )


def check_config(config: Any, source: str, trust_code: bool, given: Iterable[str] = ()) -> None:
    """Refuse a run's saved config (a dict, as read from ``config.yaml``) that names code.

    ``given``: text of the user's own config file and ``--set`` values; a name found there is
    the user's own choice and is not refused.
    """
    if trust_code or not isinstance(config, dict):
        return
    mine = "\n".join(given)
    peers = config.get("peers")
    for peer in peers if isinstance(peers, list) else []:
        arch = peer.get("arch") if isinstance(peer, dict) else peer
        kwargs = peer.get("kwargs") if isinstance(peer, dict) else None
        if isinstance(arch, str) and arch in mine:
            continue
        check_peer(arch, kwargs, source, trust_code)
    train = config.get("train")
    callbacks = train.get("callbacks") if isinstance(train, dict) else None
    if isinstance(callbacks, list):
        foreign = [
            c for c in callbacks if str(c.get("target") if isinstance(c, dict) else c) not in mine
        ]
        check_callbacks(foreign, source, trust_code)


def printable(text: Any) -> str:
    """``text`` with control and format characters escaped (``\\x1b``, ``\\u202e``), for a
    terminal: a name read from a file must not move the cursor, recolour or reorder the line."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
