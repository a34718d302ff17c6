"""diffusers' text-conditioned ``UNet2DConditionModel`` (Stable Diffusion's U-Net) as a package network.

The package calls a network as ``net(x, noise_labels, class_labels)``; for Stable Diffusion the condition is
the text encoder's hidden states, so they travel as ``class_labels``. With a DDPM process the noise labels are
the step indices ``t`` that diffusers calls timesteps, so every objective and sampler of the package drives the
U-Net unchanged. diffusers itself is imported by whoever builds the U-Net, not here.
"""

from __future__ import annotations

from torch import Tensor, nn


class DiffusersUNet(nn.Module):
    """``net(x, noise_labels, class_labels)`` around a ``UNet2DConditionModel``.

    ``x: (B, C, H, W)`` latents, ``noise_labels: (B,)`` timesteps, ``class_labels: (B, L, D)`` text-encoder
    hidden states (required: pass the empty prompt's for the unconditional branch) -> ``(B, C, H, W)``.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is None:
            raise ValueError("the text-conditioned U-Net needs text embeddings (B, L, D) as class_labels")
        return self.unet(x, noise_labels, encoder_hidden_states=class_labels, return_dict=False)[0]
