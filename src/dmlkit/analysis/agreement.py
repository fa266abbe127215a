"""Peer agreement, for the analysis of finished runs: see :mod:`dmlkit.metrics.agreement`."""

from dmlkit.metrics.agreement import agreement

__all__ = ["agreement"]
