"""Isotropy ``||z||^2 / n`` of noise-like tensors, after the Iso-Diffusion authors.

For ``z ~ N(0, I_n)`` the expected isotropy is 1, so it checks that a network's noise prediction, or a sampler's
final ``x_T``, has the scale of standard Gaussian noise. Isotropy near 1 is necessary, not sufficient: any vector
of the right norm passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffbook.objectives.iso import isotropy_per_sample


def isotropy(z: Tensor) -> float:
    """Mean over the batch of :func:`isotropy_per_sample`; ``z: (B, ...)``. Close to 1 for ``N(0, I)`` noise."""
    return float(isotropy_per_sample(z.double()).mean())


def forward_isotropy(alpha_bar: Tensor, second_moment: float) -> Tensor:
    """Expected isotropy ``E ||x_t||^2 / n`` of the DDPM forward process at every step; ``alpha_bar: (T,) -> (T,)``.

    ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps`` with ``eps ~ N(0, I)`` independent of ``x_0``, so the
    cross term vanishes and ``E ||x_t||^2 / n = alpha_bar s + (1 - alpha_bar) = 1 + alpha_bar (s - 1)``, where
    ``s = E ||x_0||^2 / n`` is the data's ``second_moment``. Only data with ``s = 1`` keeps isotropy 1 throughout.
    """
    return 1 + alpha_bar * (second_moment - 1)


@torch.no_grad()
def predicted_noise_isotropy(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sigmas: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``E ||eps_hat||^2 / n`` of a denoiser's noise prediction at each noise level: ``(len(sigmas),)``.

    ``x0: (B, ...)`` is clean data; at each ``sigma`` (variance-exploding, as every denoiser here takes it) the
    data are noised, ``x = x0 + sigma eps``, and the noise is read back as ``eps_hat = (x - D(x; sigma)) / sigma``.
    For ``N(0, I)`` data and the exact denoiser the curve is ``sigma^2 / (1 + sigma^2) = 1 - alpha_bar``.
    """
    curve = []
    for sigma in torch.as_tensor(sigmas, dtype=torch.float64).tolist():
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x0 + sigma * noise
        eps_hat = (x - denoiser(x, torch.full((len(x0),), sigma, dtype=x0.dtype, device=x0.device))) / sigma
        curve.append(isotropy(eps_hat))
    return torch.tensor(curve, dtype=torch.float64)
