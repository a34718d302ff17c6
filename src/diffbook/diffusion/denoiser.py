"""A raw network wrapped by a process's preconditioning: the denoiser ``D(x; sigma)`` every sampler uses.

The denoiser is called in two coordinates. EDM's variance-exploding ``x = x_0 + sigma n`` (:meth:`Denoiser.forward`)
serves every process at finite ``sigma``. The variance-preserving state ``x_vp = x / sqrt(1 + sigma^2)``
(:meth:`Denoiser.forward_vp`) is what the DDPM samplers and the losses use, because it stays finite where ``x``
does not: at zero terminal SNR the last step has ``sigma = inf`` and ``x_vp`` is pure noise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

import torch
from torch import Tensor, nn

from diffbook.diffusion.parametrization import append_dims, as_batch


class Process(Protocol):
    """What a noise process provides: scalings, training noise levels, and its range of ``sigma``.

    A process may also define ``vp_scalings(sigma)`` (see :func:`vp_scalings`) when it has noise levels
    ``sigma = inf``, as DDPM does with zero terminal SNR.
    """

    sigma_min: float
    sigma_max: float

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor: ...


def vp_scalings(process: Process, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)``, each like ``sigma: (B,)``, for the variance-preserving input:
    ``D = c_skip x_vp + c_out F(c_in x_vp; c_noise)`` with ``x_vp = x / sqrt(1 + sigma^2)``.

    The process's own ``vp_scalings`` when it has one (finite at ``sigma = inf``); otherwise its VE scalings with
    ``c_skip`` and ``c_in`` multiplied by ``sqrt(1 + sigma^2)``, which needs finite ``sigma``.
    """
    own = getattr(process, "vp_scalings", None)
    if own is not None:
        return own(sigma)
    if not torch.isfinite(sigma).all():
        raise ValueError(f"{type(process).__name__} has no scalings at sigma = inf")
    c_skip, c_out, c_in, c_noise = process.scalings(sigma)
    scale = (1 + sigma**2).sqrt()
    return c_skip * scale, c_out, c_in * scale, c_noise


Scalings = tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]
_MAX_KEPT_LEVELS = 10_000  # a bound for callers that draw a new float level every call


def level_scalings(scalings: Callable[[Tensor], tuple[Tensor, ...]], sigma: float) -> tuple[float, ...]:
    """``(c_skip, c_out, c_in, c_noise)`` of one noise level as floats, computed in float64 on the host."""
    return tuple(float(c) for c in scalings(torch.tensor([sigma], dtype=torch.float64)))


def batch_scalings(scalings: Callable[[Tensor], tuple[Tensor, ...]], sigma: Tensor, x: Tensor) -> Scalings:
    """``(c_skip, c_out, c_in, c_noise)`` of ``scalings(sigma)`` for ``x: (B, ...)`` and noise levels ``sigma: (B,)``
    (or one level as a 0-d tensor): the first three ``(B, 1, ..., 1)``, ``c_noise: (B,)``, in ``x``'s dtype."""
    c_skip, c_out, c_in, c_noise = scalings(as_batch(sigma, x))
    return (*(append_dims(c.to(x.dtype), x.ndim) for c in (c_skip, c_out, c_in)), c_noise.to(x.dtype))


def times(c: Tensor | float, x: Tensor) -> Tensor:
    """``c * x``, or ``x`` itself when ``c`` is the float 1."""
    return x if isinstance(c, float) and c == 1.0 else c * x


def combine(c_skip: Tensor | float, x: Tensor, c_out: Tensor | float, out: Tensor) -> Tensor:
    """The denoiser's output ``c_skip x + c_out F``: one kernel (``torch.add`` with ``alpha``) or two when the
    coefficients are floats, none for a zero ``c_skip``'s term."""
    if isinstance(c_skip, float) and isinstance(c_out, float):
        return out * c_out if c_skip == 0.0 else torch.add(times(c_skip, x), out, alpha=c_out)
    return c_skip * x + c_out * out


class Denoiser(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` around a raw network ``F``.

    ``F`` follows the package's network interface ``net(x, noise_labels, class_labels=None)``. A network with
    ``learn_sigma = True`` (DiT, the latent DiffiT) returns twice the channels of ``x``: ``F``, then ADM's
    variance interpolation ``v``, which only :meth:`raw_vp_variance` and :meth:`forward_vp_variance` return
    (for the DDPM sampler's ``variance="learned"``); everything else sees ``F`` alone.
    """

    def __init__(self, net: nn.Module, process: Process) -> None:
        super().__init__()
        self.net = net
        self.process = process
        # A sampler asks for the same few float noise levels batch after batch; their scalings are kept, by
        # process, coordinates and level (processes are not changed once built, so an entry never goes stale).
        self._level_scalings: dict[tuple[int, str, float], tuple[float, ...]] = {}

    def _scalings(self, coordinates: str, sigma: Tensor | float, x: Tensor) -> Scalings:
        """The scalings of ``sigma`` in variance-exploding (``"ve"``) or -preserving (``"vp"``) coordinates.

        A float ``sigma``, a sampler's noise level, gives float coefficients (see :func:`level_scalings`): a sampler
        step then launches no small per-coefficient kernels, and :func:`times` and :func:`combine` skip the
        multiplications by 0 and 1. A tensor ``sigma: (B,)`` gives tensors (:func:`batch_scalings`).
        """
        scalings = self.process.scalings if coordinates == "ve" else partial(vp_scalings, self.process)
        if not isinstance(sigma, int | float):
            return batch_scalings(scalings, sigma, x)
        key = (id(self.process), coordinates, float(sigma))
        if key not in self._level_scalings:
            if len(self._level_scalings) >= _MAX_KEPT_LEVELS:
                self._level_scalings.clear()
            self._level_scalings[key] = level_scalings(scalings, float(sigma))
        *coefficients, c_noise = self._level_scalings[key]
        return *coefficients, torch.full((x.shape[0],), c_noise, dtype=x.dtype, device=x.device)

    def raw(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> tuple[Tensor, Scalings]:
        """The network output ``F`` and the broadcastable scalings ``(c_skip, c_out, c_in, c_noise)``.

        ``x: (B, ...)`` in variance-exploding coordinates, ``sigma``: a float (float scalings) or ``(B,)`` (tensors
        ``(B, 1, ..., 1)``); see :meth:`_scalings`.
        """
        c_skip, c_out, c_in, c_noise = self._scalings("ve", sigma, x)
        out, _ = self._net(times(c_in, x), c_noise, class_labels)
        return out, (c_skip, c_out, c_in, c_noise)

    def _net(self, x_in: Tensor, c_noise: Tensor, class_labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The network's prediction ``F: (B, C, ...)`` and its variance channels ``v`` (None unless ``learn_sigma``)."""
        out = self.net(x_in, c_noise, class_labels)
        if not getattr(self.net, "learn_sigma", False):
            return out, None
        prediction, v = out.chunk(2, dim=1)
        return prediction, v

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """The denoised estimate ``E[x_0 | x]``: same shape as ``x``."""
        out, (c_skip, c_out, _, _) = self.raw(x, sigma, class_labels)
        return combine(c_skip, x, c_out, out)

    def raw_vp(
        self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None
    ) -> tuple[Tensor, Scalings]:
        """As :meth:`raw` on the variance-preserving state ``x_vp = x / sqrt(1 + sigma^2)``: ``(B, ...)``.

        Returns ``F`` and the broadcastable :func:`vp_scalings`; finite at ``sigma = inf`` for a DDPM process.
        """
        out, _, scalings = self.raw_vp_variance(x_vp, sigma, class_labels)
        return out, scalings

    def raw_vp_variance(
        self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Scalings]:
        """As :meth:`raw_vp`, with the variance channels ``v: (B, ...)`` between: None unless ``learn_sigma``."""
        c_skip, c_out, c_in, c_noise = self._scalings("vp", sigma, x_vp)
        out, v = self._net(times(c_in, x_vp), c_noise, class_labels)
        return out, v, (c_skip, c_out, c_in, c_noise)

    def forward_vp(self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """``E[x_0 | x]`` from the variance-preserving state ``x_vp: (B, ...)``; equals ``forward`` at
        ``x = sqrt(1 + sigma^2) x_vp`` for finite ``sigma``, and is defined at ``sigma = inf`` too."""
        out, (c_skip, c_out, _, _) = self.raw_vp(x_vp, sigma, class_labels)
        return combine(c_skip, x_vp, c_out, out)

    def forward_vp_variance(
        self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``E[x_0 | x]`` and ADM's variance interpolation ``v`` (both ``(B, ...)``) of a ``learn_sigma`` network."""
        out, v, (c_skip, c_out, _, _) = self.raw_vp_variance(x_vp, sigma, class_labels)
        if v is None:
            raise ValueError(f"{type(self.net).__name__} does not learn its variance: build it with learn_sigma=True")
        return combine(c_skip, x_vp, c_out, out), v
