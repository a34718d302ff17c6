"""A raw network wrapped by a process's preconditioning: the denoiser ``D(x; sigma)`` every sampler uses.

The denoiser is called in two coordinates. EDM's variance-exploding ``x = x_0 + sigma n`` (:meth:`Denoiser.forward`)
serves every process at finite ``sigma``. The variance-preserving state ``x_vp = x / sqrt(1 + sigma^2)``
(:meth:`Denoiser.forward_vp`) is what the DDPM samplers and the losses use, because it stays finite where ``x``
does not: at zero terminal SNR the last step has ``sigma = inf`` and ``x_vp`` is pure noise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol

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
ScalingsFn = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]
Coordinates = Literal["ve", "vp"]
_MAX_KEPT_LEVELS = 10_000  # a bound for callers that draw a new float level every call


def level_scalings(scalings: ScalingsFn, sigma: float) -> tuple[float, float, float, float]:
    """``(c_skip, c_out, c_in, c_noise)`` of one noise level as floats, computed in float64 on the host."""
    c_skip, c_out, c_in, c_noise = scalings(torch.tensor([sigma], dtype=torch.float64))
    return float(c_skip), float(c_out), float(c_in), float(c_noise)


def batch_scalings(scalings: ScalingsFn, sigma: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of ``scalings(sigma)`` for ``x: (B, ...)`` and noise levels ``sigma: (B,)``
    (or one level, a float or a 0-d tensor): the first three ``(B, 1, ..., 1)``, ``c_noise: (B,)``, in ``x``'s dtype."""
    c_skip, c_out, c_in, c_noise = scalings(as_batch(sigma, x))

    def broadcastable(c: Tensor) -> Tensor:
        return append_dims(c.to(x.dtype), x.ndim)

    return broadcastable(c_skip), broadcastable(c_out), broadcastable(c_in), c_noise.to(x.dtype)


def fast_scaled(c: Tensor | float, x: Tensor) -> Tensor:
    """``c * x``, the network input ``c_in * x`` of :meth:`Denoiser.reference`, without the multiplication when
    ``c`` is the float 1 (VE's ``c_in``, DDPM's on the VP state)."""
    return x if isinstance(c, float) and c == 1.0 else c * x


def fast_denoised(c_skip: Tensor | float, x: Tensor, c_out: Tensor | float, F_x: Tensor) -> Tensor:
    """``D_x = c_skip * x + c_out * F_x``, the line of :meth:`Denoiser.reference`, in fewer kernels when the
    coefficients are floats (a sampler's level): one (``torch.add`` with ``alpha``) or two, and none for the term
    of a zero ``c_skip`` (x0-prediction). The same number up to rounding, which the tests check."""
    if isinstance(c_skip, float) and isinstance(c_out, float):
        return F_x * c_out if c_skip == 0.0 else torch.add(fast_scaled(c_skip, x), F_x, alpha=c_out)
    return c_skip * x + c_out * F_x


class Denoiser(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` around a raw network ``F`` (EDM, Eq. 7 and Table 1).

    :meth:`reference` computes that equation as written; :meth:`forward` and :meth:`forward_vp` are the fast
    paths every sampler and loss uses, the same numbers (see :meth:`_scalings`, :func:`fast_scaled` and
    :func:`fast_denoised` for what they skip).

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
        self._level_scalings: dict[tuple[int, str, float], tuple[float, float, float, float]] = {}

    def reference(
        self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None, coordinates: Coordinates = "ve"
    ) -> Tensor:
        """EDM's denoiser as the paper states it (Karras et al. 2022, Eq. 7, the scalings of Table 1): what
        :meth:`forward` (``coordinates="ve"``) and :meth:`forward_vp` (``"vp"``, ``x`` the VP state) compute.

        ``x: (B, ...)``, ``sigma``: a float or ``(B,)`` -> ``D_x: (B, ...)``. The scalings are tensors, computed
        afresh in ``x``'s dtype for every call: no kept level, no skipped multiplication. For tests and reading.
        """
        c_skip, c_out, c_in, c_noise = batch_scalings(self._scalings_fn(coordinates), sigma, x)
        F_x, _ = self._net(c_in * x, c_noise, class_labels)
        D_x = c_skip * x + c_out * F_x
        return D_x

    def _scalings_fn(self, coordinates: Coordinates) -> ScalingsFn:
        return self.process.scalings if coordinates == "ve" else partial(vp_scalings, self.process)

    def _scalings(self, coordinates: Coordinates, sigma: Tensor | float, x: Tensor) -> Scalings:
        """The scalings of ``sigma`` in variance-exploding (``"ve"``) or -preserving (``"vp"``) coordinates.

        A float ``sigma``, a sampler's noise level, gives float coefficients (see :func:`level_scalings`): a sampler
        step then launches no small per-coefficient kernels, and :func:`fast_scaled` and :func:`fast_denoised` skip
        the multiplications by 0 and 1. A tensor ``sigma: (B,)`` gives tensors (:func:`batch_scalings`).
        """
        if not isinstance(sigma, int | float):
            return batch_scalings(self._scalings_fn(coordinates), sigma, x)
        key = (id(self.process), coordinates, float(sigma))
        if key not in self._level_scalings:
            if len(self._level_scalings) >= _MAX_KEPT_LEVELS:
                self._level_scalings.clear()
            self._level_scalings[key] = level_scalings(self._scalings_fn(coordinates), float(sigma))
        c_skip, c_out, c_in, c_noise = self._level_scalings[key]
        return c_skip, c_out, c_in, torch.full((x.shape[0],), c_noise, dtype=x.dtype, device=x.device)

    def raw(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> tuple[Tensor, Scalings]:
        """The network output ``F`` and the broadcastable scalings ``(c_skip, c_out, c_in, c_noise)``.

        ``x: (B, ...)`` in variance-exploding coordinates, ``sigma``: a float (float scalings) or ``(B,)`` (tensors
        ``(B, 1, ..., 1)``); see :meth:`_scalings`.
        """
        c_skip, c_out, c_in, c_noise = self._scalings("ve", sigma, x)
        out, _ = self._net(fast_scaled(c_in, x), c_noise, class_labels)
        return out, (c_skip, c_out, c_in, c_noise)

    def _net(self, x_in: Tensor, c_noise: Tensor, class_labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The network's prediction ``F: (B, C, ...)`` and its variance channels ``v`` (None unless ``learn_sigma``)."""
        out = self.net(x_in, c_noise, class_labels)
        if not getattr(self.net, "learn_sigma", False):
            return out, None
        prediction, v = out.chunk(2, dim=1)
        return prediction, v

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """The denoised estimate ``E[x_0 | x]``: same shape as ``x``; :meth:`reference`'s ``D_x``, fast."""
        out, (c_skip, c_out, _, _) = self.raw(x, sigma, class_labels)
        return fast_denoised(c_skip, x, c_out, out)

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
        out, v = self._net(fast_scaled(c_in, x_vp), c_noise, class_labels)
        return out, v, (c_skip, c_out, c_in, c_noise)

    def forward_vp(self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """``E[x_0 | x]`` from the variance-preserving state ``x_vp: (B, ...)``; equals ``forward`` at
        ``x = sqrt(1 + sigma^2) x_vp`` for finite ``sigma``, and is defined at ``sigma = inf`` too. The fast path of
        ``reference(x_vp, sigma, coordinates="vp")``."""
        out, (c_skip, c_out, _, _) = self.raw_vp(x_vp, sigma, class_labels)
        return fast_denoised(c_skip, x_vp, c_out, out)

    def forward_vp_variance(
        self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``E[x_0 | x]`` and ADM's variance interpolation ``v`` (both ``(B, ...)``) of a ``learn_sigma`` network."""
        out, v, (c_skip, c_out, _, _) = self.raw_vp_variance(x_vp, sigma, class_labels)
        if v is None:
            raise ValueError(f"{type(self.net).__name__} does not learn its variance: build it with learn_sigma=True")
        return fast_denoised(c_skip, x_vp, c_out, out), v
