"""What the benchmark scripts share: the environment a result was measured in and writing it.

Imported by the scripts in this folder as a top-level module (``python benchmarks/x.py`` puts
the folder on ``sys.path``); not part of the package.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """The machine and the moment of a measurement (load average: the one at the end):
    :func:`dmlkit.machine.measurement`."""
    from dmlkit.machine import measurement

    return measurement()


def load_text(env: dict[str, Any]) -> str:
    """The load average of :func:`environment` as ``1.2, 0.9, 0.7``."""
    return ", ".join(f"{x:.1f}" for x in env["load_average"])


def measure_table(rows: list[tuple[str, str]]) -> list[str]:
    """A two-column Markdown table, one ``(measure, value)`` a row."""
    return ["| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def save(
    out: Path,
    stem: str,
    payload: dict[str, Any],
    text: str,
    figure: Callable[[dict[str, Any], Path], None] | None = None,
    json_newline: bool = False,
) -> None:
    """Write ``out/stem.json`` (``payload``), ``out/stem.md`` (``text``) and, given a
    ``figure(payload, path)``, ``out/stem.png``. ``json_newline``: end the JSON with a newline
    (each script keeps the files it always wrote)."""
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(payload, indent=2) + ("\n" if json_newline else "")
    (out / f"{stem}.json").write_text(data, encoding="utf-8")
    (out / f"{stem}.md").write_text(text, encoding="utf-8")
    if figure is not None:
        figure(payload, out / f"{stem}.png")
