"""configs/paper/*.yaml: the paper's recipes as commented YAML, generated from the experiments.

The recipes live in Python (``dmlkit.experiments.cifar100``, ``...market1501``), where
``dml reproduce`` needs them; each module lists its files with :class:`PaperConfig`, and
``python configs/paper/generate.py`` writes them all. Tests check that every file in
``configs/paper/`` is byte-identical to what its module renders, so the two cannot drift.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlkit.config import merge_dicts

# The order of the top-level sections in every file.
_SECTIONS = ("seed", "method", "peers", "optim", "data", "train")


@dataclass
class PaperConfig:
    """One ``configs/paper/<name>.yaml``.

    Attributes:
        name: the file name without ``.yaml``.
        header: the comment lines above the config (without ``# ``).
        data: the config dict (see :func:`recipe_dict`).
        comments: dotted key -> the comment written after that key's value.
    """

    name: str
    header: Sequence[str]
    data: dict[str, Any]
    comments: dict[str, str]

    @property
    def filename(self) -> str:
        return f"{self.name}.yaml"

    def render(self) -> str:
        """The file's text."""
        lines = [f"# {h}".rstrip() for h in self.header]
        _emit(self.data, "", "", lines, self.comments)
        return "\n".join(lines) + "\n"


def recipe_dict(
    base: dict[str, Any], arm: dict[str, Any], *, runs: Path | None = None
) -> dict[str, Any]:
    """The config of one arm of a grid as a YAML file holds it: seed 0, the sections in a fixed
    order, and ``"{run:ARM}"`` resolved to ``runs/ARM/seed0`` (left as is without ``runs``)."""
    data = copy.deepcopy(merge_dicts({"seed": 0}, merge_dicts(base, arm)))
    teacher = data.get("method", {}).get("teacher")
    if runs is not None and isinstance(teacher, str) and teacher.startswith("{run:"):
        data["method"]["teacher"] = (runs / teacher[5:-1] / "seed0").as_posix()
    return {k: data[k] for k in _SECTIONS if k in data}


def _scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).split("\n")[0]


def _emit(
    node: dict[str, Any], prefix: str, indent: str, lines: list[str], comments: dict[str, str]
) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            _emit(value, path + ".", indent + "  ", lines, comments)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{indent}{key}:")
            for item in value:
                first, *rest = item.items()
                lines.append(f"{indent}  - {first[0]}: {_scalar(first[1])}")
                lines.extend(f"{indent}    {k}: {_scalar(v)}" for k, v in rest)
        else:
            comment = comments.get(path)
            lines.append(f"{indent}{key}: {_scalar(value)}" + (f"  # {comment}" if comment else ""))


def write_paper_configs(folder: str | Path, configs: Iterable[PaperConfig]) -> list[Path]:
    """Write each config's file into ``folder``; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for config in configs:
        path = folder / config.filename
        path.write_text(config.render(), encoding="utf-8")
        paths.append(path)
    return paths
