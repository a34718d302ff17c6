"""EDM's formulation (Karras et al. 2022, Table 1): one denoiser ``D(x; sigma)`` with three preconditionings,
and EDM's noise levels (Eq. 5), which the samplers step through and consistency training draws from.

``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))`` in the variance-exploding
coordinates ``x = x_0 + sigma n``. Each class below is a *process*: it owns the scalings, the training
distribution of ``sigma`` and the range of noise levels its samplers use. The raw network ``F`` never knows
which process wraps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM's sampling levels (Eq. 5): ``steps`` noise levels ``sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min``,
    then ``sigma_N = 0``.

    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``. Float64, (N+1,).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    return torch.cat([_rho_spaced(steps, sigma_max, sigma_min, rho), torch.zeros(1, dtype=torch.float64)])


def karras_grid(N: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The levels of :func:`karras_sigmas` in increasing order and without the final zero, the grid that
    consistency training draws its pairs of levels from (iCT, Song & Dhariwal 2023; :mod:`diffbook.objectives.bcm`).

    ``sigma_i = (sigma_min^(1/rho) + i/(N-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``: increasing, (N,).
    Float64.
    """
    if N < 2:
        raise ValueError(f"the grid needs N >= 2 noise levels, got {N}")
    return _rho_spaced(N, sigma_min, sigma_max, rho)


def _rho_spaced(n: int, first: float, last: float, rho: float) -> Tensor:
    """``n`` levels from ``first`` to ``last``, evenly spaced in ``sigma^(1/rho)``: float64, (n,).

    Spaced from ``first``, so that each order rounds as it always has: the decreasing levels flipped are not the
    increasing ones bit for bit (up to 35 ulp apart after the power ``rho``).
    """
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    start, end = first ** (1 / rho), last ** (1 / rho)
    return (start + ramp * (end - start)) ** rho


def _draw(n: int, generator: torch.Generator | None, device, sampler) -> Tensor:
    gen_device = generator.device if generator is not None else None
    return sampler((n,), generator=generator, device=gen_device).to(device=device, dtype=torch.float32)


@dataclass
class EDM:
    """EDM preconditioning: unit-variance input and target, ``c_skip`` minimising error amplification."""

    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        total = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = sigma * self.sigma_data / total.sqrt()
        c_in = 1 / total.sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``ln sigma ~ N(P_mean, P_std^2)``."""
        return (_draw(n, generator, device, torch.randn) * self.P_std + self.P_mean).exp()


@dataclass
class VP:
    """Continuous variance-preserving SDE (Song et al. 2021) in EDM's form; ``c_noise = (M - 1) t(sigma)``."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5

    def sigma(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.epsilon_t))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(1.0))

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c_in = 1 / (sigma**2 + 1).sqrt()
        return torch.ones_like(sigma), -sigma, c_in, (self.M - 1) * self.sigma_inv(sigma)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``t ~ U(epsilon_t, 1)``, ``sigma = sigma(t)``."""
        t = _draw(n, generator, device, torch.rand) * (1 - self.epsilon_t) + self.epsilon_t
        return self.sigma(t).to(torch.float32)


@dataclass
class VE:
    """Variance-exploding SDE (Song et al. 2021) in EDM's form; ``sigma`` log-uniform on the training range."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        log_lo, log_hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (_draw(n, generator, device, torch.rand) * (log_hi - log_lo) + log_lo).exp()
