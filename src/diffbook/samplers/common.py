"""What every sampler shares: the denoiser it calls, its output, and its trajectory bookkeeping."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

DenoiserFn = Callable[..., Tensor]
"""``denoiser(x, sigma[, class_labels]) -> x0_hat`` in variance-exploding coordinates, as ``diffusion.Denoiser``;
an unconditional one (an analytic ``GaussianMixture.denoiser``, say) need not take ``class_labels``."""


def denoise(denoiser: DenoiserFn, x: Tensor, sigma: float, class_labels: Tensor | None) -> Tensor:
    """Call ``denoiser`` at a scalar noise level, passing class labels only when there are some."""
    if class_labels is None:
        return denoiser(x, sigma)
    return denoiser(x, sigma, class_labels)


def denoise_vp(denoiser: DenoiserFn, x_vp: Tensor, sigma: float, class_labels: Tensor | None) -> Tensor:
    """``E[x0 | x]`` from the variance-preserving state ``x_vp = x / sqrt(1 + sigma^2)``: ``(B, ...)``.

    A denoiser with a ``forward_vp`` method (:class:`~diffbook.diffusion.Denoiser`, a guided one) takes ``x_vp``
    as it is, which keeps the last step of a zero-terminal-SNR schedule (``sigma = inf``, ``x_vp`` pure noise)
    finite. Any other denoiser is called at ``x = sqrt(1 + sigma^2) x_vp``, which needs a finite ``sigma``.
    """
    forward_vp = getattr(denoiser, "forward_vp", None)
    if forward_vp is not None:
        return forward_vp(x_vp, sigma) if class_labels is None else forward_vp(x_vp, sigma, class_labels)
    if not math.isfinite(sigma):
        raise ValueError(
            "sigma = inf (zero terminal SNR) needs a denoiser with a forward_vp method, such as diffusion.Denoiser"
        )
    return denoise(denoiser, x_vp * (1 + sigma**2) ** 0.5, sigma, class_labels)


def denoise_vp_variance(
    denoiser: DenoiserFn, x_vp: Tensor, sigma: float, class_labels: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``E[x0 | x]`` and the learned variance interpolation ``v``, both ``(B, ...)``, from a denoiser with a
    ``forward_vp_variance`` method (:class:`~diffbook.diffusion.Denoiser` of a ``learn_sigma`` network)."""
    forward = getattr(denoiser, "forward_vp_variance", None)
    if forward is None:
        raise ValueError("variance='learned' needs a denoiser with forward_vp_variance, such as diffusion.Denoiser")
    return forward(x_vp, sigma, class_labels)


@dataclass
class SamplerOutput:
    """Samples, the number of network evaluations spent on them, and optionally the path they took.

    ``trajectory[k]: (B, ...)`` is the state at noise level ``trajectory_sigmas[k]`` in variance-preserving
    coordinates ``x / sqrt(1 + sigma^2)``, so trajectories of every sampler share one scale.
    """

    samples: Tensor
    nfe: int
    trajectory: list[Tensor] | None = None
    trajectory_sigmas: list[float] = field(default_factory=list)


class TrajectoryRecorder:
    """Collects states for :class:`SamplerOutput` when asked to; costs nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.states: list[Tensor] | None = [] if enabled else None
        self.sigmas: list[float] = []

    def __call__(self, x_ve: Tensor, sigma: float) -> None:
        self.vp(x_ve / (1 + sigma**2) ** 0.5, sigma)

    def vp(self, x_vp: Tensor, sigma: float) -> None:
        """Record a state given in variance-preserving coordinates (finite also at ``sigma = inf``)."""
        if self.states is not None:
            self.states.append(x_vp.cpu())
            self.sigmas.append(sigma)

    def output(self, samples: Tensor, nfe: int) -> SamplerOutput:
        return SamplerOutput(samples, nfe, self.states, self.sigmas if self.states is not None else [])


class RowNoise:
    """The noise a stochastic sampler adds, drawn for each row of the batch from that row's own generator.

    Row ``k``'s noise depends on ``generators[k]`` alone, so a sample is the same whatever batch it is in. Each
    generator is drawn in blocks of ``block`` calls' worth, ``(block, *row_shape)`` at a time: one generator call
    per row every ``block`` sampler steps rather than every step, which keeps a batch of thousands fast.
    """

    def __init__(self, generators: Sequence[torch.Generator], block: int = 32) -> None:
        self.generators, self.block = list(generators), block
        self._buffer: Tensor | None = None
        self._next = 0

    def draw(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like ``like: (B, ...)``, ``B = len(generators)``, on its device."""
        if len(like) != len(self.generators):
            raise ValueError(f"RowNoise has {len(self.generators)} generators for a batch of {len(like)}")
        buffer = self._buffer
        if (
            buffer is None
            or buffer.shape[2:] != like.shape[1:]
            or buffer.dtype != like.dtype
            or self._next == self.block
        ):
            buffer = self._buffer = self._refill(like)
            self._next = 0
        self._next += 1
        return buffer[:, self._next - 1].to(like.device)

    def _refill(self, like: Tensor) -> Tensor:
        shape = (self.block, *like.shape[1:])
        return torch.stack(
            [torch.randn(shape, generator=g, device=g.device, dtype=like.dtype) for g in self.generators]
        )


NoiseSource = torch.Generator | RowNoise | None
"""Where a sampler draws the noise it adds after the initial one: one generator for the batch, or one per row."""


def randn_like(x: Tensor, generator: NoiseSource) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` on its own device (per row for
    :class:`RowNoise`)."""
    if isinstance(generator, RowNoise):
        return generator.draw(x)
    gen_device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
