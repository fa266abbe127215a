"""The dataset registry (its own module so that dataset files can import it)."""

from __future__ import annotations

from dmlkit.registry import Registry

DATASETS: Registry = Registry("dataset", "data.name")
