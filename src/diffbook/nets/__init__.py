"""Raw networks: each is called as ``net(x, noise_labels, class_labels=None)``, returns a tensor like ``x``.

What the noise label means and what the output estimates are the preconditioner's business, not the network's.
"""

from diffbook.nets.diffusers_unet import DiffusersUNet
from diffbook.nets.embeddings import (
    ConditionEmbedding,
    EmbeddingMLP,
    FourierEmbedding,
    SinusoidalEmbedding,
    TwoTimeEmbedding,
    load_single_time_weights,
)
from diffbook.nets.features import DiffusersUNetEncoder, UNetEncoder, middle_block_encoder
from diffbook.nets.mlp import TimeMLP
from diffbook.nets.unet import UNET_PRESETS, UNet, UNetConfig, unet_preset

__all__ = [
    "ConditionEmbedding",
    "DiffusersUNet",
    "DiffusersUNetEncoder",
    "EmbeddingMLP",
    "FourierEmbedding",
    "SinusoidalEmbedding",
    "TimeMLP",
    "TwoTimeEmbedding",
    "UNET_PRESETS",
    "UNet",
    "UNetConfig",
    "UNetEncoder",
    "load_single_time_weights",
    "middle_block_encoder",
    "unet_preset",
]
