"""Metrics: classification (top-k accuracy)."""

from dmlkit.metrics.classification import topk_correct

__all__ = ["topk_correct"]
