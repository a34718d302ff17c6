"""EDM's formulation (Karras et al. 2022, Table 1): one denoiser ``D(x; sigma)`` with three preconditionings.

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

    def sigma(self, t: Tensor) -> Tensor:
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
