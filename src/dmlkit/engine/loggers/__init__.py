"""Loggers: callbacks that write a run's records somewhere a person can watch them.

``train.loggers`` names them: ``jsonl`` (``metrics.jsonl``, always written: the other tools
read it), ``csv`` (``metrics.csv``), ``tensorboard`` (``RUN_DIR/tensorboard``), and the
optional extras ``wandb`` (offline by default) and ``mlflow`` (a file store in the run dir).
A user's own logger is a callback (:mod:`dmlkit.engine.callbacks`) given by import path in
``train.callbacks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlkit.engine.callbacks import Callback
from dmlkit.engine.loggers.files import CsvLogger, JsonlLogger, RecordLogger
from dmlkit.errors import ConfigError

#: name -> (module, class, the pip extra that installs what it needs)
LOGGERS: dict[str, tuple[str, str, str | None]] = {
    "jsonl": ("dmlkit.engine.loggers.files", "JsonlLogger", None),
    "csv": ("dmlkit.engine.loggers.files", "CsvLogger", None),
    "tensorboard": ("dmlkit.engine.loggers.tensorboard", "TensorBoardLogger", "tensorboard"),
    "wandb": ("dmlkit.engine.loggers.tracking", "WandbLogger", "wandb"),
    "mlflow": ("dmlkit.engine.loggers.tracking", "MLflowLogger", "mlflow"),
}
DEFAULT_LOGGERS = ("jsonl", "csv")


def check_logger_names(names: list[str] | tuple[str, ...]) -> None:
    """Raise ConfigError naming the first unknown logger and the valid names."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(
                f"train.loggers: unknown logger {name!r}; choose from {', '.join(LOGGERS)}"
            )


def build_loggers(names: list[str] | tuple[str, ...], run_dir: str | Path) -> list[Callback]:
    """The loggers ``names`` writing into ``run_dir``; ``jsonl`` first, always.

    Raises:
        ConfigError: an unknown name, or a logger whose package is not installed (the message
            names the pip extra).
    """
    import importlib

    check_logger_names(names)
    ordered = ["jsonl", *(n for n in dict.fromkeys(names) if n != "jsonl")]
    out: list[Any] = []
    for name in ordered:
        module, cls, extra = LOGGERS[name]
        try:
            out.append(getattr(importlib.import_module(module), cls)(run_dir))
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"train.loggers: {name} needs the {exc.name!r} package; "
                f"pip install 'dmlkit[{extra}]', or remove {name} from train.loggers"
            ) from None
    return out


__all__ = [
    "DEFAULT_LOGGERS",
    "LOGGERS",
    "CsvLogger",
    "JsonlLogger",
    "RecordLogger",
    "build_loggers",
    "check_logger_names",
]
