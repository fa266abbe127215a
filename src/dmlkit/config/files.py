"""YAML config files: the safe loader (YAML 1.2 floats), reading and writing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from dmlkit.errors import ConfigError, first_line, shown

# Bounds of what a config may be: a real one is a few kB, a few levels deep, a few hundred values.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 20
MAX_VALUES = 100_000  # after aliases are expanded


def merge_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``update`` replace those in ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does (1.1 reads a string).

    Hardened: nesting deeper than ``MAX_DEPTH`` is refused while composing (before Python's
    recursion limit), a document whose aliases expand past ``MAX_VALUES`` values is refused
    before any object is built ("billion laughs"), and a key given twice in one mapping is an
    error naming it (YAML says keys are unique; PyYAML keeps the last silently).
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_VALUES:
            raise ConfigError(
                f"its aliases (*name) expand to more than {MAX_VALUES} values; "
                f"a config needs no such thing"
            )
        return self.construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise ConfigError(
                        f"key {shown(key_node.value)} appears twice in one mapping "
                        f"(line {key_node.start_mark.line + 1}); keep one"
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values the node stands for once every alias is copied out (shared nodes counted once
    per use), computed once per node: linear in the text, however large the expansion."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node that contains itself (a recursive alias) counts as one here
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader (no object construction, ever)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _closest_file(path: Path) -> str:
    """``; did you mean DIR/NAME?`` for the YAML file of ``path``'s folder closest to its name."""
    import difflib

    try:
        names = [p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml")]
    except OSError:  # no such folder (or unreadable): nothing to suggest
        return ""
    match = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f"; did you mean {path.parent / match[0]}?" if match else ""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe loader only) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}{_closest_file(path)} (give an existing YAML file "
            f"with -c)"
        )
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: {path.stat().st_size} bytes; a config file is at most {MAX_FILE_BYTES} "
            f"(is this the right file?)"
        )
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (keys in schema order)."""
    Path(path).write_text(
        yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), encoding="utf-8"
    )
