"""The comparison suite's summary as a figure: one panel per metric, one row per method and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

METRIC_NAMES = {
    "fid": "FID ↓",
    "precision": "precision ↑",
    "recall": "recall ↑",
    "density": "density",
    "coverage": "coverage ↑",
    "sliced_wasserstein": "sliced W ↓",
    "pairwise_w1": "pairwise W1 ↓",
}


def plot_summary(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> Figure:
    """One panel per metric: each table row's mean ± std over seeds, one colour per dataset; the dotted line is
    the first row of each dataset (the MSE baseline)."""
    labels = list(dict.fromkeys(row["row"] for row in rows))
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(2.4 * len(metrics) + 2.2, 0.26 * len(labels) + 1.2), sharey=True, squeeze=False
    )
    offsets = torch.linspace(-0.25, 0.25, len(datasets)) if len(datasets) > 1 else torch.zeros(1)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for color, (dataset, offset) in enumerate(zip(datasets, offsets.tolist(), strict=True)):
            mine = [row for row in rows if row["dataset"] == dataset]
            y = [labels.index(row["row"]) + offset for row in mine]
            mean, std = zip(*(row[metric] for row in mine), strict=True)
            ax.errorbar(mean, y, xerr=std, fmt="o", ms=3.5, capsize=2, color=f"C{color}", label=dataset)
            ax.axvline(mine[0][metric][0], color=f"C{color}", lw=0.8, ls=":")
        ax.set_title(METRIC_NAMES.get(metric, metric), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0, 0].invert_yaxis()
    if len(datasets) > 1:
        axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
