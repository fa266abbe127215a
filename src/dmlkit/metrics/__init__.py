"""Metrics, as pure functions of predictions and labels.

* :mod:`dmlkit.metrics.classification`: top-k accuracy.
* :mod:`dmlkit.metrics.reid`: person re-identification: feature distances, CMC and mAP under
  the Market-1501 protocol.
"""

from dmlkit.metrics.classification import topk_correct

__all__ = ["topk_correct"]
