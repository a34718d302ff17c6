"""Metrics: distances between samples and data."""

from diffbook.metrics.toy import mmd_rbf, sliced_wasserstein

__all__ = ["mmd_rbf", "sliced_wasserstein"]
