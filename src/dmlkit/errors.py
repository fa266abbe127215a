"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, paths, data, checkpoints): message names problem and fix."""


class ConfigError(UserError):
    """A config value or key is invalid."""
