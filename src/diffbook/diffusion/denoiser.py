"""A raw network wrapped by a process's preconditioning: the denoiser ``D(x; sigma)`` every sampler uses."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from diffbook.diffusion.parametrization import append_dims, as_batch


class Process(Protocol):
    """What a noise process provides: scalings, training noise levels, and its range of ``sigma``."""

    sigma_min: float
    sigma_max: float

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor: ...


class Denoiser(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` around a raw network ``F``.

    ``F`` follows the package's network interface ``net(x, noise_labels, class_labels=None)``.
    """

    def __init__(self, net: nn.Module, process: Process) -> None:
        super().__init__()
        self.net = net
        self.process = process

    def raw(
        self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The network output ``F`` and the broadcastable scalings ``(c_skip, c_out, c_in, c_noise)``.

        ``x: (B, ...)`` in variance-exploding coordinates, ``sigma``: a float or ``(B,)``.
        """
        sigma = as_batch(sigma, x)
        c_skip, c_out, c_in, c_noise = self.process.scalings(sigma)
        c_skip, c_out, c_in = (append_dims(c.to(x.dtype), x.ndim) for c in (c_skip, c_out, c_in))
        out = self.net(c_in * x, c_noise.to(x.dtype), class_labels)
        return out, (c_skip, c_out, c_in, c_noise)

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """The denoised estimate ``E[x_0 | x]``: same shape as ``x``."""
        out, (c_skip, c_out, _, _) = self.raw(x, sigma, class_labels)
        return c_skip * x + c_out * out
