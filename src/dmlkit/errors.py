"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations

import reprlib
from typing import Any


class UserError(Exception):
    """Bad input from the user (config, paths, data, checkpoints): message names problem and fix."""


class ConfigError(UserError):
    """A config value or key is invalid."""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of an exception's message, for a one-line error (``limit`` chars at most).

    Library messages can be long, multi-line or empty (``OSError()``); an empty message gives
    the exception's type name instead, so the caller's line always says something.
    """
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2


def shown(value: Any) -> str:
    """``repr(value)`` for a message, bounded: long strings, deep or long containers cut short.

    A config value can be a YAML alias bomb (a small text that expands to billions of items)
    or a 10 MB string: a message must never grow with it.
    """
    return _SHOWN.repr(value).replace("\n", "\\n")


def write_advice(exc: OSError, folder: Any, resume: str = "") -> str:
    """What to do after a failed write into ``folder``, by the error's cause (not always a
    full disk): ``resume`` is appended where going on makes sense (e.g. "dml train --resume R").
    """
    import errno

    then = f" and {resume}" if resume else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"free space{then}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{folder} is read-only or not writable by you: make it writable{then}"
    if exc.errno in (errno.ENOENT, errno.ESTALE, errno.ENOTDIR):
        return f"{folder} was deleted or moved meanwhile; nothing more can be written there"
    return f"check {folder} (its disk and permissions){then}"
