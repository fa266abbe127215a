"""The configuration: schema (dataclasses), YAML files, ``--set`` overrides and validation.

Precedence: dataclass defaults < YAML file < ``--set key=value`` (values parsed as YAML).
Unknown keys are rejected with the closest valid key; types and ranges are checked before any
work starts. The library itself takes these dataclasses; only the CLI reads files.

This package is a leaf: it imports nothing else of dmlkit but the error types. Whether a name
(``method.name``, ``data.name``, ``peers[].arch``) is registered is checked where the
registries are, by :func:`dmlkit.engine.names.check_names` before anything is built.

Modules: :mod:`~dmlkit.config.schema` (the dataclasses and their defaults),
:mod:`~dmlkit.config.convert` (dict -> dataclass with type checks; flattening),
:mod:`~dmlkit.config.files` (YAML), :mod:`~dmlkit.config.overrides` (``--set``),
:mod:`~dmlkit.config.validate` (ranges and combinations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dmlkit.config.convert import build_dataclass, flatten
from dmlkit.config.files import load_yaml, merge_dicts, parse_yaml, save_config
from dmlkit.config.overrides import apply_override
from dmlkit.config.schema import (
    Config,
    DataConfig,
    DistributedConfig,
    MethodConfig,
    OptimConfig,
    PeerConfig,
    TextDataConfig,
    TrainConfig,
    default_peer_name,
)
from dmlkit.config.validate import validate


def build_config(*layers: dict[str, Any], overrides: Iterable[str] = ()) -> Config:
    """Defaults < each of ``layers`` in turn < ``overrides`` (``["a.b=value", ...]``).

    Type-checked and validated. The one way from dicts and ``--set`` strings to a Config.
    """
    data = dataclasses.asdict(Config())
    for layer in layers:
        data = merge_dicts(data, layer)
    for assignment in overrides:
        data = apply_override(data, assignment)
    cfg = build_dataclass(Config, data)
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Defaults merged with ``data``, type-checked and validated."""
    return build_config(data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults < YAML file at ``path`` < ``overrides`` (``["a.b=value", ...]``)."""
    return build_config(load_yaml(path) if path is not None else {}, overrides=overrides or ())


def config_differences(a: Config, b: Config) -> list[str]:
    """The dotted keys whose values differ between two configs, sorted."""
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


__all__ = [
    "Config",
    "DataConfig",
    "DistributedConfig",
    "MethodConfig",
    "OptimConfig",
    "PeerConfig",
    "TextDataConfig",
    "TrainConfig",
    "apply_override",
    "build_config",
    "build_dataclass",
    "config_differences",
    "config_from_dict",
    "default_peer_name",
    "flatten",
    "load_config",
    "load_yaml",
    "merge_dicts",
    "parse_yaml",
    "save_config",
    "validate",
]
