"""Raw networks: each is called as ``net(x, noise_labels, class_labels=None)``, returns a tensor like ``x``.

What the noise label means and what the output estimates are the preconditioner's business, not the network's.
"""

from diffbook.nets.embeddings import (
    ConditionEmbedding,
    EmbeddingMLP,
    FourierEmbedding,
    SinusoidalEmbedding,
)
from diffbook.nets.mlp import TimeMLP
from diffbook.nets.unet import UNET_PRESETS, UNet, UNetConfig, unet_preset

__all__ = [
    "ConditionEmbedding",
    "EmbeddingMLP",
    "FourierEmbedding",
    "SinusoidalEmbedding",
    "TimeMLP",
    "UNET_PRESETS",
    "UNet",
    "UNetConfig",
    "unet_preset",
]
