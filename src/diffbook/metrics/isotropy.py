"""Isotropy ``||z||^2 / n`` of noise-like tensors, after the Iso-Diffusion authors.

For ``z ~ N(0, I_n)`` the expected isotropy is 1, so it checks that a network's noise prediction, or a sampler's
final ``x_T``, has the scale of standard Gaussian noise. Isotropy near 1 is necessary, not sufficient: any vector
of the right norm passes.
"""

from __future__ import annotations

from torch import Tensor


def isotropy_per_sample(z: Tensor) -> Tensor:
    """``||z_i||^2 / n`` for each sample of ``z: (B, ...)``, with ``n`` the number of entries per sample: (B,).

    Accumulated in float64 so that large images do not lose precision; returned in ``z``'s dtype.
    """
    return z.reshape(len(z), -1).double().square().mean(dim=1).to(z.dtype)


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
