"""Precision, recall, density and coverage from k-nearest-neighbour balls (Naeem et al. 2020).

Each point's ball reaches its k-th nearest neighbour in its own set. Precision is the share of fake points inside
some real ball (fidelity), recall the share of real points inside some fake ball (diversity). Density counts how
many real balls hold each fake point, divided by k, so it rewards fakes where real data is dense and is not
capped at 1; coverage is the share of real balls holding at least one fake point. Density and coverage were
introduced because outliers in the real set inflate precision and outliers in the fake set inflate recall.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


def distance_blocks(x: Tensor, y: Tensor, max_block_elements: int) -> Iterator[tuple[slice, Tensor]]:
    """Row slices of ``x: (N, D)`` and their distances to ``y: (M, D)``, at most ``max_block_elements`` at once.

    cdist's fast matrix-product formula loses digits to cancellation; in float64 the loss stays far below the gaps
    between neighbour distances, so ball memberships match an exact computation.
    """
    rows = max(1, max_block_elements // len(y))
    for start in range(0, len(x), rows):
        block = slice(start, start + rows)
        yield block, torch.cdist(x[block], y)


def _kth_neighbour_radii(x: Tensor, k: int, max_block_elements: int) -> Tensor:
    """Distance from each point of ``x: (N, D)`` to its k-th nearest neighbour in ``x``, not counting itself: (N,)."""
    # Every point is its own nearest neighbour, at distance 0, hence the k + 1 smallest.
    return torch.cat(
        [d.topk(k + 1, dim=1, largest=False).values[:, -1] for _, d in distance_blocks(x, x, max_block_elements)]
    )


def neighbour_balls(
    real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int, max_block_elements: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``real: (N, D)`` and ``fake: (M, D)`` as float64, checked, and the radii of their k-NN balls, (N,) and (M,)."""
    real = torch.as_tensor(real, dtype=torch.float64)
    fake = torch.as_tensor(fake, dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k = {k} needs more than k points in each set, got {len(real)} and {len(fake)}")
    radii = [_kth_neighbour_radii(points, k, max_block_elements) for points in (real, fake)]
    return real, fake, radii[0], radii[1]


def prdc(
    real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = 5, *, max_block_elements: int = 2**23
) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake: (M, D)`` against ``real: (N, D)`` with k-NN balls.

    Distances are computed in float64, ``max_block_elements`` at a time (64 MB by default), so memory grows
    linearly in N and M. Returns a dict with keys ``precision``, ``recall``, ``density``, ``coverage``.
    """
    real, fake, real_radii, fake_radii = neighbour_balls(real, fake, k, max_block_elements)
    real_balls_per_fake = torch.zeros(len(fake), dtype=torch.int64, device=fake.device)
    covered, recalled = [], []  # per real point: a fake in its ball; itself in a fake ball
    for block, distances in distance_blocks(real, fake, max_block_elements):
        in_real_ball = distances < real_radii[block, None]
        real_balls_per_fake += in_real_ball.sum(dim=0)
        covered.append(in_real_ball.any(dim=1))
        recalled.append((distances < fake_radii).any(dim=1))
    return {
        "precision": float((real_balls_per_fake > 0).double().mean()),
        "recall": float(torch.cat(recalled).double().mean()),
        "density": real_balls_per_fake.sum().item() / (k * len(fake)),
        "coverage": float(torch.cat(covered).double().mean()),
    }
