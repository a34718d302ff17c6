"""DiT (Peebles & Xie, ICCV 2023): a plain ViT on latent patches, conditioned by adaLN-Zero.

The conditioning vector ``c = t_emb + y_emb`` sets, per block, a shift ``b``, scale ``s`` and gate ``g`` for each
branch (SiLU -> Linear(D, 6D)):

    x <- x + g_msa * Attn(LN(x) (1 + s_msa) + b_msa)
    x <- x + g_mlp * MLP(LN(x) (1 + s_mlp) + b_mlp)

"Zero": the modulation starts at zero, so every gate is 0 and each block starts as the identity; the final
layer (adaLN shift and scale, then a linear map to ``p^2 C_out``) starts at zero too. DiffiT's latent model is
this network with TMSA in place of adaLN-Zero, the baseline of the paper's Table 9 and Fig. 7b.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from diffbook.nets.presets import check_image_input, replace_preset
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


@dataclass(frozen=True)
class DiTConfig:
    """DiT's sizes (Table 1): depth / dim / heads S 12/384/6, B 12/768/12, L 24/1024/16, XL 28/1152/16.

    ``resolution`` is the latent side (32 for 256 x 256 images); ``learn_sigma`` doubles the output channels:
    the prediction, then ADM's variance interpolation ``v``.
    """

    in_channels: int = 4
    resolution: int = 32
    patch_size: int = 2
    dim: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True
    freq_dim: int = 256

    def __post_init__(self) -> None:
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} does not split into {self.num_heads} heads")

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.resolution // self.patch_size

    @property
    def out_channels(self) -> int:
        """The prediction's channels, and as many again for the variance with ``learn_sigma``."""
        return self.in_channels * (2 if self.learn_sigma else 1)


_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

DIT_PRESETS: dict[str, DiTConfig] = {
    f"{size}/{patch}": DiTConfig(patch_size=patch, depth=depth, dim=dim, num_heads=heads)
    for size, (depth, dim, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}
# 16x16 digits as pixels on a CPU (ours), the latent DiffiT's digits16 grid and width: 0.72 M.
DIT_PRESETS["digits16"] = DiTConfig(**DIGITS16_PIXELS)


def dit_preset(name: str, **overrides: Any) -> DiTConfig:
    """A preset (``"XL/2"``, ``"B/4"``, ..., ``"digits16"``) with fields replaced, e.g. ``resolution=64``."""
    return replace_preset(DIT_PRESETS, name, "DiT", **overrides)


class Attention(nn.Module):
    """Global multi-head self-attention: ``(B, N, dim) -> (B, N, dim)``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(multihead_attention(q, k, v, self.num_heads))


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (the module docstring's two lines)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x: (B, N, dim), c: (B, dim) -> (B, N, dim)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        x = gated(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1)))
        return gated(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class DiTFinalLayer(nn.Module):
    """``Linear(adaLN(LN(x), c))`` to ``out_features`` per token, with a shift and scale from ``c``."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x: (B, N, dim), c: (B, dim) -> (B, N, out_features)."""
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class TokenStem(nn.Module):
    """What DiT and the latent DiffiT share before their blocks: the patch embedding, the fixed 2-D sin-cos
    position table (a buffer, not persistent: a function of the config) and the time-label embedding."""

    pos_embed: Tensor  # (grid^2, dim), registered as a buffer

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.num_classes = config.num_classes
        self.learn_sigma = config.learn_sigma
        self.patch = PatchEmbed(config.in_channels, config.dim, config.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(config.dim, config.grid), persistent=False)
        self.embed = TimeLabelEmbedding(config.dim, config.num_classes, config.freq_dim)


class DiT(TokenStem):
    """``net(x, noise_labels, class_labels=None)``: ``(B, C, R, R) -> (B, out_channels, R, R)``."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.config = config
        self.blocks = nn.ModuleList(
            DiTBlock(config.dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final = DiTFinalLayer(config.dim, config.patch_size**2 * config.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's initialisation, then adaLN-Zero: every modulation and the final linear layer at zero.
        init_dit_weights(self)
        modulations = [m.modulation[-1] for m in self.modules() if isinstance(m, DiTBlock | DiTFinalLayer)]
        for layer in [*modulations, self.final.linear]:
            nn.init.zeros_(layer.get_parameter("weight"))
            nn.init.zeros_(layer.get_parameter("bias"))

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, C, R, R), noise_labels: (B,) float, class_labels: (B,) int64 or None -> (B, out_channels, R, R)."""
        check_image_input(x, self.config)
        c = self.embed(noise_labels, class_labels)
        tokens = self.patch(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            tokens = block(tokens, c)
        return unpatchify(self.final(tokens, c), self.config.patch_size, self.config.out_channels)
