"""Figures: scatter plots of points, image grids, sampler paths, vector fields, and the comparison's summary."""

from diffbook.viz.comparison import plot_summary
from diffbook.viz.plots import new_figure, plot_trajectories, scatter2d, show_images, vector_field

__all__ = [
    "new_figure",
    "plot_summary",
    "plot_trajectories",
    "scatter2d",
    "show_images",
    "vector_field",
]
