"""Released architectures with random weights, written in diffusers' on-disk layout, for machines without them.

A GPU lent for a check has no internet, no datasets and no released weights. The package's own loaders read these
folders exactly as they read the releases (``AutoencoderKL.from_pretrained``, ``network.weights``), so every code
path and every cost is the release's; only the numbers the networks compute are meaningless.

- :data:`SD_VAE`: Stable Diffusion's autoencoder (``stabilityai/sd-vae-ft-ema``, and the ``vae/`` of SD 2.1-base):
  4 latent channels, 8x down, about 84 M parameters.
- :data:`SD21_BASE_UNET`, :data:`SD21_BASE_TEXT_ENCODER`: the U-Net (865 M) and the OpenCLIP ViT-H/14 text
  encoder (23 layers, as SD 2.x reads its penultimate layer) of ``stabilityai/stable-diffusion-2-1-base``.

Each has a tiny twin of the same layout (:data:`TINY`) for CPU smoke runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SD_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD21_BASE_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
}
SD21_BASE_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
TINY: dict[str, dict[str, Any]] = {
    "vae": {**SD_VAE, "block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4},
    "unet": {
        **SD21_BASE_UNET,
        "sample_size": 8,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "attention_head_dim": (2, 4),
        "cross_attention_dim": 16,
        "norm_num_groups": 4,
    },
    "text_encoder": {
        **SD21_BASE_TEXT_ENCODER,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 8,
        "projection_dim": 16,
    },
}


def write_random_vae(folder: Path, tiny: bool = False, seed: int = 0) -> Path:
    """A randomly initialised :data:`SD_VAE` (or its tiny twin) as ``folder/config.json`` and its safetensors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**(TINY["vae"] if tiny else SD_VAE)).save_pretrained(folder)
    return folder


def write_random_stable_diffusion(folder: Path, tiny: bool = False, seed: int = 0) -> Path:
    """A diffusers Stable Diffusion 2.1-base folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``) with
    random weights, what ``network.weights`` names. The tokenizer's vocabulary is CLIP's special tokens and the
    letters: its ids index the text encoder's full vocabulary, and a prompt costs what a real one of that length does.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    text_config = TINY["text_encoder"] if tiny else SD21_BASE_TEXT_ENCODER
    torch.manual_seed(seed)
    UNet2DConditionModel(**(TINY["unet"] if tiny else SD21_BASE_UNET)).save_pretrained(folder / "unet")
    write_random_vae(folder / "vae", tiny, seed)
    CLIPTextModel(CLIPTextConfig(**text_config)).save_pretrained(folder / "text_encoder")
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(letter + "</w>" for letter in letters)]
    tokens = folder / "tokenizer"
    tokens.mkdir(parents=True, exist_ok=True)
    (tokens / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (tokens / "merges.txt").write_text("#version: 0.2\n")
    length = text_config["max_position_embeddings"]
    tokenizer = CLIPTokenizer(str(tokens / "vocab.json"), str(tokens / "merges.txt"), model_max_length=length)
    tokenizer.save_pretrained(tokens)
    return folder
