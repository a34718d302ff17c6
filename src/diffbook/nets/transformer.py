"""Pieces shared by the package's vision transformers: DiT (adaLN-Zero) and DiffiT (TMSA).

Both follow ViT conventions as DiT fixed them for diffusion: LayerNorm without affine parameters (eps 1e-6),
an MLP four times as wide with the tanh approximation of GELU, non-overlapping patches embedded by a strided
conv, a fixed 2-D sine-cosine position embedding, and a conditioning vector ``t_emb + y_emb``.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.embeddings import EmbeddingMLP, SinusoidalEmbedding


class PixelTransformerFields(TypedDict):
    """The config fields that the DiT and latent DiffiT digits16 presets share."""

    in_channels: int
    resolution: int
    dim: int
    depth: int
    num_heads: int
    num_classes: int
    learn_sigma: bool


# 16x16 digits as pixels on a CPU (ours): patch 2, an 8x8 token grid, width 96, depth 4. The DiT and the latent
# DiffiT digits16 presets share these fields, so that the two differ only in how time enters.
DIGITS16_PIXELS: PixelTransformerFields = {
    "in_channels": 1,
    "resolution": 16,
    "dim": 96,
    "depth": 4,
    "num_heads": 4,
    "num_classes": 0,
    "learn_sigma": False,
}


def layer_norm(dim: int) -> nn.LayerNorm:
    """LayerNorm without scale and shift: in DiT and DiffiT any per-channel affine comes from the condition."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def per_sample(c: Tensor, like: Tensor) -> Tensor:
    """``c: (B, C)`` reshaped to broadcast over the tokens of ``like: (B, ..., C)``."""
    return c.reshape((c.shape[0],) + (1,) * (like.ndim - 2) + (c.shape[-1],))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x (1 + scale) + shift``. ``x: (B, ..., C)``, ``shift, scale: (B, C)`` broadcast over tokens.

    One fused multiply-add over the tokens (``addcmul``) rather than a product and a sum, here and in
    :func:`gated`: each saves a pass over the activations, forward and backward.
    """
    return torch.addcmul(per_sample(shift, x), x, 1 + per_sample(scale, x))


def gated(x: Tensor, gate: Tensor, update: Tensor) -> Tensor:
    """adaLN-Zero's gated residual ``x + gate * update``: ``x, update: (B, ..., C)``, ``gate: (B, C)``."""
    return torch.addcmul(x, per_sample(gate, x), update)


class Mlp(nn.Module):
    """``fc2(dropout(GELU_tanh(fc1(x))))``: the transformer's per-token MLP, ``hidden`` wide.

    Dropout acts on the hidden activations, the widest place in the block (DiffiT; book: diffit_decisions, D11).
    DiT has none.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim) -> (..., dim)."""
        return self.fc2(self.dropout(F.gelu(self.fc1(x), approximate="tanh")))


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, bias: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention over heads: ``softmax(q k^T / sqrt(d) + bias) v`` with ``d = C / heads``.

    ``q: (B, N, C)``, ``k, v: (B, M, C)``, ``bias``: broadcastable to ``(B, heads, N, M)`` -> ``(B, N, C)``.
    The fused kernel of ``scaled_dot_product_attention`` takes the additive bias as its float ``attn_mask``.
    """

    def heads(x: Tensor) -> Tensor:
        return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, heads, tokens, d)

    mask = None if bias is None else bias.to(q.dtype)
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches to tokens by a strided conv: ``(B, C, H, W) -> (B, HW/p^2, dim)``."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(x: Tensor, patch_size: int, channels: int) -> Tensor:
    """Tokens back to an image: ``x: (B, g*g, p*p*C)`` -> ``(B, C, g*p, g*p)``; the inverse of patch flattening
    in the order (row, column, channel) that DiT's final linear layer uses."""
    B, N, _ = x.shape
    g = int(round(N**0.5))
    x = x.reshape(B, g, g, patch_size, patch_size, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, channels, g * patch_size, g * patch_size)


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """The fixed position embedding of MAE and DiT: ``(grid * grid, dim)``, row-major over positions.

    The first half of the channels are sines and cosines of the column index, the second half of the row index,
    each at frequencies ``10000^(-i / (dim / 4))``.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    axis = SinusoidalEmbedding(dim // 2, endpoint=False)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([axis(cols.flatten().float()), axis(rows.flatten().float())], dim=1)


class TimeLabelEmbedding(nn.Module):
    """DiT's conditioning vector ``t_emb + y_emb``: ``(B,)`` noise labels and class labels -> ``(B, dim)``.

    ``t_emb``: a ``freq_dim`` sinusoid (Transformer frequencies) through Linear -> SiLU -> Linear. ``y_emb``: a
    table of ``num_classes + 1`` rows, the last the null class of classifier-free guidance, used wherever
    ``class_labels`` is None. Label dropout is the objective's (``label_dropout``), not the network's.
    """

    def __init__(self, dim: int, num_classes: int = 0, freq_dim: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.noise = SinusoidalEmbedding(freq_dim, endpoint=False)
        self.mlp = EmbeddingMLP(freq_dim, dim)
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """noise_labels: (B,) float, class_labels: (B,) int64 or None -> (B, dim)."""
        emb = self.mlp(self.noise(noise_labels))
        if self.label is None:
            if class_labels is not None:
                raise ValueError("class_labels given to a network built with num_classes=0")
            return emb
        if class_labels is None:
            class_labels = torch.full(noise_labels.shape, self.num_classes, dtype=torch.long, device=emb.device)
        return emb + self.label(class_labels)

    def init_weights(self) -> None:
        """N(0, 0.02) for the MLP's weights and the label table (DiT)."""
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.get_parameter("weight"), std=0.02)
        if self.label is not None:
            nn.init.normal_(self.label.weight, std=0.02)


def init_dit_weights(net: nn.Module) -> None:
    """DiT's initialisation, which the released latent DiffiT shares: Xavier-uniform linear layers with zero
    biases, each patch conv as a flattened linear layer, and N(0, 0.02) time and label embedders. Zero-initialised
    layers (adaLN-Zero's modulation, the final layer) are the caller's."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for module in net.modules():  # after the linear layers, which include the embedders' own
        if isinstance(module, PatchEmbed):
            nn.init.xavier_uniform_(module.proj.weight.view(module.proj.out_channels, -1))
            nn.init.zeros_(module.proj.get_parameter("bias"))
        elif isinstance(module, TimeLabelEmbedding):
            module.init_weights()
