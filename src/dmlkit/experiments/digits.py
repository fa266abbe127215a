"""The embedded default experiment: the bundled digits, independent vs DML."""

from __future__ import annotations

from dmlkit.experiments.core import Experiment, register_experiment

# The config defaults (dmlkit.config) are this recipe: two small CNNs, 30 epochs of SGD +
# Nesterov, cosine LR from 0.05, weight decay 5e-4, batch 64, random 1-pixel shifts; 1,211
# training images (val 136, test 450). Both arms share every seed (initialisation and data
# order), so the gain is paired.
DIGITS = register_experiment(
    Experiment(
        name="digits",
        description="bundled digits: two small CNNs, independent vs DML (the default run)",
        base={},
        arms={
            "independent": {"method": {"name": "independent"}},
            "dml": {"method": {"name": "dml", "update": "simultaneous"}},
        },
        seeds=3,
    )
)
