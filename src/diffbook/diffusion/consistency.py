"""Bidirectional consistency models (Li & He 2024): one network ``f(x_t, t, u)`` that jumps from noise level
``t`` to noise level ``u`` along the probability-flow ODE, down (``u < t``, generation) or up (``u > t``,
inversion).

The process is EDM's variance-exploding one, ``x_t = x_0 + t n``. A raw network ``F`` is preconditioned as

    f(x, t, u) = c_skip(t, u) x + c_out(t, u) F(c_in(t) x, c_noise(t), c_noise(u))
    c_skip = (t u + s^2) / (t^2 + s^2),  c_out = (t - u) s / sqrt(t^2 + s^2),  c_in = 1 / sqrt(t^2 + s^2)

with ``s = sigma_data`` and ``c_noise(sigma) = 250 ln sigma`` (the authors' repository). Writing
``D = c_skip(t, 0) x + c_out(t, 0) F`` for the denoised estimate, ``f = (u/t) x + (1 - u/t) D``: every jump is
one DDIM (Euler) step of ``dx/dsigma = (x - D) / sigma`` from ``t`` to ``u`` whose ``D`` the network learns to
make exact. ``c_skip`` is computed as ``1 - t (t - u) / (t^2 + s^2)``, the same number, so that at ``u = t``
it is exactly 1 and ``c_out`` exactly 0: ``f(x, t, t) = x`` holds bit for bit, not only to rounding.

A single-time network (``F(c_in x, c_noise(t))``, a consistency model trained with these scalings at
``u = sigma_min``) is accepted too: its weights load into the two-time network for BCM fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffbook.diffusion.parametrization import append_dims, as_batch


@dataclass
class BCMProcess:
    """The VE process with BCM's two-time preconditioning; generation ends at ``sigma_min``, not at 0."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    noise_label_scale: float = 250.0  # c_noise(sigma) = scale * ln(sigma): ADM's 1000 * ln(sigma) / 4

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")

    def scalings(self, t: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)`` for jumps ``t -> u``; ``t, u: (B,)`` -> three float64 ``(B,)``.

        Float64, because ``c_skip(80, 0.002) = 6.4e-5`` is a difference of numbers near 1.
        """
        t, u = t.double(), u.double()
        total = t**2 + self.sigma_data**2
        c_skip = 1 - t * (t - u) / total
        c_out = (t - u) * self.sigma_data / total.sqrt()
        return c_skip, c_out, 1 / total.sqrt()

    def noise_label(self, sigma: Tensor) -> Tensor:
        """``c_noise(sigma) = noise_label_scale * ln(sigma)``, float64, same shape as ``sigma``."""
        return self.noise_label_scale * sigma.double().log()


class BidirectionalConsistency(nn.Module):
    """``f(x, t, u)``: a raw network ``net(x, noise_labels, class_labels=None)`` under :class:`BCMProcess`.

    With a two-time network (``net.two_times``) the noise labels are ``(B, 2)``, those of ``t`` and ``u``; a
    single-time network sees ``t``'s alone and learns the jump to one fixed ``u`` (``sigma_min``), as a
    consistency model does.
    """

    def __init__(self, net: nn.Module, process: BCMProcess) -> None:
        super().__init__()
        self.net = net
        self.process = process

    @property
    def two_times(self) -> bool:
        """Whether the network is told the end of the jump (a BCM) or not (a consistency model)."""
        return bool(getattr(self.net, "two_times", False))

    def raw(
        self, x: Tensor, t: Tensor | float, u: Tensor | float, class_labels: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The network output ``F`` and the broadcastable scalings ``(c_skip, c_out, c_in)`` in ``x``'s dtype.

        ``x: (B, ...)`` in VE coordinates at noise level ``t``; ``t, u``: floats or ``(B,)``, positive.
        """
        t, u = as_batch(t, x), as_batch(u, x)
        c_skip, c_out, c_in = (append_dims(c.to(x.dtype), x.ndim) for c in self.process.scalings(t, u))
        labels = self.process.noise_label(t)
        if self.two_times:
            labels = torch.stack([labels, self.process.noise_label(u)], dim=1)
        return self.net(c_in * x, labels.to(x.dtype), class_labels), (c_skip, c_out, c_in)

    def forward(self, x: Tensor, t: Tensor | float, u: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """The state at noise level ``u`` on the ODE trajectory through ``x`` at level ``t``: same shape as ``x``."""
        out, (c_skip, c_out, _) = self.raw(x, t, u, class_labels)
        return c_skip * x + c_out * out
