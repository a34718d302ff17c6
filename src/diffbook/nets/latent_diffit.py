"""DiffiT's latent-space network (Hatamizadeh et al., ECCV 2024, §3.2, App. H.2): DiT-XL/2 with TMSA.

DiT's layout (:mod:`diffbook.nets.dit`: patches, a fixed sin-cos position embedding, ``depth`` transformer blocks)
with :class:`~diffbook.nets.tmsa.DiffiTBlock` in place of adaLN-Zero, one window over the whole token grid, and
an unconditioned final layer. It is trained with ADM's discrete diffusion on Stable Diffusion VAE latents
(ImageNet, App. I.2). Its decisions, D13-D14, are on the book page *DiffiT: implementation decisions*
(``book/diffit_decisions.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.dit import DiTConfig, TokenStem
from diffbook.nets.presets import check_image_input, replace_preset
from diffbook.nets.tmsa import DiffiTBlock, check_time_mode, init_tmsa_parts
from diffbook.nets.transformer import (
    DIGITS16_PIXELS,
    init_dit_weights,
    layer_norm,
    unpatchify,
)


@dataclass(frozen=True)
class LatentDiffiTConfig(DiTConfig):
    """The latent DiffiT (App. H.2; the released ``Diffit()``); defaults: ImageNet-256, 32x32x4 latents.

    :class:`~diffbook.nets.dit.DiTConfig`'s fields and defaults, DiT-XL/2's: ``patch_size`` patches, ``depth``
    blocks of ``dim`` channels and ``num_heads`` heads, a fixed sin-cos position embedding. The default depth 28
    is the released model's; App. H.2 says 30 (book: diffit_decisions, D13). The time token is ``t_emb + y_emb``
    (``dim`` wide). ``window=None`` is one window over the whole token grid (global attention plus the bias
    table). With ``learn_sigma`` the output has ``2 in_channels`` channels: the prediction, then ADM's variance
    interpolation ``v``. ``dropout``, ``time_mode`` and ``time_keys`` are :class:`~diffbook.nets.tmsa.DiffiTBlock`'s.
    """

    window: int | None = None
    dropout: float = 0.0
    time_mode: str = "tmsa"
    time_keys: bool = True

    def __post_init__(self) -> None:
        check_time_mode(self.time_mode)
        super().__post_init__()
        if self.grid % self.token_window:
            raise ValueError(f"the {self.grid}x{self.grid} token grid does not tile into windows of {self.window}")

    @property
    def token_window(self) -> int:
        """The window side in tokens: ``window``, or the whole grid."""
        return self.grid if self.window is None else self.window


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


def latent_diffit_preset(name: str, **overrides: Any) -> LatentDiffiTConfig:
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


class LatentDiffiT(TokenStem):
    """``net(x, noise_labels, class_labels=None)``: the latent DiffiT transformer of :class:`LatentDiffiTConfig`.

    ``x: (B, C, R, R)`` latents -> ``(B, out_channels, R, R)``: ``patchify + pos-emb -> depth x DiffiTBlock(x_t)
    -> FinalLayer -> unpatchify``, with ``x_t = t_emb + y_emb`` the time token of every TMSA.
    """

    def __init__(self, config: LatentDiffiTConfig) -> None:
        super().__init__(config)
        self.config = config
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
        init_tmsa_parts(self)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, C, R, R), noise_labels: (B,) float, class_labels: (B,) int64 or None -> (B, out_channels, R, R)."""
        check_image_input(x, self.config)
        g = self.config.grid
        x_t = self.embed(noise_labels, class_labels)
        tokens = (self.patch(x) + self.pos_embed.to(x.dtype)).unflatten(1, (g, g))  # (B, g, g, dim)
        for block in self.blocks:
            tokens = block(tokens, x_t)
        out = self.final(tokens.flatten(1, 2))
        return unpatchify(out, self.config.patch_size, self.config.out_channels)
