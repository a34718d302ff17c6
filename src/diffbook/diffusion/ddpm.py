"""The discrete DDPM / variance-preserving process (Ho et al. 2020; cosine schedule: Nichol & Dhariwal 2021).

Steps are indexed ``t = 0, ..., T-1`` (the papers' ``1, ..., T``). The forward process is
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``. Dividing by ``sqrt(alpha_bar_t)`` gives EDM's
variance-exploding coordinates ``x = x_0 + sigma_t eps`` with ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``;
every denoiser in the package works in those coordinates, so one sampler code base serves every process.

The process owns the network's parametrisation (eps, x0 or v): :meth:`DDPM.scalings` writes each as EDM's
``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``, with ``c_in x = x_t`` and ``c_noise = t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from diffbook.diffusion.parametrization import append_dims

Schedule = Literal["linear", "cosine"]
NetworkPrediction = Literal["eps", "x0", "v"]


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear schedule, rescaled so that any ``T`` gives the same continuous-time process.

    With ``T = 1000`` this is exactly Ho et al.'s ``linspace(1e-4, 0.02, 1000)``.
    """
    scale = 1000 / T
    return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)


def cosine_betas(T: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2((t/T + s)/(1 + s) pi/2)``."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass
class DDPM:
    """A discrete variance-preserving process with ``T`` steps and a network parametrisation.

    Attributes (float64, shape ``(T,)``): ``betas``, ``alpha_bar``, ``sigmas`` (EDM noise levels).
    """

    T: int = 1000
    schedule: Schedule = "linear"
    prediction: NetworkPrediction = "eps"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    betas: Tensor = field(init=False, repr=False)
    alpha_bar: Tensor = field(init=False, repr=False)
    sigmas: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be a positive number of steps, got {self.T}")
        if self.prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {self.prediction!r}")
        if self.schedule == "linear":
            self.betas = linear_betas(self.T, self.beta_start, self.beta_end)
        elif self.schedule == "cosine":
            self.betas = cosine_betas(self.T)
        else:
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)
        self.sigmas = ((1 - self.alpha_bar) / self.alpha_bar).sqrt()
        self._log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Forward noising in VP coordinates. ``x0, eps: (B, ...)``, ``t: (B,)`` integer steps."""
        alpha_bar = append_dims(self.alpha_bar.to(x0.device)[t], x0.ndim).to(x0.dtype)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The (fractional) step whose noise level is ``sigma``, by linear interpolation in ``log sigma``.

        Exact on the grid; lets EDM's samplers query a DDPM network between its training steps.
        """
        log_sigmas = self._log_sigmas.to(sigma.device)
        log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
        upper = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.T - 1)
        lo, hi = log_sigmas[upper - 1], log_sigmas[upper]
        frac = (log_sigma - lo) / (hi - lo)
        return (upper - 1 + frac).to(sigma.dtype)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma: (B,)``; each ``(B,)``."""
        c_in = 1 / (1 + sigma**2).sqrt()
        c_noise = self.sigma_to_t(sigma)
        if self.prediction == "eps":
            return torch.ones_like(sigma), -sigma, c_in, c_noise
        if self.prediction == "x0":
            return torch.zeros_like(sigma), torch.ones_like(sigma), c_in, c_noise
        return c_in**2, -sigma * c_in, c_in, c_noise

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training noise levels: the step ``t`` is uniform on ``{0, ..., T-1}`` as in ``L_simple``."""
        t = torch.randint(0, self.T, (n,), generator=generator, device=generator.device if generator else None)
        return self.sigmas[t.cpu()].to(device=device, dtype=torch.float32)
