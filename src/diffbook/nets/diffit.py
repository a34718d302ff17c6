"""DiffiT's image-space network (Hatamizadeh et al., ECCV 2024, Fig. 4, App. H.1, I.1): a U-Net of TMSA ResBlocks.

Each ResBlock is ``GN -> SiLU -> conv3x3``, then a windowed :class:`~diffbook.nets.tmsa.DiffiTBlock` (Eq. 9-10),
and every block reads the same time token. The networks are trained with EDM (CIFAR-10, FFHQ-64). The paper leaves
much of the U-Net open and contradicts itself on the blocks per stage; the choices made here are decisions D1-D12
of the book page *DiffiT: implementation decisions* (``book/diffit_decisions.md``).

The attention and the block are in :mod:`diffbook.nets.tmsa`; the latent model is in
:mod:`diffbook.nets.latent_diffit`. The parameter counters at the end serve the chapter's equal-budget ablations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.embeddings import ConditionEmbedding, check_embedding
from diffbook.nets.presets import check_image_input, replace_preset
from diffbook.nets.tmsa import DiffiTBlock, check_time_mode, init_tmsa_parts
from diffbook.nets.transformer import Mlp
from diffbook.nets.unet import ConvResample, channels_last, conv3x3, group_norm


class DiffiTResBlock(nn.Module):
    """The image-space ResBlock of Eq. 9-10: ``h = conv3x3(SiLU(GN(x)))``, ``out = Block(h, x_t) + skip(x)``.

    ``skip`` is a 1x1 conv when the channel count changes (a stage's first block; book: diffit_decisions, D5),
    else the identity. ``block_args`` are :class:`~diffbook.nets.tmsa.DiffiTBlock`'s, after its width.
    """

    def __init__(self, in_channels: int, out_channels: int, **block_args: Any) -> None:
        super().__init__()
        self.norm = group_norm(in_channels)
        self.conv = conv3x3(in_channels, out_channels)
        self.block = DiffiTBlock(out_channels, **block_args)
        reshapes = in_channels != out_channels
        self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1) if reshapes else nn.Identity()

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        """x: (B, C_in, H, W), x_t: (B, time_dim) -> (B, C_out, H, W)."""
        h = self.conv(F.silu(self.norm(x)))
        h = self.block(h.permute(0, 2, 3, 1), x_t).permute(0, 3, 1, 2)
        return h + self.skip(x)


class Stage(nn.ModuleList):
    """ResBlocks at one resolution, run in order with the shared time token."""

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        """x: (B, C_in, H, W), x_t: (B, time_dim) -> (B, C_out, H, W)."""
        for block in self:
            x = block(x, x_t)
        return x


@dataclass(frozen=True)
class DiffiTUNetConfig:
    """The image-space DiffiT U-Net (Fig. 4, App. H.1, I.1); the defaults are CIFAR-10's.

    Stage ``s`` runs ``num_blocks[s]`` ResBlocks of ``channels[s]`` channels at ``resolution / 2^s``; the last
    stage is the bottleneck, and the decoder mirrors the others, each after a 2x upsampling and the
    concatenation of its stage's encoder output. Heads are ``channels / head_dim``; the window is capped at the
    grid. The time token is a ``noise_dim`` sinusoid (or Fourier features, Table 8) of the noise label through
    Linear -> SiLU -> Linear to ``time_dim``, then the SiLU that the package's
    :class:`~diffbook.nets.embeddings.ConditionEmbedding` applies once for all the linear maps that read it.
    Where the paper is silent these follow book: diffit_decisions, D1-D11 (skips D4, heads D3, window D8, time
    token D9).
    """

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 32
    channels: tuple[int, ...] = (128, 256, 256)  # book: diffit_decisions, D2
    num_blocks: tuple[int, ...] = (2, 2, 2)  # App. I.1; App. H.1 says (4, 4, 4) (book: diffit_decisions, D1)
    window: int = 4  # App. H.1
    head_dim: int = 32  # book: diffit_decisions, D3
    mlp_ratio: float = 4.0
    dropout: float = 0.13  # EDM's rate (book: diffit_decisions, D11)
    noise_dim: int = 128
    time_dim: int = 512  # Table 3 (book: diffit_decisions, D9)
    embedding: str = "positional"  # or "fourier" (Table 8)
    num_classes: int = 0
    time_mode: str = "tmsa"
    time_keys: bool = True  # book: diffit_decisions, D10

    def __post_init__(self) -> None:
        check_embedding(self.embedding)
        check_time_mode(self.time_mode)
        if len(self.channels) != len(self.num_blocks) or len(self.channels) < 2:
            raise ValueError(f"channels {self.channels} and num_blocks {self.num_blocks}: one per stage, >= 2 stages")
        if self.resolution % 2 ** (len(self.channels) - 1):
            raise ValueError(f"resolution {self.resolution} must halve {len(self.channels) - 1} times")
        for res in self.stage_resolutions:
            if res % self.stage_window(res):
                raise ValueError(f"the {res}x{res} stage does not tile into windows of {self.window}")
        bad = [c for c in self.channels if c % self.head_dim]
        if bad:
            raise ValueError(f"channels {bad} do not split into heads of {self.head_dim}")

    @property
    def stage_resolutions(self) -> tuple[int, ...]:
        """The grid side at each stage, from ``resolution`` down by halves."""
        return tuple(self.resolution >> s for s in range(len(self.channels)))

    def stage_window(self, resolution: int) -> int:
        """The window side at a stage: ``window``, capped at the grid (book: diffit_decisions, D8)."""
        return min(self.window, resolution)


# 16x16 digits on a CPU, near the digits16 U-Net's 0.65 M (ours): 0.63 M; 4x4 windows at 16x16 and at 8x8.
_DIGITS16 = DiffiTUNetConfig(
    in_channels=1,
    out_channels=1,
    resolution=16,
    channels=(32, 96),
    num_blocks=(1, 2),
    head_dim=16,
    dropout=0.0,
    noise_dim=32,
    time_dim=128,
)

DIFFIT_UNET_PRESETS: dict[str, DiffiTUNetConfig] = {
    # CIFAR-10, App. I.1 (2, 2, 2) blocks: 15.9 M parameters.
    "cifar10": DiffiTUNetConfig(),
    # CIFAR-10 as App. H.1 / Table S.3 lists it, (4, 4, 4): 28.7 M.
    "cifar10_l4": DiffiTUNetConfig(num_blocks=(4, 4, 4)),
    # FFHQ-64, App. I.1 (1, 2, 2, 2) blocks, window 8, EDM's dropout 0.05: 23.8 M.
    "ffhq64": DiffiTUNetConfig(
        resolution=64, channels=(128, 256, 256, 256), num_blocks=(1, 2, 2, 2), window=8, dropout=0.05
    ),
    # FFHQ-64 as App. H.1 / Table S.2 lists it, (4, 4, 4, 4): 44.8 M.
    "ffhq64_l4": DiffiTUNetConfig(
        resolution=64, channels=(128, 256, 256, 256), num_blocks=(4, 4, 4, 4), window=8, dropout=0.05
    ),
    "digits16": _DIGITS16,
    # The same network on the digits' native 8x8 (ours), four times cheaper: 4x4 windows at 8x8, one at 4x4.
    "digits8": dataclasses.replace(_DIGITS16, resolution=8),
}


def diffit_unet_preset(name: str, **overrides: Any) -> DiffiTUNetConfig:
    """A preset with fields replaced, e.g. ``diffit_unet_preset("digits16", time_mode="mlp")``."""
    return replace_preset(DIFFIT_UNET_PRESETS, name, "DiffiT U-Net", **overrides)


class DiffiTUNet(nn.Module):
    """``net(x, noise_labels, class_labels=None)``: the image-space DiffiT U-Net of :class:`DiffiTUNetConfig`.

    ``tokenizer (conv3x3) -> [stage, stride-2 conv] x (S-1) -> bottleneck stage
    -> [nearest 2x + conv3x3, concat skip, stage] x (S-1) -> head (GN, SiLU, zero-init conv3x3)``
    (book: diffit_decisions, D5-D7).
    """

    def __init__(self, config: DiffiTUNetConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.embed = ConditionEmbedding(config.noise_dim, config.time_dim, config.num_classes, config.embedding)
        levels = list(zip(config.channels, config.num_blocks, config.stage_resolutions, strict=True))
        self.tokenizer = conv3x3(config.in_channels, config.channels[0])
        self.encoder, self.downs = nn.ModuleList(), nn.ModuleList()
        ch = config.channels[0]
        for out, blocks, res in levels[:-1]:
            self.encoder.append(self._stage(ch, out, blocks, res))
            self.downs.append(ConvResample(out, "down"))
            ch = out
        out, blocks, res = levels[-1]
        self.bottleneck = self._stage(ch, out, blocks, res)
        ch = out
        self.ups, self.decoder = nn.ModuleList(), nn.ModuleList()
        for out, blocks, res in reversed(levels[:-1]):
            self.ups.append(ConvResample(ch, "up"))
            self.decoder.append(self._stage(ch + out, out, blocks, res))
            ch = out
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), conv3x3(ch, config.out_channels))
        self._init_weights()
        # Channels-last, as the package's U-Net (see unet.channels_last): here the transformer blocks' (B, H, W, C)
        # tokens are then views of the convolutions' activations, not copies.
        self.to(memory_format=torch.channels_last)

    def _stage(self, in_channels: int, out_channels: int, blocks: int, resolution: int) -> Stage:
        config = self.config
        block = partial(
            DiffiTResBlock,
            num_heads=out_channels // config.head_dim,
            window=config.stage_window(resolution),
            time_dim=config.time_dim,
            time_mode=config.time_mode,
            time_keys=config.time_keys,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
        )
        return Stage(block(in_channels if i == 0 else out_channels, out_channels) for i in range(blocks))

    def _init_weights(self) -> None:
        # Xavier-uniform weights and zero biases for every conv and linear layer, as the package's U-Net (the
        # paper gives no init), then the transformer parts, and the head at zero: the network starts at F = 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:  # every layer here has one; the check is for the type checker
                    nn.init.zeros_(module.bias)
        init_tmsa_parts(self)
        nn.init.zeros_(self.head[-1].get_parameter("weight"))

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, in_channels, R, R), noise_labels: (B,) float, class_labels: (B,) or None.

        Returns (B, out_channels, R, R).
        """
        check_image_input(x, self.config)
        x_t = self.embed(noise_labels, class_labels)  # the time token, shared by every block
        x = self.tokenizer(channels_last(x))
        skips = []
        for stage, down in zip(self.encoder, self.downs, strict=True):
            x = stage(x, x_t)
            skips.append(x)
            x = down(x, x_t)
        x = self.bottleneck(x, x_t)
        for up, stage in zip(self.ups, self.decoder, strict=True):
            x = stage(torch.cat([up(x, x_t), skips.pop()], dim=1), x_t)
        return self.head(x).contiguous()


# Parameter arithmetic


def parameter_count(network: Callable[[Any], nn.Module], config: Any) -> int:
    """The parameters of ``network(config)`` (e.g. ``LatentDiffiT``, ``DiT``), counted on the meta device, where no
    weight is allocated: a 561 M model costs nothing to count."""
    with torch.device("meta"):
        return sum(p.numel() for p in network(config).parameters())


def unet_parameter_count(config: DiffiTUNetConfig) -> int:
    """:func:`parameter_count` of ``DiffiTUNet(config)``."""
    return parameter_count(DiffiTUNet, config)


def mlp_ratio_for_budget(config: DiffiTUNetConfig, parameters: int, step: float = 1 / 16) -> float:
    """The MLP ratio, a multiple of ``step`` up to 8, that brings ``DiffiTUNet(config)`` closest to ``parameters``.

    The time modes add different weights to each block (TMSA ``3 C D_t``, adaLN-Zero ``6 C D_t``, a time token
    ``C D_t``); an ablation at an equal budget gives the difference back to, or takes it from, the MLPs.
    """
    with torch.device("meta"):
        net = DiffiTUNet(config)
    mlps = [module for module in net.modules() if isinstance(module, Mlp)]
    fixed = sum(p.numel() for p in net.parameters()) - sum(p.numel() for m in mlps for p in m.parameters())

    def count(ratio: float) -> int:  # an MLP of width C and hidden h = int(C r) holds 2 C h + h + C weights
        return fixed + sum((2 * dim + 1) * int(dim * ratio) + dim for dim in (m.fc1.in_features for m in mlps))

    ratios = [k * step for k in range(1, round(8 / step) + 1)]
    return min(ratios, key=lambda ratio: abs(count(ratio) - parameters))
