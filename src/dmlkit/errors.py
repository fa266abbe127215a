"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


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
