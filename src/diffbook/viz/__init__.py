"""Figures: scatter plots of points, image grids, sampler paths (drawn, and animated for the static book), vector
fields, nearest-neighbour balls, and the comparison's summary."""

from diffbook.viz.animation import animate_paths
from diffbook.viz.comparison import plot_summary
from diffbook.viz.plots import knn_balls, new_figure, plot_trajectories, scatter2d, show_images, vector_field

__all__ = [
    "animate_paths",
    "knn_balls",
    "new_figure",
    "plot_summary",
    "plot_trajectories",
    "scatter2d",
    "show_images",
    "vector_field",
]
