"""EDM's samplers (Karras et al. 2022, Algorithms 1-2): Euler and Heun on the probability-flow ODE
``dx/dsigma = (x - D(x; sigma)) / sigma``, optionally with "churn" (stochastic noise injection); and the same
ODE between any two positive levels, either way (:func:`ode_flow`: DDIM inversion, exact reference flows). The
levels EDM samples on are :func:`~diffbook.diffusion.edm.karras_sigmas`."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from diffbook.samplers.common import DenoiserFn, SamplerOutput, TrajectoryRecorder, denoise, randn_like


def euler_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step of ``dx/dsigma = (x - D(x; sigma)) / sigma`` as EDM writes it (Algorithm 2, lines 7-8).

    ``x, denoised = D(x; sigma): (B, ...)`` -> the state at ``sigma_next``, ``(B, ...)``.
    """
    d = (x - denoised) / sigma
    return x + (sigma_next - sigma) * d


def fast_euler_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """:func:`euler_step` as one interpolation towards ``D``, ``x + (s' - s) (x - D) / s = lerp(x, D, 1 - s'/s)``:
    one kernel instead of three."""
    return torch.lerp(x, denoised, 1 - sigma_next / sigma)


def heun_step(
    x: Tensor, denoised: Tensor, x_next: Tensor, denoised_next: Tensor, sigma: float, sigma_next: float
) -> Tensor:
    """Heun's correction of an Euler step as EDM writes it (Algorithm 2, lines 10-11): the step from ``x`` with the
    mean of the slopes at both ends, ``x + (s' - s) (d + d') / 2``.

    ``x, denoised = D(x; sigma)``, the Euler step's end ``x_next`` and ``denoised_next = D(x_next; sigma_next)``,
    all ``(B, ...)`` -> the corrected state at ``sigma_next``, ``(B, ...)``.
    """
    d = (x - denoised) / sigma
    d_next = (x_next - denoised_next) / sigma_next
    return x + (sigma_next - sigma) * (d + d_next) / 2


def fast_heun_step(
    x: Tensor, denoised: Tensor, x_next: Tensor, denoised_next: Tensor, sigma: float, sigma_next: float
) -> Tensor:
    """:func:`heun_step` with the step's scalar factor folded into the final add (``torch.add`` with ``alpha``)."""
    slopes = (x - denoised) / sigma + (x_next - denoised_next) / sigma_next
    return torch.add(x, slopes, alpha=(sigma_next - sigma) / 2)


@torch.no_grad()
def edm_sample(
    denoiser: DenoiserFn,
    noise: Tensor,
    sigmas: Tensor,
    solver: Literal["heun", "euler"] = "heun",
    class_labels: Tensor | None = None,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SamplerOutput:
    """Integrate from ``x = sigmas[0] * noise`` (``noise: (B, ...)`` standard normal) to ``sigmas[-1] = 0``.

    With ``N = len(sigmas) - 1`` steps, Euler costs ``N`` evaluations and Heun ``2N - 1`` (the last step to
    ``sigma = 0`` is Euler only). ``S_churn > 0`` raises the noise level by ``gamma = min(S_churn/N, sqrt2 - 1)``
    for ``sigma`` in ``[S_min, S_max]`` before each step.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    levels: list[float] = sigmas.tolist()
    steps = len(levels) - 1
    record = TrajectoryRecorder(return_trajectory)
    x = noise * levels[0]
    nfe = 0
    for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
        record(x, sigma)
        gamma = min(S_churn / steps, 2**0.5 - 1) if S_min <= sigma <= S_max else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + (sigma_hat**2 - sigma**2) ** 0.5 * S_noise * randn_like(x, generator)
        denoised = denoise(denoiser, x, sigma_hat, class_labels)
        x_next = fast_euler_step(x, denoised, sigma_hat, sigma_next)
        nfe += 1
        if solver == "heun" and sigma_next > 0:
            denoised_next = denoise(denoiser, x_next, sigma_next, class_labels)
            x_next = fast_heun_step(x, denoised, x_next, denoised_next, sigma_hat, sigma_next)
            nfe += 1
        x = x_next
    record(x, 0.0)
    return record.output(x, nfe)


@torch.no_grad()
def ode_flow(
    denoiser: DenoiserFn,
    x: Tensor,
    t: float,
    u: float,
    steps: int,
    solver: Literal["heun", "euler"] = "heun",
    class_labels: Tensor | None = None,
) -> SamplerOutput:
    """Carry ``x: (B, ...)`` from noise level ``t`` to level ``u`` along ``dx/dsigma = (x - D(x; sigma)) / sigma``,
    down (``u < t``, generation) or up (``u > t``, inversion): ``steps`` steps uniform in ``ln sigma``.

    One Euler step is a DDIM step, ``x <- (b/a) x + (1 - b/a) D(x; a)``; upwards, Euler is DDIM inversion. Heun
    corrects every step, the last included (``u > 0``). NFE: ``steps`` (Euler) or ``2 steps`` (Heun). With the
    exact denoiser of a toy mixture and a thousand Heun steps this is the exact flow map, to about 1e-4.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    if t <= 0 or u <= 0 or steps < 1:
        raise ValueError(f"need positive levels and steps >= 1, got t={t}, u={u}, steps={steps}")
    sigmas = torch.linspace(math.log(t), math.log(u), steps + 1, dtype=torch.float64).exp().tolist()
    nfe = 0
    for a, b in zip(sigmas[:-1], sigmas[1:], strict=True):
        slope = (x - denoise(denoiser, x, a, class_labels)) / a
        x_next = x + (b - a) * slope
        nfe += 1
        if solver == "heun":
            slope_next = (x_next - denoise(denoiser, x_next, b, class_labels)) / b
            x_next = x + (b - a) * (slope + slope_next) / 2
            nfe += 1
        x = x_next
    return SamplerOutput(x, nfe)
