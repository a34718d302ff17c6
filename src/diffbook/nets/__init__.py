"""Raw networks: each is called as ``net(x, noise_labels, class_labels=None)``, returns a tensor like ``x``.

What the noise label means and what the output estimates are the preconditioner's business, not the network's.
"""

from diffbook.nets.adm_unet import ADM_UNET_PRESETS, ADMUNet, ADMUNetConfig, adm_unet_preset
from diffbook.nets.diffit import DIFFIT_UNET_PRESETS, DiffiTUNet, DiffiTUNetConfig, diffit_unet_preset
from diffbook.nets.diffusers_unet import DiffusersUNet
from diffbook.nets.dit import DIT_PRESETS, DiT, DiTConfig, dit_preset
from diffbook.nets.embeddings import (
    ConditionEmbedding,
    EmbeddingMLP,
    FourierEmbedding,
    SinusoidalEmbedding,
    TwoTimeEmbedding,
    holds_two_times,
    load_single_time_weights,
)
from diffbook.nets.features import DiffusersUNetEncoder, TimeMLPEncoder, UNetEncoder, middle_block_encoder
from diffbook.nets.latent_diffit import LATENT_DIFFIT_PRESETS, LatentDiffiT, LatentDiffiTConfig, latent_diffit_preset
from diffbook.nets.mlp import TimeMLP
from diffbook.nets.tmsa import TIME_MODES
from diffbook.nets.unet import UNET_PRESETS, UNet, UNetConfig, unet_preset

__all__ = [
    "ADM_UNET_PRESETS",
    "ADMUNet",
    "ADMUNetConfig",
    "DIFFIT_UNET_PRESETS",
    "DIT_PRESETS",
    "LATENT_DIFFIT_PRESETS",
    "TIME_MODES",
    "ConditionEmbedding",
    "DiT",
    "DiTConfig",
    "DiffiTUNet",
    "DiffiTUNetConfig",
    "DiffusersUNet",
    "DiffusersUNetEncoder",
    "EmbeddingMLP",
    "FourierEmbedding",
    "LatentDiffiT",
    "LatentDiffiTConfig",
    "SinusoidalEmbedding",
    "TimeMLP",
    "TimeMLPEncoder",
    "TwoTimeEmbedding",
    "UNET_PRESETS",
    "UNet",
    "UNetConfig",
    "UNetEncoder",
    "adm_unet_preset",
    "diffit_unet_preset",
    "dit_preset",
    "holds_two_times",
    "latent_diffit_preset",
    "load_single_time_weights",
    "middle_block_encoder",
    "unet_preset",
]
