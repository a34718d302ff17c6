"""Two-dimensional toy distributions, each drawn reproducibly from a seed.

Every set is roughly centred and spans a few units, as in the toy-diffusion literature, so one noise schedule
(``sigma_min ~ 0.01``, ``sigma_max ~ 10``) suits all of them:

=========================  ===================================================================================
``gaussian``               ``N(0, I)``
``eight_gaussians``        8 equal components on a ring of radius 2, std 0.1
``twenty_five_gaussians``  25 equal components on the grid ``{-2, ..., 2}^2``, std 0.05
``two_moons``              ``make_moons(noise=0.1)``, each axis shifted and scaled to mean 0, variance 1
``swiss_roll``             ``make_swiss_roll(noise=0.5)``, columns 0 and 2, centred, divided by 5
``checkerboard``           uniform on the 8 dark squares of a 4 x 4 board of unit squares on ``[-2, 2]^2``
``pinwheel``               5 arms: ``N(1, 0.3^2)`` radially, ``N(0, 0.1^2)`` across, sheared, times 2
``circles``                ``make_circles(factor=0.5, noise=0.05)`` times 2: radii 2 and 1
``spiral``                 two interleaved arms ``r = t / 3``, ``t`` up to ``3 pi``, noise std 0.1
``s_curve``                ``make_s_curve(noise=0.1)``, columns 0 and 2
``moon_scatter``           ``two_moons`` (90 %) with a uniform scatter on ``[-3, 3]^2`` (10 %)
``central_banana``         ``x1 = 1.5 u1``, ``x2 = 0.25 u2 + 0.5 (x1^2 - 1.5^2)``, ``u ~ N(0, I)``: mean 0
``moon_circles``           ``two_moons`` (50 %) inside concentric circles of radii 3 and 4 (50 %)
=========================  ===================================================================================

The last three are named after sets used by the Iso-Diffusion authors; the definitions above are our own.

Where the density is known in closed form, :func:`density` returns the very object :func:`sample_toy` draws
from, so samples and densities agree exactly. The Gaussian mixtures also give the exact score and the ideal
denoiser at every noise level: the reference a trained network is measured against.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from sklearn.datasets import make_circles, make_moons, make_s_curve, make_swiss_roll
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


class Density(Protocol):
    """A distribution with a sampler and a closed-form log-density."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, x: Tensor) -> Tensor: ...


def _normal_log_prob(z: Tensor, std: float) -> Tensor:
    return -0.5 * (z / std) ** 2 - math.log(std) - 0.5 * _LOG_2PI


def _column(sigma: float | Tensor, like: Tensor) -> Tensor:
    """``sigma`` as a float64 column, (1, 1) for a scalar or (N, 1) for (N,) or (N, 1)."""
    return torch.as_tensor(sigma, dtype=torch.float64, device=like.device).reshape(-1, 1)


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Isotropic Gaussian mixture ``p(x) = sum_k w_k N(x; mu_k, s_k^2 I)`` in any dimension D.

    Adding noise, ``x = x0 + sigma n``, keeps it a mixture with ``s_k -> sqrt(s_k^2 + sigma^2)``, so the noised
    density, its score and the ideal denoiser ``E[x0 | x]`` are all closed-form. Methods take ``sigma`` as a
    float or a tensor of shape (N,) or (N, 1); ``sigma = 0`` is the clean density. They compute in float64,
    where the score's cancellation ``mu_k - x`` stays accurate, and return the input's dtype.

    means: (K, D); stds: (K,), positive; weights: (K,), normalised on construction.
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        K = self.means.shape[0]
        if self.means.ndim != 2 or self.stds.shape != (K,) or self.weights.shape != (K,):
            raise ValueError(
                f"expected means (K, D), stds (K,), weights (K,); got {tuple(self.means.shape)}, "
                f"{tuple(self.stds.shape)}, {tuple(self.weights.shape)}"
            )
        if (self.stds <= 0).any() or (self.weights < 0).any():
            raise ValueError("stds must be positive and weights non-negative")
        object.__setattr__(self, "weights", self.weights / self.weights.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample_with_components(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Samples ``x: (n, D)`` and the component each came from, ``k: (n,)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        return self.means[k] + self.stds[k, None] * noise, k

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Samples ``x: (n, D)``."""
        return self.sample_with_components(n, generator)[0]

    def noised(self, sigma: float) -> GaussianMixture:
        """The law of ``x0 + sigma n`` for ``x0`` from this mixture and ``n ~ N(0, I)``."""
        return GaussianMixture(self.means, (self.stds**2 + sigma**2).sqrt(), self.weights)

    def _variances(self, sigma: float | Tensor, like: Tensor) -> Tensor:
        """Per-component variances of the noised mixture: (1, K), or (N, K) for per-sample sigma."""
        return self.stds.to(like) ** 2 + _column(sigma, like) ** 2

    def _log_joint(self, x: Tensor, variances: Tensor) -> Tensor:
        """``log w_k + log N(x; mu_k, v_k I)`` for float64 ``x: (N, D)``: (N, K)."""
        squared_distances = (x[:, None, :] - self.means.to(x)).square().sum(-1)
        log_normal = -0.5 * (squared_distances / variances + self.dim * (_LOG_2PI + variances.log()))
        return self.weights.to(x).log() + log_normal

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """``log p_sigma(x)`` of the mixture noised to level sigma; x: (N, D) -> (N,)."""
        x64 = x.double()
        return self._log_joint(x64, self._variances(sigma, x64)).logsumexp(-1).to(x.dtype)

    def posterior_weights(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """Responsibilities ``P(k | x)`` under the noised mixture; x: (N, D) -> (N, K), rows sum to 1."""
        x64 = x.double()
        return self._log_joint(x64, self._variances(sigma, x64)).softmax(-1).to(x.dtype)

    def score(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """``grad_x log p_sigma(x) = sum_k P(k | x) (mu_k - x) / v_k``; x: (N, D) -> (N, D)."""
        x64 = x.double()
        variances = self._variances(sigma, x64)
        precisions = self._log_joint(x64, variances).softmax(-1) / variances  # (N, K): P(k | x) / v_k
        score = precisions @ self.means.to(x64) - precisions.sum(-1, keepdim=True) * x64
        return score.to(x.dtype)

    def denoiser(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Ideal denoiser ``E[x0 | x]`` by Tweedie's formula, ``x + sigma^2 score``; x: (N, D) -> (N, D)."""
        x64 = x.double()
        return (x64 + _column(sigma, x64) ** 2 * self.score(x64, sigma)).to(x.dtype)


def gaussian(mean: tuple[float, ...] = (0.0, 0.0), std: float = 1.0) -> GaussianMixture:
    """``N(mean, std^2 I)`` as a one-component mixture, so it shares the mixture's score and denoiser."""
    return GaussianMixture(torch.tensor([mean]), torch.tensor([std]), torch.ones(1))


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equally weighted components evenly spaced on a circle, the first at angle 0."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, torch.full((8,), std), torch.ones(8))


def twenty_five_gaussians_mixture(spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """Twenty-five equally weighted components on a centred 5 x 5 grid."""
    ticks = spacing * torch.arange(-2.0, 3.0)
    means = torch.cartesian_prod(ticks, ticks)
    return GaussianMixture(means, torch.full((25,), std), torch.ones(25))


@dataclass(frozen=True)
class Checkerboard:
    """Uniform density on the dark squares of a centred board; square (0, 0), bottom left, is dark."""

    squares_per_side: int = 4
    square_size: float = 1.0

    @property
    def half_width(self) -> float:
        return self.squares_per_side * self.square_size / 2

    def _dark_corners(self) -> Tensor:
        """Bottom-left corners of the dark squares: (M, 2)."""
        cells = torch.cartesian_prod(torch.arange(self.squares_per_side), torch.arange(self.squares_per_side))
        dark = cells[cells.sum(-1) % 2 == 0]
        return dark * self.square_size - self.half_width

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Samples ``x: (n, 2)``: a dark square uniformly, then a uniform point in it."""
        corners = self._dark_corners()
        square = torch.randint(len(corners), (n,), generator=generator)
        return corners[square] + self.square_size * torch.rand(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        """``-log(dark area)`` on the dark squares, ``-inf`` elsewhere; x: (N, 2) -> (N,)."""
        cells = torch.floor((x + self.half_width) / self.square_size)
        on_board = ((cells >= 0) & (cells < self.squares_per_side)).all(-1)
        dark = cells.sum(-1) % 2 == 0
        dark_area = len(self._dark_corners()) * self.square_size**2
        return x.new_full(x.shape[:-1], -math.log(dark_area)).masked_fill(~(on_board & dark), -math.inf)


@dataclass(frozen=True)
class Banana:
    """``x1 = width u1``, ``x2 = thickness u2 + curvature (x1^2 - width^2)`` for ``u ~ N(0, I)``.

    A Gaussian bent along a parabola; subtracting ``width^2`` (the mean of ``x1^2``) centres it at the origin.
    The map from ``u`` is a shear along ``x2`` after scaling, so the density factorises in closed form.
    """

    width: float = 1.5
    thickness: float = 0.25
    curvature: float = 0.5

    def _bend(self, x1: Tensor) -> Tensor:
        return self.curvature * (x1**2 - self.width**2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Samples ``x: (n, 2)``."""
        u = torch.randn(n, 2, generator=generator)
        x1 = self.width * u[:, 0]
        return torch.stack([x1, self.thickness * u[:, 1] + self._bend(x1)], dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        """x: (N, 2) -> (N,)."""
        x1, x2 = x.unbind(-1)
        return _normal_log_prob(x1, self.width) + _normal_log_prob(x2 - self._bend(x1), self.thickness)


_DENSITIES: dict[str, Callable[[], Density]] = {
    "gaussian": gaussian,
    "eight_gaussians": eight_gaussians_mixture,
    "twenty_five_gaussians": twenty_five_gaussians_mixture,
    "checkerboard": Checkerboard,
    "central_banana": Banana,
}


def _torch_rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _standardised_moons(n: int, rng: np.random.RandomState, noise: float = 0.1) -> np.ndarray:
    """``make_moons`` shifted and scaled by its population moments, so the result does not depend on n.

    Per moon, ``x`` is ``cos t`` or ``1 - cos t`` and ``y`` is ``sin t`` or ``1/2 - sin t`` for ``t`` uniform on
    ``[0, pi]``: mean ``(1/2, 1/4)``, variances ``3/4`` and ``9/16 - 1/pi``, plus ``noise^2`` each.
    """
    points, _ = make_moons(n, noise=noise, random_state=rng)
    mean = np.array([0.5, 0.25])
    std = np.sqrt(np.array([3 / 4, 9 / 16 - 1 / math.pi]) + noise**2)
    return (points - mean) / std


def _two_moons(n: int, seed: int) -> np.ndarray:
    return _standardised_moons(n, np.random.RandomState(seed))


def _swiss_roll(n: int, seed: int) -> np.ndarray:
    """``t (cos t, sin t)`` for ``t`` uniform on ``[3 pi / 2, 9 pi / 2]``, centred by its mean ``(2, 2 / (3 pi))``."""
    points, _ = make_swiss_roll(n, noise=0.5, random_state=seed)
    return (points[:, [0, 2]] - np.array([2, 2 / (3 * math.pi)])) / 5


def _circles(n: int, seed: int) -> np.ndarray:
    points, _ = make_circles(n, factor=0.5, noise=0.05, random_state=seed)
    return 2 * points


def _s_curve(n: int, seed: int) -> np.ndarray:
    points, _ = make_s_curve(n, noise=0.1, random_state=seed)
    return points[:, [0, 2]]


def _pinwheel(n: int, seed: int, arms: int = 5) -> Tensor:
    """Gaussian blobs at radius 1, each rotated by an angle that grows with the radius, which curls it."""
    generator = _torch_rng(seed)
    arm = torch.randint(arms, (n,), generator=generator)
    radial = 1 + 0.3 * torch.randn(n, generator=generator)
    across = 0.1 * torch.randn(n, generator=generator)
    angle = arm * (2 * math.pi / arms) + 0.25 * radial.exp()
    x = radial * angle.cos() - across * angle.sin()
    y = radial * angle.sin() + across * angle.cos()
    return 2 * torch.stack([x, y], dim=1)


def _spiral(n: int, seed: int) -> Tensor:
    """Two point-symmetric Archimedean arms; ``t = 3 pi sqrt(u)`` spreads points evenly along the arc."""
    generator = _torch_rng(seed)
    t = 3 * math.pi * torch.rand(n, generator=generator).sqrt()
    arm = 2 * torch.randint(2, (n,), generator=generator) - 1
    points = arm[:, None] * (t / 3)[:, None] * torch.stack([t.cos(), t.sin()], dim=1)
    return points + 0.1 * torch.randn(n, 2, generator=generator)


def _moon_scatter(n: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    n_scatter = n // 10
    points = np.concatenate([_standardised_moons(n - n_scatter, rng), rng.uniform(-3, 3, (n_scatter, 2))])
    return points[rng.permutation(n)]  # mixed, so that any prefix is a sample of the same law


def _moon_circles(n: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    n_circles = n // 2
    circles, _ = make_circles(n_circles, factor=0.75, noise=0.03, random_state=rng)
    points = np.concatenate([_standardised_moons(n - n_circles, rng), 4 * circles])
    return points[rng.permutation(n)]


def _from_density(name: str) -> Callable[[int, int], Tensor]:
    return lambda n, seed: _DENSITIES[name]().sample(n, _torch_rng(seed))


_SAMPLERS: dict[str, Callable[[int, int], Tensor | np.ndarray]] = {
    "gaussian": _from_density("gaussian"),
    "eight_gaussians": _from_density("eight_gaussians"),
    "twenty_five_gaussians": _from_density("twenty_five_gaussians"),
    "two_moons": _two_moons,
    "swiss_roll": _swiss_roll,
    "checkerboard": _from_density("checkerboard"),
    "pinwheel": _pinwheel,
    "circles": _circles,
    "spiral": _spiral,
    "s_curve": _s_curve,
    "moon_scatter": _moon_scatter,
    "central_banana": _from_density("central_banana"),
    "moon_circles": _moon_circles,
}

TOY_DATASETS: tuple[str, ...] = tuple(_SAMPLERS)


def _check_name(name: str) -> None:
    if name not in _SAMPLERS:
        close = difflib.get_close_matches(name, TOY_DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown toy dataset {name!r}.{hint} Valid names: {', '.join(TOY_DATASETS)}.")


def sample_toy(name: str, n: int, seed: int = 0) -> Tensor:
    """``n`` points of the toy set ``name`` (see the module docstring), the same for the same seed: (n, 2) float32."""
    _check_name(name)
    return torch.as_tensor(_SAMPLERS[name](n, seed), dtype=torch.float32)


def has_density(name: str) -> bool:
    """Whether :func:`density` knows the toy set ``name`` in closed form."""
    _check_name(name)
    return name in _DENSITIES


def density(name: str) -> Density:
    """The closed-form distribution that :func:`sample_toy` draws ``name`` from.

    A :class:`GaussianMixture` for ``gaussian``, ``eight_gaussians`` and ``twenty_five_gaussians`` (with score
    and denoiser), a :class:`Checkerboard` or a :class:`Banana`. Raises ValueError for sets without one.
    """
    if not has_density(name):
        raise ValueError(f"{name!r} has no closed-form density; these do: {', '.join(_DENSITIES)}.")
    return _DENSITIES[name]()
