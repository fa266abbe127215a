"""``--set KEY=VALUE`` overrides: dotted keys into nested dicts and lists, values as YAML."""

from __future__ import annotations

from typing import Any

import yaml

from dmlkit.config.files import MAX_FILE_BYTES, parse_yaml
from dmlkit.errors import ConfigError, shown


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` (value parsed as YAML; list items addressed by index).

    ``*`` as a list index applies the value to every item, e.g.
    ``peers.*.kwargs.pretrained=imagenet`` for a cohort of any size.
    """
    if "=" not in assignment:
        raise ConfigError(
            f"--set {shown(assignment)}: expected KEY=VALUE, e.g. --set train.epochs=5"
        )
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts) or len(dotted) > 200:
        raise ConfigError(f"--set {shown(assignment)}: empty or overlong key {shown(dotted)}")
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"--set {dotted}: a value of {len(raw)} characters is too long")
    if "*" in parts:
        return _apply_to_every_item(data, parts, raw)
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a plain string
    except ConfigError as exc:
        raise ConfigError(f"--set {dotted}: {exc}") from None
    data = dict(data)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _list_index(part, node, where)
            if isinstance(node[idx], str):  # peer shorthand -> mapping
                node[idx] = {"arch": node[idx]}
            node[idx] = dict(node[idx]) if isinstance(node[idx], dict) else node[idx]
            node = node[idx]
        elif isinstance(node, dict):
            child = node.get(part)
            if isinstance(child, list):
                child = list(child)
            elif isinstance(child, dict):
                child = dict(child)
            elif child is None:
                child = {}
            node[part] = child
            node = child
        else:
            raise ConfigError(f"--set {dotted}: '{where}' is not a mapping or a list")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {dotted}: the parent of '{last}' is not a mapping or a list")
    return data


def _apply_to_every_item(data: dict[str, Any], parts: list[str], raw: str) -> dict[str, Any]:
    """``a.*.b=value``: apply ``a.N.b=value`` for every item N of the list at ``a``."""
    star = parts.index("*")
    node: Any = data
    for part in parts[:star]:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = None
    if not isinstance(node, list):
        dotted = ".".join(parts)
        raise ConfigError(f"--set {dotted}: '*' needs a list at '{'.'.join(parts[:star])}'")
    for i in range(len(node)):
        item = ".".join([*parts[:star], str(i), *parts[star + 1 :]])
        data = apply_override(data, f"{item}={raw}")
    return data


def _list_index(part: str, node: list, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"--set {where}: index {part!r} is not valid for a list of {len(node)} items"
        )
    return int(part)
