"""diffusers' text-conditioned ``UNet2DConditionModel`` (Stable Diffusion's U-Net) as a package network.

The package calls a network as ``net(x, noise_labels, class_labels)``; for Stable Diffusion the condition is
the text encoder's hidden states, so they travel as ``class_labels``. With a DDPM process the noise labels are
the step indices ``t`` that diffusers calls timesteps, so every objective and sampler of the package drives the
U-Net unchanged. The weights come from a diffusers folder of ``stabilityai/stable-diffusion-2-1-base``
(``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), which ``network.weights`` names;
nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

SD_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer")


class DiffusersUNet(nn.Module):
    """``net(x, noise_labels, class_labels)`` around a ``UNet2DConditionModel``.

    ``x: (B, C, H, W)`` latents, ``noise_labels: (B,)`` timesteps, ``class_labels: (B, L, D)`` text-encoder
    hidden states (required: pass the empty prompt's for the unconditional branch) -> ``(B, C, H, W)``.
    ``pretrained_prediction`` is what the loaded weights predict (``"epsilon"`` for Stable Diffusion 2.1-base,
    None when unknown), for objectives that must start from a model of another parametrisation.
    """

    def __init__(self, unet: nn.Module, pretrained_prediction: str | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.pretrained_prediction = pretrained_prediction

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is None:
            raise ValueError("the text-conditioned U-Net needs text embeddings (B, L, D) as class_labels")
        return self.unet(x, noise_labels, encoder_hidden_states=class_labels, return_dict=False)[0]


@dataclass(frozen=True)
class StableDiffusionUNetConfig:
    """``network.kind: stable_diffusion``: the U-Net of ``network.weights`` (or the folder ``unet``, a stage's
    fine-tuned U-Net), its latents ``in_channels x resolution x resolution`` (64 for 512-pixel images)."""

    unet: str | None = None
    in_channels: int = 4
    resolution: int = 64
    num_classes: int = 0  # text-conditioned: its condition is a prompt, not a class
    gradient_checkpointing: bool = False


def check_sd_weights(weights: str | Path | None) -> Path:
    """``weights`` as a Path, after checking that it is a diffusers Stable Diffusion folder."""
    folder = Path(weights or "")
    missing = [name for name in SD_FOLDERS if not (folder / name).is_dir()]
    if weights is None or missing:
        raise FileNotFoundError(
            f"Stable Diffusion weights not found in {str(weights)!r} (missing {', '.join(m + '/' for m in missing)}): "
            "set network.weights to the diffusers folder of stabilityai/stable-diffusion-2-1-base, e.g. made by "
            "`hf download stabilityai/stable-diffusion-2-1-base --local-dir DIR` on a machine with internet access"
        )
    return folder


def load_stable_diffusion_unet(config: StableDiffusionUNetConfig, weights: str | None) -> DiffusersUNet:
    """The U-Net of ``config.unet``, else of ``weights/unet``, wrapped as a package network."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError as error:
        raise ImportError("Stable Diffusion needs diffusers and transformers: pip install 'diffbook[sd]'") from error
    folder = check_sd_weights(weights)
    path = Path(config.unet) if config.unet is not None else folder / "unet"
    if not path.is_dir():
        raise FileNotFoundError(f"U-Net folder {str(path)!r} not found")
    unet = UNet2DConditionModel.from_pretrained(path)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    scheduler = folder / "scheduler" / "scheduler_config.json"
    started_from_release = config.unet is None and scheduler.is_file()
    prediction = json.loads(scheduler.read_text()).get("prediction_type") if started_from_release else None
    return DiffusersUNet(unet, prediction)
