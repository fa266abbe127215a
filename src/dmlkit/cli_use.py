"""The ``dml`` commands that use what exists: ``list`` (registered names), ``predict`` and
``export`` (a trained cohort on new images, or outside dmlkit).

Like :mod:`dmlkit.cli`, nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import sys

# The built-in names, so that `dml list` answers without importing torch (the registries fill
# themselves by importing the modules that define the networks). tests/test_cli_feel.py checks
# that this table equals the registries: a newly registered name must be added here.
BUILTIN_NAMES = {
    "models": "inception_v1 mlp mobilenet mobilenet_v1 resnet32 small_cnn wrn28_10",
    "datasets": "cifar100 digits digits-pairs imagefolder market1501",
    "methods": "dml dml_e independent kd",
    "experiments": "cifar100-table digits digits-analysis digits-pairs digits-pairs-regimes "
    "digits-why market1501-cohort-size market1501-dml-e market1501-table",
}
_REGISTRIES = {
    "models": ("dmlkit.models.registry", "MODELS"),
    "datasets": ("dmlkit.data.registry", "DATASETS"),
    "methods": ("dmlkit.methods", "METHODS"),
    "experiments": ("dmlkit.experiments.core", "EXPERIMENTS"),
}


def registered_names(kind: str) -> list[str]:
    """The names of one kind: the registry's if already imported (it may hold more), else the
    built-in table."""
    module, attr = _REGISTRIES[kind]
    registry = getattr(sys.modules.get(module), attr, None)
    return registry.names() if registry is not None else sorted(BUILTIN_NAMES[kind].split())


def cmd_list(args: argparse.Namespace) -> int:
    for kind in BUILTIN_NAMES:
        print(f"{kind}: {', '.join(registered_names(kind))}")
    return 0
