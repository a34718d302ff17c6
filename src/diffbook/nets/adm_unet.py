"""ADM's U-Net (Dhariwal & Nichol 2021) as consistency models and BCM use it on ImageNet 64x64.

The layout is that of ADM's released code, module for module, so that the BCM release (Li & He 2024) loads with
no rename table::

    input_blocks   [conv_in] + per level: num_res_blocks x [ResBlock, (attention)], then a down ResBlock
    middle_block   [ResBlock, attention, ResBlock]
    output_blocks  per level: num_res_blocks + 1 x [ResBlock on (h, skip), (attention), (an up ResBlock)]
    out            GroupNorm -> SiLU -> conv

Every block is conditioned on one embedding, ``time_embed(t)`` plus ``label_emb(class)``; ADM adds the class
to the MLP's output. BCM (``two_times``) embeds the end ``u`` of the jump by a second MLP, ``time_embed_end``,
and merges the two by a bias-free ``time_embed_align``, before the class is added: the order of
:class:`~diffbook.nets.embeddings.TwoTimeEmbedding`. Two changes of the BCM and iCT releases to ADM are
options: attention at 16 and 8 only (not 32), and ``cosine_attention``, q, k and v each normalised per head
(EDM2's normalisation; their fix for iCT's divergence). Resolution changes by ResBlocks that pool or upsample
inside (ADM's ``resblock_updown``), the only kind these releases use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.embeddings import EmbeddingMLP, SinusoidalEmbedding
from diffbook.nets.presets import check_image_input, replace_preset
from diffbook.nets.unet import parameter_free_resample


@dataclass(frozen=True)
class ADMUNetConfig:
    """Everything that defines an ADM U-Net; the defaults are BCM's ImageNet-64 network (the authors' flags).

    The blocks are conditioned on ``4 * model_channels``. ``dropout`` applies at the first two levels (64 and 32
    at 64x64), ``dropout_low_res`` from the third on and in the middle (the authors' ``dropout_highres``).
    """

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 64
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3  # per level in the encoder; the decoder has one more
    attn_resolutions: tuple[int, ...] = (16, 8)
    channels_per_head: int = 64
    dropout: float = 0.0
    dropout_low_res: float = 0.2
    num_classes: int = 1000  # 0: unconditional; ADM's table has no null class
    cosine_attention: bool = True
    two_times: bool = True  # condition on two noise labels (B, 2), a jump's start and end (BCM)

    def __post_init__(self) -> None:
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.resolution % factor:
            raise ValueError(f"resolution must be divisible by 2**(levels - 1) = {factor}, got {self.resolution}")
        missing = sorted(set(self.attn_resolutions) - set(self.level_resolutions))
        if missing:
            raise ValueError(f"attn_resolutions {missing} are not level resolutions {self.level_resolutions}")
        for mult in self.channel_mult:
            channels = mult * self.model_channels
            if channels % 32 or channels % self.channels_per_head:
                raise ValueError(
                    f"{channels} channels must split into 32 norm groups and heads of {self.channels_per_head}"
                )

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """The feature-map side length at each level, from ``resolution`` down."""
        return tuple(self.resolution >> level for level in range(len(self.channel_mult)))

    def level_dropout(self, level: int) -> float:
        """The dropout rate of the blocks at ``level`` (0 the finest)."""
        return self.dropout if level < 2 else self.dropout_low_res


ADM_UNET_PRESETS: dict[str, ADMUNetConfig] = {
    # BCM/scripts/bcf_imagenet64_no32_qkv_4096.sh: 192 channels, 3 blocks, heads of 64, attention at 16 and 8.
    "bcm_imagenet64": ADMUNetConfig(),
    # BCM-deep: iCT-deep's twice as many blocks per level (Song & Dhariwal 2023); the repository has no script.
    "bcm_deep_imagenet64": ADMUNetConfig(num_res_blocks=6),
}


def adm_unet_preset(name: str, **overrides) -> ADMUNetConfig:
    """A preset with fields replaced, e.g. ``adm_unet_preset("bcm_imagenet64", two_times=False)`` (iCT's)."""
    return replace_preset(ADM_UNET_PRESETS, name, "ADM U-Net", **overrides)


class GroupNorm32(nn.GroupNorm):
    """ADM's normalisation: 32 groups, computed in float32 whatever the input's dtype (it trains in fp16)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalize_heads(x: Tensor, eps: float = 1e-4) -> Tensor:
    """``x / (eps + |x| / sqrt(d))`` over dim 2 of ``x: (B, heads, d, L)``: every vector gets norm ``sqrt(d)``
    (EDM2's normalisation, as the BCM release applies it to q, k and v)."""
    norm = torch.linalg.vector_norm(x, dim=2, keepdim=True, dtype=torch.float32)
    return x / (eps + norm / x.shape[2] ** 0.5).to(x.dtype)


class ResBlock(nn.Module):
    """``skip(x) + out_layers(in_layers(x) + emb_layers(emb))``; ``resample`` ('up', 'down') changes the
    resolution of both paths, inside ``in_layers`` before its conv."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, dropout: float, resample: str | None = None
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample = parameter_free_resample(resample)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        same = out_channels == channels  # a resampling block keeps its channels: its skip is resampling alone
        self.skip_connection = nn.Identity() if same else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C_in, H, W), emb: (B, emb_channels) -> (B, C_out, H', W')."""
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = conv(self.resample(norm_act(x)))
        h = self.out_layers(h + self.emb_layers(emb)[:, :, None, None].to(h.dtype))
        return self.skip_connection(self.resample(x)) + h


class AttentionBlock(nn.Module):
    """``x + proj_out(attention(qkv(norm(x))))`` among the H*W positions; q, k, v are normalised per head when
    ``cosine``."""

    def __init__(self, channels: int, channels_per_head: int, cosine: bool) -> None:
        super().__init__()
        self.num_heads = channels // channels_per_head
        self.cosine = cosine
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        # The channels are q | k | v, each heads x C/heads (the split of the releases' attention).
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W).unbind(1)
        if self.cosine:
            q, k, v = normalize_heads(q), normalize_heads(k), normalize_heads(v)
        out = F.scaled_dot_product_attention(q.mT, k.mT, v.mT)  # (B, heads, H*W, C/heads)
        return x + self.proj_out(out.mT.reshape(B, C, H, W))


class EmbedSequential(nn.Sequential):
    """Layers in turn; the ResBlocks among them also get the embedding (ADM's ``TimestepEmbedSequential``)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """``net(x, noise_labels, class_labels=None)``: the ADM U-Net of the module docstring."""

    u_branch = ("time_embed_end.", "time_embed_align.")  # what a single-time (iCT) checkpoint lacks

    def __init__(self, config: ADMUNetConfig) -> None:
        super().__init__()
        self.config = config
        ch, emb_ch = config.model_channels, 4 * config.model_channels
        self.sinusoid = SinusoidalEmbedding(ch, endpoint=False)
        self.time_embed = EmbeddingMLP(ch, emb_ch)
        if config.two_times:
            self.time_embed_end = EmbeddingMLP(ch, emb_ch)
            self.time_embed_align = nn.Linear(2 * emb_ch, emb_ch, bias=False)
        if config.num_classes > 0:
            self.label_emb = nn.Embedding(config.num_classes, emb_ch)

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, config.channels_per_head, config.cosine_attention)

        ch = config.channel_mult[0] * config.model_channels
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        levels = list(enumerate(zip(config.channel_mult, config.level_resolutions, strict=True)))
        for level, (mult, res) in levels:
            dropout, out = config.level_dropout(level), mult * config.model_channels
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, out, dropout)]
                ch = out
                if res in config.attn_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level < len(levels) - 1:
                self.input_blocks.append(EmbedSequential(ResBlock(ch, emb_ch, ch, dropout, resample="down")))
                skip_channels.append(ch)

        low = config.dropout_low_res
        self.middle_block = EmbedSequential(ResBlock(ch, emb_ch, ch, low), attention(ch), ResBlock(ch, emb_ch, ch, low))

        self.output_blocks = nn.ModuleList()
        for level, (mult, res) in reversed(levels):
            dropout, out = config.level_dropout(level), mult * config.model_channels
            for idx in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_ch, out, dropout)]
                ch = out
                if res in config.attn_resolutions:
                    layers.append(attention(ch))
                if level > 0 and idx == config.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, dropout, resample="up"))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))
        self._zero_residual_outputs()

    def _zero_residual_outputs(self) -> None:
        # ADM's init: every residual branch, and the network, starts by adding zero (the rest is torch's default).
        for module in self.modules():
            if isinstance(module, ResBlock):
                last: nn.Module = module.out_layers[-1]
            elif isinstance(module, AttentionBlock):
                last = module.proj_out
            else:
                continue
            for param in last.parameters():
                nn.init.zeros_(param)
        for param in self.out[-1].parameters():
            nn.init.zeros_(param)

    @property
    def two_times(self) -> bool:
        """Whether the network takes two noise labels per example (BCM) or one (iCT)."""
        return self.config.two_times

    def time_features(self, noise_labels: Tensor) -> Tensor:
        """ADM's sinusoid, cosines first: noise_labels (B,) -> (B, model_channels)."""
        sin, cos = self.sinusoid(noise_labels).chunk(2, dim=1)
        return torch.cat([cos, sin], dim=1)

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The conditioning of every block: noise_labels (B,) or (B, 2), class_labels (B,) -> (B, 4 C).

        ``emb = time_embed(t)`` or with two times ``time_align([time_embed(t); time_embed_end(u)])``, then
        ``+ label_emb(class)``; each ResBlock applies its own SiLU to it.
        """
        shape = "(B, 2)" if self.two_times else "(B,)"
        if noise_labels.ndim != (2 if self.two_times else 1) or (self.two_times and noise_labels.shape[1] != 2):
            raise ValueError(f"this network takes noise labels of shape {shape}, got {tuple(noise_labels.shape)}")
        if self.two_times:
            t_labels, u_labels = noise_labels.unbind(1)
            emb_t = self.time_embed(self.time_features(t_labels))
            emb_u = self.time_embed_end(self.time_features(u_labels))
            emb = self.time_embed_align(torch.cat([emb_t, emb_u], dim=1))
        else:
            emb = self.time_embed(self.time_features(noise_labels))
        if self.config.num_classes > 0:
            if class_labels is None:
                raise ValueError(
                    "ADM's label table has no null class: pass class_labels (B,) in [0, num_classes) "
                    "(sample --class-labels random)"
                )
            emb = emb + self.label_emb(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels given to a network built with num_classes=0")
        return emb

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, in_channels, R, R), noise_labels: (B,) float ((B, 2) if two_times), class_labels: (B,) or None.

        Returns (B, out_channels, R, R), with R the configured ``resolution``.
        """
        check_image_input(x, self.config)
        emb = self.embed(noise_labels, class_labels)
        skips: list[Tensor] = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    @torch.no_grad()
    def init_from_single_time(self) -> None:
        """``time_embed_end <- time_embed`` and ``time_embed_align <- [I | 0]``: the network then ignores ``u``
        and computes what the single-time network (iCT) did, as the authors start BCM fine-tuning."""
        self.time_embed_end.load_state_dict(self.time_embed.state_dict())
        emb_ch = self.time_embed_align.out_features
        self.time_embed_align.weight.zero_()
        self.time_embed_align.weight[:, :emb_ch].copy_(torch.eye(emb_ch))
