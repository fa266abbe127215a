"""Named experiments for ``dml reproduce``: one module per dataset registers its grids."""

# Importing the modules registers their experiments.
from dmlkit.experiments import digits  # noqa: E402,F401,I001
from dmlkit.experiments import digits_pairs  # noqa: E402,F401,I001
from dmlkit.experiments import digits_analysis  # noqa: E402,F401,I001
from dmlkit.experiments import cifar100  # noqa: E402,F401,I001
from dmlkit.experiments import online_kd  # noqa: E402,F401,I001
from dmlkit.experiments.core import (
    EXPERIMENTS,
    Experiment,
    RunResult,
    arm_config,
    comparison_report,
    comparison_rows,
    format_table,
    plan_cells,
    register_experiment,
    run_experiment,
    scale_config,
    write_results,
)
from dmlkit.experiments.launch import CellsFailed, LaunchOptions  # noqa: E402,I001

__all__ = [
    "CellsFailed",
    "LaunchOptions",
    "EXPERIMENTS",
    "Experiment",
    "RunResult",
    "arm_config",
    "comparison_report",
    "comparison_rows",
    "format_table",
    "plan_cells",
    "register_experiment",
    "run_experiment",
    "scale_config",
    "write_results",
]
from dmlkit.experiments import market1501  # noqa: E402,F401,I001
from dmlkit.experiments import text  # noqa: E402,F401,I001
