"""Names a config gives, checked against the registries before anything is built.

The config package is a leaf and cannot see the registries; this is the lowest layer that sees
all three (datasets, models, methods). The trainer calls it first, so a misspelt name fails
in one line before a process group is formed, data is read or a run directory is written.
"""

from __future__ import annotations

from dmlkit.config import Config
from dmlkit.data import DATASETS
from dmlkit.engine.loggers import check_logger_names
from dmlkit.methods.dml import METHODS
from dmlkit.models import check_arch
from dmlkit.optim import optimizer_class


def check_names(cfg: Config) -> None:
    """Raise ConfigError (naming the key, the valid names and the closest one) for an unknown
    ``method.name``, ``data.name``, ``peers.N.arch`` (a registered model, or a ``timm:`` /
    ``torchvision:`` / import-path one that resolves) or ``optim.name`` (torch.optim),
    or a ``train.loggers`` entry."""
    METHODS.get(cfg.method.name)
    DATASETS.get(cfg.data.name)
    for i, peer in enumerate(cfg.peers):
        check_arch(peer.arch, key=f"peers.{i}.arch")
        where = f"peers.{i}.optim" if "name" in peer.optim else "optim"
        optimizer_class(cfg.peer_optim(i).name, f"{where}.name")
    check_logger_names(cfg.train.loggers)
