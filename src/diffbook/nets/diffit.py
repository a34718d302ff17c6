"""DiffiT (Hatamizadeh et al., ECCV 2024): time-dependent multi-head self-attention (TMSA) and its two networks.

TMSA projects one time token ``x_t`` into the queries, keys and values of every attention block,
``q = x_s W_qs + x_t W_qt``, ``k = x_s W_ks + x_t W_kt``, ``v = x_s W_vs + x_t W_vt`` (Eq. 3-5), and attends
with a learned relative-position bias ``B``: ``softmax(q k^T / sqrt(d) + B) v`` (Eq. 6), inside non-overlapping,
unshifted windows. Time enters nowhere else: no adaLN, no per-channel bias.

The key-side term ``x_t W_kt`` adds ``q_i . k_t`` to every logit of query ``i``, a constant the softmax removes,
so ``W_kt`` gets zero gradient and can be dropped (``time_keys=False``) without changing the output (D10).

- :class:`DiffiTUNet`: the image-space model, a U-Net of DiffiT ResBlocks (``GN -> SiLU -> conv3x3``, then a
  windowed DiffiT block), trained with EDM (CIFAR-10, FFHQ-64).
- :class:`LatentDiffiT`: the latent-space model, DiT-XL/2's layout with TMSA in place of adaLN-Zero and one
  global window, trained with ADM's discrete diffusion on Stable Diffusion VAE latents (ImageNet).

``time_mode`` selects where time enters, for the ablations of the paper's Tables 6 and 7 (see
:data:`TIME_MODES`). The decision numbers D1-D18 are those of the project's spec of the paper.
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
from diffbook.nets.presets import replace_preset
from diffbook.nets.transformer import (
    DIGITS16_PIXELS,
    Mlp,
    PatchEmbed,
    TimeLabelEmbedding,
    gated,
    init_dit_weights,
    layer_norm,
    modulate,
    multihead_attention,
    sincos_pos_embed_2d,
    unpatchify,
)
from diffbook.nets.unet import ConvResample, channels_last, conv3x3, group_norm

TIME_MODES: dict[str, str] = {
    "tmsa": "time in q, k and v of every attention (the paper's TMSA; Table 6 H)",
    "bias": "time only in the attention bias: a time-dependent relative-position table (Table 6 F)",
    "mlp": "time added to the input of every MLP (Table 6 G)",
    "token": "a separate time token appended to the keys and values (Table 7)",
    "adaln": "adaLN-Zero modulation of both branches, DiT's conditioning (the paper's Fig. 7b baseline)",
}


def check_time_mode(name: str) -> None:
    """Raise a ValueError naming the valid choices when ``name`` is not one of :data:`TIME_MODES`."""
    if name not in TIME_MODES:
        raise ValueError(f"time_mode must be one of {', '.join(TIME_MODES)}, got {name!r}")


# Windows


def window_partition(x: Tensor, window: int) -> Tensor:
    """Non-overlapping ``window x window`` tiles: ``x: (B, H, W, C)`` -> ``(B, nW, window^2, C)``.

    Windows are ordered row-major over the image, tokens row-major inside each window.
    """
    B, H, W, C = x.shape
    if H % window or W % window:
        raise ValueError(f"a {H}x{W} grid does not tile into {window}x{window} windows")
    x = x.reshape(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, (H // window) * (W // window), window * window, C)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`window_partition`: ``(B, nW, window^2, C)`` -> ``(B, height, width, C)``."""
    B, _, _, C = windows.shape
    x = windows.reshape(B, height // window, width // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, height, width, C)


def relative_position_index(window: int) -> Tensor:
    """Swin's table index: ``(N, N)`` int64, ``N = window^2``, entry ``(i, j)`` the row of the offset ``i - j``
    in a ``(2 window - 1)^2`` table, so that every pair of tokens with the same offset shares one bias."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, N, N), each in [0, 2 window - 2]
    return offsets[0] * (2 * window - 1) + offsets[1]


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset (Swin v1): ``() -> (heads, N, N)``, ``N = window^2``."""

    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Not persistent: a function of the window size, not learned state.
        self.register_buffer("index", relative_position_index(window), persistent=False)

    @property
    def table_size(self) -> int:
        return self.table.shape[0]

    def lookup(self, table: Tensor) -> Tensor:
        """Spread a table ``(..., (2w-1)^2, heads)`` over token pairs: ``(..., heads, N, N)``."""
        return table[..., self.index, :].movedim(-1, -3)

    def forward(self) -> Tensor:
        return self.lookup(self.table)


# TMSA and the DiffiT block


class WindowAttention(nn.Module):
    """Multi-head self-attention in windows with a relative-position bias, and time as ``time_input`` says.

    ``time_input``: ``"qkv"`` is TMSA (a time projection to q, k and v, with bias; ``time_keys=False`` drops its
    key third, D10), ``"bias"`` adds a time-projected table to the bias, ``"token"`` appends one time token to
    the keys and values (projected by the spatial ``W_k, W_v``, with zero position bias), ``None`` ignores time.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        time_dim: int,
        time_input: str | None = "qkv",
        time_keys: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads")
        self.num_heads, self.window = num_heads, window
        self.time_input, self.time_keys = time_input, time_keys
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = RelativePositionBias(window, num_heads)
        self.proj = nn.Linear(dim, dim)
        if time_input == "qkv":
            self.time_qkv = nn.Linear(time_dim, (3 if time_keys else 2) * dim)
        elif time_input == "bias":
            self.time_bias = nn.Linear(time_dim, self.bias.table_size * num_heads)
        elif time_input == "token":
            self.time_token = nn.Linear(time_dim, dim)
        elif time_input is not None:
            raise ValueError(f"time_input must be 'qkv', 'bias', 'token' or None, got {time_input!r}")

    def time_projections(self, x_t: Tensor) -> Tensor:
        """TMSA's ``[x_t W_qt, x_t W_kt, x_t W_vt]``: ``x_t: (B, time_dim)`` -> ``(B, 3 dim)``; zeros for the
        key third when ``time_keys=False``."""
        qkv_t = self.time_qkv(x_t)
        if self.time_keys:
            return qkv_t
        q_t, v_t = qkv_t.chunk(2, dim=-1)
        return torch.cat([q_t, torch.zeros_like(q_t), v_t], dim=-1)

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        """x: (B, H, W, C) tokens on their grid, x_t: (B, time_dim) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        q, k, v, bias = self._queries_keys_values(x, x_t)
        out = multihead_attention(q, k, v, self.num_heads, bias)
        return window_reverse(self.proj(out).reshape(B, -1, self.window**2, C), self.window, H, W)

    def attention_probabilities(self, x: Tensor, x_t: Tensor) -> Tensor:
        """The attention matrix ``softmax(q k^T / sqrt(d) + B)`` that :meth:`forward` applies, for inspection:
        ``x: (B, H, W, C)`` -> ``(B, nW, heads, N, M)``, ``N = window^2`` queries and ``M`` keys (``N + 1`` with a
        time token, the last); windows row-major over the image, tokens row-major inside each window."""
        B, H, W, C = x.shape
        q, k, _, bias = self._queries_keys_values(x, x_t)
        q, k = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k))
        logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + bias
        return logits.softmax(-1).unflatten(0, (B, -1))

    def _queries_keys_values(self, x: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``q: (B nW, N, C)``, ``k, v: (B nW, M, C)`` and the bias, broadcastable to ``(B nW, heads, N, M)``."""
        B, H, W, C = x.shape
        windows = window_partition(x, self.window)  # (B, nW, N, C)
        nW, N = windows.shape[1:3]
        qkv = self.qkv(windows)
        if self.time_input == "qkv":
            qkv = qkv + self.time_projections(x_t)[:, None, None, :]
        q, k, v = qkv.reshape(B * nW, N, 3 * C).chunk(3, dim=-1)
        bias = self.bias()[None]  # (1, heads, N, N), the same in every window
        if self.time_input == "bias":
            time_table = self.time_bias(x_t).reshape(B, self.bias.table_size, self.num_heads)
            bias = (bias + self.bias.lookup(time_table)).repeat_interleave(nW, dim=0)  # (B nW, heads, N, N)
        elif self.time_input == "token":
            _, k_t, v_t = self.qkv(self.time_token(x_t)).repeat_interleave(nW, dim=0)[:, None].chunk(3, dim=-1)
            k, v = torch.cat([k, k_t], dim=1), torch.cat([v, v_t], dim=1)
            bias = F.pad(bias, (0, 1))  # the time token has no position: bias 0 towards it
        return q, k, v, bias


def drop_time_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of a TMSA network (or layer) with the key third of every time projection removed: what the
    same network built with ``time_keys=False`` loads, computing the same function (D10)."""
    kept = {}
    for name, value in state.items():
        if name.endswith(("time_qkv.weight", "time_qkv.bias")):
            q_t, _, v_t = value.chunk(3, dim=0)
            value = torch.cat([q_t, v_t])
        kept[name] = value
    return kept


class DiffiTBlock(nn.Module):
    """The pre-LN transformer block of Eq. 7-8: ``x' = x + TMSA(LN(x), x_t)``, ``out = x' + MLP(LN(x'))``.

    LN has no affine parameters; the MLP is ``mlp_ratio`` wide with tanh-GELU and dropout on its hidden layer.
    ``time_mode`` (:data:`TIME_MODES`) moves time out of the attention: ``"mlp"`` adds ``W x_t`` to the MLP's
    input, ``"adaln"`` modulates both branches with DiT's zero-initialised shift, scale and gate.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        time_dim: int,
        time_mode: str = "tmsa",
        time_keys: bool = True,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_time_mode(time_mode)
        self.time_mode = time_mode
        time_input = {"tmsa": "qkv", "bias": "bias", "token": "token"}.get(time_mode)
        self.norm1 = layer_norm(dim)
        self.attn = WindowAttention(dim, num_heads, window, time_dim, time_input, time_keys)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        if time_mode == "mlp":
            self.time_mlp = nn.Linear(time_dim, dim)
        elif time_mode == "adaln":
            self.modulation = nn.Linear(time_dim, 6 * dim)

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        """x: (B, H, W, C), x_t: (B, time_dim) -> (B, H, W, C)."""
        if self.time_mode == "adaln":
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(x_t).chunk(6, dim=-1)
            x = gated(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1), x_t))
            return gated(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))
        x = x + self.attn(self.norm1(x), x_t)
        h = self.norm2(x)
        if self.time_mode == "mlp":
            h = h + self.time_mlp(x_t)[:, None, None]
        return x + self.mlp(h)


class DiffiTResBlock(nn.Module):
    """The image-space ResBlock of Eq. 9-10: ``h = conv3x3(SiLU(GN(x)))``, ``out = Block(h, x_t) + skip(x)``.

    ``skip`` is a 1x1 conv when the channel count changes (a stage's first block, D5), else the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, **block_args) -> None:
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
        for block in self:
            x = block(x, x_t)
        return x


def _init_transformer_parts(module: nn.Module) -> None:
    # Shared by both networks: trunc-normal 0.02 bias tables (Swin), and adaLN-Zero's modulation at zero so
    # that, in that ablation, every block starts as the identity (DiT).
    for sub in module.modules():
        if isinstance(sub, RelativePositionBias):
            nn.init.trunc_normal_(sub.table, std=0.02)
        elif isinstance(sub, DiffiTBlock) and sub.time_mode == "adaln":
            nn.init.zeros_(sub.modulation.weight)
            nn.init.zeros_(sub.modulation.bias)


# The image-space U-Net


@dataclass(frozen=True)
class DiffiTUNetConfig:
    """The image-space DiffiT U-Net (Fig. 4, App. H.1, I.1); the defaults are CIFAR-10's under D1-D11.

    Stage ``s`` runs ``num_blocks[s]`` ResBlocks of ``channels[s]`` channels at ``resolution / 2^s``; the last
    stage is the bottleneck, and the decoder mirrors the others, each after a 2x upsampling and the
    concatenation of its stage's encoder output (D4). Heads are ``channels / head_dim`` (D3); the window is
    capped at the grid (D8). The time token is a ``noise_dim`` sinusoid (or Fourier features, Table 8) of the
    noise label through Linear -> SiLU -> Linear to ``time_dim`` (D9), then the SiLU that the package's
    :class:`~diffbook.nets.embeddings.ConditionEmbedding` applies once for all the linear maps that read it.
    """

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 32
    channels: tuple[int, ...] = (128, 256, 256)  # D2
    num_blocks: tuple[int, ...] = (2, 2, 2)  # D1; App. H.1 says (4, 4, 4)
    window: int = 4
    head_dim: int = 32  # D3
    mlp_ratio: float = 4.0
    dropout: float = 0.13  # D11: EDM's rate
    noise_dim: int = 128
    time_dim: int = 512  # D9, Table 3
    embedding: str = "positional"  # or "fourier" (Table 8)
    num_classes: int = 0
    time_mode: str = "tmsa"
    time_keys: bool = True  # D10

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
        return tuple(self.resolution >> s for s in range(len(self.channels)))

    def stage_window(self, resolution: int) -> int:
        """The window side at a stage: ``window``, capped at the grid (D8)."""
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


def diffit_unet_preset(name: str, **overrides) -> DiffiTUNetConfig:
    """A preset with fields replaced, e.g. ``diffit_unet_preset("digits16", time_mode="mlp")``."""
    return replace_preset(DIFFIT_UNET_PRESETS, name, "DiffiT U-Net", **overrides)


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


class DiffiTUNet(nn.Module):
    """``net(x, noise_labels, class_labels=None)``: the image-space DiffiT U-Net of :class:`DiffiTUNetConfig`.

    ``tokenizer (conv3x3) -> [stage, stride-2 conv] x (S-1) -> bottleneck stage
    -> [nearest 2x + conv3x3, concat skip, stage] x (S-1) -> head (GN, SiLU, zero-init conv3x3)`` (D5-D7).
    """

    def __init__(self, config: DiffiTUNetConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.embed = ConditionEmbedding(config.noise_dim, config.time_dim, config.num_classes, config.embedding)

        def stage(in_channels: int, out_channels: int, blocks: int, res: int) -> Stage:
            block = partial(
                DiffiTResBlock,
                num_heads=out_channels // config.head_dim,
                window=config.stage_window(res),
                time_dim=config.time_dim,
                time_mode=config.time_mode,
                time_keys=config.time_keys,
                mlp_ratio=config.mlp_ratio,
                dropout=config.dropout,
            )
            return Stage(block(in_channels if i == 0 else out_channels, out_channels) for i in range(blocks))

        levels = list(zip(config.channels, config.num_blocks, config.stage_resolutions, strict=True))
        self.tokenizer = conv3x3(config.in_channels, config.channels[0])
        self.encoder, self.downs = nn.ModuleList(), nn.ModuleList()
        ch = config.channels[0]
        for out, blocks, res in levels[:-1]:
            self.encoder.append(stage(ch, out, blocks, res))
            self.downs.append(ConvResample(out, "down"))
            ch = out
        out, blocks, res = levels[-1]
        self.bottleneck = stage(ch, out, blocks, res)
        ch = out
        self.ups, self.decoder = nn.ModuleList(), nn.ModuleList()
        for out, blocks, res in reversed(levels[:-1]):
            self.ups.append(ConvResample(ch, "up"))
            self.decoder.append(stage(ch + out, out, blocks, res))
            ch = out
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), conv3x3(ch, config.out_channels))
        self._init_weights()
        # Channels-last, as the package's U-Net (see unet.channels_last): here the transformer blocks' (B, H, W, C)
        # tokens are then views of the convolutions' activations, not copies.
        self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        # Xavier-uniform weights and zero biases for every conv and linear layer, as the package's U-Net (the
        # paper gives no init), then the transformer parts, and the head at zero: the network starts at F = 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        _init_transformer_parts(self)
        nn.init.zeros_(self.head[-1].weight)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, in_channels, R, R), noise_labels: (B,) float, class_labels: (B,) or None.

        Returns (B, out_channels, R, R).
        """
        C, R = self.config.in_channels, self.config.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (C, R, R):
            raise ValueError(f"expected input of shape (B, {C}, {R}, {R}), got {tuple(x.shape)}")
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


# The latent transformer


@dataclass(frozen=True)
class LatentDiffiTConfig:
    """The latent DiffiT (App. H.2; the released ``Diffit()``); defaults: ImageNet-256, 32x32x4 latents.

    DiT-XL/2's layout: ``patch_size`` patches, ``depth`` blocks of ``dim`` channels and ``num_heads`` heads, a
    fixed sin-cos position embedding. The time token is ``t_emb + y_emb`` (``dim`` wide). ``window=None`` is one
    window over the whole token grid (global attention plus the bias table, D13). With ``learn_sigma`` the
    output has ``2 in_channels`` channels: the prediction, then ADM's variance interpolation ``v``.
    """

    in_channels: int = 4
    resolution: int = 32  # of the latent: 256 / 8
    patch_size: int = 2
    dim: int = 1152
    depth: int = 28  # D13: the released model; App. H.2 says 30
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True
    window: int | None = None
    freq_dim: int = 256
    dropout: float = 0.0
    time_mode: str = "tmsa"
    time_keys: bool = True

    def __post_init__(self) -> None:
        check_time_mode(self.time_mode)
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} is not a multiple of patch_size {self.patch_size}")
        if self.grid % self.token_window:
            raise ValueError(f"the {self.grid}x{self.grid} token grid does not tile into windows of {self.window}")

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.resolution // self.patch_size

    @property
    def token_window(self) -> int:
        return self.grid if self.window is None else self.window

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)


LATENT_DIFFIT_PRESETS: dict[str, LatentDiffiTConfig] = {
    # ImageNet-256 (32x32x4 latents), the released depth 28: 561.0 M trainable parameters (Table 9).
    "imagenet256": LatentDiffiTConfig(),
    # App. H.2's depth 30: 600.9 M.
    "imagenet256_d30": LatentDiffiTConfig(depth=30),
    # ImageNet-512 (64x64x4 latents, a 32x32 token grid): 562.4 M.
    "imagenet512": LatentDiffiTConfig(resolution=64),
    # 16x16 digits as pixels on a CPU (ours): patch 2, an 8x8 grid; 0.60 M, near the digits16 U-Net's 0.65 M.
    "digits16": LatentDiffiTConfig(**DIGITS16_PIXELS),
}


def latent_diffit_preset(name: str, **overrides) -> LatentDiffiTConfig:
    """A preset with fields replaced, e.g. ``latent_diffit_preset("imagenet256", depth=30)``."""
    return replace_preset(LATENT_DIFFIT_PRESETS, name, "latent DiffiT", **overrides)


class FinalLayer(nn.Module):
    """``Linear(SiLU(LN(x)))`` to ``p^2 C_out`` per token, unconditioned (DiffiT, unlike DiT's adaLN)."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, dim) -> (B, N, out_features)."""
        return self.linear(F.silu(self.norm(x)))


class LatentDiffiT(nn.Module):
    """``net(x, noise_labels, class_labels=None)``: the latent DiffiT transformer of :class:`LatentDiffiTConfig`.

    ``x: (B, C, R, R)`` latents -> ``(B, out_channels, R, R)``: ``patchify + pos-emb -> depth x DiffiTBlock(x_t)
    -> FinalLayer -> unpatchify``, with ``x_t = t_emb + y_emb`` the time token of every TMSA.
    """

    def __init__(self, config: LatentDiffiTConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.learn_sigma = config.learn_sigma
        self.patch = PatchEmbed(config.in_channels, config.dim, config.patch_size)
        # Fixed, so not a parameter; not persistent, since it is a function of the config.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(config.dim, config.grid), persistent=False)
        self.embed = TimeLabelEmbedding(config.dim, config.num_classes, config.freq_dim)
        self.blocks = nn.ModuleList(
            DiffiTBlock(
                config.dim,
                config.num_heads,
                config.token_window,
                time_dim=config.dim,
                time_mode=config.time_mode,
                time_keys=config.time_keys,
                mlp_ratio=config.mlp_ratio,
                dropout=config.dropout,
            )
            for _ in range(config.depth)
        )
        self.final = FinalLayer(config.dim, config.patch_size**2 * config.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # The released model's scheme, which is DiT's, and a zero final layer (the output starts at 0).
        init_dit_weights(self)
        _init_transformer_parts(self)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, C, R, R), noise_labels: (B,) float, class_labels: (B,) int64 or None -> (B, out_channels, R, R)."""
        C, R, g = self.config.in_channels, self.config.resolution, self.config.grid
        if x.ndim != 4 or tuple(x.shape[1:]) != (C, R, R):
            raise ValueError(f"expected input of shape (B, {C}, {R}, {R}), got {tuple(x.shape)}")
        x_t = self.embed(noise_labels, class_labels)
        tokens = (self.patch(x) + self.pos_embed.to(x.dtype)).unflatten(1, (g, g))  # (B, g, g, dim)
        for block in self.blocks:
            tokens = block(tokens, x_t)
        out = self.final(tokens.flatten(1, 2))
        return unpatchify(out, self.config.patch_size, self.config.out_channels)
