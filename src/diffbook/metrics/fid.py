"""Feature-space distances between image sets: Frechet distance (FID) and kernel distance (KID).

Both compare two sets of network features, e.g. Inception-v3 pool features, ``(N, 2048)``.
FID (Heusel et al. 2017) fits a Gaussian to each set and returns the Frechet (2-Wasserstein) distance between the
two Gaussians; it is biased upwards for small N. KID (Binkowski et al. 2018) is an unbiased estimate of the squared
MMD with a cubic polynomial kernel, so it is ~0 for two samples of one distribution at any N.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

Array = Tensor | np.ndarray

# The reference implementations (TTUR, pytorch-fid, clean-fid) accept this much imaginary noise on the diagonal
# of sqrt(sigma1 sigma2); more means a covariance is not positive semi-definite.
_MAX_IMAGINARY = 1e-3


def _float64(x: Array) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features: Array) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``mu: (D,)`` and unbiased covariance ``sigma: (D, D)`` of ``features: (N, D)``, in float64."""
    features = _float64(features)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected (N, D) features with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
    """``sqrtm(sigma1 @ sigma2)``; a singular product is regularised to ``(sigma1 + eps I)(sigma2 + eps I)``.

    Newer SciPy flags a singular matrix with a LinAlgWarning, older SciPy with non-finite entries.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
            if np.isfinite(covmean).all():
                return covmean
        except scipy.linalg.LinAlgWarning:
            pass
    warnings.warn(f"singular covariance product; adding {eps} to the diagonals", RuntimeWarning, stacklevel=3)
    offset = eps * np.eye(len(sigma1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array, eps: float = 1e-6) -> float:
    """Frechet distance ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))`` between two Gaussians.

    mu1, mu2: (D,); sigma1, sigma2: (D, D), positive semi-definite. Computed in float64. Rounding may leave a
    tiny imaginary part in the matrix square root, which is discarded; a large one raises ValueError.
    """
    mu1, mu2 = np.atleast_1d(_float64(mu1)), np.atleast_1d(_float64(mu2))
    sigma1, sigma2 = np.atleast_2d(_float64(sigma1)), np.atleast_2d(_float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != 2 * mu1.shape:
        raise ValueError(f"mismatched statistics: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    covmean = _product_sqrtm(sigma1, sigma2, eps)
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > _MAX_IMAGINARY:
            raise ValueError(f"sqrt(sigma1 sigma2) has imaginary part {imaginary:.3g}; is a covariance not PSD?")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features_a: Array, features_b: Array) -> float:
    """Frechet distance between Gaussians fitted to ``features_a: (N, D)`` and ``features_b: (M, D)``."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def _polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """``k(x, y) = (x . y / D + 1)^3`` for ``x: (N, D)``, ``y: (M, D)``: (N, M)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _unbiased_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 of two equal-sized samples ``x, y: (m, D)``: within-set sums leave out ``k(x_i, x_i)``."""
    m = len(x)
    k_xx, k_yy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
    within = (k_xx.sum() - k_xx.trace() + k_yy.sum() - k_yy.trace()) / (m * (m - 1))
    return within - 2 * _polynomial_kernel(x, y).mean()


def _random_rows(x: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """``m`` distinct rows of ``x``, in random order."""
    return x[torch.randperm(len(x), generator=generator)[:m].to(x.device)]


def kernel_inception_distance(
    features_a: Array,
    features_b: Array,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID: mean and standard deviation, over random subsets, of the unbiased polynomial-kernel MMD^2.

    features_a: (N, D); features_b: (M, D). Each subset draws ``min(subset_size, N, M)`` rows of each set
    without replacement. The estimate is unbiased, so it can be slightly negative when the sets agree.
    """
    a = torch.as_tensor(features_a, dtype=torch.float64)
    b = torch.as_tensor(features_b, dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {tuple(a.shape)} and {tuple(b.shape)}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"need subsets of at least 2 points, got {m}")
    draws = [_unbiased_mmd2(_random_rows(a, m, generator), _random_rows(b, m, generator)) for _ in range(subsets)]
    estimates = torch.stack(draws)
    return float(estimates.mean()), float(estimates.std(correction=0))
