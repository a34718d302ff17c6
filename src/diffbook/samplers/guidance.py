"""Classifier-free guidance (Ho & Salimans 2022) with guidance rescale (Lin et al. 2024, §3.4).

Guidance extrapolates from the unconditional prediction through the conditional one,
``out = out_u + w (out_c - out_u)``; ``w = 1`` is the conditional prediction alone (no guidance), and so is
diffusers' ``guidance_scale <= 1``, the convention of the model cards' "guidance 0". Because the weights sum to
one, the combination is the same in x0, eps and v space. Large ``w`` inflates the prediction's scale, and Lin et
al. pull its per-sample standard deviation back towards the conditional one's:
``out_r = out * (phi std(out_c) / std(out) + 1 - phi)``, ``phi = 0.7`` in their paper. That step is not linear,
so the space matters: here it acts on the raw network output (v for a v-prediction model), as diffusers'
``rescale_noise_cfg`` does.
"""

from __future__ import annotations

from torch import Tensor, nn

from diffbook.diffusion.denoiser import Denoiser


def guide(cond: Tensor, uncond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """``uncond + scale (cond - uncond)``, then rescaled towards ``std(cond)`` by ``rescale`` (phi).

    ``cond, uncond: (B, ...)``; standard deviations are per sample, over all but the batch dimension.
    ``rescale = 0`` is plain guidance; ``rescale = 1`` gives each sample exactly the std of ``cond``.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale (phi) must be in [0, 1], got {rescale}")
    guided = uncond + scale * (cond - uncond)
    if rescale == 0.0:
        return guided
    dims = tuple(range(1, cond.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guided * (rescale * ratio + (1 - rescale))


class GuidedDenoiser(nn.Module):
    """A :class:`~diffbook.diffusion.Denoiser` with classifier-free guidance: a denoiser for every sampler.

    ``scale`` is ``w`` above (1: conditional only, one network call); ``rescale`` is ``phi``. The unconditional
    branch gets ``null_labels`` (e.g. the empty prompt's text embeddings ``(1, L, D)``, broadcast over the batch),
    or ``None``, which the package's networks read as their null class.
    """

    def __init__(
        self, denoiser: Denoiser, scale: float, rescale: float = 0.0, null_labels: Tensor | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi) must be in [0, 1], got {rescale}")
        self.denoiser = denoiser
        self.scale, self.rescale = scale, rescale
        self.register_buffer("null_labels", null_labels, persistent=False)

    @property
    def process(self):
        return self.denoiser.process

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """Guided ``E[x_0 | x]`` in variance-exploding coordinates: ``x: (B, ...)``."""
        return self._combine(self.denoiser.raw, x, sigma, class_labels)

    def forward_vp(self, x_vp: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """Guided ``E[x_0 | x]`` from the variance-preserving state ``x_vp: (B, ...)`` (finite at ``sigma = inf``)."""
        return self._combine(self.denoiser.raw_vp, x_vp, sigma, class_labels)

    def _combine(self, raw, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None) -> Tensor:
        out, (c_skip, c_out, _, _) = raw(x, sigma, class_labels)
        if self.scale != 1.0:
            if class_labels is None:
                raise ValueError("classifier-free guidance needs class labels (a condition) to guide towards")
            uncond, _ = raw(x, sigma, self._null_labels(len(x)))
            out = guide(out, uncond, self.scale, self.rescale)
        return c_skip * x + c_out * out

    def _null_labels(self, batch: int) -> Tensor | None:
        if self.null_labels is None:
            return None
        return self.null_labels.expand(batch, *self.null_labels.shape[1:])
