"""Sample-based distances for low-dimensional toy data: sliced Wasserstein, kernel MMD and the data NLL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffbook.data.toy2d import Density


def sliced_wasserstein(
    x: Tensor, y: Tensor, projections: int = 256, p: int = 2, generator: torch.Generator | None = None
) -> float:
    """Sliced ``p``-Wasserstein distance between two samples ``x: (N, D)`` and ``y: (M, D)``.

    Each random unit direction turns the problem into 1D, where optimal transport matches sorted values;
    unequal sample sizes are compared through ``N`` common quantiles. Returns
    ``(mean over directions of W_p^p)^(1/p)``.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    directions = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    n = min(len(x), len(y))
    proj_x, proj_y = (_sorted_projection(z.double() @ directions, n) for z in (x, y))
    return float((proj_x - proj_y).abs().pow(p).mean() ** (1 / p))


def _sorted_projection(values: Tensor, n: int) -> Tensor:
    """``n`` evenly spaced quantiles of each column of ``values: (M, P)``; the sorted values when ``M == n``."""
    if len(values) == n:
        return values.sort(dim=0).values
    return torch.quantile(values, (torch.arange(n, dtype=values.dtype) + 0.5) / n, dim=0)


def pairwise_distance_w1(x: Tensor, y: Tensor, pairs: int = 20_000, generator: torch.Generator | None = None) -> float:
    """W1 between the distributions of pairwise distances within ``x: (N, D)`` and within ``y: (M, D)``: a
    statistic of a set's structure, the quantity SADM matches batch by batch, blind to where the set lies.

    ``pairs`` random pairs ``(i, j), i != j`` are drawn once and used in both sets (``N = M``), or drawn in each;
    the 1D W1 then compares sorted distances. Scaling ``y = c x`` gives ``|c - 1|`` times the mean distance.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    first, second = _random_pairs(len(x), pairs, generator)
    dx = (x[first] - x[second]).double().norm(dim=1)
    if len(y) != len(x):
        first, second = _random_pairs(len(y), pairs, generator)
    dy = (y[first] - y[second]).double().norm(dim=1)
    return float((dx.sort().values - dy.sort().values).abs().mean())


def _random_pairs(n: int, count: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``count`` index pairs ``(i, j)`` of ``range(n)`` with ``i != j``."""
    first = torch.randint(n, (count,), generator=generator)
    second = (first + torch.randint(1, n, (count,), generator=generator)) % n
    return first, second


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels. ``x: (N, D)``, ``y: (M, D)``."""
    x, y = x.double(), y.double()
    xx, yy, xy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    k_xx, k_yy, k_xy = (torch.stack([torch.exp(-d / (2 * h**2)) for h in bandwidths]).sum(0) for d in (xx, yy, xy))
    n, m = len(x), len(y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def negative_log_likelihood(samples: Tensor, density: Density) -> float:
    """``-mean log p_data(samples)`` under a closed-form data density; ``samples: (N, 2)``.

    It measures how well the samples sit on the data, a precision-like score: lower is better, and samples from
    ``p_data`` itself score its entropy ``H(p_data)`` on average. It rewards collapse, though: samples piled on
    the modes score *below* the entropy while missing most of the distribution, so read it next to a recall-type
    metric (MMD, sliced Wasserstein, PRDC recall). A single sample where ``p_data = 0`` (off the checkerboard)
    makes it infinite.
    """
    return float(-density.log_prob(samples.double()).mean())
