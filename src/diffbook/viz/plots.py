"""Figures the chapters share: image grids (tiled by :mod:`diffbook.data.grid`), 2D scatter plots, sampler
trajectories, vector fields and the nearest-neighbour balls of precision and recall."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Circle
from torch import Tensor

from diffbook.data.grid import image_grid


def show_images(ax: Axes, images: Tensor, nrow: int | None = None, title: str | None = None) -> None:
    """Draw :func:`image_grid` of ``images: (N, C, H, W)`` on ``ax``, without axes."""
    grid = image_grid(images, nrow)
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def scatter2d(ax: Axes, points: Tensor, title: str | None = None, lim: float = 3.5, **kwargs) -> None:
    """Small-marker scatter of ``points: (N, 2)`` on a square, equal-aspect window ``[-lim, lim]^2``."""
    points = points.detach().cpu()
    style = {"s": 1.5, "alpha": 0.5, "linewidths": 0} | kwargs
    ax.scatter(points[:, 0], points[:, 1], **style)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)


def plot_trajectories(ax: Axes, trajectory: list[Tensor], count: int = 40, color: str = "C1", **kwargs) -> None:
    """Paths of the first ``count`` points of a sampler's ``trajectory`` (a list of ``(B, 2)`` states)."""
    path = torch.stack([state[:count] for state in trajectory]).cpu()  # (steps, count, 2)
    style = {"lw": 0.7, "alpha": 0.8} | kwargs
    for k in range(path.shape[1]):
        ax.plot(path[:, k, 0], path[:, k, 1], color=color, **style)
    ax.scatter(path[-1, :, 0], path[-1, :, 1], s=6, color=color, zorder=3)


def vector_field(ax: Axes, field, lim: float = 3.0, resolution: int = 21, **kwargs) -> None:
    """Quiver plot of ``field: (N, 2) -> (N, 2)`` on a ``resolution`` x ``resolution`` grid of ``[-lim, lim]^2``."""
    axis = torch.linspace(-lim, lim, resolution)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        arrows = field(points).cpu()
    ax.quiver(points[:, 0], points[:, 1], arrows[:, 0], arrows[:, 1], angles="xy", **kwargs)
    ax.set_aspect("equal")


def knn_balls(ax: Axes, centres: Tensor, radii: Tensor, points: Tensor, title: str | None = None) -> Tensor:
    """Draw the balls of ``centres: (N, 2)`` with ``radii: (N,)``, and ``points: (M, 2)``, green where a point is
    inside some ball and red where it is in none; returns those flags, ``(M,)`` bool.

    With the real points' balls and the samples as points the share inside is precision; with the samples' balls
    and the real points, recall (strictly inside, as :func:`diffbook.metrics.prdc` counts them).
    """
    inside = (torch.cdist(points.double(), centres.double()) < radii.double()).any(dim=1)
    for (x, y), r in zip(centres.tolist(), radii.tolist(), strict=True):
        ax.add_patch(Circle((x, y), r, facecolor="0.85", edgecolor="0.6", alpha=0.5, lw=0.5))
    ax.scatter(centres[:, 0], centres[:, 1], s=6, color="0.3", zorder=3)
    ax.scatter(points[:, 0], points[:, 1], s=14, c=np.where(inside.numpy(), "C2", "C3"), marker="x", zorder=4)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return inside


def new_figure(ncols: int, nrows: int = 1, size: float = 2.6, **kwargs) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``nrows x ncols`` square panels of ``size`` inches, axes returned as a 2D array."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, **kwargs)
    return fig, axes
