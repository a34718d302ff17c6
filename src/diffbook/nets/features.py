"""A U-Net's middle-block features: its forward pass cut after the middle block.

The self-perceptual objective (:mod:`diffbook.objectives.self_perceptual`) compares two inputs in the feature
space of a frozen diffusion network, at the output of its middle block (the bottleneck). Running the full
network there would compute, and keep in memory, a decoder whose output is thrown away, so the encoders below
hold only the modules on the path to the middle block:

    noise (and class or text) embedding -> conv_in -> down blocks -> middle block

:func:`middle_block_encoder` builds one for the package's :class:`~diffbook.nets.UNet`, for diffusers'
``UNet2DConditionModel``, and for that model wrapped as a package network (:class:`DiffusersUNet`). The 2D
:class:`~diffbook.nets.TimeMLP` has no middle block; its stand-in is the middle hidden layer. Each is
called like the network it came from, ``encoder(x, noise_labels, class_labels=None)``, and shares that
network's modules (copy it to freeze it apart from the original).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.diffusers_unet import DiffusersUNet
from diffbook.nets.mlp import TimeMLP, distinct_embeddings
from diffbook.nets.presets import check_image_input
from diffbook.nets.unet import UNet, channels_last


class UNetEncoder(nn.Module):
    """The package U-Net up to its middle block: ``(B, C, R, R) -> (B, C_mid, R / 2^(L-1), R / 2^(L-1))``."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.config = unet.config
        self.embed, self.conv_in, self.enc, self.mid = unet.embed, unet.conv_in, unet.enc, unet.mid

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, in_channels, R, R), noise_labels: (B,), class_labels: (B,) int64 or None."""
        check_image_input(x, self.config)
        emb = self.embed(noise_labels, class_labels)
        x = self.conv_in(channels_last(x))
        for block in self.enc.values():
            x = block(x, emb)
        for block in self.mid:
            x = block(x, emb)
        return x


class TimeMLPEncoder(nn.Module):
    """A :class:`~diffbook.nets.TimeMLP` up to its middle hidden layer, layer ``ceil(depth / 2)`` (the second of
    three): ``(B, dim) -> (B, hidden)``, the activations after that layer's SiLU."""

    def __init__(self, mlp: TimeMLP) -> None:
        super().__init__()
        keep = (len(mlp.layers) + 1) // 2
        self.embed = mlp.embed
        self.layers, self.emb_proj = mlp.layers[:keep], mlp.emb_proj[:keep]

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, dim), noise_labels: (B,) (``(B, 2)`` for a two-time MLP), class_labels: (B,) int64 or None."""
        emb, rows = distinct_embeddings(self.embed, noise_labels, class_labels)
        for layer, proj in zip(self.layers, self.emb_proj, strict=True):
            x = F.silu(layer(x) + proj(emb)[rows])
        return x


# What a Stable-Diffusion-like UNet2DConditionModel must not use for the encoder below to equal its forward pass.
_UNSUPPORTED_DIFFUSERS_MODULES = ("class_embedding", "add_embedding", "encoder_hid_proj")


class DiffusersUNetEncoder(nn.Module):
    """diffusers' ``UNet2DConditionModel`` up to ``mid_block``: the text-conditioned U-Nets of Stable Diffusion 1.x
    and 2.x (no class, added or image embeddings).

    ``x: (B, C, H, W)``, ``noise_labels: (B,)`` diffusers timesteps, ``class_labels``: the text encoder's hidden
    states ``(B, L, D)`` -> ``(B, C_mid, H / 2^k, W / 2^k)``, with ``k`` the number of down-sampling blocks.
    """

    # What the encoder takes from the U-Net, declared: diffusers' own annotations do not reach a type checker
    # (its package root resolves to placeholder classes, and a module's attributes are Tensor | Module).
    center_input_sample: bool
    time_proj: nn.Module
    time_embedding: nn.Module
    time_embed_act: nn.Module | None
    conv_in: nn.Module
    down_blocks: nn.ModuleList
    mid_block: nn.Module

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        model: Any = unet  # a UNet2DConditionModel, read through the declarations above
        used = [name for name in _UNSUPPORTED_DIFFUSERS_MODULES if getattr(model, name, None) is not None]
        if used or model.mid_block is None:
            problem = f"uses {', '.join(used)}" if used else "has no mid_block"
            raise ValueError(
                f"middle-block features support Stable-Diffusion-like UNet2DConditionModels; this one {problem}"
            )
        self.center_input_sample = model.config.center_input_sample
        self.time_proj, self.time_embedding = model.time_proj, model.time_embedding
        self.time_embed_act = model.time_embed_act
        self.conv_in, self.down_blocks, self.mid_block = model.conv_in, model.down_blocks, model.mid_block

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if self.center_input_sample:
            x = 2 * x - 1.0
        # As UNet2DConditionModel.forward: sinusoidal features in the sample's dtype, then the MLP.
        emb = self.time_embedding(self.time_proj(noise_labels.expand(x.shape[0])).to(x.dtype))
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        x = self.conv_in(x)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, _ = block(hidden_states=x, temb=emb, encoder_hidden_states=class_labels)
            else:
                x, _ = block(hidden_states=x, temb=emb)
        if getattr(self.mid_block, "has_cross_attention", False):
            return self.mid_block(x, emb, encoder_hidden_states=class_labels)
        return self.mid_block(x, emb)


def middle_block_encoder(net: nn.Module) -> nn.Module:
    """The encoder of ``net`` up to its middle block, sharing ``net``'s modules (see the module docstring)."""
    if isinstance(net, UNet):
        return UNetEncoder(net)
    if isinstance(net, TimeMLP):
        return TimeMLPEncoder(net)
    if isinstance(net, DiffusersUNet):
        return DiffusersUNetEncoder(net.unet)
    diffusers = sys.modules.get("diffusers")  # a diffusers model means diffusers is already imported
    if diffusers is not None and isinstance(net, diffusers.UNet2DConditionModel):
        return DiffusersUNetEncoder(net)
    raise ValueError(
        f"no middle-block encoder for {type(net).__name__}; supported: diffbook's UNet and TimeMLP, diffusers' "
        "UNet2DConditionModel and DiffusersUNet"
    )
