"""The U-Net of DDPM (Ho et al. 2020) and of DDPM++ (Song et al. 2021, as EDM's ``SongUNet``).

Both are the same skeleton::

    conv_in -> encoder  [per level: (downsample), num_blocks blocks]           every output kept as a skip
            -> middle   [block with attention, block]
            -> decoder  [per level: (upsample), num_blocks + 1 blocks]         each block eats one skip
            -> GroupNorm -> SiLU -> conv_out

A block is a ResBlock, conditioned on the noise (and class) embedding through a per-channel bias, followed by
self-attention at the configured resolutions. Three choices separate the two papers, and are config fields:

- ``resample``: DDPM changes resolution with a strided 3x3 conv / nearest upsampling + 3x3 conv ("conv");
  DDPM++ with ResBlocks that average-pool or nearest-upsample inside ("resblock", EDM's filter [1, 1]).
- ``decoder_attn``: DDPM attends after "every" decoder block at an attention resolution, DDPM++ after the
  "last" one of the level.
- ``skip_scale``: DDPM++ multiplies each residual sum by sqrt(1/2) to keep activations at unit variance.

Every residual branch ends in a layer initialised to zero (``init_zero``), so each block starts as the
identity and the whole network starts by predicting zero.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.embeddings import ConditionEmbedding, TwoTimeEmbedding, check_embedding
from diffbook.nets.presets import check_image_input, replace_preset


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups as in DDPM and EDM, but at least 4 channels per group (EDM's rule) for narrow networks."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def channels_last(x: Tensor) -> Tensor:
    """``x: (B, C, H, W)`` stored channels-last (NHWC), the layout the U-Nets' convolutions run in.

    The weights are stored so from construction and the input is converted on entry; the output is returned in
    the ordinary layout. oneDNN's CPU convolutions are faster in NHWC, and it is the layout of the GPUs' tensor-core
    convolutions: on two CPU cores a training step of DDPM's CIFAR-10 U-Net takes about 0.8 of the time of
    diffusers' identical network in its default layout (``make bench``, ``benchmarks/RESULTS.md``).
    """
    return x.contiguous(memory_format=torch.channels_last)


def scale_residual(x: Tensor, skip_scale: float) -> Tensor:
    """``x * skip_scale``, skipped at 1 (DDPM): a full pass over the activations, forward and backward, for nothing."""
    return x if skip_scale == 1 else x * skip_scale


def parameter_free_resample(direction: str | None) -> nn.Module:
    """2x nearest upsampling ('up'), 2x2 average pooling ('down'), or nothing (None)."""
    if direction == "up":
        return nn.Upsample(scale_factor=2, mode="nearest")
    if direction == "down":
        return nn.AvgPool2d(2)
    return nn.Identity()


class ConvResample(nn.Module):
    """DDPM's resampling: a 3x3 conv of stride 2 down, nearest upsampling then a 3x3 conv up."""

    def __init__(self, channels: int, direction: str) -> None:
        super().__init__()
        self.resample = nn.Upsample(scale_factor=2, mode="nearest") if direction == "up" else nn.Identity()
        self.conv = conv3x3(channels, channels, stride=2 if direction == "down" else 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, 2H, 2W) or (B, C, H/2, W/2).

        ``emb`` is unused; it is accepted so that every unit of the encoder and decoder is called alike.
        """
        return self.conv(self.resample(x))


class ResBlock(nn.Module):
    """``skip(x) + conv(dropout(SiLU(GN(conv(SiLU(GN(x))) + affine(emb)))))``, times ``skip_scale``.

    The embedding enters as a per-channel bias, or with ``adaptive_scale`` as a per-channel scale and shift of
    the second normalisation (EDM's NCSN++ option). ``resample`` ('up', 'down' or None) changes the resolution
    of both paths before their convolutions; the skip path is a 1x1 conv whenever its input differs in shape.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        resample: str | None = None,
        skip_scale: float = 1.0,
        adaptive_scale: bool = False,
    ) -> None:
        super().__init__()
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        self.norm0 = group_norm(in_channels)
        self.resample = parameter_free_resample(resample)
        self.conv0 = conv3x3(in_channels, out_channels)
        self.affine = nn.Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv3x3(out_channels, out_channels)
        reshapes = in_channels != out_channels or resample is not None
        self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1) if reshapes else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C_in, H, W), emb: (B, emb_channels) -> (B, C_out, H', W')."""
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        params = self.affine(emb)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(self.dropout(h))
        return scale_residual(h + self.skip(self.resample(x)), self.skip_scale)


class SelfAttention(nn.Module):
    """Self-attention among the H*W positions, as a residual branch: ``(x + proj(attn(GN(x)))) * s``."""

    def __init__(self, channels: int, num_heads: int = 1, skip_scale: float = 1.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.skip_scale = skip_scale
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        # (B, 3C, H, W) -> three (B, heads, H*W, C/heads): each position is a token. In channels-last memory the
        # permute and reshape are views, and each head's channels are contiguous, as the fused kernel wants them.
        tokens = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = tokens.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        out = out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return scale_residual(x + self.proj(out), self.skip_scale)


class UNetBlock(nn.Module):
    """A ResBlock, followed by self-attention when ``num_heads > 0``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        num_heads: int = 0,
        dropout: float = 0.0,
        resample: str | None = None,
        skip_scale: float = 1.0,
        adaptive_scale: bool = False,
    ) -> None:
        super().__init__()
        self.res = ResBlock(
            in_channels,
            out_channels,
            emb_channels,
            dropout=dropout,
            resample=resample,
            skip_scale=skip_scale,
            adaptive_scale=adaptive_scale,
        )
        self.attn = SelfAttention(out_channels, num_heads, skip_scale) if num_heads > 0 else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C_in, H, W), emb: (B, emb_channels) -> (B, C_out, H', W')."""
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a U-Net; the defaults are DDPM's CIFAR-10 network.

    The embedding width is ``model_channels``, and the blocks are conditioned on ``4 * model_channels``
    (DDPM, EDM). ``channels_per_head=None`` means one attention head, as in both papers.
    """

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 32
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)  # channels at each level, in units of model_channels
    num_blocks: int = 2  # blocks per level in the encoder; the decoder has one more
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_classes: int = 0  # > 0: a label table of num_classes + 1 rows, the last the null class
    embedding: str = "positional"  # or "fourier"
    resample: str = "conv"  # or "resblock" (DDPM++)
    decoder_attn: str = "every"  # or "last" (DDPM++)
    skip_scale: float = 1.0  # sqrt(0.5) in DDPM++
    adaptive_scale: bool = False  # the embedding also scales the features (NCSN++), not only shifts them
    channels_per_head: int | None = None
    init_zero: bool = True  # the last layer of every residual branch starts at zero
    two_times: bool = False  # condition on two noise labels (B, 2), a jump's start and end (BCM)

    def __post_init__(self) -> None:
        check_embedding(self.embedding)
        if self.resample not in ("conv", "resblock"):
            raise ValueError(f"resample must be 'conv' or 'resblock', got {self.resample!r}")
        if self.decoder_attn not in ("every", "last"):
            raise ValueError(f"decoder_attn must be 'every' or 'last', got {self.decoder_attn!r}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.resolution % factor:
            raise ValueError(
                f"resolution must be divisible by 2**(levels - 1) = {factor} for {len(self.channel_mult)} "
                f"levels, got {self.resolution}"
            )
        missing = sorted(set(self.attn_resolutions) - set(self.level_resolutions))
        if missing:
            raise ValueError(f"attn_resolutions {missing} are not level resolutions {self.level_resolutions}")

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """The feature-map side length at each level, from ``resolution`` down."""
        return tuple(self.resolution >> level for level in range(len(self.channel_mult)))

    def num_heads(self, channels: int) -> int:
        """Attention heads for a block of ``channels`` channels."""
        if self.channels_per_head is None:
            return 1
        if channels % self.channels_per_head:
            raise ValueError(f"{channels} channels do not split into heads of {self.channels_per_head}")
        return channels // self.channels_per_head


# What turns DDPM's network into DDPM++ (see the module docstring).
_DDPMPP = UNetConfig(resample="resblock", decoder_attn="last", skip_scale=math.sqrt(0.5))

UNET_PRESETS: dict[str, UNetConfig] = {
    # Ho et al. 2020, CIFAR-10: 35.7M parameters.
    "ddpm_cifar10": UNetConfig(),
    # EDM config F, "DDPM++" for CIFAR-10 (Song et al. 2021 as reimplemented by Karras et al. 2022): 55.7M.
    "ddpmpp_cifar10": dataclasses.replace(_DDPMPP, channel_mult=(2, 2, 2), num_blocks=4, dropout=0.13),
    # EDM's DDPM++ for FFHQ and AFHQv2 at 64x64: 61.8M.
    "ddpmpp_ffhq64": dataclasses.replace(_DDPMPP, resolution=64, num_blocks=4, dropout=0.05),
    # DDPM's network (its conv resampling is the cheaper kind) scaled down for 1-channel digits, to train at a
    # few steps/s with batch 64 on two CPU cores. Full-resolution convolutions dominate the cost, hence only
    # 16 channels at 32x32.
    "digits16": UNetConfig(
        in_channels=1,
        out_channels=1,
        resolution=16,
        model_channels=32,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
    ),
    "digits32": UNetConfig(
        in_channels=1,
        out_channels=1,
        resolution=32,
        model_channels=16,
        channel_mult=(1, 2, 2),
        num_blocks=1,
        attn_resolutions=(8,),
    ),
}


def unet_preset(name: str, **overrides) -> UNetConfig:
    """A preset with fields replaced, e.g. ``unet_preset("digits16", num_classes=10)``."""
    return replace_preset(UNET_PRESETS, name, "U-Net", **overrides)


class UNet(nn.Module):
    """``net(x, noise_labels, class_labels=None)``: the DDPM / DDPM++ U-Net of the module docstring."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.model_channels
        embedding = TwoTimeEmbedding if config.two_times else ConditionEmbedding
        self.embed = embedding(ch, 4 * ch, config.num_classes, config.embedding)
        block = partial(
            UNetBlock,
            emb_channels=4 * ch,
            dropout=config.dropout,
            skip_scale=config.skip_scale,
            adaptive_scale=config.adaptive_scale,
        )

        def resampler(channels: int, direction: str) -> nn.Module:
            if config.resample == "conv":
                return ConvResample(channels, direction)
            return block(channels, channels, resample=direction)

        self.conv_in = conv3x3(config.in_channels, ch)
        skip_channels = [ch]
        levels = list(enumerate(zip(config.channel_mult, config.level_resolutions, strict=True)))
        self.enc = nn.ModuleDict()
        for level, (mult, res) in levels:
            if level > 0:
                self.enc[f"{res}x{res}_down"] = resampler(ch, "down")
                skip_channels.append(ch)
            out = config.model_channels * mult
            heads = config.num_heads(out) if res in config.attn_resolutions else 0
            for idx in range(config.num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(ch, out, num_heads=heads)
                ch = out
                skip_channels.append(ch)

        # The bottleneck always attends, whatever attn_resolutions says (DDPM, EDM).
        self.mid = nn.ModuleList([block(ch, ch, num_heads=config.num_heads(ch)), block(ch, ch)])

        self.dec = nn.ModuleDict()
        for level, (mult, res) in reversed(levels):
            if level < len(levels) - 1:
                self.dec[f"{res}x{res}_up"] = resampler(ch, "up")
            out = config.model_channels * mult
            for idx in range(config.num_blocks + 1):
                last = idx == config.num_blocks
                attends = res in config.attn_resolutions and (config.decoder_attn == "every" or last)
                heads = config.num_heads(out) if attends else 0
                self.dec[f"{res}x{res}_block{idx}"] = block(ch + skip_channels.pop(), out, num_heads=heads)
                ch = out

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), conv3x3(ch, config.out_channels))
        self._init_weights()
        self.to(memory_format=torch.channels_last)  # see channels_last()

    def _init_weights(self) -> None:
        # Xavier-uniform weights and zero biases everywhere (DDPM's and EDM's default).
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:  # the two-time embedding's merge has none
                    nn.init.zeros_(module.bias)
        if not self.config.init_zero:
            return
        # The last layer of every residual branch, and of the network, starts at zero: every block is then the
        # identity (times skip_scale) and the network outputs zero, whatever its depth.
        for module in self.modules():
            if isinstance(module, ResBlock):
                nn.init.zeros_(module.conv1.weight)
            elif isinstance(module, SelfAttention):
                nn.init.zeros_(module.proj.weight)
        nn.init.zeros_(self.out[-1].get_parameter("weight"))

    @property
    def two_times(self) -> bool:
        """Whether the network takes two noise labels per example (see :class:`TwoTimeEmbedding`)."""
        return self.config.two_times

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, in_channels, R, R), noise_labels: (B,) float ((B, 2) if two_times), class_labels: (B,) or None.

        Returns (B, out_channels, R, R), with R the configured ``resolution``.
        """
        check_image_input(x, self.config)
        emb = self.embed(noise_labels, class_labels)
        x = self.conv_in(channels_last(x))
        skips = [x]
        for block in self.enc.values():
            x = block(x, emb)
            skips.append(x)
        for block in self.mid:
            x = block(x, emb)
        for name, block in self.dec.items():
            if not name.endswith("_up"):  # every decoder block but an upsampler consumes one encoder output
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out(x).contiguous()
