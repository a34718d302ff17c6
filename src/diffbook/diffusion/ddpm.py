"""The discrete DDPM / variance-preserving process (Ho et al. 2020; cosine schedule: Nichol & Dhariwal 2021).

Steps are indexed ``t = 0, ..., T-1`` (the papers' ``1, ..., T``). The forward process is
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``. Dividing by ``sqrt(alpha_bar_t)`` gives EDM's
variance-exploding coordinates ``x = x_0 + sigma_t eps`` with ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``;
every denoiser in the package works in those coordinates, so one sampler code base serves every process.

The process owns the network's parametrisation (eps, x0 or v): :meth:`DDPM.scalings` writes each as EDM's
``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``, with ``c_in x = x_t`` and ``c_noise = t``.

Zero terminal SNR (Lin et al. 2024, "Common diffusion noise schedules are flawed", Alg. 1) makes the last step
pure noise: ``alpha_bar_{T-1} = 0``, so ``sigma_{T-1} = inf`` and the variance-exploding state ``x_t / 0`` does
not exist. The variance-preserving state ``x_t`` does, and so does the network's input there (``x_t`` itself).
:meth:`DDPM.vp_scalings` therefore writes the denoiser on the VP state, ``D = c_skip x_t + c_out F(x_t; t)``,
with coefficients that stay finite at ``sigma = inf`` (v-prediction: ``x0_hat = -v_hat`` there). The denoiser,
the losses and the DDPM/DDIM samplers evaluate the network through it (see :mod:`diffbook.diffusion.denoiser`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from diffbook.diffusion.parametrization import append_dims, vp_coefficients

Schedule = Literal["linear", "cosine", "scaled_linear"]
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


def scaled_linear_betas(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's schedule (diffusers' ``scaled_linear``): ``sqrt(beta)`` linear from start to end."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(alpha_bar: Tensor) -> Tensor:
    """Lin et al. 2024, Alg. 1: shift ``sqrt(alpha_bar)`` so that its last value is 0, then scale it so that its
    first value is unchanged. ``alpha_bar: (T,)`` decreasing -> ``(T,)`` with the last entry exactly 0."""
    root = alpha_bar.sqrt()
    first, last = root[0], root[-1]
    if not first > last:
        raise ValueError("zero terminal SNR needs a decreasing alpha_bar with at least two steps")
    return ((root - last) * (first / (first - last))) ** 2


def betas_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` (``alpha_bar_{-1} = 1``); ``beta = 1`` where ``alpha_bar = 0``."""
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / previous


@dataclass
class DDPM:
    """A discrete variance-preserving process with ``T`` steps and a network parametrisation.

    ``beta_start`` and ``beta_end`` bound the linear and scaled-linear schedules (Stable Diffusion's are
    ``scaled_linear`` from 0.00085 to 0.012). ``zero_terminal_snr`` rescales ``alpha_bar`` so that the last step is
    pure noise (:func:`rescale_zero_terminal_snr`); then ``sigmas[-1] = inf``, and epsilon-prediction is refused,
    since ``x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)`` is undefined there.

    Attributes (float64, shape ``(T,)``): ``betas``, ``alpha_bar``, ``sigmas`` (EDM noise levels).
    """

    T: int = 1000
    schedule: Schedule = "linear"
    prediction: NetworkPrediction = "eps"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    betas: Tensor = field(init=False, repr=False)
    alpha_bar: Tensor = field(init=False, repr=False)
    sigmas: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be a positive number of steps, got {self.T}")
        if self.prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {self.prediction!r}")
        if self.zero_terminal_snr and self.prediction == "eps":
            raise ValueError("prediction='eps' cannot recover x0 at zero terminal SNR; use 'v' (or 'x0')")
        if self.zero_terminal_snr and self.T < 3:
            # One step at sigma = inf and at least two finite ones, for sigma_to_t to interpolate between.
            raise ValueError(f"zero terminal SNR needs T >= 3 steps, got {self.T}")
        # The tables are host-side constants, indexed with Python ints and moved where needed: built on the CPU
        # whatever the default device (a model built under torch.device("meta") still gets real numbers).
        with torch.device("cpu"):
            self._build_tables()

    def _build_tables(self) -> None:
        if self.schedule == "linear":
            self.betas = linear_betas(self.T, self.beta_start, self.beta_end)
        elif self.schedule == "cosine":
            self.betas = cosine_betas(self.T)
        elif self.schedule == "scaled_linear":
            self.betas = scaled_linear_betas(self.T, self.beta_start, self.beta_end)
        else:
            raise ValueError(f"schedule must be 'linear', 'cosine' or 'scaled_linear', got {self.schedule!r}")
        self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)
        if self.zero_terminal_snr:
            # alpha_bar is set from the rescaled values, not re-accumulated from betas, so its last entry is 0.
            self.alpha_bar = rescale_zero_terminal_snr(self.alpha_bar)
            self.betas = betas_from_alpha_bar(self.alpha_bar)
        self.sigmas = ((1 - self.alpha_bar) / self.alpha_bar).sqrt()  # inf where alpha_bar = 0
        self._log_sigmas = self.sigmas[: self.T - 1 if self.zero_terminal_snr else self.T].log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The largest *finite* noise level: EDM's samplers start from ``sigma_max * noise``, which needs one.
        With zero terminal SNR the last step (``sigma = inf``) is reached by the DDPM and DDIM samplers only."""
        return float(self.sigmas[-2 if self.zero_terminal_snr else -1])

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Forward noising in VP coordinates. ``x0, eps: (B, ...)``, ``t: (B,)`` integer steps."""
        alpha_bar = append_dims(self.alpha_bar.to(x0.device)[t], x0.ndim).to(x0.dtype)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The (fractional) step whose noise level is ``sigma``, by linear interpolation in ``log sigma``.

        Exact on the grid; lets EDM's samplers query a DDPM network between its training steps. Levels outside
        the finite grid are clamped to its ends, and ``sigma = inf`` is the last step ``T - 1``.
        """
        log_sigmas = self._log_sigmas.to(sigma.device)
        log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
        upper = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        lo, hi = log_sigmas[upper - 1], log_sigmas[upper]
        frac = (log_sigma - lo) / (hi - lo)
        t = torch.where(sigma.isinf(), float(self.T - 1), upper - 1 + frac)
        return t.to(sigma.dtype)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma: (B,)``; each ``(B,)``.

        For the variance-exploding input ``x``, so finite ``sigma`` only; see :meth:`vp_scalings` for ``inf``.
        """
        c_in = 1 / (1 + sigma**2).sqrt()
        c_noise = self.sigma_to_t(sigma)
        if self.prediction == "eps":
            return torch.ones_like(sigma), -sigma, c_in, c_noise
        if self.prediction == "x0":
            return torch.zeros_like(sigma), torch.ones_like(sigma), c_in, c_noise
        return c_in**2, -sigma * c_in, c_in, c_noise

    def vp_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)``, each ``(B,)``, such that ``D = c_skip x_t + c_out F(c_in x_t; c_noise)``
        on the variance-preserving state ``x_t = x / sqrt(1 + sigma^2)``: ``c_in = 1``, ``c_noise = t``, and
        ``x0_hat`` is the prediction's conversion with ``alpha = sqrt(alpha_bar)``, ``s = sqrt(1 - alpha_bar)``.

        Finite at ``sigma = inf`` (``alpha = 0``, ``s = 1``) for v (``x0_hat = -F``) and x0-prediction.
        """
        alpha, s = vp_coefficients(sigma)
        ones = torch.ones_like(sigma)
        c_noise = self.sigma_to_t(sigma)
        if self.prediction == "eps":
            return 1 / alpha, -sigma, ones, c_noise
        if self.prediction == "x0":
            return torch.zeros_like(sigma), ones, ones, c_noise
        return alpha, -s, ones, c_noise

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training noise levels: the step ``t`` is uniform on ``{0, ..., T-1}`` as in ``L_simple``."""
        t = torch.randint(0, self.T, (n,), generator=generator, device=generator.device if generator else None)
        return self.sigmas[t.cpu()].to(device=device, dtype=torch.float32)
