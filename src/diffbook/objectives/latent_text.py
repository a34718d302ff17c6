"""Text-to-image fine-tuning's objective: a base objective on VAE latents conditioned on text embeddings.

Stable Diffusion trains on the VAE's latents of an image, conditioned on the text encoder's hidden states of its
caption; both come from the frozen companions of the network's weights (``network.weights``: ``vae/`` and
``text_encoder/``). The base objective (the MSE or the self-perceptual loss) sees the batch ``(latents, text)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbook.diffusion.denoiser import Denoiser
from diffbook.objectives.registry import OBJECTIVES, ObjectiveContext, base_objective


@dataclass
class LatentTextObjective:
    """``base`` on VAE latents and text embeddings: ``batch = (pixels: (B, 3, R, R), token ids: (B, L))``.

    The VAE and the text encoder are frozen and held as plain attributes, out of the optimizer, the checkpoint
    and DistributedDataParallel, like the self-perceptual loss's frozen network.
    """

    base: Callable[..., dict[str, Tensor]]
    vae: Any  # diffusers' AutoencoderKL
    text_encoder: nn.Module

    def __call__(self, model: Denoiser, batch: tuple, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        pixels, tokens = batch
        device = pixels.device
        self.vae.to(device), self.text_encoder.to(device)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
            text = self.text_encoder(tokens)[0]
        return self.base(model, (latents, text), generator)


@dataclass(frozen=True)
class LatentTextOptions:
    """The ``objective`` section of ``kind: latent_text``: the objective on the latents and text, ``base``."""

    base: str | dict = "denoising"


def load_text_encoder(weights: str | None) -> nn.Module:
    """The frozen CLIP text encoder of a diffusers Stable Diffusion folder."""
    from diffbook.nets.diffusers_unet import check_sd_weights

    folder = check_sd_weights(weights)
    try:
        from transformers import CLIPTextModel
    except ImportError as error:
        raise ImportError("Stable Diffusion needs diffusers and transformers: pip install 'diffbook[sd]'") from error
    return CLIPTextModel.from_pretrained(folder / "text_encoder").eval().requires_grad_(False)


def build_latent_text(options: LatentTextOptions, context: ObjectiveContext) -> LatentTextObjective:
    base = base_objective(options.base, 0.0, context, "objective.base")
    started_from = getattr(getattr(context.model, "net", None), "pretrained_prediction", None)
    kind = options.base if isinstance(options.base, str) else options.base.get("kind")
    if kind == "self_perceptual" and started_from == "epsilon":
        raise ValueError(
            "self-perceptual fine-tuning starts from a v-prediction, zero-terminal-SNR MSE model, and these weights "
            "predict epsilon: train the MSE stage first and set network.overrides.unet to its exported unet/"
        )
    from diffbook.nets.vae import load_vae

    text_encoder = load_text_encoder(context.weights)  # checks the folder first
    return LatentTextObjective(base, load_vae(Path(str(context.weights)) / "vae"), text_encoder)


OBJECTIVES.register("latent_text", LatentTextOptions, build_latent_text)
