"""Classifier-free guidance (Ho & Salimans 2022) with guidance rescale (Lin et al. 2024, §3.4), a scale that
follows the noise level (MDT's power-cosine schedule, used by DiffiT), and guidance of some channels only.

Guidance extrapolates from the unconditional prediction through the conditional one,
``out = out_u + w (out_c - out_u)``; ``w = 1`` is the conditional prediction alone (no guidance), and so is
diffusers' ``guidance_scale <= 1``, the convention of the model cards' "guidance 0". Because the weights sum to
one, the combination is the same in x0, eps and v space. Large ``w`` inflates the prediction's scale, and Lin et
al. pull its per-sample standard deviation back towards the conditional one's:
``out_r = out * (phi std(out_c) / std(out) + 1 - phi)``, ``phi = 0.7`` in their paper. That step is not linear,
so the space matters: here it acts on the raw network output (v for a v-prediction model), as diffusers'
``rescale_noise_cfg`` does.

The power-cosine schedule (Gao et al., MDT, 2023) guides little at high noise and fully at the end:
``w(t) = 1 + (w - 1) (1 - cos(pi (1 - t / T)^p)) / 2``, so ``w(T) = 1`` and ``w(0) = w``. DiT's released code
guides only the first three of the four latent channels (a quirk that MDT, SiT and DiffiT inherit); ``channels=3``
reproduces it, and the rest of the output, a learned variance included, comes from the conditional branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffbook.diffusion.denoiser import Denoiser, fast_denoised
from diffbook.diffusion.parametrization import append_dims, as_batch


def guide(cond: Tensor, uncond: Tensor, scale: float | Tensor, rescale: float = 0.0) -> Tensor:
    """``uncond + scale (cond - uncond)``, then rescaled towards ``std(cond)`` by ``rescale`` (phi).

    ``cond, uncond: (B, ...)``; ``scale`` a float or a tensor that broadcasts against them (one per sample);
    standard deviations are per sample, over all but the batch dimension. ``rescale = 0`` is plain guidance;
    ``rescale = 1`` gives each sample exactly the std of ``cond``.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale (phi) must be in [0, 1], got {rescale}")
    guided = uncond + scale * (cond - uncond)
    if rescale == 0.0:
        return guided
    dims = tuple(range(1, cond.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guided * (rescale * ratio + (1 - rescale))


def power_cosine_scale(scale: float, t: Tensor | float, T: int, power: float) -> Tensor:
    """MDT's guidance schedule at steps ``t`` (a float or ``(B,)``) of ``T``: 1 at ``t = T``, ``scale`` at ``t = 0``."""
    progress = (1 - torch.as_tensor(t, dtype=torch.float64) / T).clamp(0, 1) ** power
    return 1 + (scale - 1) * (1 - torch.cos(math.pi * progress)) / 2


class GuidedDenoiser(nn.Module):
    """A :class:`~diffbook.diffusion.Denoiser` with classifier-free guidance: a denoiser for every sampler.

    ``scale`` is ``w`` above (1: conditional only, one network call); ``rescale`` is ``phi``. The unconditional
    branch gets ``null_labels`` (e.g. the empty prompt's text embeddings ``(1, L, D)``, broadcast over the batch),
    or ``None``, which the package's networks read as their null class. ``channels``: guide only the first that
    many channels (3 for DiT's quirk; None: all). ``power``: follow the power-cosine schedule with that exponent
    (needs a discrete process with ``T`` steps, such as DDPM; None: a constant scale).
    """

    null_labels: Tensor | None  # a buffer: it follows the module to its device

    def __init__(
        self,
        denoiser: Denoiser,
        scale: float,
        rescale: float = 0.0,
        null_labels: Tensor | None = None,
        channels: int | None = None,
        power: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi) must be in [0, 1], got {rescale}")
        if power is not None and not hasattr(denoiser.process, "sigma_to_t"):
            raise ValueError(f"a power-cosine guidance schedule needs a discrete process, not {denoiser.process!r}")
        self.denoiser = denoiser
        self.scale, self.rescale = scale, rescale
        self.channels, self.power = channels, power
        self.register_buffer("null_labels", null_labels, persistent=False)

    @property
    def process(self):
        return self.denoiser.process

    def scale_at(self, sigma: Tensor | float, like: Tensor) -> float | Tensor:
        """The guidance scale at ``sigma``: ``scale``, or the schedule's values ``(B, 1, ..., 1)`` like ``like``."""
        if self.power is None:
            return self.scale
        t = self.process.sigma_to_t(as_batch(sigma, like).double())
        return append_dims(power_cosine_scale(self.scale, t, self.process.T, self.power), like.ndim).to(like)

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """Guided ``E[x_0 | x]`` in variance-exploding coordinates: ``x: (B, ...)``."""
        out, (c_skip, c_out, _, _) = self.denoiser.raw(x, sigma, class_labels)
        out = self._guided(out, lambda labels: self.denoiser.raw(x, sigma, labels)[0], sigma, class_labels)
        return fast_denoised(c_skip, x, c_out, out)

    def forward_vp(self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """Guided ``E[x_0 | x]`` from the variance-preserving state ``x_vp: (B, ...)`` (finite at ``sigma = inf``)."""
        return self.forward_vp_variance(x_vp, sigma, class_labels, require_variance=False)[0]

    def forward_vp_variance(
        self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None, require_variance: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Guided ``E[x_0 | x]`` and the conditional branch's variance interpolation ``v`` (``learn_sigma``)."""
        out, v, (c_skip, c_out, _, _) = self.denoiser.raw_vp_variance(x_vp, sigma, class_labels)
        if require_variance and v is None:
            raise ValueError(f"{type(self.denoiser.net).__name__} does not learn its variance (learn_sigma=False)")
        out = self._guided(out, lambda labels: self.denoiser.raw_vp(x_vp, sigma, labels)[0], sigma, class_labels)
        return fast_denoised(c_skip, x_vp, c_out, out), v

    def _guided(
        self, cond: Tensor, uncond_fn: Callable[[Tensor | None], Tensor], sigma: Tensor | float, labels: Tensor | None
    ) -> Tensor:
        if self.scale == 1.0:
            return cond
        if labels is None:
            raise ValueError("classifier-free guidance needs class labels (a condition) to guide towards")
        uncond = uncond_fn(self._null_labels(len(cond)))
        k = self.channels or cond.shape[1]
        guided = guide(cond[:, :k], uncond[:, :k], self.scale_at(sigma, cond), self.rescale)
        return torch.cat([guided, cond[:, k:]], dim=1)

    def _null_labels(self, batch: int) -> Tensor | None:
        if self.null_labels is None:
            return None
        return self.null_labels.expand(batch, *self.null_labels.shape[1:])
