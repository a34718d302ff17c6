"""Latent diffusion's autoencoder: Stable Diffusion's VAE through diffusers.

DiT and the latent DiffiT diffuse the 8x-downsampled latents of ``stabilityai/sd-vae-ft-ema`` (4 channels,
32 x 32 for 256 x 256 images), multiplied by 0.18215 so that they have roughly unit variance. Encoding an image
costs more than a training step of a small model, so
:func:`~diffbook.experiments.latents.precompute_latents` encodes a dataset once into a folder that
:class:`~diffbook.data.latents.LatentDataset` reads (``python -m diffbook precompute-latents``).

Nothing is downloaded unless asked for (``download=True``, ``--download``): a missing VAE raises an error that
names the model id and where to put its files on an offline machine.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any  # diffusers' AutoencoderKL: its methods are untyped to the checker

import torch
from torch import Tensor, nn

SD_VAE = "stabilityai/sd-vae-ft-ema"
SD_LATENT_SCALE = 0.18215  # Rombach et al. 2022; DiT and DiffiT multiply the VAE's latents by it


def vae_missing_message(name: str) -> str:
    """Where to get the VAE ``name`` and where its files go, for an offline machine."""
    return (
        f"the VAE {name!r} is not available offline. On a machine with internet, either\n"
        f"  huggingface-cli download {name}\n"
        "which fills the Hugging Face cache ($HF_HOME, by default ~/.cache/huggingface; copy it to the same place "
        "on the offline machine), or\n"
        f'  python -c "from diffusers import AutoencoderKL; '
        f"AutoencoderKL.from_pretrained('{name}').save_pretrained('weights/vae')\"\n"
        "and pass that folder (config.json and diffusion_pytorch_model.safetensors) as --vae weights/vae. "
        "Or let diffbook fetch it: --download (download=True)."
    )


def load_vae(name_or_path: str | Path = SD_VAE, download: bool = False, device: str | torch.device = "cpu") -> Any:
    """diffusers' ``AutoencoderKL`` from a Hugging Face id or a local folder, frozen and in eval mode.

    Looks only at local files (a folder, or the Hugging Face cache) unless ``download``; raises
    FileNotFoundError saying where to get the weights when they are not there.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError("the latent models' VAE needs diffusers: pip install 'diffbook[sd]'") from error
    try:
        with warnings.catch_warnings():  # diffusers' own call of a deprecated huggingface_hub argument
            warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
            # low_cpu_mem_usage=False: the VAE is small, and the default asks for the accelerate package.
            vae = AutoencoderKL.from_pretrained(
                str(name_or_path), local_files_only=not download, low_cpu_mem_usage=False
            )
    except OSError as error:
        raise FileNotFoundError(vae_missing_message(str(name_or_path))) from error
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae: Any, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``images: (B, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, 4, H/8, W/8)``, a sample of the posterior (DiT)."""
    posterior = vae.encode(images).latent_dist
    return posterior.sample(generator) * SD_LATENT_SCALE


@torch.no_grad()
def decode(vae: Any, latents: Tensor) -> Tensor:
    """Scaled latents ``(B, 4, h, w)`` -> images ``(B, 3, 8h, 8w)``, clamped to [-1, 1]."""
    return vae.decode(latents / SD_LATENT_SCALE).sample.clamp(-1, 1)


class VAEDecoder(nn.Module):
    """Scaled latents ``(B, 4, h, w)`` -> images ``(B, 3, 8h, 8w)`` through a frozen VAE, with gradients to the
    latents (for a loss in pixel space); unlike :func:`decode`, not clamped, so that the gradient never vanishes.
    The VAE follows its input to whatever device that is on."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae: Any = vae.eval().requires_grad_(False)

    def forward(self, latents: Tensor) -> Tensor:
        return self.vae.to(latents.device).decode(latents / SD_LATENT_SCALE).sample
