"""Samplers on a discrete DDPM schedule: ancestral sampling (Ho et al. 2020) and DDIM (Song et al. 2021).

Both run on a subsequence of the ``T`` training steps ("respacing"), so the number of network evaluations
(NFE) is the number of steps chosen. They take any denoiser ``D(x; sigma)`` and hand it the VP state ``x_t``
through :func:`~diffbook.samplers.common.denoise_vp`; ``eps_hat`` is recovered exactly from ``x0_hat``.

With a zero-terminal-SNR schedule, "trailing" spacing starts at ``t = T - 1`` where ``alpha_bar = 0``: ``x_T``
is the noise itself, the denoiser's VP form gives ``x0_hat`` there (``-v_hat`` for v-prediction), and
``eps_hat = x_T`` exactly, so the first update is finite.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from diffbook.diffusion.ddpm import DDPM
from diffbook.samplers.common import (
    DenoiserFn,
    SamplerOutput,
    TrajectoryRecorder,
    denoise_vp,
    denoise_vp_variance,
    randn_like,
)

Spacing = Literal["linspace", "leading", "trailing"]
Variance = Literal["large", "small", "learned"]


def timesteps(T: int, steps: int, spacing: Spacing = "linspace") -> list[int]:
    """A decreasing subsequence of ``{0, ..., T-1}`` with ``steps`` entries.

    ``linspace`` spans both ends; ``leading`` is DDIM's ``0, T/steps, ...``; ``trailing`` starts at ``T-1``
    and steps down by ``T/steps`` (Lin et al. 2024 recommend it with zero terminal SNR).
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T={T}], got {steps}")
    if spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps).round().long()
    elif spacing == "leading":
        ts = torch.arange(steps) * (T // steps)
    elif spacing == "trailing":
        ts = (torch.arange(T, 0, -T / steps).round().long() - 1).flip(0)
    else:
        raise ValueError(f"spacing must be 'linspace', 'leading' or 'trailing', got {spacing!r}")
    return sorted(set(ts.tolist()), reverse=True)


def _step_quantities(process: DDPM, t: int, x_t: Tensor, denoiser: DenoiserFn, class_labels) -> tuple:
    alpha_bar = float(process.alpha_bar[t])
    x0 = denoise_vp(denoiser, x_t, float(process.sigmas[t]), class_labels)
    return alpha_bar, x0


def ancestral_variance(
    variance: Variance, beta: float, alpha_bar: float, alpha_bar_prev: float, v: Tensor | None = None
) -> float | Tensor:
    """The variance of one ancestral step from ``t`` to the previous kept step (``beta = 1 - ab / ab_prev``).

    ``"large"``: ``beta``; ``"small"``: the posterior variance ``beta~ = beta (1 - ab_prev) / (1 - ab)``;
    ``"learned"``: ADM's learned range (Nichol & Dhariwal 2021, Eq. 15), ``exp(f log beta + (1 - f) log beta~)``
    with ``f = (v + 1) / 2`` from the network's variance channels ``v: (B, ...)``, so ``v = 1`` is ``"large"``
    and ``v = -1`` is ``"small"``. With respacing, ``beta`` and ``beta~`` are those of the respaced chain, as in ADM.
    """
    small = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
    if variance == "large":
        return beta
    if variance == "small":
        return small
    if variance != "learned" or v is None:
        raise ValueError(f"variance must be 'large', 'small' or 'learned' (with the network's v), got {variance!r}")
    frac = (v + 1) / 2
    return torch.exp(frac * math.log(beta) + (1 - frac) * math.log(small))


def ddim_step(x: Tensor, x0: Tensor, alpha_bar: float, alpha_bar_prev: float, s: float) -> Tensor:
    """DDIM's update without its noise term as the paper writes it (Song et al. 2021, Eq. 12): the noise
    ``eps_hat`` implied by ``x0_hat``, then ``sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps_hat``.

    ``x, x0 = x0_hat: (B, ...)``, the VP state at the step with ``alpha_bar`` -> the state at ``alpha_bar_prev``
    before ``s z`` is added, ``(B, ...)``. The root's argument is floored at 0 against rounding (``eta = 1``).
    """
    eps = (x - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5
    return alpha_bar_prev**0.5 * x0 + max(1 - alpha_bar_prev - s**2, 0.0) ** 0.5 * eps


def fast_ddim_step(x: Tensor, x0: Tensor, alpha_bar: float, alpha_bar_prev: float, s: float) -> Tensor:
    """:func:`ddim_step` with ``eps_hat`` substituted, ``k x + (sqrt(ab_prev) - k sqrt(ab)) x0_hat`` for
    ``k = sqrt(1 - ab_prev - s^2) / sqrt(1 - ab)``: two kernels instead of five."""
    k = max(1 - alpha_bar_prev - s**2, 0.0) ** 0.5 / (1 - alpha_bar) ** 0.5
    return torch.add(x0 * (alpha_bar_prev**0.5 - k * alpha_bar**0.5), x, alpha=k)


@torch.no_grad()
def ddpm_sample(
    denoiser: DenoiserFn,
    process: DDPM,
    noise: Tensor,
    steps: int | None = None,
    variance: Variance = "large",
    class_labels: Tensor | None = None,
    clip_denoised: float | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SamplerOutput:
    """Ancestral sampling from ``x_T = noise: (B, ...)``.

    ``variance='large'`` is ``sigma_t^2 = beta_t`` (Ho et al.'s CIFAR-10 choice), ``'small'`` the posterior
    variance ``beta~_t``, ``'learned'`` ADM's interpolation between them by the network's variance channels
    (a ``learn_sigma`` network; see :func:`ancestral_variance`). The last step returns the posterior mean.
    ``clip_denoised`` clamps ``x0_hat`` to ``[-c, c]`` (DDPM clips images to [-1, 1]). NFE = number of steps
    (``T`` by default).
    """
    ts = timesteps(process.T, steps or process.T)
    record = TrajectoryRecorder(return_trajectory)
    x = noise
    for i, t in enumerate(ts):
        if variance == "learned":
            alpha_bar = float(process.alpha_bar[t])
            x0, v = denoise_vp_variance(denoiser, x, float(process.sigmas[t]), class_labels)
        else:
            (alpha_bar, x0), v = _step_quantities(process, t, x, denoiser, class_labels), None
        record.vp(x, float(process.sigmas[t]))
        if clip_denoised is not None:
            x0 = x0.clamp(-clip_denoised, clip_denoised)
        alpha_bar_prev = float(process.alpha_bar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        beta = 1 - alpha_bar / alpha_bar_prev
        mean = (alpha_bar_prev**0.5 * beta * x0 + (1 - beta) ** 0.5 * (1 - alpha_bar_prev) * x) / (1 - alpha_bar)
        if i + 1 == len(ts):
            x = mean
        else:
            var = ancestral_variance(variance, beta, alpha_bar, alpha_bar_prev, v)
            x = mean + var**0.5 * randn_like(x, generator)
    record(x, 0.0)
    return record.output(x, nfe=len(ts))


@torch.no_grad()
def ddim_sample(
    denoiser: DenoiserFn,
    process: DDPM,
    noise: Tensor,
    steps: int = 50,
    eta: float = 0.0,
    spacing: Spacing = "linspace",
    class_labels: Tensor | None = None,
    clip_denoised: float | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SamplerOutput:
    """DDIM from ``x_T = noise: (B, ...)``; ``eta = 0`` is deterministic, ``eta = 1`` matches DDPM's posterior.

    ``x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps_hat + s z`` with
    ``s = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev)``. NFE = ``steps``.
    """
    ts = timesteps(process.T, steps, spacing)
    record = TrajectoryRecorder(return_trajectory)
    x = noise
    for i, t in enumerate(ts):
        alpha_bar, x0 = _step_quantities(process, t, x, denoiser, class_labels)
        record.vp(x, float(process.sigmas[t]))
        if clip_denoised is not None:
            x0 = x0.clamp(-clip_denoised, clip_denoised)
        alpha_bar_prev = float(process.alpha_bar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        s = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
        x = fast_ddim_step(x, x0, alpha_bar, alpha_bar_prev, s)
        if s > 0:
            x = x + s * randn_like(x, generator)
    record(x, 0.0)
    return record.output(x, nfe=len(ts))
