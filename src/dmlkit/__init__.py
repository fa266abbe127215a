"""dmlkit: Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu; CVPR 2018) for PyTorch.

Where things are (the lower layers first):
    dmlkit.errors       UserError / ConfigError: one-line messages the CLI prints (exit 2)
    dmlkit.config       the typed config, YAML loading, ``--set`` overrides, validation
    dmlkit.models       the model registry: the CIFAR networks, MobileNet v1 (re-id), small ones;
                        timm:, torchvision: and import-path archs (dmlkit.models.external)
    dmlkit.data         datasets by name (digits, CIFAR-100, image folders in memory or
                        streamed, Market-1501); users' own Datasets (dmlkit.data.user)
    dmlkit.metrics      top-k accuracy; re-id distances, CMC and mAP
    dmlkit.losses       pure losses: DML / DML_e / KD and the mimicry KL (losses.dml, DMLLoss),
                        ONE / KDCL / OKDDip / PCL (losses.online)
    dmlkit.optim        torch.optim optimizers by name, LR schedules (warm-up, cosine, one-cycle)
    dmlkit.cohort       the K peers with their optimizers and schedules (loop and stacked)
    dmlkit.methods      every training method (independent, dml, dml_e, kd, kdcl, one, ...);
                        methods.update: THE step of K peers (simultaneous | sequential);
                        methods.step: dmlkit.step, one DML step of your own models
    dmlkit.distributed  torchrun: data-parallel and one-peer-per-process cohorts
    dmlkit.engine       the trainer, checkpoints, evaluation, run directory
    dmlkit.api          dmlkit.fit: the trainer for your own nn.Modules and Datasets;
                        dmlkit.load_peers / dmlkit.export_peer take the trained peers out
    dmlkit.experiments  the paper's grids for ``dml reproduce``
    dmlkit.analysis     the paper's Sec. 4.5 measurements and the reports of a grid
    dmlkit.cli          the ``dml`` command, a module per command family (watch included);
                        ``dmlkit.bench`` its ``bench`` subcommand
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

__version__ = "0.1.0"

# The public functions are imported on first use: ``import dmlkit`` stays cheap and the
# subpackages may import ``dmlkit`` without a cycle.
_LAZY = {
    "step": "dmlkit.methods.step",
    "fit": "dmlkit.api",
    "load_peers": "dmlkit.api",
    "export_peer": "dmlkit.api",
}


__all__ = ["__version__", "export_peer", "fit", "load_peers", "step"]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dmlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names: ``__all__`` (the subpackages are listed in the docstring above)."""
    return sorted(__all__)
